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
//!
//! A task with a concurrency group (an owner's `concurrency_key`) also takes a slot of its
//! group, the same way: after every agent's lock, the transaction locks each group (a
//! second advisory lock class; groups in one order, after the agents, so two transactions
//! never wait on each other in a circle), prunes its ended holds, and refuses a lease
//! beyond the group's limit with [`StoreError::KeyBusy`], which only skips that task.

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
    /// The task's concurrency group, if it has one.
    pub key: Option<KeySlot>,
}

/// A concurrency group: the tasks of one owner with one key, at most `limit` held.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeySlot {
    pub owner_id: String,
    pub key: String,
    pub limit: u32,
}

impl KeySlot {
    /// The group's identity, as its rows and its lock know it.
    pub(super) fn group(&self) -> (String, String) {
        (self.owner_id.clone(), self.key.clone())
    }
}

/// A key slot taken by an appended lease: `(owner_id, key, task_id, sequence)`.
pub(super) type TakenKey = (String, String, String, i64);

/// Arbitrary, unique among the two-key advisory locks of this code base.
const LOCK_CLASS: i32 = 0x4c53_4c54; // "LSLT"
/// The class of the concurrency groups' locks.
const KEY_LOCK_CLASS: i32 = 0x434b_4559; // "CKEY"

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

/// Locks each of `groups` (owner, key) until the transaction ends and answers how many
/// more leases each may take now. Call after every agent's lock.
pub(super) async fn free_keys_pg(
    tx: &mut PgConnection,
    groups: &[&KeySlot],
) -> Result<Vec<u32>, StoreError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let owners: Vec<&str> = groups.iter().map(|g| g.owner_id.as_str()).collect();
    let keys: Vec<&str> = groups.iter().map(|g| g.key.as_str()).collect();
    // One statement, locks in the order of their ids: two transactions whose groups share
    // a hash still take them in the same order. Volatile calls run after the sort.
    sqlx::query(
        "SELECT pg_advisory_xact_lock($1, h)
           FROM (SELECT DISTINCT hashtext(o || ':' || k) AS h
                   FROM UNNEST($2::text[], $3::text[]) AS g(o, k)) locks
          ORDER BY h",
    )
    .bind(KEY_LOCK_CLASS)
    .bind(&owners)
    .bind(&keys)
    .execute(&mut *tx)
    .await
    .map_err(map_error)?;
    let held: Vec<(i64,)> = sqlx::query_as(
        "WITH groups AS (
             SELECT o, k, n FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS g(o, k, n)),
         ended AS (
             DELETE FROM concurrency_key_slots s
              USING groups g
              WHERE s.owner_id = g.o AND s.key = g.k
                AND EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = 'task' AND e.aggregate_id = s.task_id
                               AND e.sequence > s.sequence AND e.event_type = ANY($3))
             RETURNING s.task_id)
         SELECT (SELECT count(*) FROM concurrency_key_slots s
                  WHERE s.owner_id = g.o AND s.key = g.k
                    AND s.task_id NOT IN (SELECT task_id FROM ended))
           FROM groups g ORDER BY g.n",
    )
    .bind(&owners)
    .bind(&keys)
    .bind(strings(&TaskEvent::HOLD_ENDING_TYPES))
    .fetch_all(&mut *tx)
    .await
    .map_err(map_error)?;
    Ok(groups
        .iter()
        .zip(held)
        .map(|(group, (held,))| free_of(group.limit, held))
        .collect())
}

/// Records the group slots of leases that were appended.
pub(super) async fn take_keys_pg(
    tx: &mut PgConnection,
    taken: &[TakenKey],
) -> Result<(), StoreError> {
    if taken.is_empty() {
        return Ok(());
    }
    let mut columns: (Vec<&str>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    for (owner, key, task, sequence) in taken {
        columns.0.push(owner);
        columns.1.push(key);
        columns.2.push(task);
        columns.3.push(*sequence);
    }
    sqlx::query(
        "INSERT INTO concurrency_key_slots (owner_id, key, task_id, sequence)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
         ON CONFLICT (task_id) DO UPDATE SET sequence = excluded.sequence",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&columns.3)
    .execute(&mut *tx)
    .await
    .map_err(map_error)?;
    Ok(())
}

/// The lease's agent slot, then its group slot (if any), for one lease in its own
/// PostgreSQL transaction: refused with the store's error when either is full.
pub(super) async fn check_pg(tx: &mut PgConnection, slot: &LeaseSlot) -> Result<(), StoreError> {
    if free_pg(tx, slot).await? == 0 {
        return Err(StoreError::NoFreeSlot);
    }
    if let Some(key) = &slot.key {
        if free_keys_pg(tx, &[key]).await?.first() == Some(&0) {
            return Err(StoreError::KeyBusy);
        }
    }
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
async fn take_sqlite(
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

/// [`free_keys_pg`] for one group on SQLite.
async fn free_key_sqlite(tx: &mut SqliteConnection, group: &KeySlot) -> Result<u32, StoreError> {
    let ending = serde_json::to_string(&TaskEvent::HOLD_ENDING_TYPES)?;
    sqlx::query(
        "DELETE FROM concurrency_key_slots
          WHERE owner_id = ?1 AND key = ?2
            AND EXISTS (SELECT 1 FROM events e
                         WHERE e.aggregate_type = 'task'
                           AND e.aggregate_id = concurrency_key_slots.task_id
                           AND e.sequence > concurrency_key_slots.sequence
                           AND e.event_type IN (SELECT value FROM json_each(?3)))",
    )
    .bind(&group.owner_id)
    .bind(&group.key)
    .bind(&ending)
    .execute(&mut *tx)
    .await?;
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM concurrency_key_slots WHERE owner_id = ?1 AND key = ?2",
    )
    .bind(&group.owner_id)
    .bind(&group.key)
    .fetch_one(&mut *tx)
    .await?;
    Ok(free_of(group.limit, held))
}

/// [`check_pg`] for SQLite, taking the slots when they are free: `task_id`'s lease at
/// `sequence` is appended in the same transaction.
pub(super) async fn check_and_take_sqlite(
    tx: &mut SqliteConnection,
    slot: &LeaseSlot,
    task_id: &str,
    sequence: i64,
) -> Result<(), StoreError> {
    if free_sqlite(tx, slot).await? == 0 {
        return Err(StoreError::NoFreeSlot);
    }
    if let Some(key) = &slot.key {
        if free_key_sqlite(tx, key).await? == 0 {
            return Err(StoreError::KeyBusy);
        }
        sqlx::query(
            "INSERT INTO concurrency_key_slots (owner_id, key, task_id, sequence)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (task_id) DO UPDATE SET sequence = excluded.sequence",
        )
        .bind(&key.owner_id)
        .bind(&key.key)
        .bind(task_id)
        .bind(sequence)
        .execute(&mut *tx)
        .await?;
    }
    take_sqlite(tx, &slot.agent_id, task_id, sequence).await
}

fn free_of(limit: u32, held: i64) -> u32 {
    limit.saturating_sub(u32::try_from(held).unwrap_or(u32::MAX))
}

fn free(slot: &LeaseSlot, held: i64, retired: bool) -> Result<u32, StoreError> {
    if retired {
        return Err(StoreError::AgentRetired);
    }
    Ok(free_of(slot.max_concurrency, held))
}
