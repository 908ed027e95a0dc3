//! Why the Agent aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("the agent already exists")]
    AlreadyExists,
    #[error("the agent does not exist")]
    NotFound,
    /// Deregistration is final: an agent that comes back registers anew.
    #[error("the agent is deregistered")]
    Deregistered,
}

impl DomainError for AgentError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound => RefusalKind::NotFound,
            Self::AlreadyExists | Self::Deregistered => RefusalKind::Conflict,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "agent.already_exists",
            Self::NotFound => "agent.not_found",
            Self::Deregistered => "agent.deregistered",
        }
    }
}
