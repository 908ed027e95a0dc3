//! SQLite backend: our own cqrs-es `PersistedEventRepository` with postgres-es's semantics,
//! in WAL mode with one writer connection (so `position` order is commit order) and a few
//! readers, plus the global feed, histories and audit scans.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::lease_slots::{self, LeaseSlot};
use super::{AggregateFilter, FeedCursor, RecordedEvent, StoreError};

macro_rules! select_events {
    ($($rest:expr),*) => {
        concat!(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata, recorded_at FROM events ",
            $($rest),*
        )
    };
}

pub struct SqliteBackend {
    writer: SqlitePool,
    reader: SqlitePool,
    appends: mpsc::Sender<Append>,
    /// Appends handed to the writer task, and the transactions it committed them in.
    submitted: AtomicU64,
    commits: Arc<AtomicU64>,
}

/// Appends one writer task takes into one transaction at most.
const MAX_BATCH: usize = 256;

/// One command's events, waiting for the writer task.
struct Append {
    aggregate_type: String,
    events: Vec<SerializedEvent>,
    snapshot_update: Option<(String, Value, usize)>,
    recorded_at: String,
    slot: Option<LeaseSlot>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl SqliteBackend {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An event store must survive a power cut, not only a crash of the process.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let filename = options.get_filename().to_owned();
        let in_memory = filename.as_os_str().is_empty() || filename == Path::new(":memory:");
        if !in_memory {
            if let Some(parent) = filename.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Unavailable(
                        format!("cannot create {}: {e}", parent.display()).into(),
                    )
                })?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.read_only(true))
                .await?
        };
        let (appends, queue) = mpsc::channel(MAX_BATCH * 4);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(group_commit(writer.clone(), queue, commits.clone()));
        Ok(Self {
            writer,
            reader,
            appends,
            submitted: AtomicU64::new(0),
            commits,
        })
    }

    /// Appends handed to the writer task so far.
    pub fn appends_submitted(&self) -> u64 {
        self.submitted.load(Ordering::Acquire)
    }

    /// Event-store transactions committed so far (each holds one or more appends).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        // Migrations are additive: a binary rolled back to an older release runs against the
        // newer schema, whose extra migrations it does not know.
        migrator.set_ignore_missing(true);
        migrator.run(&self.writer).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(super) async fn feed(
        &self,
        after: FeedCursor,
        limit: u32,
        filter: &AggregateFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(select_events!(
            "WHERE position > ?1
               AND (?2 IS NULL OR aggregate_type = ?2)
               AND (?3 IS NULL OR aggregate_id = ?3)
             ORDER BY position LIMIT ?4"
        ))
        .bind(after.position)
        .bind(filter.aggregate_type.as_deref())
        .bind(filter.aggregate_id.as_deref())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// A cursor before every event recorded at or after `since` (one writer: position
    /// order is commit order). `recorded_at` is fixed-width RFC 3339 text, so it sorts.
    pub(super) async fn cursor_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<FeedCursor, StoreError> {
        let since = since.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let position: Option<i64> =
            sqlx::query_scalar("SELECT min(position) FROM events WHERE recorded_at >= ?1")
                .bind(since)
                .fetch_one(&self.reader)
                .await?;
        let position = match position {
            Some(first) => first - 1,
            None => {
                sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
                    .fetch_one(&self.reader)
                    .await?
            }
        };
        Ok(FeedCursor {
            transaction_id: 0,
            position,
        })
    }

    /// The events that end credentials early (see `auth::revocation`) recorded at or after
    /// `since`; served by a partial index.
    pub(super) async fn credential_events_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let since = since.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let rows = sqlx::query(select_events!(credential_events_since!()))
            .bind(since)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// See `PgBackend::feed_owned`; here `position` alone orders the feed.
    pub(super) async fn feed_owned(
        &self,
        after: FeedCursor,
        limit: u32,
        filter: &AggregateFilter,
        readers: (&str, &str),
        owners: (&str, i64),
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(select_events!(
            "WHERE position > ?1
               AND position <= (
                   SELECT c.position FROM projection_checkpoints c
                    WHERE c.name = ?5 AND c.version = ?6)
               AND (?2 IS NULL OR aggregate_type = ?2)
               AND (?3 IS NULL OR aggregate_id = ?3)
               AND EXISTS (
                   SELECT 1 FROM aggregate_owners_v2 o
                    WHERE o.aggregate_type = events.aggregate_type
                      AND o.aggregate_id = events.aggregate_id
                      AND (o.owner_id = ?4 OR ?8 LIKE '%,' || o.team_id || ',%'))
             ORDER BY position LIMIT ?7"
        ))
        .bind(after.position)
        .bind(filter.aggregate_type.as_deref())
        .bind(filter.aggregate_id.as_deref())
        .bind(readers.0)
        .bind(owners.0)
        .bind(owners.1)
        .bind(i64::from(limit))
        .bind(readers.1)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode).collect()
    }

    pub(super) async fn feed_tail(&self) -> Result<FeedCursor, StoreError> {
        let position: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&self.reader)
            .await?;
        Ok(FeedCursor {
            transaction_id: 0,
            position: position.unwrap_or_default(),
        })
    }

    pub(super) async fn lag_after(
        &self,
        cursor: FeedCursor,
    ) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS behind, min(recorded_at) AS oldest FROM events WHERE position > $1",
        )
        .bind(cursor.position)
        .fetch_one(&self.reader)
        .await?;
        let oldest: Option<String> = row.try_get("oldest")?;
        let oldest = oldest
            .map(|text| DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)))
            .transpose()
            .map_err(|e| StoreError::Codec(e.to_string()))?;
        Ok((row.try_get("behind")?, oldest))
    }

    pub(super) async fn history(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(select_events!(
            "WHERE aggregate_type = ?1 AND aggregate_id = ?2 ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode).collect()
    }

    pub(super) async fn history_page(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
        limit: Option<u32>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(select_events!(
            "WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND sequence > ?3
             ORDER BY sequence LIMIT ?4"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after_sequence)
        // A negative LIMIT is no limit.
        .bind(limit.map_or(-1, i64::from))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode).collect()
    }

    pub(super) fn scan_owned<'a>(
        &'a self,
        filter: &'a AggregateFilter,
        owner: Uuid,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        sqlx::query(select_events!(
            "WHERE (?1 IS NULL OR aggregate_type = ?1)
               AND (?2 IS NULL OR aggregate_id = ?2)
               AND EXISTS (
                   SELECT 1 FROM aggregate_owners_v2 o
                    WHERE o.aggregate_type = events.aggregate_type
                      AND o.aggregate_id = events.aggregate_id
                      AND o.owner_id = ?3)
             ORDER BY aggregate_type, aggregate_id, sequence"
        ))
        .bind(filter.aggregate_type.as_deref())
        .bind(filter.aggregate_id.as_deref())
        .bind(owner.to_string())
        .fetch(&self.reader)
        .map_err(StoreError::from)
        .and_then(|row| futures::future::ready(decode(&row)))
        .boxed()
    }

    pub(super) fn scan<'a>(
        &'a self,
        filter: &'a AggregateFilter,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        sqlx::query(select_events!(
            "WHERE (?1 IS NULL OR aggregate_type = ?1)
               AND (?2 IS NULL OR aggregate_id = ?2)
             ORDER BY aggregate_type, aggregate_id, sequence"
        ))
        .bind(filter.aggregate_type.as_deref())
        .bind(filter.aggregate_id.as_deref())
        .fetch(&self.reader)
        .map_err(StoreError::from)
        .and_then(|row| futures::future::ready(decode(&row)))
        .boxed()
    }

    async fn select_serialized(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                    metadata
               FROM events
              WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND sequence > ?3
              ORDER BY sequence",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after_sequence as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SerializedEvent::new(
                    row.try_get("aggregate_id")?,
                    to_usize(row.try_get("sequence")?)?,
                    row.try_get("aggregate_type")?,
                    row.try_get("event_type")?,
                    row.try_get("event_version")?,
                    json_column(row, "payload")?,
                    json_column(row, "metadata")?,
                ))
            })
            .collect()
    }

    /// Appends `events` recorded at `recorded_at` (the time their hashes cover), with the
    /// snapshot update if any, atomically: queued for the writer task, which commits the
    /// appends waiting together in one transaction (see [`group_commit`]).
    pub(super) async fn write(
        &self,
        aggregate_type: &str,
        events: Vec<SerializedEvent>,
        snapshot_update: Option<(String, Value, usize)>,
        recorded_at: DateTime<Utc>,
        slot: Option<&LeaseSlot>,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let append = Append {
            aggregate_type: aggregate_type.to_owned(),
            events,
            snapshot_update,
            recorded_at: super::chain::format_recorded_at(recorded_at),
            slot: slot.cloned(),
            reply,
        };
        if self.appends.send(append).await.is_err() {
            return Err(StoreError::Unavailable("the SQLite writer stopped".into()));
        }
        self.submitted.fetch_add(1, Ordering::AcqRel);
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the SQLite writer stopped".into())))
    }
}

