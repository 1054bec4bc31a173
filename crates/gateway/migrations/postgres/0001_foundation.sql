-- Foundation schema; the same tables as migrations/sqlite/0001, in PostgreSQL terms.
-- the subset that sqlx's Any driver carries identically on SQLite and PostgreSQL.

CREATE TABLE apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    app_id      TEXT REFERENCES apps (id),
    kind        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE products (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    id          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    definition  TEXT NOT NULL,
    active      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, id)
);

-- One store SKU names one product of an app.
CREATE TABLE product_skus (
    app_id      TEXT NOT NULL,
    store       TEXT NOT NULL,
    sku         TEXT NOT NULL,
    product_id  TEXT NOT NULL,
    PRIMARY KEY (app_id, store, sku)
);
CREATE INDEX product_skus_product ON product_skus (app_id, product_id);

CREATE TABLE product_entitlements (
    app_id          TEXT NOT NULL,
    entitlement_id  TEXT NOT NULL,
    product_id      TEXT NOT NULL,
    PRIMARY KEY (app_id, entitlement_id, product_id)
);

CREATE TABLE customers (
    app_id          TEXT NOT NULL REFERENCES apps (id),
    id              TEXT NOT NULL,
    version         BIGINT NOT NULL,
    audit_seq       BIGINT NOT NULL,
    audit_head      TEXT NOT NULL,
    event_seq       BIGINT NOT NULL,
    next_change_at  BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (app_id, id)
);
CREATE INDEX customers_next_change ON customers (next_change_at);

-- Every input, raw, before it is decided on.
CREATE TABLE inbound (
    id           TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL,
    source       TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    customer_id  TEXT,
    raw          TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    UNIQUE (app_id, source, dedupe_key)
);

CREATE TABLE purchases (
    id                    TEXT PRIMARY KEY,
    app_id                TEXT NOT NULL,
    customer_id           TEXT NOT NULL,
    store                 TEXT NOT NULL,
    store_transaction_id  TEXT NOT NULL,
    product_id            TEXT NOT NULL,
    environment           TEXT,
    terms                 TEXT,
    status                TEXT NOT NULL,
    expires_at            BIGINT,
    view                  TEXT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    UNIQUE (app_id, store, store_transaction_id)
);
CREATE INDEX purchases_customer ON purchases (app_id, customer_id);

CREATE TABLE store_events (
    app_id       TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    purchase_id  TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    inbound_id   TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (app_id, dedupe_key)
);
CREATE INDEX store_events_purchase ON store_events (purchase_id);

CREATE TABLE manual_facts (
    app_id       TEXT NOT NULL,
    id           TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    at           BIGINT NOT NULL,
    product_id   TEXT,
    body         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    PRIMARY KEY (app_id, id)
);
CREATE INDEX manual_facts_customer ON manual_facts (app_id, customer_id);
CREATE INDEX manual_facts_product ON manual_facts (app_id, product_id);

CREATE TABLE entitlements (
    app_id       TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    id           TEXT NOT NULL,
    status       TEXT NOT NULL,
    expires_at   BIGINT,
    view         TEXT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (app_id, customer_id, id)
);

-- Double entry: every transaction is two legs that sum to zero.
CREATE TABLE ledger_entries (
    id           TEXT PRIMARY KEY,
    txn_id       TEXT NOT NULL,
    app_id       TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    account      TEXT NOT NULL,
    currency     TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    source_kind  TEXT NOT NULL,
    source_id    TEXT NOT NULL,
    reason       TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX ledger_customer ON ledger_entries (app_id, customer_id, account);
CREATE UNIQUE INDEX ledger_spend_once ON ledger_entries (app_id, customer_id, source_id, account)
    WHERE source_kind = 'spend';

CREATE TABLE audit_log (
    app_id       TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    cause        TEXT NOT NULL,
    detail       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    PRIMARY KEY (app_id, customer_id, seq)
);

CREATE TABLE outbox (
    id           TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    customer_seq BIGINT NOT NULL, -- the customer's event counter: delivery order
    event_type   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX outbox_customer ON outbox (app_id, customer_id, customer_seq);

CREATE TABLE orders (
    id                     TEXT PRIMARY KEY,
    app_id                 TEXT NOT NULL,
    customer_id            TEXT NOT NULL,
    app_account_token      TEXT NOT NULL UNIQUE,
    obfuscated_account_id  TEXT NOT NULL,
    items                  TEXT NOT NULL,
    country                TEXT,
    status                 TEXT NOT NULL,
    created_at             BIGINT NOT NULL
);
CREATE INDEX orders_customer ON orders (app_id, customer_id);

CREATE TABLE idempotency_keys (
    key_id        TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT,
    response      TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);

CREATE INDEX purchases_product ON purchases (app_id, product_id);
CREATE INDEX entitlements_id ON entitlements (app_id, id);
