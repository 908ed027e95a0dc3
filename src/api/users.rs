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
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::UserView;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, IdPath, RequestMeta};
use super::paging::{Page, Paging};
use super::AppState;
use crate::actor::{Actor, ActorKind};
use crate::auth::keys;
use crate::bus::Committed;

/// The caller's own user.
#[utoipa::path(
    get,
    path = "/users/me",
    operation_id = "get_me",
    tag = "users",
    responses(
        (status = 200, description = "The caller", body = UserView),
        (status = 404, description = "No user behind the credentials"),
    ),
)]
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
#[derive(Serialize, ToSchema)]
#[schema(as = IssuedApiKey)]
pub struct IssuedKeyView {
    id: Uuid,
    name: String,
    /// `chr_<key id>_<secret>`, for `Authorization: Bearer` or `X-API-Key`; shown once:
    /// `null` when this answer is an `Idempotency-Key` replay (the secret is never stored).
    #[schema(nullable)]
    key: String,
    /// The public part of `key`, to recognise it by.
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

/// Create an API key for the caller.
///
/// The answer is the only time the key is shown; only its hash is stored.
#[utoipa::path(
    post,
    path = "/users/me/api-keys",
    operation_id = "create_api_key",
    tag = "users",
    request_body = NewApiKeyRequest,
    responses(
        (status = 201, description = "The new key, shown once", body = IssuedKeyView),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller is not a user"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field, or `expires_at` not in the future"),
    ),
)]
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

/// Draw a new secret for one of the caller's API keys; the old one stops working.
#[utoipa::path(
    post,
    path = "/users/me/api-keys/{id}/rotate",
    operation_id = "rotate_api_key",
    tag = "users",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        (status = 201, description = "The key with its new secret, shown once", body = IssuedKeyView),
        (status = 403, description = "The caller is not a user"),
        (status = 404, description = "No such key of the caller's"),
        (status = 409, description = "The key is revoked or expired"),
    ),
)]
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
    state.auth.key_changed(id, committed.version, false);
    issued(&state, &committed, new.key).await
}

/// Revoke one of the caller's API keys.
///
/// Idempotent: revoking a revoked key answers 204 again.
#[utoipa::path(
    delete,
    path = "/users/me/api-keys/{id}",
    operation_id = "revoke_api_key",
    tag = "users",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "The caller is not a user"),
        (status = 404, description = "No such key of the caller's"),
    ),
)]
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
    state.auth.key_changed(id, committed.version, true);
    state
        .read
        .api_key_committed(&committed.aggregate, committed.version)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A key as listed: never the secret, never its hash.
#[derive(Serialize, ToSchema)]
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
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyListQuery {
    /// Page size: 1–500, 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

/// List the caller's API keys.
///
/// Newest first, without secrets or hashes; revoked keys are left out, expired ones stay
/// (with their `expires_at`).
#[utoipa::path(
    get,
    path = "/users/me/api-keys",
    operation_id = "list_api_keys",
    tag = "users",
    params(KeyListQuery),
    responses(
        (status = 200, description = "A page of the caller's keys", body = Page<KeyView>),
        (status = 403, description = "The caller is not a user"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
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
