//! Given/when/then tests of the Task aggregate, shared fixtures, and the pure rules.

mod lease;
mod lifecycle;
mod outcome;
mod properties;

use chronicle_commands::task::NewTaskRequest;
use chrono::{TimeDelta, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::error::{DomainError, RefusalKind};

type TaskTest = TestFramework<Task>;

/// The fixture spec keeps the defaults: a 300 s lease, 3 attempts, backoff 1 s doubling.
const TIMEOUT: i64 = 300;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0).unwrap()
}

fn at_ms(millis: i64) -> DateTime<Utc> {
    at(0) + TimeDelta::milliseconds(millis)
}

fn task_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001)
}

fn owner_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_00aa)
}

fn agent() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0a01)
}

fn other_agent() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0a02)
}

/// The lease of attempt `n`.
fn lease(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_1000 + n)
}

fn spec() -> TaskSpec {
    serde_json::from_value::<NewTaskRequest>(json!({
        "capability": "browser.navigate",
        "input": {"url": "https://example.com"},
        "priority": 7,
        "tags": ["demo"],
    }))
    .unwrap()
    .validate()
    .unwrap()
}

fn created_with(pinned_agent_id: Option<Uuid>, not_before: Option<DateTime<Utc>>) -> TaskEvent {
    let spec = spec();
    TaskEvent::TaskCreated(TaskCreated {
        task_id: task_id(),
        owner_id: owner_id(),
        capability: spec.capability,
        input: spec.input,
        priority: spec.priority,
        timeout_secs: spec.timeout_secs,
        retry: spec.retry,
        pinned_agent_id,
        workflow_run_id: None,
        tags: spec.tags,
        not_before,
        at: at(0),
        concurrency: None,
        team_id: None,
    })
}

fn created() -> TaskEvent {
    created_with(None, None)
}

fn create() -> TaskCommand {
    TaskCommand::CreateTask {
        task_id: task_id(),
        owner_id: owner_id(),
        spec: spec(),
        workflow_run_id: None,
        at: at(0),
    }
}

fn cancel() -> TaskCommand {
    TaskCommand::CancelTask {
        reason: Some("no longer needed".into()),
        at: at(5),
    }
}

fn cancelled_by(agent_id: Option<Uuid>) -> TaskEvent {
    TaskEvent::TaskCancelled(TaskCancelled {
        reason: Some("no longer needed".into()),
        agent_id,
        at: at(5),
    })
}

fn cancelled() -> TaskEvent {
    cancelled_by(None)
}

/// Attempt `n` leased by [`agent`] at second `s`.
fn leased(n: u32, s: i64) -> TaskEvent {
    TaskEvent::TaskLeased(TaskLeased {
        agent_id: agent(),
        lease_id: lease(u128::from(n)),
        attempt: n,
        lease_expires_at: at(s + TIMEOUT),
        at: at(s),
    })
}

fn lease_cmd(n: u32, s: i64) -> TaskCommand {
    TaskCommand::LeaseTask {
        agent_id: agent(),
        lease_id: lease(u128::from(n)),
        at: at(s),
    }
}

fn started(n: u128, s: i64) -> TaskEvent {
    TaskEvent::TaskStarted(TaskStarted {
        lease_id: lease(n),
        at: at(s),
    })
}

fn output() -> serde_json::Value {
    json!({"title": "Example Domain"})
}

fn complete(n: u128, s: i64) -> TaskCommand {
    TaskCommand::CompleteTask {
        lease_id: lease(n),
        output: output(),
        at: at(s),
    }
}

fn succeeded(n: u128, s: i64) -> TaskEvent {
    TaskEvent::TaskSucceeded(TaskSucceeded {
        lease_id: lease(n),
        agent_id: agent(),
        output: output(),
        at: at(s),
    })
}

fn failure() -> TaskFailure {
    TaskFailure {
        message: "navigation timed out".into(),
        code: Some("timeout".into()),
        details: None,
    }
}

fn fail(n: u128, jitter: f64, s: i64) -> TaskCommand {
    TaskCommand::FailTask {
        lease_id: lease(n),
        error: failure(),
        permanent: false,
        jitter,
        at: at(s),
    }
}

/// A failure another attempt cannot mend.
fn refused() -> TaskFailure {
    TaskFailure {
        message: "the address is not allowed".into(),
        code: Some("ssrf_blocked".into()),
        details: None,
    }
}

fn fail_permanently(n: u128, s: i64) -> TaskCommand {
    TaskCommand::FailTask {
        lease_id: lease(n),
        error: refused(),
        permanent: true,
        jitter: 1.0,
        at: at(s),
    }
}

fn attempt_failed(n: u32, s: i64, retry_at: Option<DateTime<Utc>>) -> TaskEvent {
    TaskEvent::TaskAttemptFailed(TaskAttemptFailed {
        lease_id: lease(u128::from(n)),
        agent_id: agent(),
        attempt: n,
        error: failure(),
        cause: AttemptFailureCause::Reported,
        retry_at,
        at: at(s),
    })
}

