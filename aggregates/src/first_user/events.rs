//! FirstUser events. Type strings and versions are written out, never derived from Rust
//! names, so renaming a variant cannot orphan stored events.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Serialized externally tagged; the store keeps the tag in `event_type` and the inner
/// object as `payload`, so each `rename` must equal its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FirstUserEvent {
    #[serde(rename = "FirstUserClaimed")]
    FirstUserClaimed(FirstUserClaimed),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstUserClaimed {
    pub user_id: Uuid,
    pub at: DateTime<Utc>,
}

impl DomainEvent for FirstUserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::FirstUserClaimed(_) => "FirstUserClaimed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::FirstUserClaimed(_) => "1.0",
        }
        .to_owned()
    }
}
