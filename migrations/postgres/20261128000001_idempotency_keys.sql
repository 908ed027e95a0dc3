-- First answers to writes sent with an Idempotency-Key, replayed to repeats for 24 h.
-- `status` is NULL while the first request runs.
CREATE TABLE idempotency_keys
(
    owner_id    TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    claimed_at  BIGINT NOT NULL,
    status      INTEGER,
    headers     TEXT,
    body        TEXT,
    PRIMARY KEY (owner_id, key)
);
CREATE INDEX idempotency_keys_claimed_at ON idempotency_keys (claimed_at);
