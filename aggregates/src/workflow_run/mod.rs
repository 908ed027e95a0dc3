//! The WorkflowRun aggregate: one execution of one version of a workflow. It records what
//! the process manager decided (a step started as a task, finished, skipped) and how the
//! run ended; [`next`] says what a run is ready for. The aggregate refuses whatever has
//! become stale — a step started twice, a step of a finished run — so several managers
//! (nodes, a restart) acting on one run have one effect.

mod error;
mod events;
mod rules;
mod state;

use chronicle_commands::workflow::{ApprovalSpec, WorkflowDefinition};
use chrono::{DateTime, TimeDelta, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::task::TaskFailure;

pub use error::WorkflowRunError;
pub use events::{
    ApprovalDecision, WorkflowApprovalDecided, WorkflowApprovalRequested, WorkflowApprovalTimedOut,
    WorkflowRunCancelled, WorkflowRunEvent, WorkflowRunFailed, WorkflowRunStarted,
    WorkflowRunSucceeded, WorkflowStepFailed, WorkflowStepSkipped, WorkflowStepStarted,
    WorkflowStepSucceeded,
};
pub use rules::{context, next, Next};
pub use state::{RunFailure, RunState, RunStatus, StepState, StepStatus};

/// The aggregate: empty until `WorkflowRunStarted`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRun {
    state: Option<RunState>,
}

impl WorkflowRun {
    /// The run, or `None` when no `WorkflowRunStarted` has been applied.
    pub fn state(&self) -> Option<&RunState> {
        self.state.as_ref()
    }
}

/// What can be asked of a run. Time and identities come in the command.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowRunCommand {
    StartRun {
        run_id: Uuid,
        workflow_id: Uuid,
        owner_id: Uuid,
        version: u32,
        definition: WorkflowDefinition,
        params: Map<String, Value>,
        team_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// From pending only.
    StartStep {
        step_id: String,
        task_id: Uuid,
        at: DateTime<Utc>,
    },
    /// From running only.
    CompleteStep {
        step_id: String,
        output: Value,
        attempt: u32,
        at: DateTime<Utc>,
    },
    /// From pending (it could not start) or running.
    FailStep {
        step_id: String,
        error: TaskFailure,
        attempt: u32,
        at: DateTime<Utc>,
    },
    /// From pending only.
    SkipStep {
        step_id: String,
        reason: String,
        at: DateTime<Utc>,
    },
    /// Once every step succeeded, was skipped, or failed with a step to handle it.
    SucceedRun {
        at: DateTime<Utc>,
    },
    FailRun {
        step_id: String,
        error: TaskFailure,
        at: DateTime<Utc>,
    },
    CancelRun {
        at: DateTime<Utc>,
    },
    /// An approval step, from pending: it waits until a decision or its deadline.
    AwaitApproval {
        step_id: String,
        at: DateTime<Utc>,
    },
    /// A person's signal on a waiting approval step, before its deadline.
    DecideApproval {
        step_id: String,
        decision: ApprovalDecision,
        data: Value,
        decided_by: Uuid,
        at: DateTime<Utc>,
    },
    /// A waiting approval step whose deadline has come by `at`.
    TimeOutApproval {
        step_id: String,
        at: DateTime<Utc>,
    },
}

crate::command_names!(WorkflowRunCommand {
    StartRun,
    StartStep,
    CompleteStep,
    FailStep,
    SkipStep,
    SucceedRun,
    FailRun,
    CancelRun,
    AwaitApproval,
    DecideApproval,
    TimeOutApproval
});

type Decision = Result<WorkflowRunEvent, WorkflowRunError>;

