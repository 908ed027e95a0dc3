//! Why the ApiKey aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("the API key already exists")]
    AlreadyExists,
    #[error("the API key does not exist")]
    NotFound,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the API key has expired")]
    Expired,
    #[error("expires_at must be in the future")]
    ExpiryNotInFuture,
}

impl DomainError for ApiKeyError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::AlreadyExists | Self::Revoked | Self::Expired => RefusalKind::Conflict,
            Self::ExpiryNotInFuture => RefusalKind::Invalid,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "api_key.already_exists",
            Self::NotFound => "api_key.not_found",
            Self::Revoked => "api_key.revoked",
            Self::Expired => "api_key.expired",
            Self::ExpiryNotInFuture => "api_key.expiry_not_in_future",
        }
    }
}
