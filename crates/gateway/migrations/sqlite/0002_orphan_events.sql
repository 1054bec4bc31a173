-- Store facts about a purchase lineage that no customer holds yet (a notification that arrived
-- before the app submitted the purchase). They join the lineage's facts when it is first recorded.
CREATE TABLE orphan_events (
    app_id       TEXT NOT NULL,
    store        TEXT NOT NULL,
    lineage      TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    body         TEXT NOT NULL,
    inbound_id   TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (app_id, dedupe_key)
);
CREATE INDEX orphan_events_lineage ON orphan_events (app_id, store, lineage);
