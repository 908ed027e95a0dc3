//! What is known about a task, and how each event changes it.

use chronicle_commands::values::{
    Capability, Concurrency, Priority, RetryPolicy, Tags, TimeoutSecs,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::events::{AttemptFailureCause, TaskCreated, TaskEvent};

/// Where a task is in its life; `succeeded`, `failed` and `cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    RetryScheduled,
    Leased,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::RetryScheduled => "retry_scheduled",
            Self::Leased => "leased",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Leased or running: an agent holds a lease on the task.
    pub fn is_held(self) -> bool {
        matches!(self, Self::Leased | Self::Running)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed: `{message, code?, details?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskFailure {
    pub message: String,
    /// `lease_expired` when the lease ran out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub details: Option<serde_json::Value>,
}

impl TaskFailure {
    /// The code of the failure recorded when a lease runs out.
    pub const LEASE_EXPIRED: &'static str = "lease_expired";

    pub(crate) fn lease_expired() -> Self {
        Self {
            message: "the lease expired before the agent reported".to_owned(),
            code: Some(Self::LEASE_EXPIRED.to_owned()),
            details: None,
        }
    }
}

/// How a lease that is no longer live ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseOutcome {
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

/// The most recently ended lease, kept so that a result delivered twice is recognised as
/// the same result (no second effect) rather than refused as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedLease {
    pub lease_id: Uuid,
    pub outcome: LeaseOutcome,
}

/// Everything known about a task that exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub capability: Capability,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    /// The error of the latest failed attempt; cleared by success and by a manual retry.
    pub error: Option<TaskFailure>,
    pub status: TaskStatus,
    pub priority: Priority,
    /// How many leases were granted since creation or the last manual retry.
    pub attempt: u32,
    pub retry: RetryPolicy,
    pub timeout_secs: TimeoutSecs,
    /// The agent of the current or latest lease.
    pub agent_id: Option<Uuid>,
    pub pinned_agent_id: Option<Uuid>,
    pub workflow_run_id: Option<Uuid>,
    pub tags: Tags,
    /// Not to be leased before this: the creator's `not_before`, then each `retry_at`.
    pub not_before: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the live (or, once it ended, the latest) lease was granted.
    #[serde(default)]
    pub leased_at: Option<DateTime<Utc>>,
    /// When the latest attempt started running.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The live lease: set exactly while the task is leased or running.
    #[serde(default)]
    pub lease_id: Option<Uuid>,
    #[serde(default)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The latest progress report of the current attempt.
    #[serde(default)]
    pub progress: Option<serde_json::Value>,
    #[serde(default)]
    pub last_lease: Option<EndedLease>,
    /// The concurrency group the task waits its turn in, if any.
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// The team whose members may read it (and, by role, change it).
    #[serde(default)]
    pub team_id: Option<Uuid>,
}

impl TaskState {
    pub(crate) fn created(created: TaskCreated) -> Self {
        Self {
            id: created.task_id,
            owner_id: created.owner_id,
            capability: created.capability,
            input: created.input,
            output: None,
            error: None,
            status: TaskStatus::Queued,
            priority: created.priority,
            attempt: 0,
            retry: created.retry,
            timeout_secs: created.timeout_secs,
            agent_id: None,
            pinned_agent_id: created.pinned_agent_id,
            workflow_run_id: created.workflow_run_id,
            tags: created.tags,
            not_before: created.not_before,
            created_at: created.at,
            updated_at: created.at,
            leased_at: None,
            started_at: None,
            finished_at: None,
            lease_id: None,
            lease_expires_at: None,
            progress: None,
            last_lease: None,
            concurrency: created.concurrency,
            team_id: created.team_id,
        }
    }

    /// Applies every event but `TaskCreated`, which makes the state rather than changes it.
    pub(crate) fn apply(&mut self, event: TaskEvent) {
        match event {
            TaskEvent::TaskCreated(_) => {}
            TaskEvent::TaskCancelled(e) => {
                self.end_lease(LeaseOutcome::Cancelled);
                self.status = TaskStatus::Cancelled;
                self.finished_at = Some(e.at);
                self.updated_at = e.at;
            }
            TaskEvent::TaskLeased(e) => {
                self.status = TaskStatus::Leased;
                self.agent_id = Some(e.agent_id);
                self.lease_id = Some(e.lease_id);
                self.lease_expires_at = Some(e.lease_expires_at);
                self.leased_at = Some(e.at);
                self.attempt = e.attempt;
                self.not_before = None;
                self.progress = None;
                self.updated_at = e.at;
            }
            TaskEvent::TaskStarted(e) => {
                self.status = TaskStatus::Running;
                self.started_at = Some(e.at);
                self.updated_at = e.at;
            }
            TaskEvent::TaskProgressed(e) => {
                self.progress = Some(e.progress);
                self.lease_expires_at = Some(e.lease_expires_at);
                self.updated_at = e.at;
            }
            TaskEvent::LeaseExtended(e) => {
                self.lease_expires_at = Some(e.lease_expires_at);
                self.updated_at = e.at;
            }
            TaskEvent::TaskSucceeded(e) => {
                self.end_lease(LeaseOutcome::Succeeded);
                self.status = TaskStatus::Succeeded;
                self.output = Some(e.output);
                self.error = None;
                self.finished_at = Some(e.at);
                self.updated_at = e.at;
            }
            TaskEvent::TaskAttemptFailed(e) => {
                self.end_lease(match e.cause {
                    AttemptFailureCause::Reported => LeaseOutcome::Failed,
                    AttemptFailureCause::LeaseExpired => LeaseOutcome::Expired,
                });
                self.error = Some(e.error);
                self.not_before = e.retry_at;
                match e.retry_at {
                    Some(_) => self.status = TaskStatus::RetryScheduled,
                    None => {
                        self.status = TaskStatus::Failed;
                        self.finished_at = Some(e.at);
                    }
                }
                self.updated_at = e.at;
            }
            TaskEvent::TaskRequeued(e) => {
                self.status = TaskStatus::Queued;
                self.attempt = 0;
                self.agent_id = None;
                self.output = None;
                self.error = None;
                self.not_before = None;
                self.leased_at = None;
                self.started_at = None;
                self.finished_at = None;
                self.progress = None;
                self.last_lease = None;
                self.updated_at = e.at;
            }
            TaskEvent::TaskReprioritised(e) => {
                self.priority = e.priority;
                self.tags = e.tags;
                self.updated_at = e.at;
            }
            TaskEvent::TaskShared(e) => {
                self.team_id = Some(e.team_id);
                self.updated_at = e.at;
            }
            TaskEvent::TaskUnshared(e) => {
                self.team_id = None;
                self.updated_at = e.at;
            }
        }
    }

    /// Moves the live lease, if any, to `last_lease` with how it ended.
    fn end_lease(&mut self, outcome: LeaseOutcome) {
        if let Some(lease_id) = self.lease_id.take() {
            self.last_lease = Some(EndedLease { lease_id, outcome });
        }
        self.lease_expires_at = None;
    }
}
