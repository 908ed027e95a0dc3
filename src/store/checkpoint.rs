//! Chain checkpoints: the anchor that a hash chain alone lacks (ARCHITECTURE.md, "Anchoring
//! the chain").
//!
//! A checkpoint covers a prefix of the global feed: its last event (`position`), how many
//! events that prefix holds (`count`), and a Merkle root over every aggregate's head in it,
//! `(type, id, sequence, hash)`. It is MAC'd (HMAC-SHA256) with a key that is not in the
//! database, so whoever can write the database cannot forge one. Every head is kept beside
//! the latest checkpoint (and beside every published one), so `audit verify` can name the
//! aggregate that was cut short, deleted or re-hashed since.
//!
//! The Merkle tree: heads sorted by `(aggregate_type, aggregate_id)` as bytes; a leaf is
//! `sha256(0x00 ‖ type ‖ id ‖ sequence ‖ hash)` (each length-prefixed), a node
//! `sha256(0x01 ‖ left ‖ right)`; an odd node at the end of a level moves up unchanged;
//! the root of no heads is `sha256("")`. The MAC covers `chronicle-checkpoint/v1`, the
//! chain version, position, count, root and `created_at` (RFC 3339, microseconds).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::chain::{self, CHAIN_VERSION};
use super::{Backend, Store, StoreError};

/// The key that checkpoints are MAC'd with; never stored in the database.
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl AuditKey {
    /// The key derived from `secret` (the server secret, or `CHRONICLE_AUDIT__KEY`).
    pub fn derive(secret: &[u8]) -> Self {
        Self(hmac_sha256(secret, b"chronicle/audit-checkpoint/v1"))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, message: &[u8]) -> String {
        hex::encode(hmac_sha256(&self.0, message))
    }

    fn verifies(&self, message: &[u8], mac_hex: &str) -> bool {
        let Ok(mac) = hex::decode(mac_hex) else {
            return false;
        };
        let Ok(mut hmac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.0) else {
            return false;
        };
        hmac.update(message);
        hmac.verify_slice(&mac).is_ok()
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// One checkpoint, as stored, served and published (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain_version: i64,
    /// The last event covered (0 for an empty store); every event before it in feed order
    /// is covered too.
    pub position: i64,
    /// Events covered.
    pub count: i64,
    /// Hex Merkle root over every aggregate's head.
    pub root: String,
    /// Hex HMAC-SHA256 of the fields above and `created_at`.
    pub mac: String,
    pub created_at: DateTime<Utc>,
}

impl Checkpoint {
    fn message(&self) -> Vec<u8> {
        let mut message = Vec::new();
        let fields = [
            "chronicle-checkpoint/v1".to_owned(),
            self.chain_version.to_string(),
            self.position.to_string(),
            self.count.to_string(),
            self.root.clone(),
            chain::format_recorded_at(self.created_at),
        ];
        for field in fields {
            message.extend_from_slice(&(field.len() as u64).to_be_bytes());
            message.extend_from_slice(field.as_bytes());
        }
        message
    }

    /// Does the MAC hold under `key`? (Constant-time.)
    pub fn mac_holds(&self, key: &AuditKey) -> bool {
        key.verifies(&self.message(), &self.mac)
    }
}

/// An aggregate's last event at a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub hash: String,
}

/// The Merkle root over `heads`, which it sorts into the defined order.
pub fn merkle_root(heads: &mut [Head]) -> String {
    heads.sort_by(|a, b| {
        (a.aggregate_type.as_bytes(), a.aggregate_id.as_bytes())
            .cmp(&(b.aggregate_type.as_bytes(), b.aggregate_id.as_bytes()))
    });
    let mut level: Vec<[u8; 32]> = heads.iter().map(leaf).collect();
    if level.is_empty() {
        return hex::encode(Sha256::digest(b""));
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut hasher = Sha256::new();
                    hasher.update([1u8]);
                    hasher.update(left);
                    hasher.update(right);
                    hasher.finalize().into()
                }
                [odd] => *odd,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    hex::encode(level[0])
}

fn leaf(head: &Head) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    let sequence = head.sequence.to_string();
    for field in [
        head.aggregate_type.as_bytes(),
        head.aggregate_id.as_bytes(),
        sequence.as_bytes(),
        head.hash.as_bytes(),
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hasher.finalize().into()
}

/// How `record_checkpoint` treats another node recording one at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Skip if another node is recording one now (the background loop).
    Background,
    /// Wait for it, then record; the heads are kept for `verify --against`.
    Published,
}

