-- Chain version 2 (`recorded_at` is hashed, set by the application) and chain checkpoints:
-- see ARCHITECTURE.md, "Anchoring the chain", and src/store/checkpoint.rs.
CREATE TABLE chain_info
(
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO chain_info (name, value) VALUES ('chain_version', '2');

CREATE TABLE chain_checkpoints
(
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_version INTEGER NOT NULL,
    -- The last event covered; every event before it is too.
    position      INTEGER NOT NULL,
    event_count   INTEGER NOT NULL,
    root          TEXT    NOT NULL,
    mac           TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    -- Recorded on demand to be published elsewhere: its heads are kept.
    published     INTEGER NOT NULL DEFAULT 0
);

-- Every aggregate's head at a checkpoint: kept for the latest and the published ones.
CREATE TABLE chain_checkpoint_heads
(
    checkpoint_id  INTEGER NOT NULL REFERENCES chain_checkpoints (id) ON DELETE CASCADE,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL,
    hash           TEXT    NOT NULL,
    PRIMARY KEY (checkpoint_id, aggregate_type, aggregate_id)
);
