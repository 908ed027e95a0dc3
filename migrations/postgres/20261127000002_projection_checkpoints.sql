-- Where each projection (name, version) stands in the global feed.
CREATE TABLE projection_checkpoints
(
    name           text   NOT NULL,
    version        bigint NOT NULL,
    transaction_id bigint NOT NULL DEFAULT 0,
    position       bigint NOT NULL DEFAULT 0,
    updated_at     bigint NOT NULL,
    PRIMARY KEY (name, version)
);
