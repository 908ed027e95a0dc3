//! Workflow events. Type strings and versions are written out, never derived from Rust
//! names, so renaming a variant cannot orphan stored events.

use chronicle_commands::workflow::WorkflowDefinition;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Serialized externally tagged; each `rename` equals its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkflowEvent {
    #[serde(rename = "WorkflowCreated")]
    WorkflowCreated(WorkflowCreated),
    #[serde(rename = "WorkflowUpdated")]
    WorkflowUpdated(WorkflowUpdated),
    #[serde(rename = "WorkflowArchived")]
    WorkflowArchived(WorkflowArchived),
    #[serde(rename = "WorkflowShared")]
    WorkflowShared(WorkflowShared),
    #[serde(rename = "WorkflowUnshared")]
    WorkflowUnshared(WorkflowUnshared),
}

/// Version 1 of the definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowCreated {
    pub workflow_id: Uuid,
    pub owner_id: Uuid,
    pub definition: WorkflowDefinition,
    pub at: DateTime<Utc>,
    /// The team it was created for, if any; absent from workflows created before teams
    /// existed (and left out when there is none, so such payloads keep their shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
}

/// A new version; the older ones stay readable and runs keep the one they started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowUpdated {
    pub version: u32,
    pub definition: WorkflowDefinition,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowArchived {
    pub at: DateTime<Utc>,
}

/// From now on the workflow belongs to `team_id` too (replacing any earlier team).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowShared {
    pub team_id: Uuid,
    pub at: DateTime<Utc>,
}

/// The workflow belongs to its owner alone again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowUnshared {
    pub team_id: Uuid,
    pub at: DateTime<Utc>,
}

impl DomainEvent for WorkflowEvent {
    fn event_type(&self) -> String {
        match self {
            Self::WorkflowCreated(_) => "WorkflowCreated",
            Self::WorkflowUpdated(_) => "WorkflowUpdated",
            Self::WorkflowArchived(_) => "WorkflowArchived",
            Self::WorkflowShared(_) => "WorkflowShared",
            Self::WorkflowUnshared(_) => "WorkflowUnshared",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::WorkflowCreated(_) => "1.0",
            Self::WorkflowUpdated(_) => "1.0",
            Self::WorkflowArchived(_) => "1.0",
            Self::WorkflowShared(_) | Self::WorkflowUnshared(_) => "1.0",
        }
        .to_owned()
    }
}
