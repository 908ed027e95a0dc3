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
}

impl DomainError for WorkflowRunError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::UnknownStep(_) => RefusalKind::Invalid,
            Self::AlreadyExists
            | Self::Finished
            | Self::StepNotPending(_)
            | Self::StepNotRunning(_)
            | Self::StepsOpen => RefusalKind::Conflict,
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
        }
    }
}
