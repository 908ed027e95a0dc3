//! `GET /api/audit/checkpoint`: the latest chain checkpoint, for auditors to publish or
//! compare with one published earlier.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::AppState;
use crate::actor::Actor;
use crate::store::Checkpoint;

/// A chain checkpoint: the feed up to `position` (`count` events) has the aggregate heads
/// whose Merkle root is `root`; `mac` is an HMAC-SHA256 by a key outside the database.
/// `chronicle audit verify --against FILE` checks a store against this line.
#[derive(Serialize, ToSchema)]
#[schema(as = ChainCheckpoint)]
pub struct CheckpointView {
    chain_version: i64,
    /// The last event covered, in feed order (0: an empty store).
    position: i64,
    count: i64,
    /// Hex SHA-256 Merkle root over `(type, id, sequence, hash)` of every aggregate's head.
    root: String,
    /// Hex HMAC-SHA256.
    mac: String,
    created_at: DateTime<Utc>,
}

impl From<Checkpoint> for CheckpointView {
    fn from(checkpoint: Checkpoint) -> Self {
        Self {
            chain_version: checkpoint.chain_version,
            position: checkpoint.position,
            count: checkpoint.count,
            root: checkpoint.root,
            mac: checkpoint.mac,
            created_at: checkpoint.created_at,
        }
    }
}

/// The latest chain checkpoint (auditors and admins; 404 for anyone else, and before the
/// first checkpoint).
#[utoipa::path(
    get,
    path = "/audit/checkpoint",
    operation_id = "get_audit_checkpoint",
    tag = "audit",
    responses(
        (status = 200, description = "The latest checkpoint", body = CheckpointView),
        (status = 404, description = "Not an auditor or admin, or no checkpoint yet"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn latest(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<Json<CheckpointView>, ApiError> {
    if !actor.can_read_all() {
        return Err(ApiError::NotFound);
    }
    let checkpoint = state.store.latest_checkpoint().await?;
    checkpoint
        .map(|checkpoint| Json(checkpoint.into()))
        .ok_or(ApiError::NotFound)
}