/// A lock id for PostgreSQL's advisory locks: one checkpoint is recorded at a time.
const CHECKPOINT_LOCK: i64 = 0x6368_726f_6e63_6b70;

impl Store {
    /// The key checkpoints are MAC'd with, if one was configured.
    pub fn audit_key(&self) -> Option<&AuditKey> {
        self.inner.audit_key.get()
    }

    /// Sets the checkpoint key once (later calls keep the first).
    pub fn set_audit_key(&self, key: AuditKey) {
        let _ = self.inner.audit_key.set(key);
    }

    /// The chain version this store was created for (`chain_info`).
    pub async fn chain_version(&self) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT value FROM chain_info WHERE name = 'chain_version'";
        let value: Option<String> = match self.backend() {
            Backend::Postgres(pg) => sqlx::query_scalar(sql).fetch_optional(pg.pool()).await?,
            Backend::Sqlite(lite) => {
                sqlx::query_scalar(sql)
                    .fetch_optional(lite.reader())
                    .await?
            }
        };
        Ok(value.and_then(|text| text.parse().ok()))
    }

    /// Records a checkpoint of everything the feed can read once every transaction
    /// committed before this call is readable. `None` when another node was recording one
    /// and `recording` is [`Recording::Background`].
    pub async fn record_checkpoint(
        &self,
        recording: Recording,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let key = self
            .audit_key()
            .ok_or_else(|| StoreError::Database("no audit key is configured".into()))?
            .clone();
        // Everything committed before this call is covered, even when an older transaction
        // elsewhere in the cluster holds the feed's horizon back for a moment.
        let watermark = self.feed_watermark().await?;
        while !self.feed_reached(watermark).await? {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let created_at = chain::now();
        let published = recording == Recording::Published;
        match self.backend() {
            Backend::Postgres(pg) => {
                // The lock lives in a transaction of its own that never writes, so it takes
                // no transaction id and does not hold the feed's horizon back; the work
                // runs in short transactions beside it.
                let mut lock = pg.pool().begin().await?;
                if published {
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(CHECKPOINT_LOCK)
                        .execute(&mut *lock)
                        .await?;
                } else {
                    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                        .bind(CHECKPOINT_LOCK)
                        .fetch_one(&mut *lock)
                        .await?;
                    if !locked {
                        return Ok(None);
                    }
                }
                let checkpoint = record_pg(pg.pool(), &key, created_at, published).await?;
                lock.commit().await?;
                Ok(Some(checkpoint))
            }
            Backend::Sqlite(lite) => {
                // Read on a reader (one snapshot for the three reads), write on the writer:
                // appends are not held up while the heads are read.
                let mut read = lite.reader().begin().await?;
                let position: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
                    .fetch_one(&mut *read)
                    .await?;
                let position = position.unwrap_or(0);
                let count: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM events WHERE position <= ?1")
                        .bind(position)
                        .fetch_one(&mut *read)
                        .await?;
                let mut heads = sqlite_heads(&mut read, position).await?;
                read.commit().await?;
                let checkpoint = sign(&key, position, count, &mut heads, created_at);
                let mut tx = lite
                    .writer()
                    .begin_with("PRAGMA synchronous = FULL; BEGIN IMMEDIATE")
                    .await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO chain_checkpoints
                         (chain_version, position, event_count, root, mac, created_at, published)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                )
                .bind(checkpoint.chain_version)
                .bind(checkpoint.position)
                .bind(checkpoint.count)
                .bind(&checkpoint.root)
                .bind(&checkpoint.mac)
                .bind(chain::format_recorded_at(checkpoint.created_at))
                .bind(published)
                .fetch_one(&mut *tx)
                .await?;
                for head in &heads {
                    sqlx::query(
                        "INSERT INTO chain_checkpoint_heads
                             (checkpoint_id, aggregate_type, aggregate_id, sequence, hash)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .bind(id)
                    .bind(&head.aggregate_type)
                    .bind(&head.aggregate_id)
                    .bind(head.sequence)
                    .bind(&head.hash)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "DELETE FROM chain_checkpoint_heads WHERE checkpoint_id IN
                         (SELECT id FROM chain_checkpoints WHERE id < ?1 AND NOT published)",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(checkpoint))
            }
        }
    }

    /// The latest checkpoint and its id, if any.
    pub(super) async fn latest_checkpoint_row(
        &self,
    ) -> Result<Option<(i64, Checkpoint)>, StoreError> {
        let sql = "SELECT id, chain_version, position, event_count, root, mac, created_at
                     FROM chain_checkpoints ORDER BY id DESC LIMIT 1";
        match self.backend() {
            Backend::Postgres(pg) => {
                let row = sqlx::query(sql).fetch_optional(pg.pool()).await?;
                row.map(|row| {
                    let created_at: DateTime<Utc> = row.try_get("created_at")?;
                    checkpoint_row(&row, created_at)
                })
                .transpose()
            }
            Backend::Sqlite(lite) => {
                let row = sqlx::query(sql).fetch_optional(lite.reader()).await?;
                row.map(|row| {
                    let text: String = row.try_get("created_at")?;
                    let created_at = DateTime::parse_from_rfc3339(&text)
                        .map_err(|e| StoreError::Codec(format!("created_at `{text}`: {e}")))?
                        .with_timezone(&Utc);
                    checkpoint_row(&row, created_at)
                })
                .transpose()
            }
        }
    }

    /// The latest checkpoint, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.latest_checkpoint_row().await?.map(|(_, c)| c))
    }

    /// The id of a stored checkpoint equal to `checkpoint` whose heads are kept.
    pub(super) async fn find_checkpoint(
        &self,
        checkpoint: &Checkpoint,
    ) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT id FROM chain_checkpoints c
                    WHERE position = $1 AND root = $2 AND mac = $3
                      AND EXISTS (SELECT 1 FROM chain_checkpoint_heads h
                                   WHERE h.checkpoint_id = c.id)
                    ORDER BY id DESC LIMIT 1";
        Ok(match self.backend() {
            Backend::Postgres(pg) => {
                sqlx::query_scalar(sql)
                    .bind(checkpoint.position)
                    .bind(&checkpoint.root)
                    .bind(&checkpoint.mac)
                    .fetch_optional(pg.pool())
                    .await?
            }
            Backend::Sqlite(lite) => {
                sqlx::query_scalar(sql)
                    .bind(checkpoint.position)
                    .bind(&checkpoint.root)
                    .bind(&checkpoint.mac)
                    .fetch_optional(lite.reader())
                    .await?
            }
        })
    }

    /// The heads stored with checkpoint `id`.
    pub(super) async fn checkpoint_heads(&self, id: i64) -> Result<Vec<Head>, StoreError> {
        let sql = "SELECT aggregate_type, aggregate_id, sequence, hash
                     FROM chain_checkpoint_heads WHERE checkpoint_id = $1";
        match self.backend() {
            Backend::Postgres(pg) => {
                let rows = sqlx::query(sql).bind(id).fetch_all(pg.pool()).await?;
                rows.iter().map(head).collect()
            }
            Backend::Sqlite(lite) => {
                let rows = sqlx::query(sql).bind(id).fetch_all(lite.reader()).await?;
                rows.iter().map(head).collect()
            }
        }
    }
}

