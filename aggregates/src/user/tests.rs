use chrono::{TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use uuid::Uuid;

use super::*;

type UserTest = TestFramework<User>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0)
        .single()
        .expect("a valid timestamp")
}

fn user_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0b0b)
}

fn email() -> Email {
    Email::parse("ada@example.com").expect("a valid email")
}

fn display_name() -> DisplayName {
    DisplayName::parse("Ada").expect("a valid display name")
}

fn hash(salt: &str) -> PasswordHash {
    PasswordHash::from_phc(format!("$argon2id$v=19$m=19456,t=2,p=1${salt}$aGFzaA"))
        .expect("a valid PHC string")
}

fn register(roles: Vec<Role>) -> UserCommand {
    UserCommand::RegisterUser {
        user_id: user_id(),
        email: email(),
        password_hash: hash("c2FsdDE"),
        display_name: display_name(),
        roles,
        at: at(0),
    }
}

fn registered(roles: Vec<Role>) -> UserEvent {
    UserEvent::UserRegistered(UserRegistered {
        user_id: user_id(),
        email: email(),
        password_hash: hash("c2FsdDE"),
        display_name: display_name(),
        roles,
        at: at(0),
    })
}

fn granted(role: Role) -> UserEvent {
    UserEvent::RoleGranted(RoleGranted { role, at: at(10) })
}

fn revoked(role: Role) -> UserEvent {
    UserEvent::RoleRevoked(RoleRevoked { role, at: at(20) })
}

fn password_changed() -> UserEvent {
    UserEvent::PasswordChanged(PasswordChanged {
        password_hash: hash("c2FsdDI"),
        at: at(5),
    })
}

#[test]
fn register_emits_registered() {
    UserTest::with(())
        .given_no_previous_events()
        .when(register(vec![Role::User]))
        .then_expect_events(vec![registered(vec![Role::User])]);
}

#[test]
fn register_sorts_and_deduplicates_roles() {
    UserTest::with(())
        .given_no_previous_events()
        .when(register(vec![Role::Admin, Role::User, Role::Admin]))
        .then_expect_events(vec![registered(vec![Role::User, Role::Admin])]);
}

#[test]
fn register_twice_is_refused() {
    UserTest::with(())
        .given(vec![registered(vec![Role::User])])
        .when(register(vec![Role::User]))
        .then_expect_error(UserError::AlreadyExists);
}

#[test]
fn register_without_roles_is_refused() {
    UserTest::with(())
        .given_no_previous_events()
        .when(register(vec![]))
        .then_expect_error(UserError::NoRoles);
}

#[test]
fn change_password_emits_changed() {
    UserTest::with(())
        .given(vec![registered(vec![Role::User])])
        .when(UserCommand::ChangePassword {
            password_hash: hash("c2FsdDI"),
            at: at(5),
        })
        .then_expect_events(vec![password_changed()]);
}

#[test]
fn change_password_of_missing_user_is_refused() {
    UserTest::with(())
        .given_no_previous_events()
        .when(UserCommand::ChangePassword {
            password_hash: hash("c2FsdDI"),
            at: at(5),
        })
        .then_expect_error(UserError::NotFound);
}

#[test]
fn grant_role_emits_granted() {
    UserTest::with(())
        .given(vec![registered(vec![Role::User])])
        .when(UserCommand::GrantRole {
            role: Role::Auditor,
            at: at(10),
        })
        .then_expect_events(vec![granted(Role::Auditor)]);
}

#[test]
fn grant_held_role_emits_nothing() {
    UserTest::with(())
        .given(vec![registered(vec![Role::User]), granted(Role::Admin)])
        .when(UserCommand::GrantRole {
            role: Role::Admin,
            at: at(11),
        })
        .then_expect_events(vec![]);
}

#[test]
fn grant_role_to_missing_user_is_refused() {
    UserTest::with(())
        .given_no_previous_events()
        .when(UserCommand::GrantRole {
            role: Role::Admin,
            at: at(10),
        })
        .then_expect_error(UserError::NotFound);
}

#[test]
fn revoke_role_emits_revoked() {
    UserTest::with(())
        .given(vec![registered(vec![Role::User, Role::Admin])])
        .when(UserCommand::RevokeRole {
            role: Role::Admin,
            at: at(20),
        })
        .then_expect_events(vec![revoked(Role::Admin)]);
}

#[test]
fn revoke_role_not_held_emits_nothing() {
    UserTest::with(())
        .given(vec![registered(vec![Role::User])])
        .when(UserCommand::RevokeRole {
            role: Role::Auditor,
            at: at(20),
        })
        .then_expect_events(vec![]);
}

#[test]
fn revoke_granted_then_revoked_role_emits_nothing() {
    UserTest::with(())
        .given(vec![
            registered(vec![Role::User]),
            granted(Role::Admin),
            revoked(Role::Admin),
        ])
        .when(UserCommand::RevokeRole {
            role: Role::Admin,
            at: at(30),
        })
        .then_expect_events(vec![]);
}

#[test]
fn revoke_last_role_is_refused() {
    UserTest::with(())
        .given(vec![registered(vec![Role::User])])
        .when(UserCommand::RevokeRole {
            role: Role::User,
            at: at(20),
        })
        .then_expect_error(UserError::LastRole);
}

#[test]
fn revoke_role_of_missing_user_is_refused() {
    UserTest::with(())
        .given_no_previous_events()
        .when(UserCommand::RevokeRole {
            role: Role::User,
            at: at(20),
        })
        .then_expect_error(UserError::NotFound);
}

#[test]
fn state_follows_events() {
    let mut user = User::default();
    assert!(user.state().is_none());
    for event in [
        registered(vec![Role::User]),
        password_changed(),
        granted(Role::Admin),
        revoked(Role::User),
    ] {
        user.apply(event);
    }
    let state = user.state().expect("registered");
    assert_eq!(state.id, user_id());
    assert_eq!(state.email, email());
    assert_eq!(state.display_name, display_name());
    assert_eq!(state.password_hash, hash("c2FsdDI"));
    assert_eq!(state.roles, BTreeSet::from([Role::Admin]));
    assert_eq!(state.created_at, at(0));
}

#[test]
fn errors_are_classified() {
    use crate::{DomainError, RefusalKind};
    assert_eq!(UserError::NotFound.kind(), RefusalKind::NotFound);
    assert_eq!(UserError::AlreadyExists.kind(), RefusalKind::Conflict);
    assert_eq!(UserError::AlreadyExists.code(), "user.already_exists");
    assert_eq!(UserError::NoRoles.kind(), RefusalKind::Invalid);
}

#[test]
fn event_names_match_their_serde_tags() {
    for event in [
        registered(vec![Role::User]),
        password_changed(),
        granted(Role::Admin),
        revoked(Role::Admin),
    ] {
        let value = serde_json::to_value(&event).expect("serializes");
        let tag = value
            .as_object()
            .and_then(|object| object.keys().next())
            .expect("externally tagged")
            .clone();
        assert_eq!(tag, event.event_type());
        assert_eq!(event.event_version(), "1.0");
        let back: UserEvent = serde_json::from_value(value).expect("round-trips");
        assert_eq!(back, event);
    }
}
