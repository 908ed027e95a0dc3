//! Why a credential operation failed, said in the terms of credentials. The HTTP edge
//! answers it through one `From<AuthError> for ApiError` (`api/error.rs`).

use chronicle_aggregates::{DomainError, RefusalKind};

use super::password::PasswordError;
use crate::bus::CommandError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The email address already belongs to an account.
    #[error("the email address is already taken")]
    EmailTaken,
    /// The refresh token is malformed, forged, unknown, expired or ended.
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    /// A retired refresh token came back; its whole session has just been revoked.
    #[error("the refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    /// An aggregate refused a command (`code` as its error names it).
    #[error("{detail}")]
    Refused {
        kind: RefusalKind,
        code: &'static str,
        detail: String,
    },
    /// Other writers kept winning the race for the same aggregate.
    #[error("the credential kept changing concurrently")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("signing an access token failed: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// What cannot happen unless the store lies, e.g. a committed user without state.
    #[error("inconsistent credentials: {0}")]
    Inconsistent(&'static str),
}

impl<E: DomainError> From<CommandError<E>> for AuthError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Refused(refusal) => Self::Refused {
                kind: refusal.kind(),
                code: refusal.code(),
                detail: refusal.to_string(),
            },
            // No credential command is conditional on a version; should one become so, a
            // stale version is a lost race like any other.
            CommandError::Conflict | CommandError::PreconditionFailed { .. } => Self::Conflict,
            CommandError::Store(store) => Self::Store(store),
        }
    }
}