/// Heads written per transaction: a writing transaction holds the feed's horizon back
/// (cluster-wide) until it commits, so none may last long.
const HEADS_PER_TRANSACTION: usize = 5_000;

async fn record_pg(
    pool: &sqlx::PgPool,
    key: &AuditKey,
    created_at: DateTime<Utc>,
    published: bool,
) -> Result<Checkpoint, StoreError> {
    // One read-only snapshot for the three reads. The feed's horizon: every transaction
    // below it has ended, so the events below it are a prefix of the feed that no later
    // commit can extend.
    let mut read = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *read)
        .await?;
    let horizon: String =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            .fetch_one(&mut *read)
            .await?;
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM events WHERE transaction_id < $1::text::xid8
          ORDER BY transaction_id DESC, position DESC LIMIT 1",
    )
    .bind(&horizon)
    .fetch_optional(&mut *read)
    .await?;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE transaction_id < $1::text::xid8")
            .bind(&horizon)
            .fetch_one(&mut *read)
            .await?;
    let mut heads: Vec<Head> = sqlx::query(
        "SELECT DISTINCT ON (aggregate_type, aggregate_id)
                aggregate_type, aggregate_id, sequence, coalesce(metadata->>'hash', '') AS hash
           FROM events WHERE transaction_id < $1::text::xid8
          ORDER BY aggregate_type, aggregate_id, sequence DESC",
    )
    .bind(&horizon)
    .fetch(&mut *read)
    .map_err(StoreError::from)
    .and_then(|row| async move { head(&row) })
    .try_collect()
    .await?;
    read.commit().await?;
    let checkpoint = sign(key, position.unwrap_or(0), count, &mut heads, created_at);

    // The heads first, under an id drawn ahead; the checkpoint row last, so a reader never
    // sees a checkpoint whose heads are not all there.
    let id: i64 =
        sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('chain_checkpoints', 'id'))")
            .fetch_one(pool)
            .await?;
    for chunk in heads.chunks(HEADS_PER_TRANSACTION) {
        let (types, ids, sequences, hashes) = columns(chunk);
        sqlx::query(
            "INSERT INTO chain_checkpoint_heads
                 (checkpoint_id, aggregate_type, aggregate_id, sequence, hash)
             SELECT $1, t, i, s, h
               FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[]) AS heads(t, i, s, h)",
        )
        .bind(id)
        .bind(&types)
        .bind(&ids)
        .bind(&sequences)
        .bind(&hashes)
        .execute(pool)
        .await?;
    }
    sqlx::query(
        "INSERT INTO chain_checkpoints
             (id, chain_version, position, event_count, root, mac, created_at, published)
         OVERRIDING SYSTEM VALUE
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(checkpoint.chain_version)
    .bind(checkpoint.position)
    .bind(checkpoint.count)
    .bind(&checkpoint.root)
    .bind(&checkpoint.mac)
    .bind(checkpoint.created_at)
    .bind(published)
    .execute(pool)
    .await?;
    // Older heads go (but a published checkpoint's, and heads left by a checkpoint that
    // never finished go too), a few thousand per transaction.
    loop {
        let deleted = sqlx::query(
            "DELETE FROM chain_checkpoint_heads WHERE ctid IN
                 (SELECT ctid FROM chain_checkpoint_heads
                   WHERE checkpoint_id < $1
                     AND checkpoint_id NOT IN (SELECT id FROM chain_checkpoints WHERE published)
                   LIMIT $2)",
        )
        .bind(id)
        .bind(HEADS_PER_TRANSACTION as i64)
        .execute(pool)
        .await?;
        if deleted.rows_affected() == 0 {
            break;
        }
    }
    Ok(checkpoint)
}

