//! Schedule events. Type strings and versions are written out, never derived from Rust
//! names, so renaming a variant cannot orphan stored events.

use chronicle_commands::schedule::ScheduleSpec;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Serialized externally tagged; each `rename` equals its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScheduleEvent {
    #[serde(rename = "ScheduleCreated")]
    ScheduleCreated(ScheduleCreated),
    #[serde(rename = "ScheduleFired")]
    ScheduleFired(ScheduleFired),
    #[serde(rename = "ScheduleDeleted")]
    ScheduleDeleted(ScheduleDeleted),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCreated {
    pub schedule_id: Uuid,
    pub workflow_id: Uuid,
    pub owner_id: Uuid,
    pub spec: ScheduleSpec,
    pub at: DateTime<Utc>,
}

/// The firing for `fire_at` happened: `run_id` is the run it started (derived from the
/// schedule and `fire_at`), or `None` with `skipped` saying why no run could start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFired {
    pub fire_at: DateTime<Utc>,
    pub run_id: Option<Uuid>,
    /// The workflow version the run uses (the latest at `fire_at`).
    pub version: Option<u32>,
    pub skipped: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDeleted {
    pub at: DateTime<Utc>,
}

impl DomainEvent for ScheduleEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ScheduleCreated(_) => "ScheduleCreated",
            Self::ScheduleFired(_) => "ScheduleFired",
            Self::ScheduleDeleted(_) => "ScheduleDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::ScheduleCreated(_) => "1.0",
            Self::ScheduleFired(_) => "1.0",
            Self::ScheduleDeleted(_) => "1.0",
        }
        .to_owned()
    }
}
