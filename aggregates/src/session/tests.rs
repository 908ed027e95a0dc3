use chrono::{TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use uuid::Uuid;

use super::*;

type SessionTest = TestFramework<Session>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0)
        .single()
        .expect("a valid timestamp")
}

fn session_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_5e55)
}

fn user_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0ada)
}

/// The n-th refresh token of the family.
fn token(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_7000 + n)
}

const TTL: i64 = 1_000;

fn start() -> SessionCommand {
    SessionCommand::StartSession {
        session_id: session_id(),
        user_id: user_id(),
        token_id: token(1),
        expires_at: at(TTL),
        at: at(0),
    }
}

fn started() -> SessionEvent {
    SessionEvent::SessionStarted(SessionStarted {
        session_id: session_id(),
        user_id: user_id(),
        token_id: token(1),
        expires_at: at(TTL),
        at: at(0),
    })
}

/// Exchange token `n` for token `n + 1` at `seconds`.
fn refresh(n: u128, seconds: i64) -> SessionCommand {
    SessionCommand::RefreshSession {
        presented_token_id: token(n),
        new_token_id: token(n + 1),
        new_expires_at: at(seconds + TTL),
        at: at(seconds),
    }
}

fn refreshed(n: u128, seconds: i64) -> SessionEvent {
    SessionEvent::SessionRefreshed(SessionRefreshed {
        previous_token_id: token(n),
        token_id: token(n + 1),
        expires_at: at(seconds + TTL),
        at: at(seconds),
    })
}

fn revoked(reason: RevocationReason, seconds: i64) -> SessionEvent {
    SessionEvent::SessionRevoked(SessionRevoked {
        reason,
        at: at(seconds),
    })
}

fn end(n: u128, seconds: i64) -> SessionCommand {
    SessionCommand::EndSession {
        presented_token_id: token(n),
        at: at(seconds),
    }
}

#[test]
fn start_emits_started() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(start())
        .then_expect_events(vec![started()]);
}

#[test]
fn start_twice_is_refused() {
    SessionTest::with(())
        .given(vec![started()])
        .when(start())
        .then_expect_error(SessionError::AlreadyExists);
}

#[test]
fn refresh_with_current_token_rotates() {
    SessionTest::with(())
        .given(vec![started()])
        .when(refresh(1, 100))
        .then_expect_events(vec![refreshed(1, 100)]);
}

#[test]
fn refresh_after_rotation_uses_the_new_token() {
    SessionTest::with(())
        .given(vec![started(), refreshed(1, 100)])
        .when(refresh(2, 200))
        .then_expect_events(vec![refreshed(2, 200)]);
}

#[test]
fn refresh_extends_expiry() {
    // Token 2 expires at 900 + TTL, past the first token's expiry at TTL.
    SessionTest::with(())
        .given(vec![started(), refreshed(1, 900)])
        .when(refresh(2, TTL + 10))
        .then_expect_events(vec![refreshed(2, TTL + 10)]);
}

#[test]
fn refresh_with_retired_token_revokes_the_family() {
    SessionTest::with(())
        .given(vec![started(), refreshed(1, 100)])
        .when(refresh(1, 150))
        .then_expect_events(vec![revoked(RevocationReason::ReuseDetected, 150)]);
}

#[test]
fn refresh_with_an_older_retired_token_revokes_the_family() {
    SessionTest::with(())
        .given(vec![started(), refreshed(1, 100), refreshed(2, 200)])
        .when(refresh(1, 250))
        .then_expect_events(vec![revoked(RevocationReason::ReuseDetected, 250)]);
}

#[test]
fn reuse_is_detected_even_after_expiry() {
    SessionTest::with(())
        .given(vec![started(), refreshed(1, 100)])
        .when(refresh(1, 100 + TTL + 1))
        .then_expect_events(vec![revoked(
            RevocationReason::ReuseDetected,
            100 + TTL + 1,
        )]);
}

#[test]
fn refresh_after_reuse_is_refused_even_with_the_current_token() {
    SessionTest::with(())
        .given(vec![
            started(),
            refreshed(1, 100),
            revoked(RevocationReason::ReuseDetected, 150),
        ])
        .when(refresh(2, 160))
        .then_expect_error(SessionError::Revoked);
}

#[test]
fn refresh_after_logout_is_refused() {
    SessionTest::with(())
        .given(vec![started(), revoked(RevocationReason::Logout, 50)])
        .when(refresh(1, 60))
        .then_expect_error(SessionError::Revoked);
}

#[test]
fn refresh_of_expired_session_is_refused() {
    SessionTest::with(())
        .given(vec![started()])
        .when(refresh(1, TTL))
        .then_expect_error(SessionError::Expired);
}

