//! Sessions (refresh-token families) at the edge: start one at login, rotate on refresh —
//! a retired token presented again revokes the family — and end one at logout.

use chronicle_aggregates::session::{Session, SessionCommand, SessionError};
use chronicle_aggregates::user::{User, UserState};
use chronicle_commands::auth::Role;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::jwt::AccessClaims;
use super::refresh::RefreshToken;
use crate::actor::Actor;
use crate::api::error::ApiError;
use crate::api::extract::RequestMeta;
use crate::api::AppState;
use crate::bus::CommandError;

/// `TokenPair` of API.md.
#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    /// A JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Good for one `POST /api/auth/refresh`; presenting it twice revokes its whole family.
    pub refresh_token: String,
    #[schema(value_type = String, example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
}

const BAD_REFRESH: ApiError = ApiError::Unauthorized("the refresh token is not valid");

fn ttl(secs: u64) -> Duration {
    Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

fn pair(
    state: &AppState,
    user_id: Uuid,
    roles: Vec<Role>,
    token: RefreshToken,
    now: DateTime<Utc>,
) -> Result<TokenPair, ApiError> {
    let expires_in = state.settings.auth.access_ttl_secs;
    let claims = AccessClaims::new(user_id, roles, token.session_id, now, expires_in);
    let access_token = state
        .auth
        .jwt
        .issue(&claims)
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(TokenPair {
        access_token,
        refresh_token: token.encode(&state.auth.keys.refresh),
        token_type: "Bearer",
        expires_in,
    })
}

/// Starts a session for `user` and answers its first token pair.
pub async fn start(
    state: &AppState,
    user: &UserState,
    meta: &RequestMeta,
) -> Result<TokenPair, ApiError> {
    let now = Utc::now();
    let token = RefreshToken {
        session_id: Uuid::now_v7(),
        token_id: Uuid::new_v4(),
    };
    let actor = Actor::user(user.id, user.roles.iter().copied());
    let expires_at = now + ttl(state.settings.auth.refresh_ttl_secs);
    state
        .bus
        .execute::<Session, ApiError>(
            &token.session_id.to_string(),
            &meta.context(&actor),
            None,
            |_| {
                Ok(SessionCommand::StartSession {
                    session_id: token.session_id,
                    user_id: user.id,
                    token_id: token.token_id,
                    expires_at,
                    at: now,
                })
            },
        )
        .await?;
    pair(state, user.id, actor.roles, token, now)
}

/// The session a refresh token names and its user, or 401.
async fn session_user(state: &AppState, raw: &str) -> Result<(RefreshToken, Uuid), ApiError> {
    let token = RefreshToken::decode(&state.auth.keys.refresh, raw).ok_or(BAD_REFRESH)?;
    let session = state
        .store
        .aggregate::<Session>()
        .load(&token.session_id.to_string())
        .await?;
    let user_id = session.aggregate.state().ok_or(BAD_REFRESH)?.user_id;
    Ok((token, user_id))
}

/// Exchanges a refresh token for a new pair; the presented one is retired. A retired one
/// presented again revokes the session, and the answer is 401.
pub async fn refresh(
    state: &AppState,
    raw: &str,
    meta: &RequestMeta,
) -> Result<TokenPair, ApiError> {
    let (token, user_id) = session_user(state, raw).await?;
    let user = state
        .store
        .aggregate::<User>()
        .load(&user_id.to_string())
        .await?;
    let user = user.aggregate.state().ok_or(BAD_REFRESH)?;
    let actor = Actor::user(user.id, user.roles.iter().copied());
    let now = Utc::now();
    let next = RefreshToken {
        session_id: token.session_id,
        token_id: Uuid::new_v4(),
    };
    let expires_at = now + ttl(state.settings.auth.refresh_ttl_secs);
    let committed = state
        .bus
        .execute::<Session, CommandError<SessionError>>(
            &token.session_id.to_string(),
            &meta.context(&actor),
            None,
            |_| {
                Ok(SessionCommand::RefreshSession {
                    presented_token_id: token.token_id,
                    new_token_id: next.token_id,
                    new_expires_at: expires_at,
                    at: now,
                })
            },
        )
        .await;
    match committed {
        Ok(committed) => match committed.aggregate.state() {
            Some(session)
                if session.revoked.is_none() && session.current_token_id == next.token_id =>
            {
                pair(state, user.id, actor.roles, next, now)
            }
            Some(_) => {
                tracing::warn!(session_id = %token.session_id, "refresh token reuse: session revoked");
                Err(ApiError::Unauthorized(
                    "the refresh token was already used; the session has been revoked",
                ))
            }
            None => Err(BAD_REFRESH),
        },
        Err(CommandError::Refused(_)) => Err(BAD_REFRESH),
        Err(other) => Err(ApiError::from(other)),
    }
}

/// Ends the session a refresh token belongs to; ending an ended one is fine.
pub async fn end(state: &AppState, raw: &str, meta: &RequestMeta) -> Result<(), ApiError> {
    let (token, user_id) = session_user(state, raw).await?;
    let actor = Actor::user(user_id, []);
    let ended = state
        .bus
        .execute::<Session, CommandError<SessionError>>(
            &token.session_id.to_string(),
            &meta.context(&actor),
            None,
            |_| {
                Ok(SessionCommand::EndSession {
                    presented_token_id: token.token_id,
                    at: Utc::now(),
                })
            },
        )
        .await;
    match ended {
        Ok(_) => Ok(()),
        Err(CommandError::Refused(_)) => Err(BAD_REFRESH),
        Err(other) => Err(ApiError::from(other)),
    }
}
