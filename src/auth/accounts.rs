//! Creating users, for `/api/auth/register` and `chronicle user create`: the email is
//! claimed first (one account per address), then the FirstUser claim says whether this is
//! the first user of the system, then the user is registered.

use chronicle_aggregates::email_claim::{EmailClaim, EmailClaimCommand};
use chronicle_aggregates::first_user::{
    FirstUser, FirstUserCommand, FirstUserError, FIRST_USER_ID,
};
use chronicle_aggregates::user::{User, UserCommand, UserState};
use chronicle_commands::auth::{Registration, Role};
use chrono::Utc;
use uuid::Uuid;

use super::error::AuthError;
use super::password;
use crate::bus::{CommandBus, CommandContext, CommandError};

/// Which roles a new user gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChoice {
    /// `admin` for the first user of the system, `user` for everyone after.
    FirstIsAdmin,
    Exactly(Role),
}

/// Registers a user. `context` is the metadata of every event; its `actor` may be left
/// empty for a self-registration, which then records the new user as the actor.
pub async fn create_user(
    bus: &CommandBus,
    registration: Registration,
    choice: RoleChoice,
    mut context: CommandContext,
) -> Result<UserState, AuthError> {
    let Registration {
        email,
        password,
        display_name,
    } = registration;
    let password_hash = password::hash(password).await?;
    let store = bus.store();

    // A claim without a user is a registration that stopped half-way: finish it.
    let mut user_id = Uuid::now_v7();
    let claim = store.aggregate::<EmailClaim>().load(email.as_str()).await?;
    if let Some(claim) = claim.aggregate.state() {
        let user = store
            .aggregate::<User>()
            .load(&claim.user_id.to_string())
            .await?;
        if user.aggregate.state().is_some() {
            return Err(AuthError::EmailTaken);
        }
        user_id = claim.user_id;
    }
    if context.actor.is_empty() {
        context.actor = format!("user:{user_id}");
    }

    bus.execute::<EmailClaim, AuthError>(email.as_str(), &context, None, |_| {
        Ok(EmailClaimCommand::ClaimEmail {
            email: email.clone(),
            user_id,
            at: Utc::now(),
        })
    })
    .await?;

    // Every new user claims "first", so that after an operator's `user create` the next
    // self-registration is not taken for the first.
    let first = bus
        .execute::<FirstUser, CommandError<FirstUserError>>(FIRST_USER_ID, &context, None, |_| {
            Ok(FirstUserCommand::ClaimFirstUser {
                user_id,
                at: Utc::now(),
            })
        })
        .await;
    let is_first = match first {
        Ok(_) => true,
        Err(CommandError::Refused(FirstUserError::AlreadyClaimed)) => false,
        Err(other) => return Err(AuthError::from(other)),
    };
    let roles = match choice {
        RoleChoice::FirstIsAdmin if is_first => vec![Role::Admin],
        RoleChoice::FirstIsAdmin => vec![Role::User],
        RoleChoice::Exactly(role) => vec![role],
    };

    let committed = bus
        .execute::<User, AuthError>(&user_id.to_string(), &context, None, |user: &User| {
            if user.state().is_some() {
                return Err(AuthError::EmailTaken);
            }
            Ok(UserCommand::RegisterUser {
                user_id,
                email: email.clone(),
                password_hash: password_hash.clone(),
                display_name: display_name.clone(),
                roles: roles.clone(),
                at: Utc::now(),
            })
        })
        .await?;
    committed
        .aggregate
        .state()
        .cloned()
        .ok_or(AuthError::Inconsistent("a registered user has no state"))
}