/// The writer task: once an append arrives it takes the writer connection (which the read
/// models share), then every append waiting by then (up to [`MAX_BATCH`]), and commits
/// them in one transaction, one fsync for all, while the next ones queue. Each append runs
/// in a savepoint of its own, so the one whose sequence is taken (the optimistic-concurrency
/// check: a unique violation), whose snapshot moved or whose lease does not fit is rolled
/// back and answered alone; the others commit. They run in queue order on the one writer
/// connection, so positions are commit order and the feed has no gaps.
async fn group_commit(
    writer: SqlitePool,
    mut queue: mpsc::Receiver<Append>,
    commits: Arc<AtomicU64>,
) {
    while let Some(first) = queue.recv().await {
        // IMMEDIATE: take the write lock first, so a writer in another process makes us
        // wait rather than fail when a deferred transaction upgrades.
        // FULL: this commit waits for the WAL's fsync (the connection is shared with read
        // models, whose transactions do not; see `ReadDb::begin_derived`).
        let tx = match writer
            .begin_with("PRAGMA synchronous = FULL; BEGIN IMMEDIATE")
            .await
        {
            Ok(tx) => tx,
            Err(error) => {
                let _ = first.reply.send(Err(StoreError::from(error)));
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(append) => batch.push(append),
                Err(_) => break,
            }
        }
        // A command whose caller gave up is not written later behind its back.
        batch.retain(|append| !append.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        crate::meters::group_commit_batch(batch.len());
        match write_batch(tx, &batch).await {
            Ok(outcomes) => {
                commits.fetch_add(1, Ordering::AcqRel);
                for (append, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = append.reply.send(outcome);
                }
            }
            Err(error) => {
                // The transaction itself failed: nothing of it stayed.
                let message = error.to_string();
                let unavailable = error.is_unavailable();
                for append in batch {
                    let error = if unavailable {
                        StoreError::Unavailable(message.clone().into())
                    } else {
                        StoreError::Database(message.clone().into())
                    };
                    let _ = append.reply.send(Err(error));
                }
            }
        }
    }
}

/// Writes `batch` in `tx` and commits; each append's own outcome, by index.
async fn write_batch(
    mut tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    batch: &[Append],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    for append in batch {
        let mut savepoint = tx.begin().await?;
        let outcome = write_one(&mut savepoint, append).await;
        if outcome.is_ok() {
            savepoint.commit().await?;
        } else {
            savepoint.rollback().await?;
        }
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// One append's rows: its lease slot, its events, its snapshot.
async fn write_one(tx: &mut SqliteConnection, append: &Append) -> Result<(), StoreError> {
    let aggregate_type = append.aggregate_type.as_str();
    if let (Some(slot), Some(first)) = (&append.slot, append.events.first()) {
        lease_slots::check_and_take_sqlite(tx, slot, &first.aggregate_id, first.sequence as i64)
            .await?;
    }
    let mut last_sequence = 0;
    for event in &append.events {
        last_sequence = event.sequence;
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(aggregate_type)
        .bind(&event.aggregate_id)
        .bind(event.sequence as i64)
        .bind(&event.event_type)
        .bind(&event.event_version)
        .bind(serde_json::to_string(&event.payload)?)
        .bind(serde_json::to_string(&event.metadata)?)
        .bind(&append.recorded_at)
        .execute(&mut *tx)
        .await?;
    }
    if let Some((aggregate_id, payload, current_snapshot)) = &append.snapshot_update {
        let payload = serde_json::to_string(payload)?;
        let current_snapshot = *current_snapshot as i64;
        let written = if current_snapshot == 1 {
            sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                        current_snapshot, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(last_sequence as i64)
            .bind(current_snapshot)
            .bind(payload)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "UPDATE snapshots SET last_sequence = ?3, current_snapshot = ?4, payload = ?5
                  WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND current_snapshot = ?6",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(last_sequence as i64)
            .bind(current_snapshot)
            .bind(payload)
            .bind(current_snapshot - 1)
            .execute(&mut *tx)
            .await?
        };
        if written.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
    }
    Ok(())
}

impl PersistedEventRepository for SqliteBackend {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.select_serialized(A::TYPE, aggregate_id, 0).await?)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self
            .select_serialized(A::TYPE, aggregate_id, last_sequence)
            .await?)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let row = sqlx::query(
            "SELECT aggregate_id, last_sequence, current_snapshot, payload
               FROM snapshots WHERE aggregate_type = ?1 AND aggregate_id = ?2",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(StoreError::from)?;
        let Some(row) = row else { return Ok(None) };
        let snapshot = (|| -> Result<SerializedSnapshot, StoreError> {
            Ok(SerializedSnapshot {
                aggregate_id: row.try_get("aggregate_id")?,
                aggregate: json_column(&row, "payload")?,
                current_sequence: to_usize(row.try_get("last_sequence")?)?,
                current_snapshot: to_usize(row.try_get("current_snapshot")?)?,
            })
        })()?;
        Ok(Some(snapshot))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        Ok(self
            .write(
                A::TYPE,
                events.to_vec(),
                snapshot_update,
                super::chain::now(),
                None,
            )
            .await?)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let events = self.get_events::<A>(aggregate_id).await?;
        Ok(replay(events))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let rows = sqlx::query(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                    metadata
               FROM events WHERE aggregate_type = ?1 ORDER BY position",
        )
        .bind(A::TYPE)
        .fetch_all(&self.reader)
        .await
        .map_err(StoreError::from)?;
        let events = rows
            .iter()
            .map(|row| {
                Ok(SerializedEvent::new(
                    row.try_get("aggregate_id")?,
                    to_usize(row.try_get("sequence")?)?,
                    row.try_get("aggregate_type")?,
                    row.try_get("event_type")?,
                    row.try_get("event_version")?,
                    json_column(row, "payload")?,
                    json_column(row, "metadata")?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(replay(events))
    }
}

fn replay(events: Vec<SerializedEvent>) -> ReplayStream {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    tokio::spawn(async move {
        for event in events {
            if feed.push(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    stream
}

fn to_usize(value: i64) -> Result<usize, StoreError> {
    usize::try_from(value).map_err(|_| StoreError::Codec(format!("negative sequence {value}")))
}

fn json_column(row: &SqliteRow, column: &str) -> Result<Value, StoreError> {
    let text: String = row.try_get(column)?;
    Ok(serde_json::from_str(&text)?)
}

pub(crate) fn decode(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let recorded_at: String = row.try_get("recorded_at")?;
    let recorded_at = DateTime::parse_from_rfc3339(&recorded_at)
        .map_err(|e| StoreError::Codec(format!("recorded_at `{recorded_at}`: {e}")))?
        .with_timezone(&Utc);
    Ok(RecordedEvent {
        position: row.try_get("position")?,
        transaction_id: 0,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: json_column(row, "payload")?,
        metadata: json_column(row, "metadata")?,
        recorded_at,
    })
}
