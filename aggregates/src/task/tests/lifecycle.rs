//! Create, cancel, manual retry and reprioritise.

use super::*;

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
fn cancel_leased_task_names_its_agent() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 1)])
        .when(cancel())
        .then_expect_events(vec![cancelled_by(Some(agent()))]);
}

#[test]
fn cancel_running_task_names_its_agent() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 1), started(1, 2)])
        .when(cancel())
        .then_expect_events(vec![cancelled_by(Some(agent()))]);
}

#[test]
fn cancel_between_attempts_names_no_agent() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 1),
            attempt_failed(1, 2, Some(at(3))),
        ])
        .when(cancel())
        .then_expect_events(vec![cancelled()]);
}

#[test]
fn cancel_succeeded_task_is_illegal() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 1), succeeded(1, 2)])
        .when(cancel())
        .then_expect_error(TaskError::IllegalTransition {
            from: TaskStatus::Succeeded,
            action: "cancel",
        });
}

#[test]
fn cancel_failed_task_is_illegal() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 1), attempt_failed(1, 2, None)])
        .when(cancel())
        .then_expect_error(TaskError::IllegalTransition {
            from: TaskStatus::Failed,
            action: "cancel",
        });
}

#[test]
fn retry_failed_task_requeues_it() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 1), attempt_failed(1, 2, None)])
        .when(TaskCommand::RetryTask { at: at(9) })
        .then_expect_events(vec![requeued(9)]);
}

#[test]
fn retry_cancelled_task_requeues_it() {
    TaskTest::with(())
        .given(vec![created(), cancelled()])
        .when(TaskCommand::RetryTask { at: at(9) })
        .then_expect_events(vec![requeued(9)]);
}

#[test]
fn requeued_task_leases_as_attempt_one() {
    let mut events = two_failed_attempts();
    events.extend([leased(3, 50), attempt_failed(3, 60, None), requeued(70)]);
    TaskTest::with(())
        .given(events)
        .when(lease_cmd(1, 80))
        .then_expect_events(vec![leased(1, 80)]);
}

#[test]
fn retry_is_illegal_unless_failed_or_cancelled() {
    let cases = [
        (vec![created()], TaskStatus::Queued),
        (vec![created(), leased(1, 1)], TaskStatus::Leased),
        (
            vec![created(), leased(1, 1), started(1, 2)],
            TaskStatus::Running,
        ),
        (
            vec![created(), leased(1, 1), attempt_failed(1, 2, Some(at(3)))],
            TaskStatus::RetryScheduled,
        ),
        (
            vec![created(), leased(1, 1), succeeded(1, 2)],
            TaskStatus::Succeeded,
        ),
    ];
    for (given, from) in cases {
        TaskTest::with(())
            .given(given)
            .when(TaskCommand::RetryTask { at: at(9) })
            .then_expect_error(TaskError::IllegalTransition {
                from,
                action: "retry",
            });
    }
}

#[test]
fn retry_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(TaskCommand::RetryTask { at: at(9) })
        .then_expect_error(TaskError::NotFound);
}

fn reprioritise(priority: Option<i64>, tags: Option<&[&str]>) -> TaskCommand {
    TaskCommand::Reprioritise {
        priority: priority.map(|p| Priority::new(p).unwrap()),
        tags: tags.map(tags_of),
        at: at(9),
    }
}

#[test]
fn reprioritise_changes_priority_and_keeps_tags() {
    TaskTest::with(())
        .given(vec![created()])
        .when(reprioritise(Some(9), None))
        .then_expect_events(vec![reprioritised(9, &["demo"], 9)]);
}

#[test]
fn reprioritise_changes_tags_and_keeps_priority() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 1), started(1, 2)])
        .when(reprioritise(None, Some(&["a", "b"])))
        .then_expect_events(vec![reprioritised(7, &["a", "b"], 9)]);
}

#[test]
fn reprioritise_to_the_same_values_changes_nothing() {
    TaskTest::with(())
        .given(vec![created()])
        .when(reprioritise(Some(7), Some(&["demo"])))
        .then_expect_events(vec![]);
    TaskTest::with(())
        .given(vec![created()])
        .when(reprioritise(None, None))
        .then_expect_events(vec![]);
}

#[test]
fn reprioritise_finished_task_is_illegal() {
    TaskTest::with(())
        .given(vec![created(), cancelled()])
        .when(reprioritise(Some(1), None))
        .then_expect_error(TaskError::IllegalTransition {
            from: TaskStatus::Cancelled,
            action: "reprioritise",
        });
}

#[test]
fn reprioritise_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(reprioritise(Some(1), None))
        .then_expect_error(TaskError::NotFound);
}

#[test]
fn reprioritised_state_has_the_new_values() {
    let state = state_after(vec![created(), reprioritised(2, &["x"], 9)]);
    assert_eq!(state.priority.get(), 2);
    assert_eq!(state.tags.as_slice(), ["x"]);
    assert_eq!(state.updated_at, at(9));
}

