use chrono::{TimeZone, Utc};
use chronicle_commands::task::NewTaskRequest;
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use serde_json::json;
use uuid::Uuid;

use super::*;

type TaskTest = TestFramework<Task>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0).unwrap()
}

fn task_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001)
}

fn owner_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_00aa)
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

fn created() -> TaskEvent {
    let spec = spec();
    TaskEvent::TaskCreated(TaskCreated {
        task_id: task_id(),
        owner_id: owner_id(),
        capability: spec.capability,
        input: spec.input,
        priority: spec.priority,
        timeout_secs: spec.timeout_secs,
        retry: spec.retry,
        pinned_agent_id: None,
        workflow_run_id: None,
        tags: spec.tags,
        not_before: None,
        at: at(0),
    })
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

fn cancelled() -> TaskEvent {
    TaskEvent::TaskCancelled(TaskCancelled {
        reason: Some("no longer needed".into()),
        agent_id: None,
        at: at(5),
    })
}

#[test]
fn create_emits_created() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(create())
        .then_expect_events(vec![created()]);
}

#[test]
fn create_twice_is_refused() {
    TaskTest::with(())
        .given(vec![created()])
        .when(create())
        .then_expect_error(TaskError::AlreadyExists);
}

#[test]
fn cancel_queued_task() {
    TaskTest::with(())
        .given(vec![created()])
        .when(cancel())
        .then_expect_events(vec![cancelled()]);
}

#[test]
fn cancel_is_idempotent() {
    TaskTest::with(())
        .given(vec![created(), cancelled()])
        .when(cancel())
        .then_expect_events(vec![]);
}

#[test]
fn cancel_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(cancel())
        .then_expect_error(TaskError::NotFound);
}

#[test]
fn created_state_is_queued() {
    let mut task = Task::default();
    task.apply(created());
    let state = task.state().unwrap();
    assert_eq!(state.status, TaskStatus::Queued);
    assert_eq!(state.attempt, 0);
    assert_eq!(state.priority.get(), 7);
    task.apply(cancelled());
    let state = task.state().unwrap();
    assert_eq!(state.status, TaskStatus::Cancelled);
    assert_eq!(state.finished_at, Some(at(5)));
}

#[test]
fn event_names_match_their_serde_tags() {
    for event in [created(), cancelled()] {
        let value = serde_json::to_value(&event).unwrap();
        let tag = value.as_object().unwrap().keys().next().unwrap().clone();
        assert_eq!(tag, event.event_type());
    }
}
