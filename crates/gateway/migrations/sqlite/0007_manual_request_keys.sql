-- A manual fact made by a request with an Idempotency-Key remembers that key (hashed with the caller's
-- key id): the fact's own id covers what the request said, so the same key sent later with another
-- request is found here and refused, never taken as a repeat of the first.
ALTER TABLE manual_facts ADD COLUMN request_key TEXT;
-- Facts made before this column held the key's hash as their id (or a random id, which no key hashes
-- to): either way it serves as their request key.
UPDATE manual_facts SET request_key = id;
CREATE UNIQUE INDEX manual_facts_request_key ON manual_facts (app_id, request_key);
