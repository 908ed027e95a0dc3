//! ApiKey events. Type strings and versions are written out, never derived from Rust
//! names, so renaming a variant cannot orphan stored events.

use chronicle_commands::auth::{ApiKeyName, ApiKeyPrefix, SecretHash};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Serialized externally tagged; the store keeps the tag in `event_type` and the inner
/// object as `payload`, so each `rename` must equal its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiKeyEvent {
    #[serde(rename = "ApiKeyIssued")]
    ApiKeyIssued(ApiKeyIssued),
    #[serde(rename = "ApiKeyRotated")]
    ApiKeyRotated(ApiKeyRotated),
    #[serde(rename = "ApiKeyRevoked")]
    ApiKeyRevoked(ApiKeyRevoked),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyIssued {
    pub key_id: Uuid,
    pub owner_id: Uuid,
    pub name: ApiKeyName,
    pub prefix: ApiKeyPrefix,
    pub secret_hash: SecretHash,
    pub expires_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRotated {
    pub prefix: ApiKeyPrefix,
    pub secret_hash: SecretHash,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRevoked {
    pub at: DateTime<Utc>,
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ApiKeyIssued(_) => "ApiKeyIssued",
            Self::ApiKeyRotated(_) => "ApiKeyRotated",
            Self::ApiKeyRevoked(_) => "ApiKeyRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::ApiKeyIssued(_) => "1.0",
            Self::ApiKeyRotated(_) => "1.0",
            Self::ApiKeyRevoked(_) => "1.0",
        }
        .to_owned()
    }
}
