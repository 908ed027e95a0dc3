//! What Chronicle decides: the aggregates that handle commands and emit events, and the
//! rules they apply. Pure: no IO, no clock (time comes in the command), no randomness.
//!
//! Layout:
//! - [`task`]: the Task aggregate — its commands, events, errors and state machine.
//! - [`error`]: how a domain refusal is classified for the edges (missing, conflict, invalid).

pub mod error;
pub mod task;

pub use error::{DomainError, RefusalKind};