fn sign(
    key: &AuditKey,
    position: i64,
    count: i64,
    heads: &mut [Head],
    created_at: DateTime<Utc>,
) -> Checkpoint {
    let mut checkpoint = Checkpoint {
        chain_version: CHAIN_VERSION,
        position,
        count,
        root: merkle_root(heads),
        mac: String::new(),
        created_at,
    };
    checkpoint.mac = key.mac(&checkpoint.message());
    checkpoint
}

fn columns(heads: &[Head]) -> (Vec<String>, Vec<String>, Vec<i64>, Vec<String>) {
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for head in heads {
        columns.0.push(head.aggregate_type.clone());
        columns.1.push(head.aggregate_id.clone());
        columns.2.push(head.sequence);
        columns.3.push(head.hash.clone());
    }
    columns
}

fn head<R: Row>(row: &R) -> Result<Head, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Head {
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        hash: row.try_get("hash")?,
    })
}

fn checkpoint_row<R: Row>(
    row: &R,
    created_at: DateTime<Utc>,
) -> Result<(i64, Checkpoint), StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        row.try_get("id")?,
        Checkpoint {
            chain_version: row.try_get("chain_version")?,
            position: row.try_get("position")?,
            count: row.try_get("event_count")?,
            root: row.try_get("root")?,
            mac: row.try_get("mac")?,
            created_at,
        },
    ))
}

async fn sqlite_heads(
    read: &mut sqlx::SqliteConnection,
    position: i64,
) -> Result<Vec<Head>, StoreError> {
    // SQLite takes the other columns from the row holding max(sequence).
    sqlx::query(
        "SELECT aggregate_type, aggregate_id, max(sequence) AS sequence,
                coalesce(json_extract(metadata, '$.hash'), '') AS hash
           FROM events WHERE position <= ?1
          GROUP BY aggregate_type, aggregate_id",
    )
    .bind(position)
    .fetch(read)
    .map_err(StoreError::from)
    .and_then(|row| async move { head(&row) })
    .try_collect()
    .await
}

