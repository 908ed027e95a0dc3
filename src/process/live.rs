//! Live subscriptions' reads: which events a subscriber may receive (its [`Scope`]) and the
//! next of them in feed order ([`read_scoped`]), for `GET /api/ws` and the task streams.
//!
//! A subscriber keeps one feed cursor. Each read first fixes how far it may look (`end`):
//! the feed's last readable event, and, for an owner-scoped subscriber, no further than the
//! ownership projection has come — an event of an aggregate that projection has not seen
//! yet would otherwise be passed over for good. It then takes the scope's events in
//! `(cursor, end]`; when fewer than asked come back, the whole range was looked at, so the
//! cursor moves to `end` and the next read starts there instead of scanning the same
//! foreign events again.

use std::collections::BTreeMap;

use chronicle_aggregates::task::Task;
use chronicle_projections::aggregate_owners::AggregateOwners;
use chronicle_projections::ReadDb;
use cqrs_es::Aggregate;
use sqlx::Row;
use uuid::Uuid;

use crate::actor::Actor;
use crate::store::{Backend, FeedCursor, RecordedEvent, Store, StoreError};

/// The topic that stands for "every aggregate the caller owns".
pub(crate) const MINE: &str = "mine";

/// What a subscriber receives: the events of these aggregates, and of every aggregate
/// `owner` owns (the `mine` topic).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    /// `"<aggregate_type>:<aggregate_id>"` → the topic that asked for it.
    aggregates: BTreeMap<String, String>,
    owner: Option<Uuid>,
}

impl Scope {
    pub(crate) fn is_empty(&self) -> bool {
        self.aggregates.is_empty() && self.owner.is_none()
    }

    /// Adds one aggregate; `topic` is what the subscriber called it.
    pub(crate) fn add_aggregate(&mut self, aggregate_type: &str, aggregate_id: &str, topic: &str) {
        self.aggregates
            .insert(key(aggregate_type, aggregate_id), topic.to_owned());
    }

    pub(crate) fn remove_aggregate(&mut self, aggregate_type: &str, aggregate_id: &str) {
        self.aggregates.remove(&key(aggregate_type, aggregate_id));
    }

    pub(crate) fn set_owner(&mut self, owner: Option<Uuid>) {
        self.owner = owner;
    }

    /// Every topic subscribed, sorted.
    pub(crate) fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.aggregates.values().cloned().collect();
        if self.owner.is_some() {
            topics.push(MINE.to_owned());
        }
        topics.sort();
        topics
    }

    /// The topic an event read in this scope was delivered for.
    pub(crate) fn topic_of(&self, event: &RecordedEvent) -> &str {
        self.aggregates
            .get(&key(&event.aggregate_type, &event.aggregate_id))
            .map_or(MINE, String::as_str)
    }
}

fn key(aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{aggregate_type}:{aggregate_id}")
}

/// The events one read found, and where the next read starts.
#[derive(Debug)]
pub(crate) struct Page {
    pub events: Vec<RecordedEvent>,
    pub next: FeedCursor,
    /// The ownership projection held this read back: events exist beyond `next` that may
    /// be in scope once it catches up (it has no wake-up of its own, so look again soon).
    pub held_back: bool,
}

/// The cursor of the feed's last readable event: a subscriber that starts now starts here.
pub(crate) async fn feed_head(store: &Store) -> Result<FeedCursor, StoreError> {
    match store.backend() {
        Backend::Postgres(pg) => {
            let row = sqlx::query(
                "SELECT transaction_id::text AS xid, position FROM events
                  WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                  ORDER BY transaction_id DESC, position DESC LIMIT 1",
            )
            .fetch_optional(pg.pool())
            .await?;
            row.map(|row| {
                let text: String = row.try_get("xid")?;
                let transaction_id = text.parse().map_err(|_| {
                    StoreError::Codec(format!("transaction id `{text}` is not a number"))
                })?;
                Ok(FeedCursor {
                    transaction_id,
                    position: row.try_get("position")?,
                })
            })
            .transpose()
            .map(Option::unwrap_or_default)
        }
        Backend::Sqlite(lite) => {
            let position: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
                .fetch_one(lite.reader())
                .await?;
            Ok(FeedCursor {
                transaction_id: 0,
                position: position.unwrap_or_default(),
            })
        }
    }
}

