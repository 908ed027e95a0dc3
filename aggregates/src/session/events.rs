//! Session events: a refresh-token family's start, rotations and end. Type strings and
//! versions are written out, never derived from Rust names, so renaming a variant cannot
//! orphan stored events.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::RevocationReason;

/// Serialized externally tagged; the store keeps the tag in `event_type` and the inner
/// object as `payload`, so each `rename` must equal its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SessionEvent {
    #[serde(rename = "SessionStarted")]
    SessionStarted(SessionStarted),
    #[serde(rename = "SessionRefreshed")]
    SessionRefreshed(SessionRefreshed),
    #[serde(rename = "SessionRevoked")]
    SessionRevoked(SessionRevoked),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStarted {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub token_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRefreshed {
    pub previous_token_id: Uuid,
    pub token_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRevoked {
    pub reason: RevocationReason,
    pub at: DateTime<Utc>,
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionStarted(_) => "SessionStarted",
            Self::SessionRefreshed(_) => "SessionRefreshed",
            Self::SessionRevoked(_) => "SessionRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::SessionStarted(_) => "1.0",
            Self::SessionRefreshed(_) => "1.0",
            Self::SessionRevoked(_) => "1.0",
        }
        .to_owned()
    }
}
