//! How an attempt ends: result, failure, expiry; and results delivered twice or late.

use super::*;

#[test]
fn complete_running_task() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(complete(1, 20))
        .then_expect_events(vec![succeeded(1, 20)]);
}

#[test]
fn complete_leased_task_without_a_start() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(complete(1, 20))
        .then_expect_events(vec![succeeded(1, 20)]);
}

#[test]
fn the_same_result_twice_has_one_effect() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), succeeded(1, 20)])
        .when(complete(1, 25))
        .then_expect_events(vec![]);
}

#[test]
fn a_different_result_for_a_finished_lease_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), succeeded(1, 20)])
        .when(TaskCommand::CompleteTask {
            lease_id: lease(1),
            output: json!({"title": "something else"}),
            at: at(25),
        })
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn complete_with_an_unknown_lease_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(complete(7, 20))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn complete_queued_task_is_stale() {
    TaskTest::with(())
        .given(vec![created()])
        .when(complete(1, 20))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn late_result_after_expiry_is_stale() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            lease_expired(1, 310, Some(at(311))),
        ])
        .when(complete(1, 320))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn late_result_before_the_expiry_timer_fired_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(complete(1, 10 + TIMEOUT))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn late_result_after_another_agent_took_over_is_stale() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            lease_expired(1, 310, Some(at(311))),
            leased(2, 311),
        ])
        .when(complete(1, 320))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn result_after_cancel_is_stale() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 1),
            started(1, 2),
            cancelled_by(Some(agent())),
        ])
        .when(complete(1, 20))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn result_for_a_failed_lease_is_stale() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
        ])
        .when(complete(1, 25))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn complete_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(complete(1, 20))
        .then_expect_error(TaskError::NotFound);
}

#[test]
fn fail_schedules_a_retry_with_backoff() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(fail(1, 1.0, 20))
        .then_expect_events(vec![attempt_failed(1, 20, Some(at(21)))]);
}

#[test]
fn fail_backoff_is_scaled_by_jitter() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(fail(1, 0.0, 20))
        .then_expect_events(vec![attempt_failed(1, 20, Some(at_ms(20_500)))]);
}

#[test]
fn fail_backoff_doubles_per_attempt() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
            leased(2, 30),
        ])
        .when(fail(2, 1.0, 40))
        .then_expect_events(vec![attempt_failed(2, 40, Some(at(42)))]);
}

#[test]
fn fail_of_the_last_attempt_fails_the_task() {
    let mut given = two_failed_attempts();
    given.push(leased(3, 50));
    TaskTest::with(())
        .given(given)
        .when(fail(3, 1.0, 60))
        .then_expect_events(vec![attempt_failed(3, 60, None)]);
}

fn permanently_failed(n: u32, s: i64) -> TaskEvent {
    TaskEvent::TaskAttemptFailed(TaskAttemptFailed {
        lease_id: lease(u128::from(n)),
        agent_id: agent(),
        attempt: n,
        error: refused(),
        cause: AttemptFailureCause::Reported,
        retry_at: None,
        at: at(s),
    })
}

#[test]
fn a_permanent_failure_fails_the_task_with_attempts_left() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(fail_permanently(1, 20))
        .then_expect_events(vec![permanently_failed(1, 20)]);
    let state = state_after(vec![created(), leased(1, 10), permanently_failed(1, 20)]);
    assert_eq!(state.status, TaskStatus::Failed);
    assert_eq!(state.attempt, 1);
    assert_eq!(state.finished_at, Some(at(20)));
    assert!(!is_ready(&state, at(1_000)));
}

#[test]
fn a_permanent_failure_twice_has_one_effect() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), permanently_failed(1, 20)])
        .when(fail_permanently(1, 21))
        .then_expect_events(vec![]);
}

#[test]
fn a_permanent_failure_needs_the_live_lease() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(fail_permanently(2, 20))
        .then_expect_error(TaskError::StaleLease);
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(fail_permanently(1, 10 + TIMEOUT))
        .then_expect_error(TaskError::StaleLease);
    TaskTest::with(())
        .given(vec![created(), cancelled()])
        .when(fail_permanently(1, 20))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn a_permanently_failed_task_can_be_retried_by_hand() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), permanently_failed(1, 20)])
        .when(TaskCommand::RetryTask { at: at(30) })
        .then_expect_events(vec![requeued(30)]);
}

#[test]
fn the_same_failure_twice_has_one_effect() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
        ])
        .when(fail(1, 0.3, 22))
        .then_expect_events(vec![]);
    // Still recognised once the next attempt holds the task.
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            attempt_failed(1, 20, Some(at(21))),
            leased(2, 21),
        ])
        .when(fail(1, 0.3, 22))
        .then_expect_events(vec![]);
}

#[test]
fn fail_after_success_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), succeeded(1, 20)])
        .when(fail(1, 1.0, 21))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn late_failure_after_expiry_is_stale() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            lease_expired(1, 310, Some(at(311))),
        ])
        .when(fail(1, 1.0, 320))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn fail_with_an_unknown_lease_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(fail(5, 1.0, 20))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn fail_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(fail(1, 1.0, 20))
        .then_expect_error(TaskError::NotFound);
}

#[test]
fn expiry_is_a_failed_attempt() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), started(1, 11)])
        .when(expire(1, 10 + TIMEOUT))
        .then_expect_events(vec![lease_expired(1, 310, Some(at(311)))]);
}

#[test]
fn expiry_of_the_last_attempt_fails_the_task() {
    let mut given = two_failed_attempts();
    given.push(leased(3, 50));
    TaskTest::with(())
        .given(given)
        .when(expire(3, 350))
        .then_expect_events(vec![lease_expired(3, 350, None)]);
}

#[test]
fn expiry_before_the_lease_ran_out_is_refused() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(expire(1, 309))
        .then_expect_error(TaskError::LeaseNotExpired {
            expires_at: at(310),
        });
}

#[test]
fn expiry_after_a_heartbeat_waits_for_the_new_expiry() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            TaskEvent::LeaseExtended(LeaseExtended {
                lease_id: lease(1),
                lease_expires_at: at(400),
                at: at(100),
            }),
        ])
        .when(expire(1, 310))
        .then_expect_error(TaskError::LeaseNotExpired {
            expires_at: at(400),
        });
}

#[test]
fn expiry_twice_has_one_effect() {
    TaskTest::with(())
        .given(vec![
            created(),
            leased(1, 10),
            lease_expired(1, 310, Some(at(311))),
        ])
        .when(expire(1, 312))
        .then_expect_events(vec![]);
}

#[test]
fn expiry_after_the_result_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10), succeeded(1, 20)])
        .when(expire(1, 310))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn expiry_of_an_unknown_lease_is_stale() {
    TaskTest::with(())
        .given(vec![created(), leased(1, 10)])
        .when(expire(2, 310))
        .then_expect_error(TaskError::StaleLease);
}

#[test]
fn expiry_of_a_missing_task_is_refused() {
    TaskTest::with(())
        .given_no_previous_events()
        .when(expire(1, 310))
        .then_expect_error(TaskError::NotFound);
}
