//! Lease slots: an agent's `max_concurrency` decided in the transaction that appends the
//! lease, so it holds across every node on one database.
//!
//! A lease's append carries a [`LeaseSlot`]. In its transaction, under a lock per agent
//! (a transaction-level advisory lock on PostgreSQL; SQLite has one writer), the store
//! refuses the lease when the agent has drained or left since the dispatcher loaded it
//! ([`StoreError::AgentRetired`]) or when it already holds `max_concurrency` leases
//! ([`StoreError::NoFreeSlot`]); otherwise it records the slot with the events. A slot is
//! held until its task has a later hold-ending event (`TaskEvent::HOLD_ENDING_TYPES`);
//! the agent's next lease prunes such rows under the same lock, so the events that end a
//! hold need not know about slots. Pruning reads the event store itself: an ending event
//! not yet committed counts as held, never the other way round.

use chronicle_aggregates::agent::AgentEvent;
use chronicle_aggregates::task::TaskEvent;
use sqlx::{PgConnection, SqliteConnection};

use super::group_commit::map_error;
use super::StoreError;

/// The condition a lease's append must meet, and the slot it takes.
#[derive(Debug, Clone)]
pub struct LeaseSlot {
    pub agent_id: String,
    /// The agent's version the dispatcher decided on; a retiring event after it refuses.
    pub agent_version: usize,
    pub max_concurrency: u32,
}

/// Arbitrary, unique among the two-key advisory locks of this code base.
const LOCK_CLASS: i32 = 0x4c53_4c54; // "LSLT"

fn strings(types: &[&str]) -> Vec<String> {
    types.iter().map(|t| (*t).to_owned()).collect()
}

/// Locks `agent_id`'s slots until the transaction ends and answers how many more leases
/// it may take now (0 when it retired: see the error).
pub(super) async fn free_pg(tx: &mut PgConnection, slot: &LeaseSlot) -> Result<u32, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(&slot.agent_id)
        .execute(&mut *tx)
        .await
        .map_err(map_error)?;
    let (held, retired): (i64, bool) = sqlx::query_as(
        "WITH ended AS (
             DELETE FROM lease_slots s
              WHERE s.agent_id = $1
                AND EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = 'task' AND e.aggregate_id = s.task_id
                               AND e.sequence > s.sequence AND e.event_type = ANY($3))
             RETURNING s.task_id)
         SELECT (SELECT count(*) FROM lease_slots
                  WHERE agent_id = $1 AND task_id NOT IN (SELECT task_id FROM ended)),
                EXISTS (SELECT 1 FROM events
                         WHERE aggregate_type = 'agent' AND aggregate_id = $1
                           AND sequence > $2 AND event_type = ANY($4))",
    )
    .bind(&slot.agent_id)
    .bind(slot.agent_version as i64)
    .bind(strings(&TaskEvent::HOLD_ENDING_TYPES))
    .bind(strings(&AgentEvent::RETIRING_TYPES))
    .fetch_one(&mut *tx)
    .await
    .map_err(map_error)?;
    free(slot, held, retired)
}

/// Records the slots of leases that were appended: `(agent_id, task_id, sequence)`.
pub(super) async fn take_pg(
    tx: &mut PgConnection,
    taken: &[(String, String, i64)],
) -> Result<(), StoreError> {
    if taken.is_empty() {
        return Ok(());
    }
    let (agents, (tasks, sequences)): (Vec<String>, (Vec<String>, Vec<i64>)) = taken
        .iter()
        .map(|(a, t, s)| (a.clone(), (t.clone(), *s)))
        .unzip();
    // A task's previous slot, of whichever agent, ended with the hold this lease follows.
    sqlx::query(
        "INSERT INTO lease_slots (agent_id, task_id, sequence)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])
         ON CONFLICT (task_id) DO UPDATE
            SET agent_id = excluded.agent_id, sequence = excluded.sequence",
    )
    .bind(&agents)
    .bind(&tasks)
    .bind(&sequences)
    .execute(&mut *tx)
    .await
    .map_err(map_error)?;
    Ok(())
}

/// [`free_pg`] for SQLite, whose write transaction already excludes every other writer.
pub(super) async fn free_sqlite(
    tx: &mut SqliteConnection,
    slot: &LeaseSlot,
) -> Result<u32, StoreError> {
    let ending = serde_json::to_string(&TaskEvent::HOLD_ENDING_TYPES)?;
    let retiring = serde_json::to_string(&AgentEvent::RETIRING_TYPES)?;
    sqlx::query(
        "DELETE FROM lease_slots
          WHERE agent_id = ?1
            AND EXISTS (SELECT 1 FROM events e
                         WHERE e.aggregate_type = 'task' AND e.aggregate_id = lease_slots.task_id
                           AND e.sequence > lease_slots.sequence
                           AND e.event_type IN (SELECT value FROM json_each(?2)))",
    )
    .bind(&slot.agent_id)
    .bind(&ending)
    .execute(&mut *tx)
    .await?;
    let (held, retired): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM lease_slots WHERE agent_id = ?1),
                EXISTS (SELECT 1 FROM events
                         WHERE aggregate_type = 'agent' AND aggregate_id = ?1
                           AND sequence > ?2
                           AND event_type IN (SELECT value FROM json_each(?3)))",
    )
    .bind(&slot.agent_id)
    .bind(slot.agent_version as i64)
    .bind(&retiring)
    .fetch_one(&mut *tx)
    .await?;
    free(slot, held, retired)
}

/// [`take_pg`] for SQLite, one slot.
pub(super) async fn take_sqlite(
    tx: &mut SqliteConnection,
    agent_id: &str,
    task_id: &str,
    sequence: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO lease_slots (agent_id, task_id, sequence) VALUES (?1, ?2, ?3)
         ON CONFLICT (task_id) DO UPDATE
            SET agent_id = excluded.agent_id, sequence = excluded.sequence",
    )
    .bind(agent_id)
    .bind(task_id)
    .bind(sequence)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn free(slot: &LeaseSlot, held: i64, retired: bool) -> Result<u32, StoreError> {
    if retired {
        return Err(StoreError::AgentRetired);
    }
    let held = u32::try_from(held).unwrap_or(u32::MAX);
    Ok(slot.max_concurrency.saturating_sub(held))
}
