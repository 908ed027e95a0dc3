//! How a domain refusal is classified, so the HTTP edge can answer without knowing each
//! aggregate's error type.

/// The class of a refusal: what the client did wrong, as HTTP would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The aggregate does not exist (404).
    NotFound,
    /// The caller may see the aggregate but not do this (403).
    Forbidden,
    /// The command does not fit the current state (409).
    Conflict,
    /// The command is well-formed but breaks a rule (422).
    Invalid,
}

/// Implemented by every aggregate's error enum.
pub trait DomainError: std::error::Error {
    fn kind(&self) -> RefusalKind;
    /// A stable, machine-readable code, e.g. `task.illegal_transition`.
    fn code(&self) -> &'static str;
}
