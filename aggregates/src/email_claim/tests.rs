use chrono::{TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use uuid::Uuid;

use super::*;

type ClaimTest = TestFramework<EmailClaim>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0)
        .single()
        .expect("a valid timestamp")
}

fn email() -> Email {
    Email::parse("ada@example.com").expect("a valid email")
}

fn ada() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0ada)
}

fn bob() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0b0b)
}

fn claim(user_id: Uuid, seconds: i64) -> EmailClaimCommand {
    EmailClaimCommand::ClaimEmail {
        email: email(),
        user_id,
        at: at(seconds),
    }
}

fn claimed() -> EmailClaimEvent {
    EmailClaimEvent::EmailClaimed(EmailClaimed {
        email: email(),
        user_id: ada(),
        at: at(0),
    })
}

#[test]
fn claim_free_email_emits_claimed() {
    ClaimTest::with(())
        .given_no_previous_events()
        .when(claim(ada(), 0))
        .then_expect_events(vec![claimed()]);
}

#[test]
fn claim_again_by_the_same_user_emits_nothing() {
    ClaimTest::with(())
        .given(vec![claimed()])
        .when(claim(ada(), 5))
        .then_expect_events(vec![]);
}

#[test]
fn claim_by_another_user_is_refused() {
    ClaimTest::with(())
        .given(vec![claimed()])
        .when(claim(bob(), 5))
        .then_expect_error(EmailClaimError::EmailTaken);
}

#[test]
fn state_names_the_holder() {
    let mut claim = EmailClaim::default();
    assert!(claim.state().is_none());
    claim.apply(claimed());
    let state = claim.state().expect("claimed");
    assert_eq!(state.user_id, ada());
    assert_eq!(state.email, email());
    assert_eq!(state.claimed_at, at(0));
}

#[test]
fn taken_is_a_conflict() {
    use crate::{DomainError, RefusalKind};
    assert_eq!(EmailClaimError::EmailTaken.kind(), RefusalKind::Conflict);
    assert_eq!(EmailClaimError::EmailTaken.code(), "email_claim.taken");
}

#[test]
fn event_names_match_their_serde_tags() {
    let event = claimed();
    let value = serde_json::to_value(&event).expect("serializes");
    let tag = value
        .as_object()
        .and_then(|object| object.keys().next())
        .expect("externally tagged")
        .clone();
    assert_eq!(tag, event.event_type());
    assert_eq!(event.event_version(), "1.0");
    let back: EmailClaimEvent = serde_json::from_value(value).expect("round-trips");
    assert_eq!(back, event);
}
