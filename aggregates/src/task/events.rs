//! Task events: what has happened to a task. Type strings and versions are written out,
//! never derived from Rust names, so renaming a variant cannot orphan stored events.

use chrono::{DateTime, Utc};
use chronicle_commands::values::{Capability, Priority, RetryPolicy, Tags, TimeoutSecs};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Serialized externally tagged; the store keeps the tag in `event_type` and the inner
/// object as `payload`, so each `rename` must equal its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskEvent {
    #[serde(rename = "TaskCreated")]
    TaskCreated(TaskCreated),
    #[serde(rename = "TaskCancelled")]
    TaskCancelled(TaskCancelled),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCreated {
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub capability: Capability,
    pub input: serde_json::Value,
    pub priority: Priority,
    pub timeout_secs: TimeoutSecs,
    pub retry: RetryPolicy,
    pub pinned_agent_id: Option<Uuid>,
    pub workflow_run_id: Option<Uuid>,
    pub tags: Tags,
    pub not_before: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCancelled {
    pub reason: Option<String>,
    /// The agent that held the lease when the task was cancelled, so it can be told.
    pub agent_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

impl DomainEvent for TaskEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TaskCreated(_) => "TaskCreated",
            Self::TaskCancelled(_) => "TaskCancelled",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::TaskCreated(_) | Self::TaskCancelled(_) => "1.0",
        }
        .to_owned()
    }
}
