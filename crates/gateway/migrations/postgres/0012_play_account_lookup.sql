-- A Google Play purchase names its customer's order by the order's obfuscatedAccountId (as an App
-- Store purchase does by its appAccountToken, which is unique already): looked up per app.
CREATE INDEX orders_obfuscated_account ON orders (app_id, obfuscated_account_id);
