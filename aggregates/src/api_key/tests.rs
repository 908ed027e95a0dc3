use chrono::{TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use uuid::Uuid;

use super::*;

type ApiKeyTest = TestFramework<ApiKey>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0)
        .single()
        .expect("a valid timestamp")
}

fn key_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0c1e)
}

fn owner_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0ada)
}

fn name() -> ApiKeyName {
    ApiKeyName::parse("laptop").expect("a valid name")
}

fn prefix(raw: &str) -> ApiKeyPrefix {
    ApiKeyPrefix::parse(raw).expect("a valid prefix")
}

fn secret_hash(digit: char) -> SecretHash {
    SecretHash::from_hex(digit.to_string().repeat(64)).expect("a valid hash")
}

fn issue(expires_at: Option<DateTime<Utc>>) -> ApiKeyCommand {
    ApiKeyCommand::IssueApiKey {
        key_id: key_id(),
        owner_id: owner_id(),
        name: name(),
        prefix: prefix("chr_aaaa"),
        secret_hash: secret_hash('a'),
        expires_at,
        at: at(0),
    }
}

fn issued(expires_at: Option<DateTime<Utc>>) -> ApiKeyEvent {
    ApiKeyEvent::ApiKeyIssued(ApiKeyIssued {
        key_id: key_id(),
        owner_id: owner_id(),
        name: name(),
        prefix: prefix("chr_aaaa"),
        secret_hash: secret_hash('a'),
        expires_at,
        at: at(0),
    })
}

fn rotate(seconds: i64) -> ApiKeyCommand {
    ApiKeyCommand::RotateApiKey {
        prefix: prefix("chr_bbbb"),
        secret_hash: secret_hash('b'),
        at: at(seconds),
    }
}

fn rotated(seconds: i64) -> ApiKeyEvent {
    ApiKeyEvent::ApiKeyRotated(ApiKeyRotated {
        prefix: prefix("chr_bbbb"),
        secret_hash: secret_hash('b'),
        at: at(seconds),
    })
}

fn revoked(seconds: i64) -> ApiKeyEvent {
    ApiKeyEvent::ApiKeyRevoked(ApiKeyRevoked { at: at(seconds) })
}

#[test]
fn issue_emits_issued() {
    ApiKeyTest::with(())
        .given_no_previous_events()
        .when(issue(None))
        .then_expect_events(vec![issued(None)]);
}

#[test]
fn issue_with_future_expiry_emits_issued() {
    ApiKeyTest::with(())
        .given_no_previous_events()
        .when(issue(Some(at(3_600))))
        .then_expect_events(vec![issued(Some(at(3_600)))]);
}

#[test]
fn issue_with_past_expiry_is_refused() {
    ApiKeyTest::with(())
        .given_no_previous_events()
        .when(issue(Some(at(0))))
        .then_expect_error(ApiKeyError::ExpiryNotInFuture);
}

#[test]
fn issue_twice_is_refused() {
    ApiKeyTest::with(())
        .given(vec![issued(None)])
        .when(issue(None))
        .then_expect_error(ApiKeyError::AlreadyExists);
}

#[test]
fn rotate_emits_rotated() {
    ApiKeyTest::with(())
        .given(vec![issued(None)])
        .when(rotate(10))
        .then_expect_events(vec![rotated(10)]);
}

#[test]
fn rotate_revoked_key_is_refused() {
    ApiKeyTest::with(())
        .given(vec![issued(None), revoked(5)])
        .when(rotate(10))
        .then_expect_error(ApiKeyError::Revoked);
}

#[test]
fn rotate_expired_key_is_refused() {
    ApiKeyTest::with(())
        .given(vec![issued(Some(at(10)))])
        .when(rotate(10))
        .then_expect_error(ApiKeyError::Expired);
}

#[test]
fn rotate_missing_key_is_refused() {
    ApiKeyTest::with(())
        .given_no_previous_events()
        .when(rotate(10))
        .then_expect_error(ApiKeyError::NotFound);
}

#[test]
fn revoke_emits_revoked() {
    ApiKeyTest::with(())
        .given(vec![issued(None), rotated(10)])
        .when(ApiKeyCommand::RevokeApiKey { at: at(20) })
        .then_expect_events(vec![revoked(20)]);
}

#[test]
fn revoke_is_idempotent() {
    ApiKeyTest::with(())
        .given(vec![issued(None), revoked(20)])
        .when(ApiKeyCommand::RevokeApiKey { at: at(30) })
        .then_expect_events(vec![]);
}

#[test]
fn revoke_missing_key_is_refused() {
    ApiKeyTest::with(())
        .given_no_previous_events()
        .when(ApiKeyCommand::RevokeApiKey { at: at(20) })
        .then_expect_error(ApiKeyError::NotFound);
}

#[test]
fn state_follows_events() {
    let mut key = ApiKey::default();
    assert!(key.state().is_none());
    key.apply(issued(Some(at(100))));
    let state = key.state().expect("issued");
    assert_eq!(state.id, key_id());
    assert_eq!(state.owner_id, owner_id());
    assert_eq!(state.name, name());
    assert_eq!(state.created_at, at(0));
    assert!(state.is_usable(at(99)));
    assert!(!state.is_usable(at(100)));

    key.apply(rotated(10));
    let state = key.state().expect("issued");
    assert_eq!(state.prefix, prefix("chr_bbbb"));
    assert_eq!(state.secret_hash, secret_hash('b'));
    assert_eq!(state.rotated_at, Some(at(10)));
    assert_eq!(state.expires_at, Some(at(100)));

    key.apply(revoked(20));
    let state = key.state().expect("issued");
    assert_eq!(state.revoked_at, Some(at(20)));
    assert!(!state.is_usable(at(30)));
}

#[test]
fn errors_are_classified() {
    use crate::{DomainError, RefusalKind};
    assert_eq!(ApiKeyError::NotFound.kind(), RefusalKind::NotFound);
    assert_eq!(ApiKeyError::Revoked.kind(), RefusalKind::Conflict);
    assert_eq!(ApiKeyError::Revoked.code(), "api_key.revoked");
    assert_eq!(ApiKeyError::ExpiryNotInFuture.kind(), RefusalKind::Invalid);
}

#[test]
fn event_names_match_their_serde_tags() {
    for event in [issued(Some(at(100))), rotated(10), revoked(20)] {
        let value = serde_json::to_value(&event).expect("serializes");
        let tag = value
            .as_object()
            .and_then(|object| object.keys().next())
            .expect("externally tagged")
            .clone();
        assert_eq!(tag, event.event_type());
        assert_eq!(event.event_version(), "1.0");
        let back: ApiKeyEvent = serde_json::from_value(value).expect("round-trips");
        assert_eq!(back, event);
    }
}
