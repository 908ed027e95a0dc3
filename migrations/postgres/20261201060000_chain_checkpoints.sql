-- Chain version 2 (`recorded_at` is hashed, set by the application) and chain checkpoints:
-- see ARCHITECTURE.md, "Anchoring the chain", and src/store/checkpoint.rs.
CREATE TABLE chain_info
(
    name  text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO chain_info (name, value) VALUES ('chain_version', '2');

CREATE TABLE chain_checkpoints
(
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_version bigint      NOT NULL,
    -- The last event covered, in feed order; every event before it in feed order is too.
    position      bigint      NOT NULL,
    event_count   bigint      NOT NULL,
    root          text        NOT NULL,
    mac           text        NOT NULL,
    created_at    timestamptz NOT NULL,
    -- Recorded on demand to be published elsewhere: its heads are kept.
    published     boolean     NOT NULL DEFAULT false
);

-- Every aggregate's head at a checkpoint: kept for the latest and the published ones.
-- Written in short transactions before their checkpoint row (so no long writing transaction
-- holds the feed's horizon back), hence no foreign key.
CREATE TABLE chain_checkpoint_heads
(
    checkpoint_id  bigint NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    hash           text   NOT NULL,
    PRIMARY KEY (checkpoint_id, aggregate_type, aggregate_id)
);
