//! The User aggregate: an account, its password hash and its roles.

mod error;
mod events;

use std::collections::BTreeSet;

use chronicle_commands::auth::{DisplayName, Email, PasswordHash, Role};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::UserError;
pub use events::{PasswordChanged, RoleGranted, RoleRevoked, UserEvent, UserRegistered};

/// Everything known about a registered user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub id: Uuid,
    pub email: Email,
    pub display_name: DisplayName,
    pub roles: BTreeSet<Role>,
    pub password_hash: PasswordHash,
    pub created_at: DateTime<Utc>,
}

impl UserState {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// The aggregate: empty until `UserRegistered`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    state: Option<UserState>,
}

impl User {
    /// The user, or `None` when no `UserRegistered` has been applied.
    pub fn state(&self) -> Option<&UserState> {
        self.state.as_ref()
    }
}

/// What can be asked of a user. Hashes, identities and time come in the command; email
/// uniqueness is the EmailClaim aggregate's to decide, before `RegisterUser` is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    RegisterUser {
        user_id: Uuid,
        email: Email,
        password_hash: PasswordHash,
        display_name: DisplayName,
        roles: Vec<Role>,
        at: DateTime<Utc>,
    },
    ChangePassword {
        password_hash: PasswordHash,
        at: DateTime<Utc>,
    },
    GrantRole {
        role: Role,
        at: DateTime<Utc>,
    },
    RevokeRole {
        role: Role,
        at: DateTime<Utc>,
    },
}

crate::command_names!(UserCommand {
    RegisterUser,
    ChangePassword,
    GrantRole,
    RevokeRole
});

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            UserCommand::RegisterUser {
                user_id,
                email,
                password_hash,
                display_name,
                roles,
                at,
            } => {
                if self.state.is_some() {
                    return Err(UserError::AlreadyExists);
                }
                let roles: Vec<Role> = roles
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if roles.is_empty() {
                    return Err(UserError::NoRoles);
                }
                let event = UserEvent::UserRegistered(UserRegistered {
                    user_id,
                    email,
                    password_hash,
                    display_name,
                    roles,
                    at,
                });
                sink.write(event, self).await;
            }
            UserCommand::ChangePassword { password_hash, at } => {
                self.state.as_ref().ok_or(UserError::NotFound)?;
                let event = UserEvent::PasswordChanged(PasswordChanged { password_hash, at });
                sink.write(event, self).await;
            }
            UserCommand::GrantRole { role, at } => {
                let state = self.state.as_ref().ok_or(UserError::NotFound)?;
                if !state.has_role(role) {
                    sink.write(UserEvent::RoleGranted(RoleGranted { role, at }), self)
                        .await;
                }
            }
            UserCommand::RevokeRole { role, at } => {
                let state = self.state.as_ref().ok_or(UserError::NotFound)?;
                if state.has_role(role) {
                    if state.roles.len() == 1 {
                        return Err(UserError::LastRole);
                    }
                    sink.write(UserEvent::RoleRevoked(RoleRevoked { role, at }), self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered(registered) => {
                self.state = Some(UserState {
                    id: registered.user_id,
                    email: registered.email,
                    display_name: registered.display_name,
                    roles: registered.roles.into_iter().collect(),
                    password_hash: registered.password_hash,
                    created_at: registered.at,
                });
            }
            UserEvent::PasswordChanged(changed) => {
                if let Some(state) = self.state.as_mut() {
                    state.password_hash = changed.password_hash;
                }
            }
            UserEvent::RoleGranted(granted) => {
                if let Some(state) = self.state.as_mut() {
                    state.roles.insert(granted.role);
                }
            }
            UserEvent::RoleRevoked(revoked) => {
                if let Some(state) = self.state.as_mut() {
                    state.roles.remove(&revoked.role);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
