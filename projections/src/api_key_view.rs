//! Each user's API keys as `GET /api/users/me/api-keys` lists them: name, prefix and dates,
//! never the secret or its hash (those stay in the event store, where authentication reads
//! them). Revoked keys leave the list; expired ones stay, with their `expires_at`.

use chronicle_aggregates::api_key::{ApiKey, ApiKeyEvent, ApiKeyState};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::Aggregate;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{decode_event, Projection, ProjectionError};
use crate::{on_reader, on_tx};

pub struct ApiKeyView;

/// One key as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
}

/// Times are kept as RFC 3339 text, so they read back exactly as the aggregate has them.
fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, ProjectionError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| ProjectionError::Event {
            aggregate_type: ApiKey::TYPE.into(),
            aggregate_id: String::new(),
            sequence: 0,
            message: format!("stored time {text:?} does not parse: {e}"),
        })
}

type Row = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

fn decode_row(
    (id, name, prefix, created_at, expires_at, rotated_at): Row,
) -> Result<ApiKeyRow, ProjectionError> {
    Ok(ApiKeyRow {
        id: Uuid::parse_str(&id).map_err(|e| ProjectionError::Event {
            aggregate_type: ApiKey::TYPE.into(),
            aggregate_id: id.clone(),
            sequence: 0,
            message: e.to_string(),
        })?,
        name,
        prefix,
        created_at: parse_time(&created_at)?,
        expires_at: expires_at.as_deref().map(parse_time).transpose()?,
        rotated_at: rotated_at.as_deref().map(parse_time).transpose()?,
    })
}

impl ApiKeyView {
    /// Writes a key at `version` unless the row already reflects that version or a later
    /// one: the inline path after a commit, so the caller lists its own new key at once.
    pub async fn upsert(
        tx: &mut ReadTx,
        key: &ApiKeyState,
        version: usize,
    ) -> Result<(), ProjectionError> {
        on_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO api_key_view_v1 (id, owner_id, name, prefix, created_at,
                        expires_at, rotated_at, revoked_at, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (id) DO UPDATE SET
                        prefix = excluded.prefix, rotated_at = excluded.rotated_at,
                        revoked_at = excluded.revoked_at, version = excluded.version
                  WHERE api_key_view_v1.version < excluded.version",
            )
            .bind(key.id.to_string())
            .bind(key.owner_id.to_string())
            .bind(key.name.as_str())
            .bind(key.prefix.as_str())
            .bind(time(key.created_at))
            .bind(key.expires_at.map(time))
            .bind(key.rotated_at.map(time))
            .bind(key.revoked_at.map(time))
            .bind(version as i64)
            .execute(conn)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// [`ApiKeyView::upsert`] in its own transaction.
    pub async fn write_committed(
        db: &ReadDb,
        key: &ApiKey,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let Some(state) = key.state() else {
            return Ok(());
        };
        let mut tx = db.begin_derived().await?;
        Self::upsert(&mut tx, state, version).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The owner's keys that are not revoked, newest first, at most `limit`, only those
    /// issued before `before_id` (ids are UUIDv7) when given.
    pub async fn list(
        db: &ReadDb,
        owner_id: Uuid,
        before_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRow>, ProjectionError> {
        let rows: Vec<Row> = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT id, name, prefix, created_at, expires_at, rotated_at
                   FROM api_key_view_v1
                  WHERE owner_id = $1 AND revoked_at IS NULL
                    AND ($2 IS NULL OR id < $2)
                  ORDER BY id DESC
                  LIMIT $3",
            )
            .bind(owner_id.to_string())
            .bind(before_id.map(|id| id.to_string()))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(decode_row).collect()
    }
}

impl Projection for ApiKeyView {
    const NAME: &'static str = "api_key_view";
    const VERSION: i64 = 1;

    async fn setup(&self, tx: &mut ReadTx) -> Result<(), sqlx::Error> {
        let statements = [
            "CREATE TABLE IF NOT EXISTS api_key_view_v1 (
                id         TEXT PRIMARY KEY,
                owner_id   TEXT NOT NULL,
                name       TEXT NOT NULL,
                prefix     TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT,
                rotated_at TEXT,
                revoked_at TEXT,
                version    BIGINT NOT NULL
            )",
            "CREATE INDEX IF NOT EXISTS api_key_view_v1_owner ON api_key_view_v1 (owner_id, id)",
        ];
        tx.execute_all(&statements).await
    }

    async fn apply(&self, tx: &mut ReadTx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type != ApiKey::TYPE {
            return Ok(());
        }
        let decoded = decode_event::<ApiKey>(event)?;
        let id = &event.aggregate_id;
        let sequence = event.sequence;
        match decoded {
            ApiKeyEvent::ApiKeyIssued(issued) => {
                on_tx!(&mut *tx, |conn| {
                    sqlx::query(
                        "INSERT INTO api_key_view_v1 (id, owner_id, name, prefix, created_at,
                                expires_at, version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(issued.owner_id.to_string())
                    .bind(issued.name.as_str())
                    .bind(issued.prefix.as_str())
                    .bind(time(issued.at))
                    .bind(issued.expires_at.map(time))
                    .bind(sequence)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())
                })?;
            }
            ApiKeyEvent::ApiKeyRotated(rotated) => {
                on_tx!(&mut *tx, |conn| {
                    sqlx::query(
                        "UPDATE api_key_view_v1 SET prefix = $2, rotated_at = $3, version = $4
                          WHERE id = $1 AND version < $4",
                    )
                    .bind(id)
                    .bind(rotated.prefix.as_str())
                    .bind(time(rotated.at))
                    .bind(sequence)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())
                })?;
            }
            ApiKeyEvent::ApiKeyRevoked(revoked) => {
                on_tx!(&mut *tx, |conn| {
                    sqlx::query(
                        "UPDATE api_key_view_v1 SET revoked_at = $2, version = $3
                          WHERE id = $1 AND version < $3",
                    )
                    .bind(id)
                    .bind(time(revoked.at))
                    .bind(sequence)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())
                })?;
            }
        }
        Ok(())
    }
}
