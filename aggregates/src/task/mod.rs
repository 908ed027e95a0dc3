//! The Task aggregate: one unit of work for an agent, from creation to a terminal state.

mod error;
mod events;

use chrono::{DateTime, Utc};
use chronicle_commands::task::TaskSpec;
use chronicle_commands::values::{Capability, Priority, RetryPolicy, Tags, TimeoutSecs};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::TaskError;
pub use events::{TaskCancelled, TaskCreated, TaskEvent};

/// Where a task is in its life. `Succeeded`, `Failed` and `Cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed: `{message, code?, details?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// Everything known about a task that exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub capability: Capability,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub error: Option<TaskFailure>,
    pub status: TaskStatus,
    pub priority: Priority,
    pub attempt: u32,
    pub retry: RetryPolicy,
    pub timeout_secs: TimeoutSecs,
    pub agent_id: Option<Uuid>,
    pub pinned_agent_id: Option<Uuid>,
    pub workflow_run_id: Option<Uuid>,
    pub tags: Tags,
    pub not_before: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The aggregate: empty until `TaskCreated`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    state: Option<TaskState>,
}

impl Task {
    /// The task, or `None` when no `TaskCreated` has been applied.
    pub fn state(&self) -> Option<&TaskState> {
        self.state.as_ref()
    }
}

/// What can be asked of a task. Time and identities come in the command.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskCommand {
    CreateTask {
        task_id: Uuid,
        owner_id: Uuid,
        spec: TaskSpec,
        workflow_run_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    CancelTask {
        reason: Option<String>,
        at: DateTime<Utc>,
    },
}

impl Aggregate for Task {
    const TYPE: &'static str = "task";
    type Command = TaskCommand;
    type Event = TaskEvent;
    type Error = TaskError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            TaskCommand::CreateTask {
                task_id,
                owner_id,
                spec,
                workflow_run_id,
                at,
            } => {
                if self.state.is_some() {
                    return Err(TaskError::AlreadyExists);
                }
                let event = TaskEvent::TaskCreated(TaskCreated {
                    task_id,
                    owner_id,
                    capability: spec.capability,
                    input: spec.input,
                    priority: spec.priority,
                    timeout_secs: spec.timeout_secs,
                    retry: spec.retry,
                    pinned_agent_id: spec.pinned_agent_id,
                    workflow_run_id,
                    tags: spec.tags,
                    not_before: spec.not_before,
                    at,
                });
                sink.write(event, self).await;
            }
            TaskCommand::CancelTask { reason, at } => {
                let state = self.state.as_ref().ok_or(TaskError::NotFound)?;
                match state.status {
                    TaskStatus::Cancelled => {}
                    status if status.is_terminal() => {
                        return Err(TaskError::IllegalTransition {
                            from: status,
                            action: "cancel",
                        });
                    }
                    _ => {
                        let event = TaskEvent::TaskCancelled(TaskCancelled {
                            reason,
                            agent_id: state.agent_id,
                            at,
                        });
                        sink.write(event, self).await;
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TaskEvent::TaskCreated(created) => {
                self.state = Some(TaskState {
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
                    started_at: None,
                    finished_at: None,
                });
            }
            TaskEvent::TaskCancelled(cancelled) => {
                if let Some(state) = self.state.as_mut() {
                    state.status = TaskStatus::Cancelled;
                    state.updated_at = cancelled.at;
                    state.finished_at = Some(cancelled.at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
