//! Sessions (refresh-token families): start one at login, rotate on refresh — a retired
//! token presented again revokes the family — and end one at logout.

use chronicle_aggregates::session::{Session, SessionCommand, SessionError};
use chronicle_aggregates::user::{User, UserState};
use chronicle_commands::auth::Role;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::AuthError;
use super::jwt::AccessClaims;
use super::refresh::RefreshToken;
use super::Authenticator;
use crate::actor::Actor;
use crate::bus::{CommandBus, CommandContext, CommandError};
use crate::config::AuthSettings;

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

/// What sessions are made with: the bus that records them, the keys that sign their
/// tokens, and how long those last.
#[derive(Clone, Copy)]
pub struct Sessions<'a> {
    pub bus: &'a CommandBus,
    pub auth: &'a Authenticator,
    pub settings: &'a AuthSettings,
}

fn ttl(secs: u64) -> Duration {
    Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

/// `origin` (the metadata of the request) with `actor` as the actor of its events.
fn acting(origin: &CommandContext, actor: &Actor) -> CommandContext {
    CommandContext {
        actor: actor.to_string(),
        ..origin.clone()
    }
}

impl Sessions<'_> {
    fn pair(
        &self,
        user_id: Uuid,
        roles: Vec<Role>,
        token: RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, AuthError> {
        let expires_in = self.settings.access_ttl_secs;
        let claims = AccessClaims::new(user_id, roles, token.session_id, now, expires_in);
        Ok(TokenPair {
            access_token: self.auth.jwt.issue(&claims)?,
            refresh_token: token.encode(&self.auth.keys.refresh),
            token_type: "Bearer",
            expires_in,
        })
    }

    /// Starts a session for `user` and answers its first token pair. `origin` is the
    /// metadata of the request; the user is the actor.
    pub async fn start(
        &self,
        user: &UserState,
        origin: &CommandContext,
    ) -> Result<TokenPair, AuthError> {
        let now = Utc::now();
        let token = RefreshToken {
            session_id: Uuid::now_v7(),
            token_id: Uuid::new_v4(),
        };
        let actor = Actor::user(user.id, user.roles.iter().copied());
        let expires_at = now + ttl(self.settings.refresh_ttl_secs);
        self.bus
            .execute::<Session, AuthError>(
                &token.session_id.to_string(),
                &acting(origin, &actor),
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
        self.pair(user.id, actor.roles, token, now)
    }

    /// The session a refresh token names and its user.
    async fn session_user(&self, raw: &str) -> Result<(RefreshToken, Uuid), AuthError> {
        let token = RefreshToken::decode(&self.auth.keys.refresh, raw)
            .ok_or(AuthError::InvalidRefreshToken)?;
        let session = self
            .bus
            .store()
            .aggregate::<Session>()
            .load(&token.session_id.to_string())
            .await?;
        let user_id = session
            .aggregate
            .state()
            .ok_or(AuthError::InvalidRefreshToken)?
            .user_id;
        Ok((token, user_id))
    }

    /// Exchanges a refresh token for a new pair; the presented one is retired. A retired
    /// one presented again revokes the session ([`AuthError::RefreshTokenReused`]).
    pub async fn refresh(
        &self,
        raw: &str,
        origin: &CommandContext,
    ) -> Result<TokenPair, AuthError> {
        let (token, user_id) = self.session_user(raw).await?;
        let user = self
            .bus
            .store()
            .aggregate::<User>()
            .load(&user_id.to_string())
            .await?;
        let user = user
            .aggregate
            .state()
            .ok_or(AuthError::InvalidRefreshToken)?;
        let actor = Actor::user(user.id, user.roles.iter().copied());
        let now = Utc::now();
        let next = RefreshToken {
            session_id: token.session_id,
            token_id: Uuid::new_v4(),
        };
        let expires_at = now + ttl(self.settings.refresh_ttl_secs);
        let committed = self
            .bus
            .execute::<Session, CommandError<SessionError>>(
                &token.session_id.to_string(),
                &acting(origin, &actor),
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
                    self.pair(user.id, actor.roles, next, now)
                }
                Some(_) => {
                    tracing::warn!(session_id = %token.session_id, "refresh token reuse: session revoked");
                    Err(AuthError::RefreshTokenReused)
                }
                None => Err(AuthError::InvalidRefreshToken),
            },
            Err(CommandError::Refused(_)) => Err(AuthError::InvalidRefreshToken),
            Err(other) => Err(AuthError::from(other)),
        }
    }

    /// Ends the session a refresh token belongs to; ending an ended one is fine.
    pub async fn end(&self, raw: &str, origin: &CommandContext) -> Result<(), AuthError> {
        let (token, user_id) = self.session_user(raw).await?;
        let actor = Actor::user(user_id, []);
        let ended = self
            .bus
            .execute::<Session, CommandError<SessionError>>(
                &token.session_id.to_string(),
                &acting(origin, &actor),
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
            Err(CommandError::Refused(_)) => Err(AuthError::InvalidRefreshToken),
            Err(other) => Err(AuthError::from(other)),
        }
    }
}
