//! The process manager: the runtime's reactions that issue commands — handing ready tasks
//! to agents, returning a leaving agent's work, and the lease timers. Everything here is
//! derived from the read models and the aggregates, never from memory, so a restart or a
//! second node loses nothing; the aggregates refuse whatever has become stale.
//!
//! Layout:
//! - [`dispatch`]: leases ready tasks to an agent, within its concurrency limit.
//! - [`release`]: returns the tasks of a deregistered agent to the queue.
//! - [`timers`]: expires leases nobody renewed and wakes agents when a retry delay ends.
//! - [`builtin_agent`]: what the built-in agents share: identity, registration, the
//!   lease-run-report loop, shutdown.
//! - [`http_agent`]: the built-in agent that runs `http.request` tasks, behind an SSRF guard.
//! - [`llm`]: the LLM providers and the built-in agent that runs `llm.chat` tasks.
//! - [`workflows`]: the workflow driver — starts ready steps as tasks, records how they
//!   ended, finishes runs.
//! - [`schedules`]: starts a run each time a workflow's cron schedule is due, once per
//!   fire time on any number of nodes.
//! - [`live`]: what a live subscriber may receive, read from the feed in order.

pub mod builtin_agent;
pub mod dispatch;
pub mod http_agent;
pub(crate) mod live;
pub mod llm;
pub mod release;
pub mod schedules;
pub mod timers;
pub mod workflows;

use chronicle_aggregates::task::{Task, TaskCommand, TaskError};
use chrono::TimeDelta;
use uuid::Uuid;

use crate::bus::{CommandBus, CommandContext, CommandError, Committed};
use crate::read_side::ReadSide;
use crate::store::StoreError;

/// An active agent not heard from for this long is offline.
pub const OFFLINE_AFTER_SECS: i64 = 60;

/// An active agent not heard from for this long is offline.
pub fn offline_after() -> TimeDelta {
    TimeDelta::seconds(OFFLINE_AFTER_SECS)
}

/// Heartbeats closer together than this are not recorded (see the Agent aggregate): a
/// third of [`offline_after`], so a live agent's recorded heartbeat is never stale enough
/// to flip it offline.
pub fn heartbeat_resolution() -> TimeDelta {
    TimeDelta::seconds(OFFLINE_AFTER_SECS / 3)
}

/// A draw in `[0, 1]` for the retry backoff: randomness lives here, never in an aggregate.
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

/// Runs a task command whose refusal is an expected outcome here (a race lost to another
/// agent, a lease already gone): the committed task, brought into the views, or `None`
/// when the aggregate refused. Only a store failure is an error.
pub async fn try_task_command(
    bus: &CommandBus,
    read: &ReadSide,
    task_id: Uuid,
    context: &CommandContext,
    decide: impl FnMut(&Task) -> Result<TaskCommand, CommandError<TaskError>>,
) -> Result<Option<Committed<Task>>, StoreError> {
    match bus
        .execute::<Task, CommandError<TaskError>>(&task_id.to_string(), context, None, decide)
        .await
    {
        Ok(committed) => {
            read.task_committed(&committed.aggregate, committed.version)
                .await;
            Ok(Some(committed))
        }
        Err(CommandError::Store(error)) => Err(error),
        Err(refused) => {
            tracing::debug!(%task_id, error = %refused, "task command refused");
            Ok(None)
        }
    }
}
