//! A run as its events leave it: the run's status and one entry per step.

use std::collections::BTreeMap;

use chronicle_commands::workflow::WorkflowDefinition;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::events::{ApprovalDecision, WorkflowRunEvent, WorkflowRunStarted};
use crate::task::TaskFailure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    /// An approval step waiting for a person's decision.
    WaitingApproval,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    /// Done in a way its dependants may go on from whatever the definition says (a failed
    /// step may be too: [`RunState::is_settled`]).
    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Skipped)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    pub task_id: Option<Uuid>,
    pub output: Option<Value>,
    pub error: Option<TaskFailure>,
    pub attempt: u32,
    /// While an approval step waits: when it times out, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
}

/// Why the run failed: the step that failed for good and its error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFailure {
    pub step_id: String,
    pub error: TaskFailure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub owner_id: Uuid,
    pub version: u32,
    pub definition: WorkflowDefinition,
    pub params: Map<String, Value>,
    pub status: RunStatus,
    pub steps: BTreeMap<String, StepState>,
    pub error: Option<RunFailure>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The team the run and its tasks belong to, besides their owner.
    #[serde(default)]
    pub team_id: Option<Uuid>,
}

impl RunState {
    pub(super) fn started(started: WorkflowRunStarted) -> Self {
        let steps = started
            .definition
            .steps()
            .iter()
            .map(|step| {
                (
                    step.id.clone(),
                    StepState {
                        status: StepStatus::Pending,
                        task_id: None,
                        output: None,
                        error: None,
                        attempt: 0,
                        deadline: None,
                    },
                )
            })
            .collect();
        Self {
            id: started.run_id,
            workflow_id: started.workflow_id,
            owner_id: started.owner_id,
            version: started.version,
            definition: started.definition,
            params: started.params,
            status: RunStatus::Running,
            steps,
            error: None,
            started_at: started.at,
            finished_at: None,
            team_id: started.team_id,
        }
    }

    /// The tasks of steps still running: what cancelling the run has to cancel.
    pub fn open_tasks(&self) -> Vec<Uuid> {
        self.steps
            .values()
            .filter(|step| step.status == StepStatus::Running)
            .filter_map(|step| step.task_id)
            .collect()
    }

    /// Whether the step is over in a way the run may go on from: succeeded, skipped, or
    /// failed with a step to handle it ([`WorkflowDefinition::failure_is_handled`]).
    pub fn is_settled(&self, step_id: &str) -> bool {
        self.steps.get(step_id).is_some_and(|step| {
            step.status.is_done()
                || (step.status == StepStatus::Failed
                    && self.definition.failure_is_handled(step_id))
        })
    }

    /// The first failed step no other step handles: the run fails with it.
    pub fn unhandled_failure(&self) -> Option<(&str, &StepState)> {
        self.steps
            .iter()
            .find(|(id, step)| {
                step.status == StepStatus::Failed && !self.definition.failure_is_handled(id)
            })
            .map(|(id, step)| (id.as_str(), step))
    }

    /// The approval steps still waiting whose deadline has come by `now`.
    pub fn due_approvals(&self, now: DateTime<Utc>) -> Vec<String> {
        self.steps
            .iter()
            .filter(|(_, step)| step.status == StepStatus::WaitingApproval)
            .filter(|(_, step)| step.deadline.is_some_and(|deadline| deadline <= now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn apply(&mut self, event: WorkflowRunEvent) {
        match event {
            WorkflowRunEvent::RunStarted(_) => {}
            WorkflowRunEvent::StepStarted(e) => {
                if let Some(step) = self.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::Running;
                    step.task_id = Some(e.task_id);
                }
            }
            WorkflowRunEvent::StepSucceeded(e) => {
                if let Some(step) = self.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::Succeeded;
                    step.output = Some(e.output);
                    step.attempt = e.attempt;
                }
            }
            WorkflowRunEvent::StepFailed(e) => {
                if let Some(step) = self.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::Failed;
                    step.error = Some(e.error);
                    step.attempt = e.attempt;
                }
            }
            WorkflowRunEvent::StepSkipped(e) => {
                if let Some(step) = self.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::Skipped;
                }
            }
            WorkflowRunEvent::ApprovalRequested(e) => {
                if let Some(step) = self.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::WaitingApproval;
                    step.deadline = e.deadline;
                }
            }
            WorkflowRunEvent::ApprovalDecided(e) => {
                if let Some(step) = self.steps.get_mut(&e.step_id) {
                    step.attempt = 1;
                    step.deadline = None;
                    match e.decision {
                        ApprovalDecision::Approve => {
                            step.status = StepStatus::Succeeded;
                            step.output = Some(e.data);
                        }
                        ApprovalDecision::Reject => {
                            step.status = StepStatus::Failed;
                            step.error = Some(TaskFailure {
                                message: format!("the approval was rejected by {}", e.decided_by),
                                code: Some("approval_rejected".into()),
                                details: (!e.data.is_null()).then_some(e.data),
                            });
                        }
                    }
                }
            }
            WorkflowRunEvent::ApprovalTimedOut(e) => {
                if let Some(step) = self.steps.get_mut(&e.step_id) {
                    step.status = StepStatus::Failed;
                    step.attempt = 1;
                    step.deadline = None;
                    step.error = Some(TaskFailure {
                        message: format!("no decision came by {}", e.deadline.to_rfc3339()),
                        code: Some("approval_timed_out".into()),
                        details: None,
                    });
                }
            }
            WorkflowRunEvent::RunSucceeded(e) => {
                self.status = RunStatus::Succeeded;
                self.finished_at = Some(e.at);
            }
            WorkflowRunEvent::RunFailed(e) => {
                self.status = RunStatus::Failed;
                self.error = Some(RunFailure {
                    step_id: e.step_id,
                    error: e.error,
                });
                self.finished_at = Some(e.at);
            }
            WorkflowRunEvent::RunCancelled(e) => {
                self.status = RunStatus::Cancelled;
                for step in self.steps.values_mut() {
                    if matches!(
                        step.status,
                        StepStatus::Pending | StepStatus::Running | StepStatus::WaitingApproval
                    ) {
                        step.status = StepStatus::Cancelled;
                    }
                }
                self.finished_at = Some(e.at);
            }
        }
    }
}
