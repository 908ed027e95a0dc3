//! Why the EmailClaim aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailClaimError {
    #[error("the email address is already taken")]
    EmailTaken,
}

impl DomainError for EmailClaimError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::EmailTaken => RefusalKind::Conflict,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::EmailTaken => "email_claim.taken",
        }
    }
}
