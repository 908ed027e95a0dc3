//! Loads events exported by `chronicle events export` into an empty store, keeping their
//! positions, sequences, metadata, hashes and `recorded_at`.
//!
//! Positions keep their numbers on both backends (PostgreSQL: `OVERRIDING SYSTEM VALUE`,
//! then the identity sequence is moved past the largest) and the feed order of the export
//! is kept: a PostgreSQL export may step back in position between transactions, so a batch
//! ends wherever the position steps back and the next batch's transaction comes later in
//! the feed. SQLite's feed is position order, so there a position that steps back is
//! renumbered to the next free one (only a PostgreSQL export can do that).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::chain::format_recorded_at;
use super::group_commit::map_error;
use super::{Backend, Store, StoreError};

/// Events per transaction.
pub const BATCH: usize = 5_000;

/// One line of an export.
#[derive(Debug, Clone, Deserialize)]
pub struct ExportedEvent {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// Writes events in batches, in the order given.
pub struct Importer {
    store: Store,
    batch: Vec<ExportedEvent>,
    last_position: i64,
    imported: u64,
}

impl Importer {
    /// Refuses a store that already holds events.
    pub async fn new(store: Store) -> Result<Self, StoreError> {
        let sql = "SELECT count(*) FROM events";
        let count: i64 = match store.backend() {
            Backend::Postgres(pg) => sqlx::query_scalar(sql).fetch_one(pg.pool()).await?,
            Backend::Sqlite(lite) => sqlx::query_scalar(sql).fetch_one(lite.writer()).await?,
        };
        if count > 0 {
            return Err(StoreError::Database(
                format!("the store already holds {count} events: import only into an empty store")
                    .into(),
            ));
        }
        Ok(Self {
            store,
            batch: Vec::with_capacity(BATCH),
            last_position: 0,
            imported: 0,
        })
    }

    /// Events written so far.
    pub fn imported(&self) -> u64 {
        self.imported
    }

    pub async fn push(&mut self, mut event: ExportedEvent) -> Result<(), StoreError> {
        if event.position <= self.last_position {
            match self.store.backend() {
                Backend::Postgres(_) => self.flush().await?,
                Backend::Sqlite(_) => event.position = self.last_position + 1,
            }
        }
        self.last_position = self.last_position.max(event.position);
        self.batch.push(event);
        if self.batch.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is pending and moves PostgreSQL's position sequence past every import.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        self.flush().await?;
        if let Backend::Postgres(pg) = self.store.backend() {
            sqlx::query(
                "SELECT setval(pg_get_serial_sequence('events', 'position'), max(position))
                   FROM events HAVING max(position) IS NOT NULL",
            )
            .execute(pg.pool())
            .await?;
        }
        Ok(self.imported)
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        match self.store.backend() {
            Backend::Postgres(pg) => {
                let mut columns = PgColumns::default();
                for event in &batch {
                    columns.push(event)?;
                }
                let mut tx = pg.pool().begin().await.map_err(map_error)?;
                sqlx::query(
                    "INSERT INTO events (position, aggregate_type, aggregate_id, sequence,
                                         event_type, event_version, payload, metadata,
                                         recorded_at)
                     OVERRIDING SYSTEM VALUE
                     SELECT n, t, i, s, e, v, p::json, m::json, r
                       FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                   $5::text[], $6::text[], $7::text[], $8::text[],
                                   $9::timestamptz[]) AS batch(n, t, i, s, e, v, p, m, r)
                      ORDER BY n",
                )
                .bind(&columns.positions)
                .bind(&columns.types)
                .bind(&columns.ids)
                .bind(&columns.sequences)
                .bind(&columns.event_types)
                .bind(&columns.versions)
                .bind(&columns.payloads)
                .bind(&columns.metadata)
                .bind(&columns.times)
                .execute(&mut *tx)
                .await
                .map_err(map_error)?;
                tx.commit().await.map_err(map_error)?;
            }
            Backend::Sqlite(lite) => {
                let mut tx = lite
                    .writer()
                    .begin_with("PRAGMA synchronous = FULL; BEGIN IMMEDIATE")
                    .await?;
                for event in &batch {
                    sqlx::query(
                        "INSERT INTO events (position, aggregate_type, aggregate_id, sequence,
                                             event_type, event_version, payload, metadata,
                                             recorded_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .bind(event.position)
                    .bind(&event.aggregate_type)
                    .bind(&event.aggregate_id)
                    .bind(event.sequence)
                    .bind(&event.event_type)
                    .bind(&event.event_version)
                    .bind(serde_json::to_string(&event.payload)?)
                    .bind(serde_json::to_string(&event.metadata)?)
                    .bind(format_recorded_at(event.recorded_at))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        self.imported += batch.len() as u64;
        Ok(())
    }
}

#[derive(Default)]
struct PgColumns {
    positions: Vec<i64>,
    types: Vec<String>,
    ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<String>,
    metadata: Vec<String>,
    times: Vec<DateTime<Utc>>,
}

impl PgColumns {
    fn push(&mut self, event: &ExportedEvent) -> Result<(), StoreError> {
        self.positions.push(event.position);
        self.types.push(event.aggregate_type.clone());
        self.ids.push(event.aggregate_id.clone());
        self.sequences.push(event.sequence);
        self.event_types.push(event.event_type.clone());
        self.versions.push(event.event_version.clone());
        self.payloads.push(serde_json::to_string(&event.payload)?);
        self.metadata.push(serde_json::to_string(&event.metadata)?);
        self.times.push(event.recorded_at);
        Ok(())
    }
}
