//! Granting a lease, and the holder's start, progress and heartbeat.

use super::*;

#[test]
fn lease_queued_task() {
    TaskTest::with(())
        .given(vec![created()])
        .when(lease_cmd(1, 10))
        .then_expect_events(vec![leased(1, 10)]);
}

#[test]
fn the_same_grant_twice_has_one_effect() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(lease_cmd(1, 11))
        .then_expect_events(vec![]);
}

#[test]
fn an_ended_lease_is_never_granted_again() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
        ])
        .when(lease_cmd(1, 30))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn lease_held_task_is_illegal() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(TaskCommand::LeaseTask {
            agent_id: other_agent(),
            lease_id: lease(9),
            at: at(11),
        })
        .then_expect_error(TaskError::IllegalTransition {
            from: TaskStatus::Leased,
            action: "lease",
        });
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(lease_cmd(2, 12))
        .then_expect_error(TaskError::IllegalTransition {
            from: TaskStatus::Running,
            action: "lease",
        });
}

#[test]
fn lease_finished_task_is_illegal() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), succeeded(1, 20)])
        .when(lease_cmd(2, 30))
        .then_expect_error(TaskError::IllegalTransition {
            from: TaskStatus::Succeeded,
            action: "lease",
        });
    TaskTest::with(())
        .given(vec![created(), cancelled()])
        .when(lease_cmd(1, 30))
        .then_expect_error(TaskError::IllegalTransition {
            from: TaskStatus::Cancelled,
            action: "lease",
        });
}

#[test]
fn lease_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(lease_cmd(1, 10))
        .then_expect_error(TaskError::NotFound);
}

#[test]
fn lease_before_not_before_is_refused() {
    TaskTest::with(())
        .given(vec![created_with(None, Some(at(100)))])
        .when(lease_cmd(1, 99))
        .then_expect_error(TaskError::NotReady {
            not_before: at(100),
        });
}

#[test]
fn lease_once_not_before_is_reached() {
    TaskTest::with(())
        .given(vec![created_with(None, Some(at(100)))])
        .when(lease_cmd(1, 100))
        .then_expect_events(vec![leased(1, 100)]);
}

#[test]
fn lease_before_the_retry_is_due_is_refused() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
        ])
        .when(lease_cmd(2, 20))
        .then_expect_error(TaskError::NotReady { not_before: at(21) });
}

#[test]
fn lease_when_the_retry_is_due_counts_the_attempt() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
        ])
        .when(lease_cmd(2, 21))
        .then_expect_events(vec![leased(2, 21)]);
}

#[test]
fn pinned_task_is_refused_to_another_agent() {
    TaskTest::with(())
        .given(vec![created_with(Some(other_agent()), None)])
        .when(lease_cmd(1, 10))
        .then_expect_error(TaskError::PinnedToAnotherAgent);
}

#[test]
fn pinned_task_is_leased_to_its_agent() {
    TaskTest::with(())
        .given(vec![created_with(Some(agent()), None)])
        .when(lease_cmd(1, 10))
        .then_expect_events(vec![leased(1, 10)]);
}

fn start(n: u128, s: i64) -> TaskCommand {
    TaskCommand::StartTask {
        lease_id: lease(n),
        at: at(s),
    }
}

#[test]
fn start_leased_task() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(start(1, 11))
        .then_expect_events(vec![started(1, 11)]);
}

#[test]
fn start_twice_has_one_effect() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(start(1, 12))
        .then_expect_events(vec![]);
}

#[test]
fn start_with_an_unknown_lease_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(start(2, 11))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn start_queued_task_is_stale() {
    TaskTest::with(())
        .given(vec![created()])
        .when(start(1, 11))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn start_after_the_lease_ran_out_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(start(1, 10 + TIMEOUT))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn start_with_a_finished_lease_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), succeeded(1, 20)])
        .when(start(1, 21))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn start_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(start(1, 11))
        .then_expect_error(TaskError::NotFound);
}

fn report(n: u128, s: i64) -> TaskCommand {
    TaskCommand::ReportProgress {
        lease_id: lease(n),
        progress: json!({"percent": 50}),
        at: at(s),
    }
}

fn progressed(n: u128, s: i64) -> TaskEvent {
    TaskEvent::TaskProgressed(TaskProgressed {
        lease_id: lease(n),
        progress: json!({"percent": 50}),
        lease_expires_at: at(s + TIMEOUT),
        at: at(s),
    })
}

#[test]
fn progress_renews_the_lease() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(report(1, 200))
        .then_expect_events(vec![progressed(1, 200)]);
    let state = state_after(vec![created(), leased(1, 10), progressed(1, 200)]);
    assert_eq!(state.lease_expires_at, Some(at(500)));
    assert_eq!(state.progress, Some(json!({"percent": 50})));
    assert_eq!(state.status, TaskStatus::Leased);
}

#[test]
fn progress_with_a_stale_lease_is_refused() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
            leased(2, 21),
        ])
        .when(report(1, 22))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn progress_after_the_lease_ran_out_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(report(1, 10 + TIMEOUT))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn progress_on_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(report(1, 11))
        .then_expect_error(TaskError::NotFound);
}

fn extend(n: u128, s: i64) -> TaskCommand {
    TaskCommand::ExtendLease {
        lease_id: lease(n),
        at: at(s),
    }
}

fn extended(n: u128, s: i64) -> TaskEvent {
    TaskEvent::LeaseExtended(LeaseExtended {
        lease_id: lease(n),
        lease_expires_at: at(s + TIMEOUT),
        at: at(s),
    })
}

#[test]
fn heartbeat_extends_the_lease() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(extend(1, 309))
        .then_expect_events(vec![extended(1, 309)]);
}

#[test]
fn heartbeat_keeps_a_lease_alive_past_its_first_expiry() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), extended(1, 300)])
        .when(extend(1, 500))
        .then_expect_events(vec![extended(1, 500)]);
}

#[test]
fn heartbeat_after_the_lease_ran_out_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(extend(1, 310))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn heartbeat_with_an_ended_lease_is_stale() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
        ])
        .when(extend(1, 21))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn heartbeat_for_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(extend(1, 11))
        .then_expect_error(TaskError::NotFound);
}
