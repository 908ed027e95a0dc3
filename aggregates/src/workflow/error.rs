//! Why the Workflow aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("the workflow already exists")]
    AlreadyExists,
    #[error("the workflow does not exist")]
    NotFound,
    /// Archiving is final: archived workflows are neither changed nor executed.
    #[error("the workflow is archived")]
    Archived,
}

impl DomainError for WorkflowError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::AlreadyExists | Self::Archived => RefusalKind::Conflict,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "workflow.already_exists",
            Self::NotFound => "workflow.not_found",
            Self::Archived => "workflow.archived",
        }
    }
}
