//! Pure task rules: queue readiness, lease windows and retry timing.

use chrono::{DateTime, TimeDelta, Utc};

use super::state::{TaskState, TaskStatus};

/// Whether the queue may offer the task at `now`: waiting (queued or between attempts)
/// and its `not_before`, if any, reached.
pub fn is_ready(state: &TaskState, now: DateTime<Utc>) -> bool {
    matches!(
        state.status,
        TaskStatus::Queued | TaskStatus::RetryScheduled
    ) && state.not_before.is_none_or(|not_before| now >= not_before)
}

/// Whether the live lease is still alive at `at`. A lease lives in `[granted, expires)`:
/// from its expiry on only `ExpireLease` may end it, so an agent's late report and the
/// expiry timer can never both win, whichever reaches the aggregate first.
pub fn lease_alive(state: &TaskState, at: DateTime<Utc>) -> bool {
    state
        .lease_expires_at
        .is_some_and(|expires_at| at < expires_at)
}

/// When a lease granted or renewed at `at` runs out: `timeout_secs` later.
pub fn lease_expiry(state: &TaskState, at: DateTime<Utc>) -> DateTime<Utc> {
    later(
        at,
        TimeDelta::try_seconds(i64::from(state.timeout_secs.get())),
    )
}

/// When the next attempt may start after the current one failed at `at`, or `None` when
/// the attempts are used up. `jitter` in `[0, 1]` is drawn by the caller.
pub fn retry_at(state: &TaskState, at: DateTime<Utc>, jitter: f64) -> Option<DateTime<Utc>> {
    if state.attempt >= state.retry.max_attempts {
        return None;
    }
    let backoff_ms = state
        .retry
        .backoff_ms(state.attempt.saturating_add(1), jitter);
    Some(later(
        at,
        i64::try_from(backoff_ms)
            .ok()
            .and_then(TimeDelta::try_milliseconds),
    ))
}

/// `at + delta`, saturating: a time past chrono's range is "never", not a panic.
fn later(at: DateTime<Utc>, delta: Option<TimeDelta>) -> DateTime<Utc> {
    delta
        .and_then(|delta| at.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
