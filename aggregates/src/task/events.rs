//! Task events: what has happened to a task. Type strings and versions are written out,
//! never derived from Rust names, so renaming a variant cannot orphan stored events.

use chronicle_commands::values::{
    Capability, Concurrency, Priority, RetryPolicy, Tags, TimeoutSecs,
};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::TaskFailure;

/// Serialized externally tagged; the store keeps the tag in `event_type` and the inner
/// object as `payload`, so each `rename` must equal its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskEvent {
    #[serde(rename = "TaskCreated")]
    TaskCreated(TaskCreated),
    #[serde(rename = "TaskCancelled")]
    TaskCancelled(TaskCancelled),
    #[serde(rename = "TaskLeased")]
    TaskLeased(TaskLeased),
    #[serde(rename = "TaskStarted")]
    TaskStarted(TaskStarted),
    #[serde(rename = "TaskProgressed")]
    TaskProgressed(TaskProgressed),
    #[serde(rename = "LeaseExtended")]
    LeaseExtended(LeaseExtended),
    #[serde(rename = "TaskSucceeded")]
    TaskSucceeded(TaskSucceeded),
    #[serde(rename = "TaskAttemptFailed")]
    TaskAttemptFailed(TaskAttemptFailed),
    #[serde(rename = "TaskRequeued")]
    TaskRequeued(TaskRequeued),
    #[serde(rename = "TaskReprioritised")]
    TaskReprioritised(TaskReprioritised),
    #[serde(rename = "TaskShared")]
    TaskShared(TaskShared),
    #[serde(rename = "TaskUnshared")]
    TaskUnshared(TaskUnshared),
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
    /// The task's concurrency group, if any; absent from tasks created before groups
    /// existed (and left out when there is none, so such payloads keep their shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// The team the task belongs to besides its owner; left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCancelled {
    pub reason: Option<String>,
    /// The agent that held the lease when the task was cancelled, so it can be told.
    pub agent_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

/// An agent holds the task until `lease_expires_at` unless it reports or is renewed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLeased {
    pub agent_id: Uuid,
    pub lease_id: Uuid,
    /// 1 on the first lease; each lease is one attempt.
    pub attempt: u32,
    pub lease_expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStarted {
    pub lease_id: Uuid,
    pub at: DateTime<Utc>,
}

/// A progress report; it also renews the lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskProgressed {
    pub lease_id: Uuid,
    pub progress: serde_json::Value,
    pub lease_expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A heartbeat renewed the lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseExtended {
    pub lease_id: Uuid,
    pub lease_expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSucceeded {
    pub lease_id: Uuid,
    pub agent_id: Uuid,
    pub output: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// Why an attempt ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptFailureCause {
    /// The agent reported the failure.
    Reported,
    /// Nothing was heard before the lease ran out.
    LeaseExpired,
}

/// One attempt failed, whether the agent said so or its lease ran out (`cause`). The task
/// is `retry_scheduled` until `retry_at` when it is set, `failed` for good when it is not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAttemptFailed {
    pub lease_id: Uuid,
    pub agent_id: Uuid,
    pub attempt: u32,
    pub error: TaskFailure,
    pub cause: AttemptFailureCause,
    pub retry_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// A failed or cancelled task was put back in the queue by hand, its attempts reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequeued {
    pub at: DateTime<Utc>,
}

/// The owner changed how the task is served; both values are the new, whole values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskReprioritised {
    pub priority: Priority,
    pub tags: Tags,
    pub at: DateTime<Utc>,
}

/// From now on the task belongs to `team_id` too (replacing any earlier team).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskShared {
    pub team_id: Uuid,
    pub at: DateTime<Utc>,
}

/// The task belongs to its owner alone again; `team_id` is the team it left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskUnshared {
    pub team_id: Uuid,
    pub at: DateTime<Utc>,
}

impl TaskEvent {
    /// The types of the events that end the hold a `TaskLeased` began (the task leaves
    /// `leased`/`running`); the lease slots of the store count a hold until one follows.
    pub const HOLD_ENDING_TYPES: [&'static str; 3] =
        ["TaskSucceeded", "TaskAttemptFailed", "TaskCancelled"];

    /// Whether this event ends a hold (see [`Self::HOLD_ENDING_TYPES`]).
    pub fn ends_hold(&self) -> bool {
        match self {
            Self::TaskSucceeded(_) | Self::TaskAttemptFailed(_) | Self::TaskCancelled(_) => true,
            // A requeue follows a hold's end, never a hold.
            Self::TaskCreated(_)
            | Self::TaskLeased(_)
            | Self::TaskStarted(_)
            | Self::TaskProgressed(_)
            | Self::LeaseExtended(_)
            | Self::TaskRequeued(_)
            | Self::TaskReprioritised(_)
            | Self::TaskShared(_)
            | Self::TaskUnshared(_) => false,
        }
    }
}

impl DomainEvent for TaskEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TaskCreated(_) => "TaskCreated",
            Self::TaskCancelled(_) => "TaskCancelled",
            Self::TaskLeased(_) => "TaskLeased",
            Self::TaskStarted(_) => "TaskStarted",
            Self::TaskProgressed(_) => "TaskProgressed",
            Self::LeaseExtended(_) => "LeaseExtended",
            Self::TaskSucceeded(_) => "TaskSucceeded",
            Self::TaskAttemptFailed(_) => "TaskAttemptFailed",
            Self::TaskRequeued(_) => "TaskRequeued",
            Self::TaskReprioritised(_) => "TaskReprioritised",
            Self::TaskShared(_) => "TaskShared",
            Self::TaskUnshared(_) => "TaskUnshared",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::TaskCreated(_) => "1.0",
            Self::TaskCancelled(_) => "1.0",
            Self::TaskLeased(_) => "1.0",
            Self::TaskStarted(_) => "1.0",
            Self::TaskProgressed(_) => "1.0",
            Self::LeaseExtended(_) => "1.0",
            Self::TaskSucceeded(_) => "1.0",
            Self::TaskAttemptFailed(_) => "1.0",
            Self::TaskRequeued(_) => "1.0",
            Self::TaskReprioritised(_) => "1.0",
            Self::TaskShared(_) => "1.0",
            Self::TaskUnshared(_) => "1.0",
        }
        .to_owned()
    }
}
