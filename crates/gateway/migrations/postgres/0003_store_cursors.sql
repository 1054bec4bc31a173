-- How far each app's recovery from a store's history has read (App Store Notification History): the
-- end of the last window it finished, in unix milliseconds.
CREATE TABLE store_cursors (
    app_id      TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, name)
);