fn decide(state: Option<&RunState>, command: WorkflowRunCommand) -> Decision {
    if let WorkflowRunCommand::StartRun {
        run_id,
        workflow_id,
        owner_id,
        version,
        definition,
        params,
        team_id,
        at,
    } = command
    {
        if state.is_some() {
            return Err(WorkflowRunError::AlreadyExists);
        }
        return Ok(WorkflowRunEvent::RunStarted(WorkflowRunStarted {
            run_id,
            workflow_id,
            owner_id,
            version,
            definition,
            params,
            at,
            team_id,
        }));
    }
    let state = state.ok_or(WorkflowRunError::NotFound)?;
    if state.status != RunStatus::Running {
        return Err(WorkflowRunError::Finished);
    }
    let step_status = |step_id: &str| {
        state
            .steps
            .get(step_id)
            .map(|s| s.status)
            .ok_or_else(|| WorkflowRunError::UnknownStep(step_id.to_owned()))
    };
    match command {
        WorkflowRunCommand::StartRun { .. } => Err(WorkflowRunError::AlreadyExists),
        WorkflowRunCommand::StartStep {
            step_id,
            task_id,
            at,
        } => {
            if step_status(&step_id)? != StepStatus::Pending {
                return Err(WorkflowRunError::StepNotPending(step_id));
            }
            Ok(WorkflowRunEvent::StepStarted(WorkflowStepStarted {
                step_id,
                task_id,
                at,
            }))
        }
        WorkflowRunCommand::CompleteStep {
            step_id,
            output,
            attempt,
            at,
        } => {
            if step_status(&step_id)? != StepStatus::Running {
                return Err(WorkflowRunError::StepNotRunning(step_id));
            }
            Ok(WorkflowRunEvent::StepSucceeded(WorkflowStepSucceeded {
                step_id,
                output,
                attempt,
                at,
            }))
        }
        WorkflowRunCommand::FailStep {
            step_id,
            error,
            attempt,
            at,
        } => {
            if !matches!(
                step_status(&step_id)?,
                StepStatus::Pending | StepStatus::Running
            ) {
                return Err(WorkflowRunError::StepNotRunning(step_id));
            }
            Ok(WorkflowRunEvent::StepFailed(WorkflowStepFailed {
                step_id,
                error,
                attempt,
                at,
            }))
        }
        WorkflowRunCommand::SkipStep {
            step_id,
            reason,
            at,
        } => {
            if step_status(&step_id)? != StepStatus::Pending {
                return Err(WorkflowRunError::StepNotPending(step_id));
            }
            Ok(WorkflowRunEvent::StepSkipped(WorkflowStepSkipped {
                step_id,
                reason,
                at,
            }))
        }
        WorkflowRunCommand::SucceedRun { at } => {
            if let Some((step_id, _)) = state.unhandled_failure() {
                return Err(WorkflowRunError::FailureUnhandled(step_id.to_owned()));
            }
            if !state.steps.keys().all(|id| state.is_settled(id)) {
                return Err(WorkflowRunError::StepsOpen);
            }
            Ok(WorkflowRunEvent::RunSucceeded(WorkflowRunSucceeded { at }))
        }
        WorkflowRunCommand::FailRun { step_id, error, at } => {
            step_status(&step_id)?;
            Ok(WorkflowRunEvent::RunFailed(WorkflowRunFailed {
                step_id,
                error,
                at,
            }))
        }
        WorkflowRunCommand::CancelRun { at } => {
            Ok(WorkflowRunEvent::RunCancelled(WorkflowRunCancelled { at }))
        }
        WorkflowRunCommand::AwaitApproval { step_id, at } => {
            if step_status(&step_id)? != StepStatus::Pending {
                return Err(WorkflowRunError::StepNotPending(step_id));
            }
            let approval = approval_of(state, &step_id)?;
            let deadline = approval
                .timeout_secs
                .and_then(TimeDelta::try_seconds)
                .and_then(|timeout| at.checked_add_signed(timeout));
            Ok(WorkflowRunEvent::ApprovalRequested(
                WorkflowApprovalRequested {
                    prompt: approval.prompt.clone(),
                    step_id,
                    deadline,
                    at,
                },
            ))
        }
        WorkflowRunCommand::DecideApproval {
            step_id,
            decision,
            data,
            decided_by,
            at,
        } => {
            let status = step_status(&step_id)?;
            approval_of(state, &step_id)?;
            if status != StepStatus::WaitingApproval {
                return Err(WorkflowRunError::StepNotWaiting(step_id));
            }
            if state.due_approvals(at).contains(&step_id) {
                return Err(WorkflowRunError::ApprovalExpired(step_id));
            }
            Ok(WorkflowRunEvent::ApprovalDecided(WorkflowApprovalDecided {
                step_id,
                decision,
                data,
                decided_by,
                at,
            }))
        }
        WorkflowRunCommand::TimeOutApproval { step_id, at } => {
            if step_status(&step_id)? != StepStatus::WaitingApproval {
                return Err(WorkflowRunError::StepNotWaiting(step_id));
            }
            let deadline = state
                .steps
                .get(&step_id)
                .and_then(|step| step.deadline)
                .filter(|deadline| *deadline <= at)
                .ok_or_else(|| WorkflowRunError::ApprovalNotDue(step_id.clone()))?;
            Ok(WorkflowRunEvent::ApprovalTimedOut(
                WorkflowApprovalTimedOut {
                    step_id,
                    deadline,
                    at,
                },
            ))
        }
    }
}

/// The approval settings of `step_id`, which must be an approval step.
fn approval_of<'a>(
    state: &'a RunState,
    step_id: &str,
) -> Result<&'a ApprovalSpec, WorkflowRunError> {
    state
        .definition
        .steps()
        .iter()
        .find(|step| step.id == step_id)
        .and_then(|step| step.approval.as_ref())
        .ok_or_else(|| WorkflowRunError::NotAnApproval(step_id.to_owned()))
}

impl Aggregate for WorkflowRun {
    const TYPE: &'static str = "workflow_run";
    type Command = WorkflowRunCommand;
    type Event = WorkflowRunEvent;
    type Error = WorkflowRunError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = decide(self.state.as_ref(), command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match (event, self.state.as_mut()) {
            (WorkflowRunEvent::RunStarted(started), _) => {
                self.state = Some(RunState::started(started));
            }
            (event, Some(state)) => state.apply(event),
            // Only a corrupt stream has events before its `WorkflowRunStarted`.
            (_, None) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