/// Up to `limit` events of `scope` after `after`, in feed order, never one out of scope
/// and never skipping one in it (see the module documentation).
pub(crate) async fn read_scoped(
    store: &Store,
    db: &ReadDb,
    scope: &Scope,
    after: FeedCursor,
    limit: u32,
) -> Result<Page, StoreError> {
    let head = feed_head(store).await?;
    let mut end = head;
    let mut held_back = false;
    if scope.owner.is_some() {
        let owners = AggregateOwners::checkpoint(db)
            .await
            .map_err(|e| StoreError::Database(Box::new(e)))?;
        if owners < end {
            end = owners;
            held_back = true;
        }
    }
    if scope.is_empty() || limit == 0 || end <= after {
        // Nothing subscribed is nothing looked at: the cursor stays for the next topics.
        return Ok(Page {
            events: Vec::new(),
            next: after,
            held_back,
        });
    }
    let keys: Vec<String> = scope.aggregates.keys().cloned().collect();
    let owner = scope.owner.map(|id| id.to_string());
    let events = match store.backend() {
        Backend::Postgres(pg) => {
            let rows = sqlx::query(
                "SELECT position, transaction_id::text AS xid, aggregate_type, aggregate_id,
                        sequence, event_type, event_version, payload, metadata, recorded_at
                   FROM events e
                  WHERE (transaction_id, position) > ($1::text::xid8, $2)
                    AND (transaction_id, position) <= ($3::text::xid8, $4)
                    AND (aggregate_type || ':' || aggregate_id = ANY($5)
                         OR EXISTS (SELECT 1 FROM aggregate_owners_v1 o
                                     WHERE o.owner_id = $6
                                       AND o.aggregate_type = e.aggregate_type
                                       AND o.aggregate_id = e.aggregate_id))
                  ORDER BY transaction_id, position
                  LIMIT $7",
            )
            .bind(after.transaction_id.to_string())
            .bind(after.position)
            .bind(end.transaction_id.to_string())
            .bind(end.position)
            .bind(&keys)
            .bind(owner.as_deref())
            .bind(i64::from(limit))
            .fetch_all(pg.pool())
            .await?;
            rows.iter()
                .map(crate::store::postgres::decode)
                .collect::<Result<Vec<_>, _>>()?
        }
        Backend::Sqlite(lite) => {
            let keys = serde_json::to_string(&keys)?;
            let rows = sqlx::query(
                "SELECT position, aggregate_type, aggregate_id, sequence, event_type,
                        event_version, payload, metadata, recorded_at
                   FROM events e
                  WHERE position > ?1 AND position <= ?2
                    AND (aggregate_type || ':' || aggregate_id IN (SELECT value FROM json_each(?3))
                         OR EXISTS (SELECT 1 FROM aggregate_owners_v1 o
                                     WHERE o.owner_id = ?4
                                       AND o.aggregate_type = e.aggregate_type
                                       AND o.aggregate_id = e.aggregate_id))
                  ORDER BY position
                  LIMIT ?5",
            )
            .bind(after.position)
            .bind(end.position)
            .bind(keys)
            .bind(owner.as_deref())
            .bind(i64::from(limit))
            .fetch_all(lite.reader())
            .await?;
            rows.iter()
                .map(crate::store::sqlite::decode)
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let full = events.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
    let next = match events.last() {
        Some(last) if full => last.cursor(),
        _ => end,
    };
    Ok(Page {
        events,
        next,
        // A full page leaves more to read anyway.
        held_back: held_back && !full,
    })
}

/// May `actor` follow the task `id`? `false` when it does not exist or is not theirs (the
/// caller answers both the same way: not found).
pub(crate) async fn may_follow_task(
    store: &Store,
    actor: &Actor,
    id: Uuid,
) -> Result<bool, StoreError> {
    let loaded = store.aggregate::<Task>().load(&id.to_string()).await?;
    Ok(loaded
        .aggregate
        .state()
        .is_some_and(|task| actor.can_read(task.owner_id)))
}

/// The aggregate type of a task topic.
pub(crate) fn task_type() -> &'static str {
    Task::TYPE
}
