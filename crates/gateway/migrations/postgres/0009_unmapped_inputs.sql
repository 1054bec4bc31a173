-- Verified store inputs about a SKU the catalog does not map (yet): held, not just recorded, so that
-- when the operator maps the SKU the catalog change decides them (a refund, an expiry or a renewal of
-- a product added late still reaches its customer). `body` is the verified input as JSON; its raw
-- body is the inbound row's.
CREATE TABLE unmapped_inputs (
    app_id      TEXT NOT NULL,
    inbound_id  TEXT NOT NULL,
    store       TEXT NOT NULL,
    sku         TEXT NOT NULL,
    body        TEXT NOT NULL,
    held_at     BIGINT NOT NULL,
    PRIMARY KEY (app_id, inbound_id)
);
CREATE INDEX unmapped_inputs_sku ON unmapped_inputs (app_id, store, sku);
