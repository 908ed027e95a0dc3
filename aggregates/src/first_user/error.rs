//! Why the FirstUser aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirstUserError {
    #[error("another user was the first")]
    AlreadyClaimed,
}

impl DomainError for FirstUserError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::AlreadyClaimed => RefusalKind::Conflict,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyClaimed => "first_user.already_claimed",
        }
    }
}