/// Every aggregate's head among the events up to and including `position` in feed order,
/// and how many events that is; `None` when there is no event at `position`.
pub(super) async fn heads_at(
    store: &Store,
    position: i64,
) -> Result<Option<(Vec<Head>, i64)>, StoreError> {
    let Some(cursor) = store.cursor_after(position).await? else {
        return Ok(None);
    };
    match store.backend() {
        Backend::Postgres(pg) => {
            let xid = cursor.transaction_id.to_string();
            let count: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events
                  WHERE (transaction_id, position) <= ($1::text::xid8, $2)",
            )
            .bind(&xid)
            .bind(position)
            .fetch_one(pg.pool())
            .await?;
            let heads = sqlx::query(
                "SELECT DISTINCT ON (aggregate_type, aggregate_id)
                        aggregate_type, aggregate_id, sequence,
                        coalesce(metadata->>'hash', '') AS hash
                   FROM events WHERE (transaction_id, position) <= ($1::text::xid8, $2)
                  ORDER BY aggregate_type, aggregate_id, sequence DESC",
            )
            .bind(&xid)
            .bind(position)
            .fetch(pg.pool())
            .map_err(StoreError::from)
            .and_then(|row| async move { head(&row) })
            .try_collect()
            .await?;
            Ok(Some((heads, count)))
        }
        Backend::Sqlite(lite) => {
            let mut read = lite.reader().begin().await?;
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position <= ?1")
                .bind(position)
                .fetch_one(&mut *read)
                .await?;
            let heads = sqlite_heads(&mut read, position).await?;
            read.commit().await?;
            Ok(Some((heads, count)))
        }
    }
}

/// Records a checkpoint whenever about `every` events were appended since the last one;
/// runs until `stop`. Safe on several nodes at once: one records, the others skip.
pub async fn run_checkpoints(store: Store, every: u64, stop: CancellationToken) {
    if every == 0 || store.audit_key().is_none() {
        return;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match store.events_since_checkpoint().await {
            Ok(since) if since >= every as i64 => {
                match store.record_checkpoint(Recording::Background).await {
                    Ok(Some(checkpoint)) => tracing::info!(
                        position = checkpoint.position,
                        count = checkpoint.count,
                        root = %checkpoint.root,
                        "recorded a chain checkpoint"
                    ),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "cannot record a chain checkpoint"),
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot count events since the last checkpoint"),
        }
    }
}

impl Store {
    /// Events whose position is above the latest checkpoint's (on PostgreSQL positions are
    /// not commit order, so this is close, not exact: enough to pace checkpoints).
    async fn events_since_checkpoint(&self) -> Result<i64, StoreError> {
        let sql = "SELECT count(*) FROM events WHERE position >
                       coalesce((SELECT position FROM chain_checkpoints ORDER BY id DESC LIMIT 1), 0)";
        Ok(match self.backend() {
            Backend::Postgres(pg) => sqlx::query_scalar(sql).fetch_one(pg.pool()).await?,
            Backend::Sqlite(lite) => sqlx::query_scalar(sql).fetch_one(lite.reader()).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(id: &str, sequence: i64) -> Head {
        Head {
            aggregate_type: "task".into(),
            aggregate_id: id.into(),
            sequence,
            hash: format!("h{id}{sequence}"),
        }
    }

    #[test]
    fn the_root_covers_every_head_in_a_defined_order() {
        let mut a = vec![head("a", 1), head("b", 2), head("c", 3)];
        let mut b = vec![head("c", 3), head("a", 1), head("b", 2)];
        let root = merkle_root(&mut a);
        assert_eq!(root, merkle_root(&mut b));
        for mut changed in [
            vec![head("a", 1), head("b", 2)],
            vec![head("a", 1), head("b", 1), head("c", 3)],
            vec![head("a", 1), head("b", 2), head("c", 3), head("d", 1)],
        ] {
            assert_ne!(merkle_root(&mut changed), root);
        }
        assert_eq!(
            merkle_root(&mut []),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_mac_covers_every_field_and_needs_the_key() {
        let key = AuditKey::derive(b"secret");
        let checkpoint = sign(&key, 10, 12, &mut [head("a", 1)], chain::now());
        assert!(checkpoint.mac_holds(&key));
        assert!(!checkpoint.mac_holds(&AuditKey::derive(b"other")));
        let changed = [
            Checkpoint {
                position: 11,
                ..checkpoint.clone()
            },
            Checkpoint {
                count: 13,
                ..checkpoint.clone()
            },
            Checkpoint {
                root: "00".into(),
                ..checkpoint.clone()
            },
            Checkpoint {
                created_at: checkpoint.created_at + chrono::Duration::seconds(1),
                ..checkpoint.clone()
            },
        ];
        for forged in changed {
            assert!(!forged.mac_holds(&key));
        }
        assert!(!format!("{key:?}").contains("secret"));
    }
}
