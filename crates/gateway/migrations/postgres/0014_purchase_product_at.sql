-- When the store stated the product a purchase is on (its latest purchase or renewal, in store
-- time): a subscription moved to another product of its group follows the product stated latest,
-- whatever order the facts arrive in. NULL for purchases recorded before it was kept.
ALTER TABLE purchases ADD COLUMN product_at BIGINT;

-- An upgraded App Store transaction (`isUpgraded`) was once taken as the end of its lineage: those
-- facts are dropped, as the lineage goes on under the product it was upgraded to.
DELETE FROM store_events WHERE dedupe_key LIKE 'apple:%:upgraded';
DELETE FROM orphan_events WHERE dedupe_key LIKE 'apple:%:upgraded';
