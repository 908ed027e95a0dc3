//! PostgreSQL backend: postgres-es's `PostgresEventRepository` loads; appends go through
//! group commit, or (with a snapshot update) [`PgBackend::append_with_snapshot`], both of
//! which write the `recorded_at` the chain hashes; the global feed, histories and audit
//! scans are read here with the xid8 rule.

use std::time::Duration;

use chrono::{DateTime, Utc};

use cqrs_es::persist::SerializedEvent;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use postgres_es::PostgresEventRepository;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use uuid::Uuid;

use super::group_commit::{map_error, GroupCommit};
use super::lease_slots::{self, LeaseSlot};
use super::link::Link;
use super::{AggregateFilter, FeedCursor, RecordedEvent, StoreError};

/// `SELECT <every column> FROM events ` followed by the rest of the statement. The text
/// form of `transaction_id` gets its own name: an output column named `transaction_id`
/// would make `ORDER BY transaction_id` sort as text ("10000" < "9999").
macro_rules! select_events {
    ($($rest:expr),*) => {
        concat!(
            "SELECT position, transaction_id::text AS xid, aggregate_type, \
             aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at \
             FROM events ",
            $($rest),*
        )
    };
}

pub struct PgBackend {
    pool: PgPool,
    repo: PostgresEventRepository,
    group: GroupCommit,
    link: Link,
}

/// How long a request may wait for a pooled connection, or for a new one to open, before
/// it is answered 503: well under the 2 s a client should wait for an answer.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

