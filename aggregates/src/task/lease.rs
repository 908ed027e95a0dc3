//! Decisions on the lease protocol: grant a lease, then the holder's start, progress,
//! heartbeat, result or failure, and the expiry of a lease nobody renewed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::events::{
    AttemptFailureCause, LeaseExtended, TaskAttemptFailed, TaskEvent, TaskLeased, TaskProgressed,
    TaskStarted, TaskSucceeded,
};
use super::rules::{lease_alive, lease_expiry, retry_at};
use super::state::{LeaseOutcome, TaskFailure, TaskState, TaskStatus};
use super::{existing, Decision, TaskError};

pub(super) fn lease(
    state: Option<&TaskState>,
    agent_id: Uuid,
    lease_id: Uuid,
    at: DateTime<Utc>,
) -> Decision {
    let state = existing(state)?;
    if state.lease_id == Some(lease_id) && state.agent_id == Some(agent_id) {
        // The same grant delivered twice (e.g. the dispatcher retried after a timeout).
        return Ok(None);
    }
    if state
        .last_lease
        .is_some_and(|ended| ended.lease_id == lease_id)
    {
        // A lease id names one lease: granting an ended one again would let its late
        // reports pass as the new lease's.
        return Err(TaskError::StaleLease);
    }
    if !matches!(
        state.status,
        TaskStatus::Queued | TaskStatus::RetryScheduled
    ) {
        return Err(TaskError::IllegalTransition {
            from: state.status,
            action: "lease",
        });
    }
    if state
        .pinned_agent_id
        .is_some_and(|pinned| pinned != agent_id)
    {
        return Err(TaskError::PinnedToAnotherAgent);
    }
    if let Some(not_before) = state.not_before.filter(|not_before| at < *not_before) {
        return Err(TaskError::NotReady { not_before });
    }
    Ok(Some(TaskEvent::TaskLeased(TaskLeased {
        agent_id,
        lease_id,
        attempt: state.attempt.saturating_add(1),
        lease_expires_at: lease_expiry(state, at),
        at,
    })))
}

pub(super) fn start(state: Option<&TaskState>, lease_id: Uuid, at: DateTime<Utc>) -> Decision {
    let held = live(state, lease_id, at)?;
    match held.state.status {
        TaskStatus::Leased => Ok(Some(TaskEvent::TaskStarted(TaskStarted { lease_id, at }))),
        // A start delivered twice.
        TaskStatus::Running => Ok(None),
        from => Err(TaskError::IllegalTransition {
            from,
            action: "start",
        }),
    }
}

pub(super) fn progress(
    state: Option<&TaskState>,
    lease_id: Uuid,
    progress: serde_json::Value,
    at: DateTime<Utc>,
) -> Decision {
    let held = live(state, lease_id, at)?;
    Ok(Some(TaskEvent::TaskProgressed(TaskProgressed {
        lease_id,
        progress,
        lease_expires_at: lease_expiry(held.state, at),
        at,
    })))
}

pub(super) fn extend(state: Option<&TaskState>, lease_id: Uuid, at: DateTime<Utc>) -> Decision {
    let held = live(state, lease_id, at)?;
    Ok(Some(TaskEvent::LeaseExtended(LeaseExtended {
        lease_id,
        lease_expires_at: lease_expiry(held.state, at),
        at,
    })))
}

pub(super) fn complete(
    state: Option<&TaskState>,
    lease_id: Uuid,
    output: serde_json::Value,
    at: DateTime<Utc>,
) -> Decision {
    match named(state, lease_id)? {
        Named::Current(held) => {
            alive(held.state, at)?;
            Ok(Some(TaskEvent::TaskSucceeded(TaskSucceeded {
                lease_id,
                agent_id: held.agent_id,
                output,
                at,
            })))
        }
        Named::Ended(state, LeaseOutcome::Succeeded) if state.output.as_ref() == Some(&output) => {
            Ok(None)
        }
        Named::Ended(..) => Err(TaskError::StaleLease),
    }
}

