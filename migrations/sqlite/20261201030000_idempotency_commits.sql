-- Who holds a running claim (a request that takes over an abandoned claim gets a new id,
-- so the first request's late writes miss), and what a request committed before it failed:
-- its key is then kept, and a repeat answers from those aggregates instead of acting again.
ALTER TABLE idempotency_keys ADD COLUMN claim_id TEXT;
ALTER TABLE idempotency_keys ADD COLUMN committed TEXT;