#[test]
fn refresh_with_unknown_token_is_refused() {
    SessionTest::with(())
        .given(vec![started()])
        .when(refresh(42, 100))
        .then_expect_error(SessionError::UnknownToken);
}

#[test]
fn refresh_to_an_already_used_token_id_is_refused() {
    SessionTest::with(())
        .given(vec![started(), refreshed(1, 100)])
        .when(SessionCommand::RefreshSession {
            presented_token_id: token(2),
            new_token_id: token(1),
            new_expires_at: at(200 + TTL),
            at: at(200),
        })
        .then_expect_error(SessionError::DuplicateToken);
}

#[test]
fn refresh_of_missing_session_is_refused() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(refresh(1, 100))
        .then_expect_error(SessionError::NotFound);
}

#[test]
fn end_with_current_token_logs_out() {
    SessionTest::with(())
        .given(vec![started(), refreshed(1, 100)])
        .when(end(2, 300))
        .then_expect_events(vec![revoked(RevocationReason::Logout, 300)]);
}

#[test]
fn end_is_idempotent() {
    SessionTest::with(())
        .given(vec![started(), revoked(RevocationReason::Logout, 300)])
        .when(end(1, 310))
        .then_expect_events(vec![]);
}

#[test]
fn end_after_reuse_emits_nothing() {
    SessionTest::with(())
        .given(vec![
            started(),
            refreshed(1, 100),
            revoked(RevocationReason::ReuseDetected, 150),
        ])
        .when(end(2, 300))
        .then_expect_events(vec![]);
}

#[test]
fn end_with_retired_token_revokes_as_reuse() {
    SessionTest::with(())
        .given(vec![started(), refreshed(1, 100)])
        .when(end(1, 300))
        .then_expect_events(vec![revoked(RevocationReason::ReuseDetected, 300)]);
}

#[test]
fn end_with_unknown_token_is_refused() {
    SessionTest::with(())
        .given(vec![started()])
        .when(end(42, 300))
        .then_expect_error(SessionError::UnknownToken);
}

#[test]
fn end_of_missing_session_is_refused() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(end(1, 300))
        .then_expect_error(SessionError::NotFound);
}

#[test]
fn state_follows_rotations_and_revocation() {
    let mut session = Session::default();
    assert!(session.state().is_none());
    session.apply(started());
    session.apply(refreshed(1, 100));
    session.apply(refreshed(2, 200));
    let state = session.state().expect("started");
    assert_eq!(state.session_id, session_id());
    assert_eq!(state.user_id, user_id());
    assert_eq!(state.current_token_id, token(3));
    assert_eq!(state.used_token_ids, [token(1), token(2)]);
    assert_eq!(state.expires_at, at(200 + TTL));
    assert_eq!(state.started_at, at(0));
    assert!(state.is_active(at(300)));
    assert!(!state.is_active(at(200 + TTL)));

    session.apply(revoked(RevocationReason::ReuseDetected, 250));
    let state = session.state().expect("started");
    assert_eq!(state.revoked, Some(RevocationReason::ReuseDetected));
    assert!(!state.is_active(at(300)));
}

#[test]
fn errors_are_classified() {
    use crate::{DomainError, RefusalKind};
    assert_eq!(SessionError::Revoked.kind(), RefusalKind::Conflict);
    assert_eq!(SessionError::Revoked.code(), "session.revoked");
    assert_eq!(SessionError::Expired.kind(), RefusalKind::Conflict);
    assert_eq!(SessionError::Expired.code(), "session.expired");
    assert_eq!(SessionError::NotFound.kind(), RefusalKind::NotFound);
}

#[test]
fn revocation_reasons_serialize_as_snake_case() {
    let value =
        serde_json::to_value(revoked(RevocationReason::ReuseDetected, 1)).expect("serializes");
    assert_eq!(value["SessionRevoked"]["reason"], "reuse_detected");
    assert_eq!(RevocationReason::Logout.to_string(), "logout");
}

#[test]
fn event_names_match_their_serde_tags() {
    for event in [
        started(),
        refreshed(1, 100),
        revoked(RevocationReason::Logout, 200),
    ] {
        let value = serde_json::to_value(&event).expect("serializes");
        let tag = value
            .as_object()
            .and_then(|object| object.keys().next())
            .expect("externally tagged")
            .clone();
        assert_eq!(tag, event.event_type());
        assert_eq!(event.event_version(), "1.0");
        let back: SessionEvent = serde_json::from_value(value).expect("round-trips");
        assert_eq!(back, event);
    }
}