fn expire(n: u128, s: i64) -> TaskCommand {
    TaskCommand::ExpireLease {
        lease_id: lease(n),
        jitter: 1.0,
        at: at(s),
    }
}

fn lease_expired(n: u32, s: i64, retry_at: Option<DateTime<Utc>>) -> TaskEvent {
    TaskEvent::TaskAttemptFailed(TaskAttemptFailed {
        lease_id: lease(u128::from(n)),
        agent_id: agent(),
        attempt: n,
        error: TaskFailure::lease_expired(),
        cause: AttemptFailureCause::LeaseExpired,
        retry_at,
        at: at(s),
    })
}

/// Attempts 1 and 2 failed at seconds 20 and 40 with full jitter; 3 is the last.
fn two_failed_attempts() -> Vec<TaskEvent> {
    vec![
        created(),
        leased(1, 10),
        attempt_failed(1, 20, Some(at(21))),
        leased(2, 30),
        attempt_failed(2, 40, Some(at(42))),
    ]
}

fn requeued(s: i64) -> TaskEvent {
    TaskEvent::TaskRequeued(TaskRequeued { at: at(s) })
}

fn reprioritised(priority: i64, tags: &[&str], s: i64) -> TaskEvent {
    TaskEvent::TaskReprioritised(TaskReprioritised {
        priority: Priority::new(priority).unwrap(),
        tags: tags_of(tags),
        at: at(s),
    })
}

fn tags_of(tags: &[&str]) -> Tags {
    Tags::new(tags.iter().map(|t| (*t).to_owned()).collect()).unwrap()
}

fn state_after(events: Vec<TaskEvent>) -> TaskState {
    let mut task = Task::default();
    for event in events {
        task.apply(event);
    }
    task.state().unwrap().clone()
}

fn every_event() -> Vec<TaskEvent> {
    vec![
        created(),
        cancelled(),
        leased(1, 10),
        started(1, 11),
        TaskEvent::TaskProgressed(TaskProgressed {
            lease_id: lease(1),
            progress: json!({"percent": 50}),
            lease_expires_at: at(312),
            at: at(12),
        }),
        TaskEvent::LeaseExtended(LeaseExtended {
            lease_id: lease(1),
            lease_expires_at: at(313),
            at: at(13),
        }),
        succeeded(1, 14),
        attempt_failed(1, 20, Some(at(21))),
        lease_expired(1, 310, None),
        requeued(50),
        reprioritised(9, &["urgent"], 60),
    ]
}

#[test]
fn event_names_match_their_serde_tags() {
    for event in every_event() {
        let value = serde_json::to_value(&event).unwrap();
        let tag = value.as_object().unwrap().keys().next().unwrap().clone();
        assert_eq!(tag, event.event_type());
        assert_eq!(event.event_version(), "1.0");
        let back: TaskEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }
}

/// Stored events are never rewritten, so the payloads written before the lease protocol
/// existed must keep their exact shape.
#[test]
fn created_and_cancelled_payloads_keep_their_shape() {
    let value = serde_json::to_value(cancelled()).unwrap();
    assert_eq!(
        value,
        json!({"TaskCancelled": {
            "reason": "no longer needed",
            "agent_id": null,
            "at": "2026-09-21T14:13:25Z",
        }})
    );
    assert_eq!(
        serde_json::to_value(created()).unwrap(),
        json!({"TaskCreated": {
            "task_id": task_id(),
            "owner_id": owner_id(),
            "capability": "browser.navigate",
            "input": {"url": "https://example.com"},
            "priority": 7,
            "timeout_secs": 300,
            "retry": {"max_attempts": 3, "initial_backoff_ms": 1000, "max_backoff_ms": 60000},
            "pinned_agent_id": null,
            "workflow_run_id": null,
            "tags": ["demo"],
            "not_before": null,
            "at": "2026-09-21T14:13:20Z",
        }})
    );
}

#[test]
fn unknown_payload_fields_are_refused() {
    let parsed = serde_json::from_value::<TaskEvent>(json!({
        "TaskStarted": {"lease_id": lease(1), "at": at(1), "colour": "red"}
    }));
    assert!(parsed.is_err());
}

#[test]
fn is_ready_waits_for_not_before() {
    let queued = state_after(vec![created()]);
    assert!(is_ready(&queued, at(0)));
    let later = state_after(vec![created_with(None, Some(at(100)))]);
    assert!(!is_ready(&later, at(99)));
    assert!(is_ready(&later, at(100)));
    let retrying = state_after(vec![
        created(),
        leased(1, 10),
        attempt_failed(1, 20, Some(at(21))),
    ]);
    assert!(!is_ready(&retrying, at(20)));
    assert!(is_ready(&retrying, at(21)));
}

