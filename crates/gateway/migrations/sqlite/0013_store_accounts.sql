-- A customer's account at a store that keeps one per buyer (a Stripe customer, `cus_...`): made at
-- the customer's first checkout and reused for every later one, so Stripe shows one buyer.
CREATE TABLE store_accounts (
    app_id      TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    store       TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, customer_id, store)
);
