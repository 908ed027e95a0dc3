//! Group commit for PostgreSQL appends: the events of many concurrent commands are written
//! in one transaction with one multi-row `INSERT … ON CONFLICT DO NOTHING`, so a burst of
//! commands costs a few round trips and one WAL flush instead of three round trips and a
//! flush each. A command whose events collide with another writer's (the optimistic
//! concurrency check) gets [`StoreError::Conflict`] and none of its events stay: any rows
//! of it that did insert are deleted in the same transaction.
//!
//! A lease's request carries its [`LeaseSlot`]: the transaction takes each agent's slot lock,
//! then each concurrency group's, before it inserts a row (agents in one order, then
//! groups in one order), refuses the leases that do not fit, and records the slots of
//! those that were appended (see [`super::lease_slots`]).
//!
//! Appends that carry a snapshot update take their own transaction (one in N; see
//! `PgBackend::append_with_snapshot`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::lease_slots::{self, KeySlot, LeaseSlot};
use super::StoreError;

/// Requests one worker takes into one transaction at most.
const MAX_BATCH: usize = 256;
/// Transactions in flight at once; each holds one pooled connection while it writes.
const WORKERS: usize = 4;

struct Request {
    aggregate_type: &'static str,
    events: Vec<SerializedEvent>,
    recorded_at: DateTime<Utc>,
    slot: Option<LeaseSlot>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Clone)]
pub struct GroupCommit {
    sender: mpsc::Sender<Request>,
}

impl GroupCommit {
    /// Starts the workers on the current runtime; they stop when every handle is dropped.
    pub fn start(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::channel::<Request>(MAX_BATCH * WORKERS);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WORKERS {
            let receiver = receiver.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match receiver.try_recv() {
                                Ok(request) => batch.push(request),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    crate::meters::group_commit_batch(batch.len());
                    write_batch(&pool, batch).await;
                }
            });
        }
        Self { sender }
    }

    /// Appends `events` (all of one aggregate) atomically, recorded at `recorded_at` (the
    /// time their hashes cover); with `slot`, only if the lease fits its agent.
    pub async fn append(
        &self,
        aggregate_type: &'static str,
        events: Vec<SerializedEvent>,
        recorded_at: DateTime<Utc>,
        slot: Option<LeaseSlot>,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            aggregate_type,
            events,
            recorded_at,
            slot,
            reply,
        };
        if self.sender.send(request).await.is_err() {
            return Err(StoreError::Unavailable("the append workers stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("an append worker stopped".into())))
    }
}

type Key = (String, String, i64);

async fn write_batch(pool: &PgPool, mut batch: Vec<Request>) {
    // Rows in one global order, so two concurrent batches wait on each other's keys in
    // the same order and cannot deadlock.
    batch.sort_by(|a, b| {
        let key = |r: &Request| {
            r.events
                .first()
                .map(|e| (r.aggregate_type, e.aggregate_id.clone(), e.sequence))
        };
        key(a).cmp(&key(b))
    });
    // One request per aggregate in a transaction: a second one in the same batch would
    // race the first for the same keys, so it is answered as a conflict and retried by the
    // bus on fresh state.
    let mut aggregates = HashSet::new();
    let batch: Vec<Request> = batch
        .into_iter()
        // A command whose caller gave up (its request was answered 503 while the database
        // did not answer) is not written later behind its back.
        .filter(|request| !request.reply.is_closed())
        .filter_map(|request| {
            let aggregate = request
                .events
                .first()
                .map(|e| (request.aggregate_type, e.aggregate_id.clone()));
            if aggregates.insert(aggregate) {
                Some(request)
            } else {
                let _ = request.reply.send(Err(StoreError::Conflict));
                None
            }
        })
        .collect();
    if batch.is_empty() {
        return;
    }
    match insert(pool, &batch).await {
        Ok(mut failed) => {
            for (index, request) in batch.into_iter().enumerate() {
                let outcome = match failed.remove(&index) {
                    Some(error) => Err(error),
                    None => Ok(()),
                };
                let _ = request.reply.send(outcome);
            }
        }
        Err(error) => {
            // The whole transaction failed: every command in it gets the error (a
            // deadlock or serialization failure counts as a conflict and is retried).
            let message = error.to_string();
            let conflict = matches!(&error, StoreError::Conflict);
            for request in batch {
                let outcome = if conflict {
                    StoreError::Conflict
                } else {
                    StoreError::Unavailable(message.clone().into())
                };
                let _ = request.reply.send(Err(outcome));
            }
        }
    }
}

/// Inserts every event of the batch; returns the requests that lost (a conflict) or were
/// refused (a lease that does not fit its agent), by index.
async fn insert(
    pool: &PgPool,
    batch: &[Request],
) -> Result<HashMap<usize, StoreError>, StoreError> {
    let mut tx = pool.begin().await.map_err(map_error)?;
    let mut failed = refuse_what_does_not_fit(&mut tx, batch).await?;
    let rows = batch
        .iter()
        .enumerate()
        .filter(|(index, _)| !failed.contains_key(index))
        .flat_map(|(_, r)| {
            r.events
                .iter()
                .map(move |e| (r.aggregate_type, r.recorded_at, e))
        });
    let (
        mut types,
        mut ids,
        mut sequences,
        mut event_types,
        mut versions,
        mut payloads,
        mut metadata,
        mut times,
    ) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (aggregate_type, recorded_at, event) in rows {
        types.push(aggregate_type.to_owned());
        ids.push(event.aggregate_id.clone());
        sequences.push(event.sequence as i64);
        event_types.push(event.event_type.clone());
        versions.push(event.event_version.clone());
        payloads.push(serde_json::to_string(&event.payload)?);
        metadata.push(serde_json::to_string(&event.metadata)?);
        times.push(recorded_at);
    }
    let inserted: Vec<Key> = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, recorded_at)
         SELECT t, i, s, e, v, p::json, m::json, r
           FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                       $6::text[], $7::text[], $8::timestamptz[])
                AS batch(t, i, s, e, v, p, m, r)
         ON CONFLICT (aggregate_type, aggregate_id, sequence) DO NOTHING
         RETURNING aggregate_type, aggregate_id, sequence",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(&event_types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .bind(&times)
    .fetch_all(&mut *tx)
    .await
    .map_err(map_error)?;
    let inserted: HashSet<Key> = inserted.into_iter().collect();

    // Each aggregate appears once per batch, so a request owns its keys: it wins when all
    // of them inserted, and a loser's rows that did insert are taken back.
    let mut undo: Vec<Key> = Vec::new();
    let mut taken = Vec::new();
    let mut taken_keys = Vec::new();
    for (index, request) in batch.iter().enumerate() {
        if failed.contains_key(&index) {
            continue;
        }
        let keys: Vec<Key> = request
            .events
            .iter()
            .map(|e| {
                (
                    request.aggregate_type.to_owned(),
                    e.aggregate_id.clone(),
                    e.sequence as i64,
                )
            })
            .collect();
        if !keys.iter().all(|key| inserted.contains(key)) {
            failed.insert(index, StoreError::Conflict);
            undo.extend(keys.into_iter().filter(|key| inserted.contains(key)));
        } else if let (Some(slot), Some((_, task_id, sequence))) = (&request.slot, keys.first()) {
            taken.push((slot.agent_id.clone(), task_id.clone(), *sequence));
            if let Some(key) = &slot.key {
                taken_keys.push((
                    key.owner_id.clone(),
                    key.key.clone(),
                    task_id.clone(),
                    *sequence,
                ));
            }
        }
    }
    if !undo.is_empty() {
        let (types, (ids, sequences)): (Vec<String>, (Vec<String>, Vec<i64>)) =
            undo.into_iter().map(|(t, i, s)| (t, (i, s))).unzip();
        sqlx::query(
            "DELETE FROM events
              WHERE (aggregate_type, aggregate_id, sequence) IN
                    (SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]))",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&sequences)
        .execute(&mut *tx)
        .await
        .map_err(map_error)?;
    }
    lease_slots::take_pg(&mut tx, &taken).await?;
    lease_slots::take_keys_pg(&mut tx, &taken_keys).await?;
    tx.commit().await.map_err(map_error)?;
    Ok(failed)
}

