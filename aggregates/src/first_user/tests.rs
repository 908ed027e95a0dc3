use chrono::{TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use uuid::Uuid;

use super::*;

type FirstUserTest = TestFramework<FirstUser>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0)
        .single()
        .expect("a valid timestamp")
}

fn ada() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0ada)
}

fn bob() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0b0b)
}

fn claim(user_id: Uuid, seconds: i64) -> FirstUserCommand {
    FirstUserCommand::ClaimFirstUser {
        user_id,
        at: at(seconds),
    }
}

fn claimed() -> FirstUserEvent {
    FirstUserEvent::FirstUserClaimed(FirstUserClaimed {
        user_id: ada(),
        at: at(0),
    })
}

#[test]
fn the_first_claim_wins() {
    FirstUserTest::with(())
        .given_no_previous_events()
        .when(claim(ada(), 0))
        .then_expect_events(vec![claimed()]);
}

#[test]
fn the_same_user_may_claim_again_without_events() {
    FirstUserTest::with(())
        .given(vec![claimed()])
        .when(claim(ada(), 9))
        .then_expect_events(vec![]);
}

#[test]
fn a_later_user_is_refused() {
    FirstUserTest::with(())
        .given(vec![claimed()])
        .when(claim(bob(), 1))
        .then_expect_error(FirstUserError::AlreadyClaimed);
}

#[test]
fn state_names_the_first_user() {
    let mut first = FirstUser::default();
    assert!(first.state().is_none());
    first.apply(claimed());
    assert_eq!(first.state().map(|s| s.user_id), Some(ada()));
}

#[test]
fn event_type_matches_the_serde_tag() {
    let event = claimed();
    let json = serde_json::to_value(&event).expect("serializes");
    assert!(json.get(event.event_type()).is_some(), "{json}");
    assert_eq!(event.event_version(), "1.0");
}
