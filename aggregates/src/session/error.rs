//! Why the Session aggregate refuses a command. The runtime answers each with 401.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session already exists")]
    AlreadyExists,
    #[error("the session does not exist")]
    NotFound,
    #[error("the session has been revoked")]
    Revoked,
    #[error("the session has expired")]
    Expired,
    #[error("the refresh token does not belong to this session")]
    UnknownToken,
    #[error("the new refresh token id has already been used in this session")]
    DuplicateToken,
}

impl DomainError for SessionError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::AlreadyExists | Self::Revoked | Self::Expired | Self::UnknownToken => {
                RefusalKind::Conflict
            }
            Self::DuplicateToken => RefusalKind::Invalid,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "session.already_exists",
            Self::NotFound => "session.not_found",
            Self::Revoked => "session.revoked",
            Self::Expired => "session.expired",
            Self::UnknownToken => "session.unknown_token",
            Self::DuplicateToken => "session.duplicate_token",
        }
    }
}
