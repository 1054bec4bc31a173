-- Pacing of calls to a rate-limited receiver (an Open edX LMS): the time from which the next call
-- may be made, shared by every instance, so that together they stay below the receiver's limit.
CREATE TABLE endpoint_pacing (
    endpoint_id   TEXT PRIMARY KEY REFERENCES webhook_endpoints (id),
    next_slot_at  BIGINT NOT NULL
);
-- A delivery deferred to a call slot it was given: when it comes due it is sent in that slot
-- without asking for another. NULL: it has none.
ALTER TABLE deliveries ADD COLUMN slot_at BIGINT;
