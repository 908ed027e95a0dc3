//! Returns a deregistered agent's work to the queue.
//!
//! Each task it held is failed with the code `agent_deregistered` (`FailTask`), not
//! expired: the aggregate only expires a lease whose time is up, and the agent's leaving
//! is news now. Like any failed attempt it is retried after the task's backoff while
//! attempts remain (so it is back in the queue, `retry_scheduled`), and fails for good when
//! none remain — a task that keeps losing its agents does not circulate forever.

use chronicle_aggregates::task::{TaskCommand, TaskError, TaskFailure};
use chronicle_projections::task_view::TaskView;
use chrono::Utc;
use uuid::Uuid;

use super::dispatch::DispatchError;
use super::{jitter, try_task_command};
use crate::bus::{CommandBus, CommandContext, CommandError};
use crate::read_side::ReadSide;

/// The `error.code` of an attempt ended because its agent left.
pub const AGENT_DEREGISTERED: &str = "agent_deregistered";

/// Fails every attempt `agent_id` holds; returns how many were released.
pub async fn release_agent_tasks(
    bus: &CommandBus,
    read: &ReadSide,
    agent_id: Uuid,
    context: &CommandContext,
) -> Result<usize, DispatchError> {
    let mut released = 0;
    for task_id in TaskView::held_by(&read.db, agent_id).await? {
        let failure = TaskFailure {
            message: "the agent holding the task was deregistered".into(),
            code: Some(AGENT_DEREGISTERED.into()),
            details: None,
        };
        if fail_held(bus, read, agent_id, task_id, failure, context).await? {
            released += 1;
        }
    }
    Ok(released)
}

/// Ends the attempt `agent_id` holds on `task_id` with `failure` (retried like any failed
/// attempt); `false` when the agent no longer holds it.
pub async fn fail_held(
    bus: &CommandBus,
    read: &ReadSide,
    agent_id: Uuid,
    task_id: Uuid,
    failure: TaskFailure,
    context: &CommandContext,
) -> Result<bool, DispatchError> {
    let committed = try_task_command(bus, read, task_id, context, |task| match task.state() {
        Some(state) if state.agent_id == Some(agent_id) && state.status.is_held() => {
            let lease_id = state
                .lease_id
                .ok_or(CommandError::Refused(TaskError::StaleLease))?;
            Ok(TaskCommand::FailTask {
                lease_id,
                error: failure.clone(),
                permanent: false,
                jitter: jitter(),
                at: Utc::now(),
            })
        }
        // The agent had already let go of it: nothing to return.
        _ => Err(CommandError::Refused(TaskError::StaleLease)),
    })
    .await?;
    Ok(committed.is_some())
}
