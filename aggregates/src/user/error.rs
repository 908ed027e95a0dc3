//! Why the User aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("the user already exists")]
    AlreadyExists,
    #[error("the user does not exist")]
    NotFound,
    #[error("a user must hold at least one role")]
    NoRoles,
    #[error("the user's last role cannot be revoked")]
    LastRole,
}

impl DomainError for UserError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::AlreadyExists | Self::LastRole => RefusalKind::Conflict,
            Self::NoRoles => RefusalKind::Invalid,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "user.already_exists",
            Self::NotFound => "user.not_found",
            Self::NoRoles => "user.no_roles",
            Self::LastRole => "user.last_role",
        }
    }
}
