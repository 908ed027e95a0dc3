//! The EmailClaim aggregate, one per normalized email: makes "one account per email" an
//! invariant guarded by the event store's optimistic concurrency, not a read-then-write race.

mod error;
mod events;

use chronicle_commands::auth::Email;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::EmailClaimError;
pub use events::{EmailClaimEvent, EmailClaimed};

/// Who holds an email address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailClaimState {
    pub email: Email,
    pub user_id: Uuid,
    pub claimed_at: DateTime<Utc>,
}

/// The aggregate, identified by the normalized email: empty until `EmailClaimed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmailClaim {
    state: Option<EmailClaimState>,
}

impl EmailClaim {
    /// The claim, or `None` while the email is free.
    pub fn state(&self) -> Option<&EmailClaimState> {
        self.state.as_ref()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum EmailClaimCommand {
    /// Sent before `RegisterUser`. Claiming again for the same user succeeds without events,
    /// so a registration retried after a crash between the two commands can finish.
    ClaimEmail {
        email: Email,
        user_id: Uuid,
        at: DateTime<Utc>,
    },
}

crate::command_names!(EmailClaimCommand { ClaimEmail });

impl Aggregate for EmailClaim {
    const TYPE: &'static str = "email_claim";
    type Command = EmailClaimCommand;
    type Event = EmailClaimEvent;
    type Error = EmailClaimError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            EmailClaimCommand::ClaimEmail { email, user_id, at } => match &self.state {
                Some(claim) if claim.user_id == user_id => {}
                Some(_) => return Err(EmailClaimError::EmailTaken),
                None => {
                    let event = EmailClaimEvent::EmailClaimed(EmailClaimed { email, user_id, at });
                    sink.write(event, self).await;
                }
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            EmailClaimEvent::EmailClaimed(claimed) => {
                self.state = Some(EmailClaimState {
                    email: claimed.email,
                    user_id: claimed.user_id,
                    claimed_at: claimed.at,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
