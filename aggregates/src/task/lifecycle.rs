//! Decisions on the owner's commands: create, cancel, retry by hand, reprioritise, share.

use chronicle_commands::task::TaskSpec;
use chronicle_commands::values::{Priority, Tags};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::events::{
    TaskCancelled, TaskCreated, TaskEvent, TaskReprioritised, TaskRequeued, TaskShared,
    TaskUnshared,
};
use super::state::{TaskState, TaskStatus};
use super::{existing, Decision, TaskError};

pub(super) fn create(
    state: Option<&TaskState>,
    task_id: Uuid,
    owner_id: Uuid,
    spec: TaskSpec,
    workflow_run_id: Option<Uuid>,
    at: DateTime<Utc>,
) -> Decision {
    if state.is_some() {
        return Err(TaskError::AlreadyExists);
    }
    Ok(Some(TaskEvent::TaskCreated(TaskCreated {
        task_id,
        owner_id,
        capability: spec.capability,
        input: spec.input,
        priority: spec.priority,
        timeout_secs: spec.timeout_secs,
        retry: spec.retry,
        pinned_agent_id: spec.pinned_agent_id,
        workflow_run_id,
        tags: spec.tags,
        not_before: spec.not_before,
        at,
        concurrency: spec.concurrency,
        team_id: spec.team_id,
    })))
}

/// Idempotent: cancelling a cancelled task changes nothing.
pub(super) fn cancel(
    state: Option<&TaskState>,
    reason: Option<String>,
    at: DateTime<Utc>,
) -> Decision {
    let state = existing(state)?;
    match state.status {
        TaskStatus::Cancelled => Ok(None),
        from if from.is_terminal() => Err(TaskError::IllegalTransition {
            from,
            action: "cancel",
        }),
        _ => Ok(Some(TaskEvent::TaskCancelled(TaskCancelled {
            reason,
            // Only a lease holder has anything to stop.
            agent_id: state.lease_id.and(state.agent_id),
            at,
        }))),
    }
}

pub(super) fn retry(state: Option<&TaskState>, at: DateTime<Utc>) -> Decision {
    let state = existing(state)?;
    match state.status {
        TaskStatus::Failed | TaskStatus::Cancelled => {
            Ok(Some(TaskEvent::TaskRequeued(TaskRequeued { at })))
        }
        from => Err(TaskError::IllegalTransition {
            from,
            action: "retry",
        }),
    }
}

/// Absent values are kept; a change to nothing is accepted without an event.
pub(super) fn reprioritise(
    state: Option<&TaskState>,
    priority: Option<Priority>,
    tags: Option<Tags>,
    at: DateTime<Utc>,
) -> Decision {
    let state = existing(state)?;
    if state.status.is_terminal() {
        return Err(TaskError::IllegalTransition {
            from: state.status,
            action: "reprioritise",
        });
    }
    let priority = priority.unwrap_or(state.priority);
    let tags = tags.unwrap_or_else(|| state.tags.clone());
    if priority == state.priority && tags == state.tags {
        return Ok(None);
    }
    Ok(Some(TaskEvent::TaskReprioritised(TaskReprioritised {
        priority,
        tags,
        at,
    })))
}

/// Sharing with the team it already belongs to changes nothing.
pub(super) fn share(state: Option<&TaskState>, team_id: Uuid, at: DateTime<Utc>) -> Decision {
    let state = existing(state)?;
    Ok((state.team_id != Some(team_id))
        .then_some(TaskEvent::TaskShared(TaskShared { team_id, at })))
}

/// Unsharing a task that belongs to no team changes nothing.
pub(super) fn unshare(state: Option<&TaskState>, at: DateTime<Utc>) -> Decision {
    let state = existing(state)?;
    Ok(state
        .team_id
        .map(|team_id| TaskEvent::TaskUnshared(TaskUnshared { team_id, at })))
}
