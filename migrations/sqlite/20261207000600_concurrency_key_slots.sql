-- The leases each concurrency group (an owner's `concurrency_key`) holds, written in the
-- same transaction as the `TaskLeased` event that took the slot, beside `lease_slots`, so
-- that a group's limit holds for the whole cluster. A row whose task has a later
-- hold-ending event is pruned by the group's next lease, under the group's lock.
CREATE TABLE concurrency_key_slots (
    task_id  TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    key      TEXT NOT NULL,
    -- The sequence of the `TaskLeased` event.
    sequence INTEGER NOT NULL
);
CREATE INDEX concurrency_key_slots_group ON concurrency_key_slots (owner_id, key);
