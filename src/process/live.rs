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
use std::time::Duration;

use chronicle_aggregates::task::Task;
use chronicle_aggregates::workflow_run::WorkflowRun;
use chronicle_projections::aggregate_owners::AggregateOwners;
use chronicle_projections::{ReadDb, ReadScope};
use cqrs_es::Aggregate;
use sqlx::Row;
use uuid::Uuid;

use crate::actor::Actor;
use crate::authz::{Action, Authz, Resource};
use crate::store::{Backend, FeedCursor, RecordedEvent, Store, StoreError};

/// The topic that stands for "every aggregate the caller owns".
pub(crate) const MINE: &str = "mine";

/// What a subscriber receives: the events of these aggregates, and of every aggregate
/// `mine` reads — the caller's own and their teams' (the `mine` topic).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    /// `"<aggregate_type>:<aggregate_id>"` → the topic that asked for it.
    aggregates: BTreeMap<String, String>,
    mine: Option<ReadScope>,
}

impl Scope {
    pub(crate) fn is_empty(&self) -> bool {
        self.aggregates.is_empty() && self.mine.is_none()
    }

    /// Adds one aggregate; `topic` is what the subscriber called it.
    pub(crate) fn add_aggregate(&mut self, aggregate_type: &str, aggregate_id: &str, topic: &str) {
        self.aggregates
            .insert(key(aggregate_type, aggregate_id), topic.to_owned());
    }

    pub(crate) fn remove_aggregate(&mut self, aggregate_type: &str, aggregate_id: &str) {
        self.aggregates.remove(&key(aggregate_type, aggregate_id));
    }

    /// Subscribes `mine` with whose aggregates it reads now, or (`None`) ends it. The
    /// subscriber sets it again before each read, so a removed member's next read leaves
    /// the team out.
    pub(crate) fn set_mine(&mut self, mine: Option<ReadScope>) {
        self.mine = mine;
    }

    /// Whether `mine` is subscribed.
    pub(crate) fn has_mine(&self) -> bool {
        self.mine.is_some()
    }

    /// Every topic subscribed, sorted.
    pub(crate) fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.aggregates.values().cloned().collect();
        if self.mine.is_some() {
            topics.push(MINE.to_owned());
        }
        topics.sort();
        topics
    }

    /// The topic under which a token of task `task_id`, owned by `owner_id`, is delivered:
    /// `None` when the scope does not cover that task.
    pub(crate) fn token_topic(&self, task_id: Uuid, owner_id: Uuid) -> Option<&str> {
        if let Some(topic) = self.aggregates.get(&key(Task::TYPE, &task_id.to_string())) {
            return Some(topic);
        }
        let own = matches!(&self.mine, Some(ReadScope::Of { owner_id: me, .. }) if *me == owner_id);
        own.then_some(MINE)
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
    /// Something held this read back — the ownership projection, or on PostgreSQL the
    /// feed's horizon: events exist beyond `next` that may be in scope once it moves, and
    /// nothing announces that, so look again soon.
    pub held_back: bool,
}

/// The cursor of the feed's last readable event: a subscriber that starts now starts here.
pub(crate) async fn feed_head(store: &Store) -> Result<FeedCursor, StoreError> {
    Ok(feed_end(store).await?.0)
}

