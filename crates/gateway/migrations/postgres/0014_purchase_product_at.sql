-- When the store stated the product a purchase is on (its latest purchase or renewal, in store
-- time): a subscription moved to another product of its group follows the product stated latest,
-- whatever order the facts arrive in. NULL for purchases recorded before it was kept.
ALTER TABLE purchases ADD COLUMN product_at BIGINT;