#[test]
fn is_ready_is_false_while_held_or_finished() {
    assert!(!is_ready(
        &state_after(vec![created(), leased(1, 10)]),
        at(1_000)
    ));
    assert!(!is_ready(
        &state_after(vec![created(), leased(1, 10), started(1, 11)]),
        at(1_000)
    ));
    assert!(!is_ready(
        &state_after(vec![created(), leased(1, 10), succeeded(1, 12)]),
        at(1_000)
    ));
    assert!(!is_ready(
        &state_after(vec![created(), cancelled()]),
        at(1_000)
    ));
}

#[test]
fn retry_at_uses_the_policy_and_jitter() {
    let first = state_after(vec![created(), leased(1, 10)]);
    assert_eq!(retry_at(&first, at(20), 1.0), Some(at(21)));
    assert_eq!(retry_at(&first, at(20), 0.0), Some(at_ms(20_500)));
    let last = state_after(vec![
        created(),
        leased(1, 10),
        attempt_failed(1, 20, Some(at(21))),
        leased(2, 30),
        attempt_failed(2, 40, Some(at(42))),
        leased(3, 50),
    ]);
    assert_eq!(retry_at(&last, at(60), 1.0), None);
}

#[test]
fn lease_window_is_half_open() {
    let state = state_after(vec![created(), leased(1, 10)]);
    assert_eq!(state.lease_expires_at, Some(at(310)));
    assert_eq!(lease_expiry(&state, at(10)), at(310));
    assert!(lease_alive(&state, at(309)));
    assert!(!lease_alive(&state, at(310)));
}

#[test]
fn state_follows_a_whole_life() {
    let state = state_after(vec![created(), leased(1, 10)]);
    assert_eq!(state.status, TaskStatus::Leased);
    assert_eq!(state.attempt, 1);
    assert_eq!(state.agent_id, Some(agent()));
    assert_eq!(state.lease_id, Some(lease(1)));

    let state = state_after(vec![
        created(),
        leased(1, 10),
        started(1, 11),
        attempt_failed(1, 20, Some(at(21))),
    ]);
    assert_eq!(state.status, TaskStatus::RetryScheduled);
    assert_eq!(state.lease_id, None);
    assert_eq!(state.lease_expires_at, None);
    assert_eq!(state.not_before, Some(at(21)));
    assert_eq!(state.error, Some(failure()));
    assert_eq!(state.finished_at, None);
    assert_eq!(
        state.last_lease,
        Some(EndedLease {
            lease_id: lease(1),
            outcome: LeaseOutcome::Failed
        })
    );

    let mut events = two_failed_attempts();
    events.extend([leased(3, 50), started(3, 51), succeeded(3, 60)]);
    let state = state_after(events);
    assert_eq!(state.status, TaskStatus::Succeeded);
    assert_eq!(state.attempt, 3);
    assert_eq!(state.output, Some(output()));
    assert_eq!(state.error, None);
    assert_eq!(state.started_at, Some(at(51)));
    assert_eq!(state.finished_at, Some(at(60)));
}

#[test]
fn exhausted_attempts_end_failed_and_a_requeue_starts_over() {
    let mut events = two_failed_attempts();
    events.push(leased(3, 50));
    events.push(lease_expired(3, 350, None));
    let state = state_after(events.clone());
    assert_eq!(state.status, TaskStatus::Failed);
    assert_eq!(state.finished_at, Some(at(350)));
    assert_eq!(
        state.error.and_then(|e| e.code).as_deref(),
        Some("lease_expired")
    );

    events.push(requeued(400));
    let state = state_after(events);
    assert_eq!(state.status, TaskStatus::Queued);
    assert_eq!(state.attempt, 0);
    assert_eq!(state.error, None);
    assert_eq!(state.finished_at, None);
    assert_eq!(state.last_lease, None);
    assert!(is_ready(&state, at(400)));
}

#[test]
fn cancelled_state_keeps_finished_at() {
    let state = state_after(vec![created(), cancelled()]);
    assert_eq!(state.status, TaskStatus::Cancelled);
    assert_eq!(state.finished_at, Some(at(5)));
}

#[test]
fn refusals_are_classified() {
    let conflicts = [
        TaskError::AlreadyExists,
        TaskError::StaleLease,
        TaskError::PinnedToAnotherAgent,
        TaskError::NotReady { not_before: at(1) },
        TaskError::LeaseNotExpired { expires_at: at(1) },
        TaskError::IllegalTransition {
            from: TaskStatus::Queued,
            action: "start",
        },
    ];
    for error in conflicts {
        assert_eq!(error.kind(), RefusalKind::Conflict, "{error}");
        assert!(error.code().starts_with("task."));
    }
    assert_eq!(TaskError::NotFound.kind(), RefusalKind::NotFound);
    assert_eq!(TaskError::StaleLease.code(), "task.stale_lease");
}