/// A permanent failure ends the task now: the event is the one an attempt that used up
/// the retries would write (`retry_at: None`), its `error.code` says why.
pub(super) fn fail(
    state: Option<&TaskState>,
    lease_id: Uuid,
    error: TaskFailure,
    permanent: bool,
    jitter: f64,
    at: DateTime<Utc>,
) -> Decision {
    match named(state, lease_id)? {
        Named::Current(held) => {
            alive(held.state, at)?;
            let retry = if permanent {
                Retry::Never
            } else {
                Retry::PerPolicy { jitter }
            };
            Ok(Some(attempt_failed(
                &held,
                error,
                AttemptFailureCause::Reported,
                retry,
                at,
            )))
        }
        Named::Ended(state, LeaseOutcome::Failed) if state.error.as_ref() == Some(&error) => {
            Ok(None)
        }
        Named::Ended(..) => Err(TaskError::StaleLease),
    }
}

/// Sent by a timer; idempotent, so a timer firing on two nodes has one effect.
pub(super) fn expire(
    state: Option<&TaskState>,
    lease_id: Uuid,
    jitter: f64,
    at: DateTime<Utc>,
) -> Decision {
    match named(state, lease_id)? {
        Named::Current(held) => {
            if let Some(expires_at) = held.state.lease_expires_at.filter(|e| at < *e) {
                return Err(TaskError::LeaseNotExpired { expires_at });
            }
            Ok(Some(attempt_failed(
                &held,
                TaskFailure::lease_expired(),
                AttemptFailureCause::LeaseExpired,
                Retry::PerPolicy { jitter },
                at,
            )))
        }
        Named::Ended(_, LeaseOutcome::Expired) => Ok(None),
        Named::Ended(..) => Err(TaskError::StaleLease),
    }
}

/// Whether a failed attempt may be followed by another.
enum Retry {
    /// While attempts remain, after the policy's backoff scaled by `jitter`.
    PerPolicy {
        jitter: f64,
    },
    Never,
}

fn attempt_failed(
    held: &Held<'_>,
    error: TaskFailure,
    cause: AttemptFailureCause,
    retry: Retry,
    at: DateTime<Utc>,
) -> TaskEvent {
    let retry_at = match retry {
        Retry::PerPolicy { jitter } => retry_at(held.state, at, jitter),
        Retry::Never => None,
    };
    TaskEvent::TaskAttemptFailed(TaskAttemptFailed {
        lease_id: held.lease_id,
        agent_id: held.agent_id,
        attempt: held.state.attempt,
        error,
        cause,
        retry_at,
        at,
    })
}

/// The task and its live lease.
struct Held<'a> {
    state: &'a TaskState,
    lease_id: Uuid,
    agent_id: Uuid,
}

/// What a lease id names: the current lease, or the one that ended most recently.
enum Named<'a> {
    Current(Held<'a>),
    Ended(&'a TaskState, LeaseOutcome),
}

/// Any other lease id (unknown, or ended before the latest one) is stale.
fn named(state: Option<&TaskState>, lease_id: Uuid) -> Result<Named<'_>, TaskError> {
    let state = existing(state)?;
    if let (Some(current), Some(agent_id)) = (state.lease_id, state.agent_id) {
        if current == lease_id {
            return Ok(Named::Current(Held {
                state,
                lease_id,
                agent_id,
            }));
        }
    }
    match state.last_lease {
        Some(ended) if ended.lease_id == lease_id => Ok(Named::Ended(state, ended.outcome)),
        _ => Err(TaskError::StaleLease),
    }
}

/// The current lease, alive at `at`; an ended one is stale for all but a repeated result.
fn live(
    state: Option<&TaskState>,
    lease_id: Uuid,
    at: DateTime<Utc>,
) -> Result<Held<'_>, TaskError> {
    match named(state, lease_id)? {
        Named::Current(held) => {
            alive(held.state, at)?;
            Ok(held)
        }
        Named::Ended(..) => Err(TaskError::StaleLease),
    }
}

fn alive(state: &TaskState, at: DateTime<Utc>) -> Result<(), TaskError> {
    if lease_alive(state, at) {
        Ok(())
    } else {
        Err(TaskError::StaleLease)
    }
}
