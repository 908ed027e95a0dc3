-- Where each projection (name, version) stands in the global feed.
CREATE TABLE projection_checkpoints
(
    name           TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    transaction_id INTEGER NOT NULL DEFAULT 0,
    position       INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
