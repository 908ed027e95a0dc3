-- The leases each agent holds, written in the same transaction as the `TaskLeased` event
-- that took the slot, so that a lease decides an agent's `max_concurrency` for the whole
-- cluster. A row whose task has a later hold-ending event is pruned by the agent's next
-- lease (under the same per-agent lock), so no other write path has to touch it.
CREATE TABLE lease_slots (
    task_id  text PRIMARY KEY,
    agent_id text NOT NULL,
    -- The sequence of the `TaskLeased` event.
    sequence bigint NOT NULL
);
CREATE INDEX lease_slots_agent ON lease_slots (agent_id);
