-- A recovery job's run through a store's history, per app: which window it is reading and where in
-- it (the store's pagination token, saved after each committed page, so a stop resumes there), which
-- instance holds it (a lease, so one instance reads an app's history at a time), and when it is due
-- next (the interval after a finished run, or a back-off after failures).
CREATE TABLE store_history_runs (
    app_id        TEXT NOT NULL,
    name          TEXT NOT NULL,
    run_start     BIGINT,
    run_end       BIGINT,
    page_token    TEXT,
    lease_owner   TEXT,
    leased_until  BIGINT,
    due_at        BIGINT NOT NULL,
    failures      INTEGER NOT NULL,
    PRIMARY KEY (app_id, name)
);