/// The feed's last readable event, and whether committed events wait beyond it: on
/// PostgreSQL an event becomes readable only once every older transaction of the cluster
/// has ended, which announces nothing, so whoever waits for it must look again.
async fn feed_end(store: &Store) -> Result<(FeedCursor, bool), StoreError> {
    match store.backend() {
        Backend::Postgres(pg) => {
            let row = sqlx::query(
                "SELECT head.xid, head.position,
                        EXISTS (SELECT 1 FROM events
                                 WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot()))
                          AS beyond
                   FROM (SELECT 1) AS one
                   LEFT JOIN LATERAL (
                        SELECT transaction_id::text AS xid, position FROM events
                         WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                         ORDER BY transaction_id DESC, position DESC LIMIT 1
                   ) AS head ON true",
            )
            .fetch_one(pg.pool())
            .await?;
            let xid: Option<String> = row.try_get("xid")?;
            let position: Option<i64> = row.try_get("position")?;
            let beyond: bool = row.try_get("beyond")?;
            let head = match (xid, position) {
                (Some(text), Some(position)) => FeedCursor {
                    transaction_id: text.parse().map_err(|_| {
                        StoreError::Codec(format!("transaction id `{text}` is not a number"))
                    })?,
                    position,
                },
                _ => FeedCursor::default(),
            };
            Ok((head, beyond))
        }
        Backend::Sqlite(lite) => {
            let position: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
                .fetch_one(lite.reader())
                .await?;
            let head = FeedCursor {
                transaction_id: 0,
                position: position.unwrap_or_default(),
            };
            Ok((head, false))
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
    let (head, beyond) = feed_end(store).await?;
    let mut end = head;
    let mut held_back = beyond;
    if scope.mine.is_some() {
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
    let owner = scope.mine.as_ref().and_then(ReadScope::owner_param);
    let teams = scope
        .mine
        .as_ref()
        .map_or_else(|| ",".to_owned(), ReadScope::teams_param);
    let events = match store.backend() {
        Backend::Postgres(pg) => {
            let rows = sqlx::query(
                "SELECT position, transaction_id::text AS xid, aggregate_type, aggregate_id,
                        sequence, event_type, event_version, payload, metadata, recorded_at
                   FROM events e
                  WHERE (transaction_id, position) > ($1::text::xid8, $2)
                    AND (transaction_id, position) <= ($3::text::xid8, $4)
                    AND (aggregate_type || ':' || aggregate_id = ANY($5)
                         OR EXISTS (SELECT 1 FROM aggregate_owners_v2 o
                                     WHERE (o.owner_id = $6 OR $8 LIKE '%,' || o.team_id || ',%')
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
            .bind(&teams)
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
                         OR EXISTS (SELECT 1 FROM aggregate_owners_v2 o
                                     WHERE (o.owner_id = ?4 OR ?6 LIKE '%,' || o.team_id || ',%')
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
            .bind(&teams)
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

/// How soon to read again after the `times`-th read in a row that was held back: every
/// 20 ms for the first ten (the ownership projection usually catches up within them), then
/// doubling up to 640 ms, so a long transaction elsewhere in the cluster costs a waiting
/// subscriber a few reads a second, not fifty.
pub(crate) fn look_again(times: u32) -> Duration {
    Duration::from_millis(20) * 2u32.pow(times.saturating_sub(10).min(5))
}

/// The task `id` as [`crate::authz`] sees it, if `actor` may follow it now; `None` when it
/// does not exist or is not theirs (the caller answers both the same way: not found). The
/// subscriber asks again before each event it pushes, so access lost later (a team member
/// removed) ends the delivery at once.
pub(crate) async fn may_follow_task(
    store: &Store,
    authz: &Authz,
    actor: &Actor,
    id: Uuid,
) -> Result<Option<Resource>, StoreError> {
    let loaded = store.aggregate::<Task>().load(&id.to_string()).await?;
    Ok(loaded
        .aggregate
        .state()
        .map(Resource::task)
        .filter(|task| authz.can(actor, Action::Read, task)))
}

/// The aggregate type of a task topic.
pub(crate) fn task_type() -> &'static str {
    Task::TYPE
}

/// Whether `actor` may follow workflow run `id`: its resource if so, `None` for a run that
/// does not exist or that the caller may not read (the same answer).
pub(crate) async fn may_follow_run(
    store: &Store,
    authz: &Authz,
    actor: &Actor,
    id: Uuid,
) -> Result<Option<Resource>, StoreError> {
    let loaded = store
        .aggregate::<WorkflowRun>()
        .load(&id.to_string())
        .await?;
    Ok(loaded
        .aggregate
        .state()
        .map(Resource::run)
        .filter(|run| authz.can(actor, Action::Read, run)))
}

/// The aggregate type of a run topic.
pub(crate) fn run_type() -> &'static str {
    WorkflowRun::TYPE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_reads_back_off_to_a_ceiling() {
        let delays: Vec<u128> = (1..=17).map(|n| look_again(n).as_millis()).collect();
        assert_eq!(
            delays,
            vec![20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 40, 80, 160, 320, 640, 640, 640]
        );
    }

    #[test]
    fn a_scope_names_its_topics_and_the_topic_of_an_event() {
        let mut scope = Scope::default();
        assert!(scope.is_empty());
        scope.add_aggregate("task", "t1", "task:t1");
        scope.set_mine(Some(ReadScope::owner(Uuid::nil())));
        assert_eq!(scope.topics(), vec!["mine", "task:t1"]);
        let event = |id: &str| RecordedEvent {
            position: 1,
            transaction_id: 0,
            aggregate_type: "task".into(),
            aggregate_id: id.into(),
            sequence: 1,
            event_type: "TaskCreated".into(),
            event_version: "1".into(),
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            recorded_at: chrono::Utc::now(),
        };
        assert_eq!(scope.topic_of(&event("t1")), "task:t1");
        assert_eq!(scope.topic_of(&event("t2")), MINE);
        scope.remove_aggregate("task", "t1");
        scope.set_mine(None);
        assert!(scope.is_empty());
    }
}
