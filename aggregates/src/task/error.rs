//! Why the Task aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};
use crate::task::TaskStatus;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("the task already exists")]
    AlreadyExists,
    #[error("the task does not exist")]
    NotFound,
    #[error("a {from} task cannot {action}")]
    IllegalTransition {
        from: TaskStatus,
        action: &'static str,
    },
}

impl DomainError for TaskError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::AlreadyExists | Self::IllegalTransition { .. } => RefusalKind::Conflict,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "task.already_exists",
            Self::NotFound => "task.not_found",
            Self::IllegalTransition { .. } => "task.illegal_transition",
        }
    }
}
