//! The Session aggregate, one per refresh-token family: rotation with reuse detection
//! (RFC 9700 §4.14). Each refresh retires the presented token; presenting a retired one
//! again means it was copied, so the whole family is revoked.

mod error;
mod events;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::SessionError;
pub use events::{SessionEvent, SessionRefreshed, SessionRevoked, SessionStarted};

/// Why a session ended before its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// A retired refresh token was presented again.
    ReuseDetected,
    Logout,
}

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReuseDetected => "reuse_detected",
            Self::Logout => "logout",
        }
    }
}

impl std::fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything known about a started session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// The only token that may be exchanged.
    pub current_token_id: Uuid,
    /// Tokens already exchanged, oldest first; presenting one is reuse.
    pub used_token_ids: Vec<Uuid>,
    pub expires_at: DateTime<Utc>,
    pub revoked: Option<RevocationReason>,
    pub started_at: DateTime<Utc>,
}

impl SessionState {
    /// Whether the current token may still be exchanged at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked.is_none() && now < self.expires_at
    }

    fn knows(&self, token_id: Uuid) -> bool {
        self.current_token_id == token_id || self.used_token_ids.contains(&token_id)
    }
}

/// The aggregate: empty until `SessionStarted`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    state: Option<SessionState>,
}

impl Session {
    /// The session, or `None` when no `SessionStarted` has been applied.
    pub fn state(&self) -> Option<&SessionState> {
        self.state.as_ref()
    }
}

/// What can be asked of a session. Token ids, expiries and time come in the command.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    StartSession {
        session_id: Uuid,
        user_id: Uuid,
        /// The id of the first refresh token of the family.
        token_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Exchange the current refresh token for a new one. Presenting a retired token
    /// revokes the session and returns `Ok`, because an `Err` would discard the
    /// revocation; the runtime sees `revoked` in the state and answers 401.
    RefreshSession {
        presented_token_id: Uuid,
        new_token_id: Uuid,
        new_expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Logout. Idempotent once revoked.
    EndSession {
        presented_token_id: Uuid,
        at: DateTime<Utc>,
    },
}

crate::command_names!(SessionCommand {
    StartSession,
    RefreshSession,
    EndSession
});

impl Aggregate for Session {
    const TYPE: &'static str = "session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            SessionCommand::StartSession {
                session_id,
                user_id,
                token_id,
                expires_at,
                at,
            } => {
                if self.state.is_some() {
                    return Err(SessionError::AlreadyExists);
                }
                let event = SessionEvent::SessionStarted(SessionStarted {
                    session_id,
                    user_id,
                    token_id,
                    expires_at,
                    at,
                });
                sink.write(event, self).await;
            }
            SessionCommand::RefreshSession {
                presented_token_id,
                new_token_id,
                new_expires_at,
                at,
            } => {
                let state = self.state.as_ref().ok_or(SessionError::NotFound)?;
                if state.revoked.is_some() {
                    return Err(SessionError::Revoked);
                }
                if state.used_token_ids.contains(&presented_token_id) {
                    // Checked before expiry: reuse is a theft signal worth recording even
                    // on a session that has run out.
                    let event = SessionEvent::SessionRevoked(SessionRevoked {
                        reason: RevocationReason::ReuseDetected,
                        at,
                    });
                    sink.write(event, self).await;
                    return Ok(());
                }
                if presented_token_id != state.current_token_id {
                    return Err(SessionError::UnknownToken);
                }
                if at >= state.expires_at {
                    return Err(SessionError::Expired);
                }
                // A repeated id would make a retired token current again and blind reuse
                // detection.
                if state.knows(new_token_id) {
                    return Err(SessionError::DuplicateToken);
                }
                let event = SessionEvent::SessionRefreshed(SessionRefreshed {
                    previous_token_id: presented_token_id,
                    token_id: new_token_id,
                    expires_at: new_expires_at,
                    at,
                });
                sink.write(event, self).await;
            }
            SessionCommand::EndSession {
                presented_token_id,
                at,
            } => {
                let state = self.state.as_ref().ok_or(SessionError::NotFound)?;
                if state.revoked.is_some() {
                    return Ok(());
                }
                let reason = if presented_token_id == state.current_token_id {
                    RevocationReason::Logout
                } else if state.used_token_ids.contains(&presented_token_id) {
                    // Logging out still ends the family, but the record says what it was.
                    RevocationReason::ReuseDetected
                } else {
                    return Err(SessionError::UnknownToken);
                };
                let event = SessionEvent::SessionRevoked(SessionRevoked { reason, at });
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SessionEvent::SessionStarted(started) => {
                self.state = Some(SessionState {
                    session_id: started.session_id,
                    user_id: started.user_id,
                    current_token_id: started.token_id,
                    used_token_ids: Vec::new(),
                    expires_at: started.expires_at,
                    revoked: None,
                    started_at: started.at,
                });
            }
            SessionEvent::SessionRefreshed(refreshed) => {
                if let Some(state) = self.state.as_mut() {
                    state.used_token_ids.push(refreshed.previous_token_id);
                    state.current_token_id = refreshed.token_id;
                    state.expires_at = refreshed.expires_at;
                }
            }
            SessionEvent::SessionRevoked(revoked) => {
                if let Some(state) = self.state.as_mut() {
                    state.revoked = Some(revoked.reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
