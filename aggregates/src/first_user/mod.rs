//! The FirstUser aggregate, a single instance: whoever claims it first is the first user
//! of the system. Deciding "the system is empty" through one aggregate makes it an
//! invariant guarded by optimistic concurrency, so two racing registrations cannot both
//! become admin.

mod error;
mod events;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::FirstUserError;
pub use events::{FirstUserClaimed, FirstUserEvent};

/// The id of the one FirstUser aggregate.
pub const FIRST_USER_ID: &str = "first_user";

/// Who was the first user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstUserState {
    pub user_id: Uuid,
    pub claimed_at: DateTime<Utc>,
}

/// The aggregate: empty until `FirstUserClaimed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FirstUser {
    state: Option<FirstUserState>,
}

impl FirstUser {
    pub fn state(&self) -> Option<&FirstUserState> {
        self.state.as_ref()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FirstUserCommand {
    /// Sent by every user creation before `RegisterUser`. Claiming again for the same user
    /// succeeds without events, so a registration retried after a crash keeps its answer.
    ClaimFirstUser { user_id: Uuid, at: DateTime<Utc> },
}

crate::command_names!(FirstUserCommand { ClaimFirstUser });

impl Aggregate for FirstUser {
    const TYPE: &'static str = "first_user";
    type Command = FirstUserCommand;
    type Event = FirstUserEvent;
    type Error = FirstUserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            FirstUserCommand::ClaimFirstUser { user_id, at } => match &self.state {
                Some(first) if first.user_id == user_id => {}
                Some(_) => return Err(FirstUserError::AlreadyClaimed),
                None => {
                    let event = FirstUserEvent::FirstUserClaimed(FirstUserClaimed { user_id, at });
                    sink.write(event, self).await;
                }
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            FirstUserEvent::FirstUserClaimed(claimed) => {
                self.state = Some(FirstUserState {
                    user_id: claimed.user_id,
                    claimed_at: claimed.at,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