/// Takes every agent's lock, then every concurrency group's, before any row: a batch
/// waiting on another's rows holds no lock that one needs, and two batches take agents,
/// then groups, in one order. Answers the leases refused, by index: in batch order, a
/// lease fits when both its agent and its group (if any) have a slot left.
async fn refuse_what_does_not_fit(
    tx: &mut sqlx::PgConnection,
    batch: &[Request],
) -> Result<HashMap<usize, StoreError>, StoreError> {
    let mut failed = HashMap::new();
    let slots: Vec<(usize, &LeaseSlot)> = batch
        .iter()
        .enumerate()
        .filter_map(|(index, request)| Some((index, request.slot.as_ref()?)))
        .collect();
    if slots.is_empty() {
        return Ok(failed);
    }
    // Free slots per agent; `None` when it retired.
    let mut agents: BTreeMap<&str, Option<u32>> = BTreeMap::new();
    for (_, slot) in &slots {
        if agents.contains_key(slot.agent_id.as_str()) {
            continue;
        }
        let free = match lease_slots::free_pg(tx, slot).await {
            Ok(free) => Some(free),
            Err(StoreError::AgentRetired) => None,
            Err(error) => return Err(error),
        };
        agents.insert(&slot.agent_id, free);
    }
    let mut groups: BTreeMap<(String, String), &KeySlot> = BTreeMap::new();
    for (_, slot) in &slots {
        if let Some(key) = &slot.key {
            groups.entry(key.group()).or_insert(key);
        }
    }
    let ordered: Vec<&KeySlot> = groups.values().copied().collect();
    let free_keys = lease_slots::free_keys_pg(tx, &ordered).await?;
    let mut group_free: HashMap<(String, String), u32> =
        groups.into_keys().zip(free_keys).collect();
    for (index, slot) in slots {
        let agent = agents.get_mut(slot.agent_id.as_str());
        let Some(Some(agent_free)) = agent else {
            failed.insert(index, StoreError::AgentRetired);
            continue;
        };
        if *agent_free == 0 {
            failed.insert(index, StoreError::NoFreeSlot);
            continue;
        }
        if let Some(key) = &slot.key {
            let free = group_free.entry(key.group()).or_default();
            if *free == 0 {
                failed.insert(index, StoreError::KeyBusy);
                continue;
            }
            *free -= 1;
        }
        *agent_free -= 1;
    }
    Ok(failed)
}

pub(super) fn map_error(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        // deadlock_detected, serialization_failure
        if matches!(db.code().as_deref(), Some("40P01") | Some("40001")) {
            return StoreError::Conflict;
        }
    }
    StoreError::from(error)
}
