-- The store accounts an app's customers were seen with (Apple's `appTransactionId`, one per Apple
-- Account per app): a notification about an account rather than a purchase (consent withdrawn)
-- reaches the customer the account was last seen with.
CREATE TABLE account_sightings (
    app_id      TEXT NOT NULL,
    store       TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    seen_at     BIGINT NOT NULL,
    PRIMARY KEY (app_id, store, account_id)
);
CREATE INDEX account_sightings_customer ON account_sightings (app_id, customer_id, store);