fn keyed_spec() -> TaskSpec {
    serde_json::from_value::<NewTaskRequest>(json!({
        "capability": "browser.navigate",
        "input": {"url": "https://example.com"},
        "priority": 7,
        "tags": ["demo"],
        "concurrency_key": "example.com",
        "concurrency_limit": 2,
    }))
    .unwrap()
    .validate()
    .unwrap()
}

fn keyed_created() -> TaskEvent {
    let TaskEvent::TaskCreated(created) = created() else {
        unreachable!("created() is a TaskCreated")
    };
    TaskEvent::TaskCreated(TaskCreated {
        concurrency: keyed_spec().concurrency,
        team_id: None,
        ..created
    })
}

#[test]
fn create_records_the_concurrency_group() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(TaskCommand::CreateTask {
            task_id: task_id(),
            owner_id: owner_id(),
            spec: keyed_spec(),
            workflow_run_id: None,
            at: at(0),
        })
        .then_expect_events(vec![keyed_created()]);
}

#[test]
fn the_concurrency_group_stays_through_leases_and_retries() {
    let state = state_after(vec![
        keyed_created(),
        leased(1, 1),
        attempt_failed(1, 2, Some(at(3))),
    ]);
    let group = state.concurrency.as_ref().unwrap();
    assert_eq!((group.key(), group.limit()), ("example.com", 2));
    assert_eq!(state_after(vec![created()]).concurrency, None);
}

/// Events stored before concurrency groups existed decode, and a task without a group
/// writes no `concurrency` field (the payload shape, and so its hash input, is unchanged).
#[test]
fn created_payloads_without_a_group_keep_their_shape() {
    let mut old = serde_json::to_value(created()).unwrap();
    assert!(old["TaskCreated"].get("concurrency").is_none());
    assert_eq!(
        serde_json::from_value::<TaskEvent>(old.clone()).unwrap(),
        created()
    );
    old["TaskCreated"]["concurrency"] = json!({"key": "example.com", "limit": 2});
    assert_eq!(
        serde_json::from_value::<TaskEvent>(old).unwrap(),
        keyed_created()
    );
}

fn team() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_7ea1)
}

fn shared(seconds: i64) -> TaskEvent {
    TaskEvent::TaskShared(TaskShared {
        team_id: team(),
        at: at(seconds),
    })
}

#[test]
fn share_gives_the_task_to_a_team_once() {
    TaskTest::with(())
        .given(vec![created()])
        .when(TaskCommand::ShareTask {
            team_id: team(),
            at: at(1),
        })
        .then_expect_events(vec![shared(1)]);
    TaskTest::with(())
        .given(vec![created(), shared(1)])
        .when(TaskCommand::ShareTask {
            team_id: team(),
            at: at(2),
        })
        .then_expect_events(vec![]);
}

#[test]
fn a_finished_task_can_still_be_shared() {
    TaskTest::with(())
        .given(vec![created(), cancelled()])
        .when(TaskCommand::ShareTask {
            team_id: team(),
            at: at(6),
        })
        .then_expect_events(vec![shared(6)]);
}

#[test]
fn share_with_another_team_moves_the_task() {
    let other = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_7ea2);
    TaskTest::with(())
        .given(vec![created(), shared(1)])
        .when(TaskCommand::ShareTask {
            team_id: other,
            at: at(2),
        })
        .then_expect_events(vec![TaskEvent::TaskShared(TaskShared {
            team_id: other,
            at: at(2),
        })]);
}

#[test]
fn unshare_takes_the_task_back_and_is_idempotent() {
    TaskTest::with(())
        .given(vec![created(), shared(1)])
        .when(TaskCommand::UnshareTask { at: at(2) })
        .then_expect_events(vec![TaskEvent::TaskUnshared(TaskUnshared {
            team_id: team(),
            at: at(2),
        })]);
    TaskTest::with(())
        .given(vec![created()])
        .when(TaskCommand::UnshareTask { at: at(2) })
        .then_expect_events(vec![]);
}

#[test]
fn share_and_unshare_need_a_task() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(TaskCommand::ShareTask {
            team_id: team(),
            at: at(1),
        })
        .then_expect_error(TaskError::NotFound);
    TaskTest::with(())
        .given_no_previous_events()
        .when(TaskCommand::UnshareTask { at: at(1) })
        .then_expect_error(TaskError::NotFound);
}

#[test]
fn sharing_sets_and_clears_the_team_of_the_state() {
    let mut task = Task::default();
    for event in [created(), shared(1)] {
        task.apply(event);
    }
    assert_eq!(task.state().map(|t| t.team_id), Some(Some(team())));
    task.apply(TaskEvent::TaskUnshared(TaskUnshared {
        team_id: team(),
        at: at(2),
    }));
    assert_eq!(task.state().map(|t| t.team_id), Some(None));
}