impl PgBackend {
    /// A pool of `max_connections` whose acquires give up after `acquire_timeout` (the
    /// server's is [`ACQUIRE_TIMEOUT`]).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        // One direct connection first: a pool would only say "timed out", this says why
        // (refused, unknown database, authentication).
        sqlx::Connection::close(<sqlx::PgConnection as sqlx::Connection>::connect(url).await?)
            .await?;
        let options: PgConnectOptions = url.parse()?;
        let (link, _prober) = Link::watch(options.clone());
        let released = link.clone();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout)
            // While the link is down, a released connection is closed rather than tested:
            // sqlx's test on release waits for an answer without a time limit.
            .after_release(move |_, _| {
                let keep = released.is_up();
                Box::pin(async move { Ok(keep) })
            })
            .connect_with(options)
            .await?;
        Ok(Self::with_link(pool, link))
    }

    /// Must be called within a tokio runtime: it starts the group-commit workers and the
    /// link probe.
    pub fn from_pool(pool: PgPool) -> Self {
        let (link, _prober) = Link::watch((*pool.connect_options()).clone());
        Self::with_link(pool, link)
    }

    fn with_link(pool: PgPool, link: Link) -> Self {
        let repo = PostgresEventRepository::new(pool.clone());
        let group = GroupCommit::start(pool.clone());
        Self {
            pool,
            repo,
            group,
            link,
        }
    }

    /// Whether the database answers (probed about five times a second).
    pub fn link(&self) -> &Link {
        &self.link
    }

    pub(super) fn group(&self) -> &GroupCommit {
        &self.group
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn repo(&self) -> &PostgresEventRepository {
        &self.repo
    }

    /// Appends `events` and moves the aggregate's snapshot in one transaction, as
    /// postgres-es's `persist` does, but with the `recorded_at` the chain hashes.
    pub(super) async fn append_with_snapshot(
        &self,
        aggregate_type: &str,
        events: &[SerializedEvent],
        (aggregate_id, payload, current_snapshot): (String, serde_json::Value, usize),
        recorded_at: DateTime<Utc>,
        slot: Option<&LeaseSlot>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_error)?;
        if let Some(slot) = slot {
            lease_slots::check_pg(&mut tx, slot).await?;
        }
        let mut last_sequence = 0;
        for event in events {
            last_sequence = event.sequence as i64;
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, recorded_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(aggregate_type)
            .bind(&event.aggregate_id)
            .bind(event.sequence as i64)
            .bind(&event.event_type)
            .bind(&event.event_version)
            .bind(&event.payload)
            .bind(&event.metadata)
            .bind(recorded_at)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        }
        let written = if current_snapshot == 1 {
            sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                        current_snapshot, payload)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(aggregate_type)
            .bind(&aggregate_id)
            .bind(last_sequence)
            .bind(current_snapshot as i64)
            .bind(&payload)
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "UPDATE snapshots SET last_sequence = $3, current_snapshot = $4, payload = $5
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $6",
            )
            .bind(aggregate_type)
            .bind(&aggregate_id)
            .bind(last_sequence)
            .bind(current_snapshot as i64)
            .bind(&payload)
            .bind(current_snapshot as i64 - 1)
            .execute(&mut *tx)
            .await
        }
        .map_err(map_error)?;
        if written.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        if let (Some(slot), Some(first)) = (slot, events.first()) {
            let taken = (
                slot.agent_id.clone(),
                first.aggregate_id.clone(),
                first.sequence as i64,
            );
            lease_slots::take_pg(&mut tx, &[taken]).await?;
            if let Some(key) = &slot.key {
                let taken = (
                    key.owner_id.clone(),
                    key.key.clone(),
                    first.aggregate_id.clone(),
                    first.sequence as i64,
                );
                lease_slots::take_keys_pg(&mut tx, &[taken]).await?;
            }
        }
        tx.commit().await.map_err(map_error)?;
        Ok(())
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        // Migrations are additive: a binary rolled back to an older release runs against the
        // newer schema, whose extra migrations it does not know.
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        match tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool))
            .await
        {
            Ok(done) => done.map(|_| ()).map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable(
                "the database did not answer a ping in time".into(),
            )),
        }
    }

    /// Reads in `(transaction_id, position)` order and only events of transactions older
    /// than every transaction still in flight: an event whose transaction commits later
    /// has a transaction id at or above that horizon, so it cannot be passed over.
    pub(super) async fn feed(
        &self,
        after: FeedCursor,
        limit: u32,
        filter: &AggregateFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = select_events!(
            "WHERE (transaction_id, position) > ($1::text::xid8, $2)
               AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
               AND ($3::text IS NULL OR aggregate_type = $3)
               AND ($4::text IS NULL OR aggregate_id = $4)
             ORDER BY transaction_id, position
             LIMIT $5"
        );
        let rows = sqlx::query(sql)
            .bind(after.transaction_id.to_string())
            .bind(after.position)
            .bind(filter.aggregate_type.as_deref())
            .bind(filter.aggregate_id.as_deref())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// A cursor before every event recorded at or after `since`, and before every event
    /// of a transaction still in flight (it may commit below a later one already visible).
    pub(super) async fn cursor_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<FeedCursor, StoreError> {
        let first = sqlx::query(
            "SELECT position, transaction_id::text AS xid FROM events
              WHERE recorded_at >= $1 ORDER BY transaction_id, position LIMIT 1",
        )
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        let (horizon, _) = self.horizon().await?;
        let in_flight = FeedCursor {
            transaction_id: horizon.saturating_sub(1),
            position: i64::MAX,
        };
        let Some(first) = first else {
            return Ok(in_flight);
        };
        let before_first = FeedCursor {
            transaction_id: parse_xid(&first)?,
            position: first.try_get::<i64, _>("position")?.saturating_sub(1),
        };
        Ok(before_first.min(in_flight))
    }

    /// The events that end credentials early (see `auth::revocation`) recorded at or after
    /// `since`, committed or not past the feed's horizon; served by a partial index.
    pub(super) async fn credential_events_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(select_events!(credential_events_since!()))
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// [`Self::feed`] narrowed to the aggregates `readers` may read (`aggregate_owners_v2`:
    /// the owner's, and those of the teams in `,id,id,`), and
    /// never past that projection's checkpoint (`$6`/`$7` name it): an event whose
    /// aggregate is not in the table yet is held back, not passed over. Checkpoint and
    /// table are read in one statement, so they are one committed state.
    pub(super) async fn feed_owned(
        &self,
        after: FeedCursor,
        limit: u32,
        filter: &AggregateFilter,
        readers: (&str, &str),
        owners: (&str, i64),
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = select_events!(
            "WHERE (transaction_id, position) > ($1::text::xid8, $2)
               AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
               AND (transaction_id, position) <= (
                   SELECT c.transaction_id::text::xid8, c.position FROM projection_checkpoints c
                    WHERE c.name = $6 AND c.version = $7)
               AND ($3::text IS NULL OR aggregate_type = $3)
               AND ($4::text IS NULL OR aggregate_id = $4)
               AND EXISTS (
                   SELECT 1 FROM aggregate_owners_v2 o
                    WHERE o.aggregate_type = events.aggregate_type
                      AND o.aggregate_id = events.aggregate_id
                      AND (o.owner_id = $5 OR $9 LIKE '%,' || o.team_id || ',%'))
             ORDER BY transaction_id, position
             LIMIT $8"
        );
        let rows = sqlx::query(sql)
            .bind(after.transaction_id.to_string())
            .bind(after.position)
            .bind(filter.aggregate_type.as_deref())
            .bind(filter.aggregate_id.as_deref())
            .bind(readers.0)
            .bind(owners.0)
            .bind(owners.1)
            .bind(i64::from(limit))
            .bind(readers.1)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// The cursor of the last event the feed can read now (the default when there is none).
    pub(super) async fn feed_tail(&self) -> Result<FeedCursor, StoreError> {
        let row = sqlx::query(
            "SELECT position, transaction_id::text AS xid FROM events
              WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY transaction_id DESC, position DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(FeedCursor {
                transaction_id: parse_xid(&row)?,
                position: row.try_get("position")?,
            })
        })
        .transpose()
        .map(Option::unwrap_or_default)
    }

    /// `(horizon, watermark)`: every transaction below the horizon has ended; every one that
    /// committed before now is below the watermark.
    pub(super) async fn horizon(&self) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT pg_snapshot_xmin(s)::text AS xmin, pg_snapshot_xmax(s)::text AS xmax
               FROM pg_current_snapshot() AS s",
        )
        .fetch_one(&self.pool)
        .await?;
        let parse = |column: &str| -> Result<u64, StoreError> {
            let text: String = row.try_get(column)?;
            text.parse()
                .map_err(|_| StoreError::Codec(format!("snapshot {column} `{text}`")))
        };
        Ok((parse("xmin")?, parse("xmax")?))
    }

    pub(super) async fn lag_after(
        &self,
        cursor: FeedCursor,
    ) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS behind, min(recorded_at) AS oldest FROM events
              WHERE (transaction_id, position) > ($1::text::xid8, $2)",
        )
        .bind(cursor.transaction_id.to_string())
        .bind(cursor.position)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("behind")?, row.try_get("oldest")?))
    }

    pub(super) async fn cursor_at(&self, position: i64) -> Result<Option<FeedCursor>, StoreError> {
        let row = sqlx::query(
            "SELECT position, transaction_id::text AS xid FROM events WHERE position = $1",
        )
        .bind(position)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(FeedCursor {
                transaction_id: parse_xid(&row)?,
                position: row.try_get("position")?,
            })
        })
        .transpose()
    }

    pub(super) async fn history(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql =
            select_events!("WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence");
        let rows = sqlx::query(sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// Events of one aggregate after `after_sequence`, in sequence order, at most `limit`.
    pub(super) async fn history_page(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
        limit: Option<u32>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = select_events!(
            "WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
             ORDER BY sequence LIMIT $4"
        );
        let rows = sqlx::query(sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(after_sequence)
            // LIMIT NULL is no limit.
            .bind(limit.map(i64::from))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// [`Self::scan`] narrowed to the aggregates `owner` owns.
    pub(super) fn scan_owned<'a>(
        &'a self,
        filter: &'a AggregateFilter,
        owner: Uuid,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        let sql = select_events!(
            "WHERE ($1::text IS NULL OR aggregate_type = $1)
               AND ($2::text IS NULL OR aggregate_id = $2)
               AND EXISTS (
                   SELECT 1 FROM aggregate_owners_v2 o
                    WHERE o.aggregate_type = events.aggregate_type
                      AND o.aggregate_id = events.aggregate_id
                      AND o.owner_id = $3)
             ORDER BY aggregate_type, aggregate_id, sequence"
        );
        sqlx::query(sql)
            .bind(filter.aggregate_type.as_deref())
            .bind(filter.aggregate_id.as_deref())
            .bind(owner.to_string())
            .fetch(&self.pool)
            .map_err(StoreError::from)
            .and_then(|row| futures::future::ready(decode(&row)))
            .boxed()
    }

    pub(super) fn scan<'a>(
        &'a self,
        filter: &'a AggregateFilter,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        let sql = select_events!(
            "WHERE ($1::text IS NULL OR aggregate_type = $1)
               AND ($2::text IS NULL OR aggregate_id = $2)
             ORDER BY aggregate_type, aggregate_id, sequence"
        );
        sqlx::query(sql)
            .bind(filter.aggregate_type.as_deref())
            .bind(filter.aggregate_id.as_deref())
            .fetch(&self.pool)
            .map_err(StoreError::from)
            .and_then(|row| futures::future::ready(decode(&row)))
            .boxed()
    }
}

fn parse_xid(row: &PgRow) -> Result<u64, StoreError> {
    let text: String = row.try_get("xid")?;
    text.parse()
        .map_err(|_| StoreError::Codec(format!("transaction id `{text}` is not a number")))
}

pub(crate) fn decode(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: row.try_get("position")?,
        transaction_id: parse_xid(row)?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}
