-- Fulfilment: where outbox events go (endpoints) and how each reached each endpoint (deliveries).

-- An outbox event is dispatched once: a delivery per matching endpoint is created in the same
-- transaction that sets dispatched_at.
ALTER TABLE outbox ADD COLUMN dispatched_at BIGINT;
CREATE INDEX outbox_undispatched ON outbox (created_at) WHERE dispatched_at IS NULL;
-- Whether a customer has an earlier event not dispatched yet (a later one then waits).
CREATE INDEX outbox_undispatched_customer ON outbox (app_id, customer_id, customer_seq) WHERE dispatched_at IS NULL;

CREATE TABLE webhook_endpoints (
    id           TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL REFERENCES apps (id),
    kind         TEXT NOT NULL,            -- webhook | openedx
    url          TEXT NOT NULL,
    description  TEXT NOT NULL,
    events       TEXT NOT NULL,            -- JSON array of event types; empty: every event
    secrets      TEXT NOT NULL,            -- JSON array of {secret, created_at, expires_at}
    config       TEXT NOT NULL,            -- JSON: what the kind needs
    active       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_app ON webhook_endpoints (app_id);

CREATE TABLE deliveries (
    id                TEXT PRIMARY KEY,
    app_id            TEXT NOT NULL,
    endpoint_id       TEXT NOT NULL REFERENCES webhook_endpoints (id),
    event_id          TEXT NOT NULL,       -- the outbox row: the stable webhook-id
    customer_id       TEXT NOT NULL,
    customer_seq      BIGINT NOT NULL,
    event_type        TEXT NOT NULL,
    status            TEXT NOT NULL,       -- pending | delivered | dead
    attempts          BIGINT NOT NULL,
    next_attempt_at   BIGINT NOT NULL,
    lease_until       BIGINT,
    first_attempt_at  BIGINT,
    last_attempt_at   BIGINT,
    last_status       BIGINT,              -- the receiver's HTTP status
    last_error        TEXT,
    delivered_at      BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
-- In-order delivery: the undelivered deliveries of one customer to one endpoint, by sequence.
CREATE INDEX deliveries_queue ON deliveries (endpoint_id, customer_id, customer_seq) WHERE status <> 'delivered';
CREATE INDEX deliveries_app ON deliveries (app_id, created_at);
