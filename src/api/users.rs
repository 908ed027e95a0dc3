//! `/api/users/me` and the caller's API keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chronicle_aggregates::api_key::{ApiKey, ApiKeyCommand, ApiKeyState};
use chronicle_aggregates::user::User;
use chronicle_commands::auth::NewApiKeyRequest;
use chronicle_projections::api_key_view::{ApiKeyRow, ApiKeyView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::UserView;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, IdPath, RequestMeta};
use super::paging::{Page, Paging};
use super::AppState;
use crate::actor::{Actor, ActorKind};
use crate::auth::keys;
use crate::bus::Committed;

#[tracing::instrument(skip_all)]
pub async fn me(State(state): State<AppState>, actor: Actor) -> Result<Json<UserView>, ApiError> {
    let user = state
        .store
        .aggregate::<User>()
        .load(&actor.id.to_string())
        .await?;
    user.aggregate
        .state()
        .map(|user| Json(UserView::from(user)))
        .ok_or(ApiError::NotFound)
}

/// An API key as answered right after it was drawn: the only time `key` is shown.
#[derive(Serialize)]
pub struct IssuedKeyView {
    id: Uuid,
    name: String,
    key: String,
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

impl IssuedKeyView {
    fn new(state: &ApiKeyState, key: String) -> Self {
        Self {
            id: state.id,
            name: state.name.to_string(),
            key,
            prefix: state.prefix.to_string(),
            created_at: state.created_at,
            expires_at: state.expires_at,
        }
    }
}

fn own_user(actor: &Actor) -> Result<Uuid, ApiError> {
    match actor.kind {
        ActorKind::User => Ok(actor.id),
        _ => Err(ApiError::Forbidden),
    }
}

async fn issued(
    state: &AppState,
    committed: &Committed<ApiKey>,
    key: String,
) -> Result<(StatusCode, Json<IssuedKeyView>), ApiError> {
    state
        .read
        .api_key_committed(&committed.aggregate, committed.version)
        .await;
    let state = committed
        .aggregate
        .state()
        .ok_or_else(|| ApiError::Internal("an issued API key has no state".into()))?;
    Ok((StatusCode::CREATED, Json(IssuedKeyView::new(state, key))))
}

#[tracing::instrument(skip_all)]
pub async fn create_key(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    ApiJson(request): ApiJson<NewApiKeyRequest>,
) -> Result<(StatusCode, Json<IssuedKeyView>), ApiError> {
    let owner_id = own_user(&actor)?;
    let request = request.validate()?;
    let key_id = Uuid::now_v7();
    let new = keys::generate(&state.auth.keys.api_key, key_id)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let committed = state
        .bus
        .execute::<ApiKey, ApiError>(&key_id.to_string(), &meta.context(&actor), None, |_| {
            Ok(ApiKeyCommand::IssueApiKey {
                key_id,
                owner_id,
                name: request.name.clone(),
                prefix: new.prefix.clone(),
                secret_hash: new.secret_hash.clone(),
                expires_at: request.expires_at,
                at: Utc::now(),
            })
        })
        .await?;
    issued(&state, &committed, new.key).await
}

/// A key of someone else is a key that does not exist.
fn mine(key: &ApiKey, owner_id: Uuid) -> Result<(), ApiError> {
    match key.state() {
        Some(state) if state.owner_id == owner_id => Ok(()),
        _ => Err(ApiError::NotFound),
    }
}

#[tracing::instrument(skip_all, fields(key_id = %id))]
pub async fn rotate_key(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<IssuedKeyView>), ApiError> {
    let owner_id = own_user(&actor)?;
    let new =
        keys::generate(&state.auth.keys.api_key, id).map_err(|e| ApiError::Internal(e.into()))?;
    let committed = state
        .bus
        .execute::<ApiKey, ApiError>(
            &id.to_string(),
            &meta.context(&actor),
            None,
            |key: &ApiKey| {
                mine(key, owner_id)?;
                Ok(ApiKeyCommand::RotateApiKey {
                    prefix: new.prefix.clone(),
                    secret_hash: new.secret_hash.clone(),
                    at: Utc::now(),
                })
            },
        )
        .await?;
    issued(&state, &committed, new.key).await
}

#[tracing::instrument(skip_all, fields(key_id = %id))]
pub async fn revoke_key(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    let owner_id = own_user(&actor)?;
    let committed = state
        .bus
        .execute::<ApiKey, ApiError>(
            &id.to_string(),
            &meta.context(&actor),
            None,
            |key: &ApiKey| {
                mine(key, owner_id)?;
                Ok(ApiKeyCommand::RevokeApiKey { at: Utc::now() })
            },
        )
        .await?;
    state
        .read
        .api_key_committed(&committed.aggregate, committed.version)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A key as listed: never the secret, never its hash.
#[derive(Serialize)]
pub struct KeyView {
    id: Uuid,
    name: String,
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    rotated_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for KeyView {
    fn from(row: ApiKeyRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            created_at: row.created_at,
            expires_at: row.expires_at,
            rotated_at: row.rotated_at,
        }
    }
}

/// `GET /api/users/me/api-keys` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The caller's keys that are not revoked, newest first.
#[tracing::instrument(skip_all)]
pub async fn list_keys(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<KeyListQuery>,
) -> Result<Json<Page<KeyView>>, ApiError> {
    let owner_id = own_user(&actor)?;
    let paging = Paging::parse(query.limit, query.cursor.as_deref())?;
    let rows = ApiKeyView::list(&state.read.db, owner_id, paging.before_id, paging.fetch())
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Json(paging.page(
        rows,
        |row| Some(KeyView::from(row)),
        |key| key.id,
    )))
}
