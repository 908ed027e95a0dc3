//! User events: what has happened to an account. Type strings and versions are written
//! out, never derived from Rust names, so renaming a variant cannot orphan stored events.

use chronicle_commands::auth::{DisplayName, Email, PasswordHash, Role};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Serialized externally tagged; the store keeps the tag in `event_type` and the inner
/// object as `payload`, so each `rename` must equal its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    #[serde(rename = "UserRegistered")]
    UserRegistered(UserRegistered),
    #[serde(rename = "PasswordChanged")]
    PasswordChanged(PasswordChanged),
    #[serde(rename = "RoleGranted")]
    RoleGranted(RoleGranted),
    #[serde(rename = "RoleRevoked")]
    RoleRevoked(RoleRevoked),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub email: Email,
    pub password_hash: PasswordHash,
    pub display_name: DisplayName,
    /// Sorted, without duplicates.
    pub roles: Vec<Role>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChanged {
    pub password_hash: PasswordHash,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGranted {
    pub role: Role,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRevoked {
    pub role: Role,
    pub at: DateTime<Utc>,
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered(_) => "UserRegistered",
            Self::PasswordChanged(_) => "PasswordChanged",
            Self::RoleGranted(_) => "RoleGranted",
            Self::RoleRevoked(_) => "RoleRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::UserRegistered(_) => "1.0",
            Self::PasswordChanged(_) => "1.0",
            Self::RoleGranted(_) => "1.0",
            Self::RoleRevoked(_) => "1.0",
        }
        .to_owned()
    }
}
