//! The ApiKey aggregate: a long-lived credential of one user, stored only as a hash.

mod error;
mod events;

use chronicle_commands::auth::{ApiKeyName, ApiKeyPrefix, SecretHash};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::ApiKeyError;
pub use events::{ApiKeyEvent, ApiKeyIssued, ApiKeyRevoked, ApiKeyRotated};

/// Everything known about an issued key. The secret itself is never known here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyState {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: ApiKeyName,
    /// Changes on rotation, so a lookup by the old prefix no longer finds the key.
    pub prefix: ApiKeyPrefix,
    pub secret_hash: SecretHash,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyState {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|expires_at| now >= expires_at)
    }

    /// Whether a request bearing this key may be let in at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && !self.is_expired(now)
    }
}

/// The aggregate: empty until `ApiKeyIssued`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    state: Option<ApiKeyState>,
}

impl ApiKey {
    /// The key, or `None` when no `ApiKeyIssued` has been applied.
    pub fn state(&self) -> Option<&ApiKeyState> {
        self.state.as_ref()
    }
}

/// What can be asked of an API key. The runtime draws the secret, shows it once, and sends
/// only its prefix and HMAC; whether the caller owns the key is checked before sending.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiKeyCommand {
    IssueApiKey {
        key_id: Uuid,
        owner_id: Uuid,
        name: ApiKeyName,
        prefix: ApiKeyPrefix,
        secret_hash: SecretHash,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    /// Replaces the secret; the old one stops working. Name and expiry are kept.
    RotateApiKey {
        prefix: ApiKeyPrefix,
        secret_hash: SecretHash,
        at: DateTime<Utc>,
    },
    /// Idempotent once revoked.
    RevokeApiKey { at: DateTime<Utc> },
}

crate::command_names!(ApiKeyCommand {
    IssueApiKey,
    RotateApiKey,
    RevokeApiKey
});

impl Aggregate for ApiKey {
    const TYPE: &'static str = "api_key";
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ApiKeyCommand::IssueApiKey {
                key_id,
                owner_id,
                name,
                prefix,
                secret_hash,
                expires_at,
                at,
            } => {
                if self.state.is_some() {
                    return Err(ApiKeyError::AlreadyExists);
                }
                if expires_at.is_some_and(|expires_at| expires_at <= at) {
                    return Err(ApiKeyError::ExpiryNotInFuture);
                }
                let event = ApiKeyEvent::ApiKeyIssued(ApiKeyIssued {
                    key_id,
                    owner_id,
                    name,
                    prefix,
                    secret_hash,
                    expires_at,
                    at,
                });
                sink.write(event, self).await;
            }
            ApiKeyCommand::RotateApiKey {
                prefix,
                secret_hash,
                at,
            } => {
                let state = self.state.as_ref().ok_or(ApiKeyError::NotFound)?;
                if state.revoked_at.is_some() {
                    return Err(ApiKeyError::Revoked);
                }
                if state.is_expired(at) {
                    return Err(ApiKeyError::Expired);
                }
                let event = ApiKeyEvent::ApiKeyRotated(ApiKeyRotated {
                    prefix,
                    secret_hash,
                    at,
                });
                sink.write(event, self).await;
            }
            ApiKeyCommand::RevokeApiKey { at } => {
                let state = self.state.as_ref().ok_or(ApiKeyError::NotFound)?;
                if state.revoked_at.is_none() {
                    sink.write(ApiKeyEvent::ApiKeyRevoked(ApiKeyRevoked { at }), self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ApiKeyEvent::ApiKeyIssued(issued) => {
                self.state = Some(ApiKeyState {
                    id: issued.key_id,
                    owner_id: issued.owner_id,
                    name: issued.name,
                    prefix: issued.prefix,
                    secret_hash: issued.secret_hash,
                    created_at: issued.at,
                    expires_at: issued.expires_at,
                    rotated_at: None,
                    revoked_at: None,
                });
            }
            ApiKeyEvent::ApiKeyRotated(rotated) => {
                if let Some(state) = self.state.as_mut() {
                    state.prefix = rotated.prefix;
                    state.secret_hash = rotated.secret_hash;
                    state.rotated_at = Some(rotated.at);
                }
            }
            ApiKeyEvent::ApiKeyRevoked(revoked) => {
                if let Some(state) = self.state.as_mut() {
                    state.revoked_at = Some(revoked.at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
