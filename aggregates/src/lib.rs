//! What Chronicle decides: the aggregates that handle commands and emit events, and the
//! rules they apply. Pure: no IO, no clock (time comes in the command), no randomness.
//!
//! Layout:
//! - [`task`]: the Task aggregate — its commands, events, errors and state machine.
//! - [`agent`]: the Agent aggregate — registration, recorded heartbeats, drain, deregister.
//! - [`user`]: the User aggregate — an account, its password hash and roles.
//! - [`email_claim`]: one aggregate per email, so an address belongs to one user.
//! - [`first_user`]: one aggregate for the system, so exactly one user is the first.
//! - [`session`]: refresh-token families — rotation and reuse detection.
//! - [`api_key`]: a user's API keys — issue, rotate, revoke; stored only as hashes.
//! - [`workflow`]: the Workflow aggregate — a versioned definition, archived at the end.
//! - [`workflow_run`]: the WorkflowRun aggregate — one run of a version, step by step, and
//!   what a run is ready for next.
//! - [`schedule`]: the Schedule aggregate — a cron expression that starts runs of a
//!   workflow, each firing recorded once.
//! - [`team`]: the Team aggregate — members and their roles, invitations, the last owner.
//! - [`codec`]: events to `(event_type, event_version, payload)` and back.
//! - [`error`]: how a domain refusal is classified for the edges (missing, conflict, invalid).

pub mod agent;
pub mod api_key;
pub mod codec;
pub mod email_claim;
pub mod error;
pub mod first_user;
pub mod schedule;
pub mod session;
pub mod task;
pub mod team;
pub mod user;
pub mod workflow;
pub mod workflow_run;

pub use error::{DomainError, RefusalKind};

/// A command's name, for the metrics: its variant, written out.
pub trait CommandName {
    fn name(&self) -> &'static str;
}

/// Implements [`CommandName`] for a command enum from the list of its variants.
macro_rules! command_names {
    ($command:ty { $($variant:ident),* $(,)? }) => {
        impl $crate::CommandName for $command {
            fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => stringify!($variant),)*
                }
            }
        }
    };
}
pub(crate) use command_names;
