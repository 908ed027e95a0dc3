//! Why the Task aggregate refuses a command.

use chrono::{DateTime, Utc};

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
    /// The lease named is not the live one: unknown, expired, ended or replaced.
    #[error("the lease is not (or no longer) valid for this task")]
    StaleLease,
    #[error("the task may not be leased before {not_before}")]
    NotReady { not_before: DateTime<Utc> },
    #[error("the task is pinned to another agent")]
    PinnedToAnotherAgent,
    /// An expiry timer fired early, e.g. after a heartbeat renewed the lease.
    #[error("the lease does not expire before {expires_at}")]
    LeaseNotExpired { expires_at: DateTime<Utc> },
}

impl DomainError for TaskError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::AlreadyExists
            | Self::IllegalTransition { .. }
            | Self::StaleLease
            | Self::NotReady { .. }
            | Self::PinnedToAnotherAgent
            | Self::LeaseNotExpired { .. } => RefusalKind::Conflict,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "task.already_exists",
            Self::NotFound => "task.not_found",
            Self::IllegalTransition { .. } => "task.illegal_transition",
            Self::StaleLease => "task.stale_lease",
            Self::NotReady { .. } => "task.not_ready",
            Self::PinnedToAnotherAgent => "task.pinned_to_another_agent",
            Self::LeaseNotExpired { .. } => "task.lease_not_expired",
        }
    }
}
