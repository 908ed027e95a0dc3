//! Why the WorkflowRun aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowRunError {
    #[error("the run already exists")]
    AlreadyExists,
    #[error("the run does not exist")]
    NotFound,
    /// Succeeded, failed or cancelled: nothing changes a finished run.
    #[error("the run is finished")]
    Finished,
    #[error("the run has no step {0:?}")]
    UnknownStep(String),
    #[error("step {0:?} has already started")]
    StepNotPending(String),
    #[error("step {0:?} is not running")]
    StepNotRunning(String),
    #[error("some steps have not finished")]
    StepsOpen,
    /// A run with a failure no step handles cannot succeed.
    #[error("step {0:?} failed and no step handles it")]
    FailureUnhandled(String),
    #[error("step {0:?} is not an approval step")]
    NotAnApproval(String),
    #[error("step {0:?} is not waiting for approval")]
    StepNotWaiting(String),
    /// A decision after the deadline: the step is about to time out.
    #[error("the approval of step {0:?} has timed out")]
    ApprovalExpired(String),
    /// A time-out before the deadline, or of a step that has none.
    #[error("the approval of step {0:?} is not due to time out")]
    ApprovalNotDue(String),
}

impl DomainError for WorkflowRunError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::UnknownStep(_) | Self::NotAnApproval(_) => RefusalKind::Invalid,
            Self::AlreadyExists
            | Self::Finished
            | Self::StepNotPending(_)
            | Self::StepNotRunning(_)
            | Self::StepsOpen
            | Self::FailureUnhandled(_)
            | Self::StepNotWaiting(_)
            | Self::ApprovalExpired(_)
            | Self::ApprovalNotDue(_) => RefusalKind::Conflict,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "workflow_run.already_exists",
            Self::NotFound => "workflow_run.not_found",
            Self::Finished => "workflow_run.finished",
            Self::UnknownStep(_) => "workflow_run.unknown_step",
            Self::StepNotPending(_) => "workflow_run.step_not_pending",
            Self::StepNotRunning(_) => "workflow_run.step_not_running",
            Self::StepsOpen => "workflow_run.steps_open",
            Self::FailureUnhandled(_) => "workflow_run.failure_unhandled",
            Self::NotAnApproval(_) => "workflow_run.not_an_approval",
            Self::StepNotWaiting(_) => "workflow_run.step_not_waiting",
            Self::ApprovalExpired(_) => "workflow_run.approval_expired",
            Self::ApprovalNotDue(_) => "workflow_run.approval_not_due",
        }
    }
}
