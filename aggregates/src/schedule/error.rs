//! Why the Schedule aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the schedule already exists")]
    AlreadyExists,
    #[error("the schedule does not exist")]
    NotFound,
    /// A deleted schedule fires no more.
    #[error("the schedule is deleted")]
    Deleted,
    /// Another node (or an earlier attempt) already recorded this firing or a later one.
    #[error("the schedule has already fired for this time or a later one")]
    AlreadyFired,
}

impl DomainError for ScheduleError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound | Self::Deleted => RefusalKind::NotFound,
            Self::AlreadyExists | Self::AlreadyFired => RefusalKind::Conflict,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "schedule.already_exists",
            Self::NotFound => "schedule.not_found",
            Self::Deleted => "schedule.deleted",
            Self::AlreadyFired => "schedule.already_fired",
        }
    }
}
