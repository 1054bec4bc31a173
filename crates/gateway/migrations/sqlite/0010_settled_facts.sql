-- A decision folds a purchase from a summary of its facts (`settled`, JSON) and the facts since its
-- latest renewal (`settled_from`, the renewal's store time), not from every fact it ever had: a
-- subscription renewed a hundred times costs what it cost after one renewal. NULL: no summary yet,
-- every fact is read (and the next decision on the purchase writes one).
ALTER TABLE purchases ADD COLUMN settled TEXT;
ALTER TABLE purchases ADD COLUMN settled_from BIGINT;
-- The facts since a time, found without reading the older ones.
CREATE INDEX store_events_purchase_time ON store_events (purchase_id, occurred_at);
DROP INDEX store_events_purchase;
