//! WorkflowRun events. Type strings and versions are written out, never derived from Rust
//! names, so renaming a variant cannot orphan stored events.

use chronicle_commands::workflow::WorkflowDefinition;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::task::TaskFailure;

/// Serialized externally tagged; each `rename` equals its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkflowRunEvent {
    #[serde(rename = "WorkflowRunStarted")]
    RunStarted(WorkflowRunStarted),
    #[serde(rename = "WorkflowStepStarted")]
    StepStarted(WorkflowStepStarted),
    #[serde(rename = "WorkflowStepSucceeded")]
    StepSucceeded(WorkflowStepSucceeded),
    #[serde(rename = "WorkflowStepFailed")]
    StepFailed(WorkflowStepFailed),
    #[serde(rename = "WorkflowStepSkipped")]
    StepSkipped(WorkflowStepSkipped),
    #[serde(rename = "WorkflowRunSucceeded")]
    RunSucceeded(WorkflowRunSucceeded),
    #[serde(rename = "WorkflowRunFailed")]
    RunFailed(WorkflowRunFailed),
    #[serde(rename = "WorkflowRunCancelled")]
    RunCancelled(WorkflowRunCancelled),
    #[serde(rename = "WorkflowApprovalRequested")]
    ApprovalRequested(WorkflowApprovalRequested),
    #[serde(rename = "WorkflowApprovalDecided")]
    ApprovalDecided(WorkflowApprovalDecided),
    #[serde(rename = "WorkflowApprovalTimedOut")]
    ApprovalTimedOut(WorkflowApprovalTimedOut),
}

/// The run keeps the definition it started with: a later version changes nothing here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunStarted {
    pub run_id: Uuid,
    pub workflow_id: Uuid,
    pub owner_id: Uuid,
    pub version: u32,
    pub definition: WorkflowDefinition,
    /// Bound: checked against their types, defaults filled in.
    pub params: Map<String, Value>,
    pub at: DateTime<Utc>,
    /// The team of the workflow when the run started: its tasks belong to that team too.
    /// Absent from runs of before teams, and left out when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
}

/// The step's task was created with `task_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStepStarted {
    pub step_id: String,
    pub task_id: Uuid,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStepSucceeded {
    pub step_id: String,
    pub output: Value,
    /// The task's attempt that succeeded.
    pub attempt: u32,
    pub at: DateTime<Utc>,
}

/// Failed for good: the task used up its attempts, was cancelled, or could not be made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStepFailed {
    pub step_id: String,
    pub error: TaskFailure,
    pub attempt: u32,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStepSkipped {
    pub step_id: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunSucceeded {
    pub at: DateTime<Utc>,
}

/// The run failed because `step_id` did, with that step's error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunFailed {
    pub step_id: String,
    pub error: TaskFailure,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunCancelled {
    pub at: DateTime<Utc>,
}

/// An approval step began to wait for its decision, until `deadline` when it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowApprovalRequested {
    pub step_id: String,
    pub prompt: String,
    pub deadline: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// What a person decided on an approval step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    Approve,
    Reject,
}

/// A person's signal: `decided_by` approved (the step succeeds with `data` as its output)
/// or rejected (it fails) the step at `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowApprovalDecided {
    pub step_id: String,
    pub decision: ApprovalDecision,
    pub data: Value,
    pub decided_by: Uuid,
    pub at: DateTime<Utc>,
}

/// No decision came by the step's deadline: it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowApprovalTimedOut {
    pub step_id: String,
    pub deadline: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

impl DomainEvent for WorkflowRunEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RunStarted(_) => "WorkflowRunStarted",
            Self::StepStarted(_) => "WorkflowStepStarted",
            Self::StepSucceeded(_) => "WorkflowStepSucceeded",
            Self::StepFailed(_) => "WorkflowStepFailed",
            Self::StepSkipped(_) => "WorkflowStepSkipped",
            Self::RunSucceeded(_) => "WorkflowRunSucceeded",
            Self::RunFailed(_) => "WorkflowRunFailed",
            Self::RunCancelled(_) => "WorkflowRunCancelled",
            Self::ApprovalRequested(_) => "WorkflowApprovalRequested",
            Self::ApprovalDecided(_) => "WorkflowApprovalDecided",
            Self::ApprovalTimedOut(_) => "WorkflowApprovalTimedOut",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
