//! The Task aggregate: one unit of work for an agent, from creation to a terminal state.
//!
//! `queued → leased → running → succeeded | failed | cancelled`, with `retry_scheduled`
//! between attempts. Each lease is one attempt. Lease-holder commands name their lease:
//! any lease but the live one is refused as stale, except that the result which ended a
//! lease, delivered again, is accepted with no second effect.

mod error;
mod events;
mod lease;
mod lifecycle;
mod rules;
mod state;

use chronicle_commands::task::TaskSpec;
use chronicle_commands::values::{Priority, Tags};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::TaskError;
pub use events::{
    AttemptFailureCause, LeaseExtended, TaskAttemptFailed, TaskCancelled, TaskCreated, TaskEvent,
    TaskLeased, TaskProgressed, TaskReprioritised, TaskRequeued, TaskShared, TaskStarted,
    TaskSucceeded, TaskUnshared,
};
pub use rules::{is_ready, lease_alive, lease_expiry, retry_at};
pub use state::{EndedLease, LeaseOutcome, TaskFailure, TaskState, TaskStatus};

/// The aggregate: empty until `TaskCreated`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    state: Option<TaskState>,
}

impl Task {
    /// The task, or `None` when no `TaskCreated` has been applied.
    pub fn state(&self) -> Option<&TaskState> {
        self.state.as_ref()
    }
}

/// What can be asked of a task. Time, identities and jitter come in the command.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskCommand {
    CreateTask {
        task_id: Uuid,
        owner_id: Uuid,
        spec: TaskSpec,
        workflow_run_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// From queued, or retry_scheduled, once `not_before` is reached; a pinned task only
    /// to its agent. The lease runs out `timeout_secs` after `at`.
    LeaseTask {
        agent_id: Uuid,
        lease_id: Uuid,
        at: DateTime<Utc>,
    },
    StartTask {
        lease_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Records progress and renews the lease.
    ReportProgress {
        lease_id: Uuid,
        progress: serde_json::Value,
        at: DateTime<Utc>,
    },
    /// A heartbeat: renews the lease for `timeout_secs` from `at`.
    ExtendLease {
        lease_id: Uuid,
        at: DateTime<Utc>,
    },
    CompleteTask {
        lease_id: Uuid,
        output: serde_json::Value,
        at: DateTime<Utc>,
    },
    /// Retried after the policy's backoff (scaled by `jitter` in `[0, 1]`) while attempts
    /// remain, else failed. A `permanent` failure is failed at once, attempts left or not:
    /// the agent knows another attempt cannot succeed (a refused address, a bad input).
    FailTask {
        lease_id: Uuid,
        error: TaskFailure,
        permanent: bool,
        jitter: f64,
        at: DateTime<Utc>,
    },
    /// From the expiry timer; accepted only once `at` reaches the lease's expiry, then a
    /// failed attempt like `FailTask` with the code `lease_expired`.
    ExpireLease {
        lease_id: Uuid,
        jitter: f64,
        at: DateTime<Utc>,
    },
    CancelTask {
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// By hand: a failed or cancelled task is queued again with its attempts reset.
    RetryTask {
        at: DateTime<Utc>,
    },
    /// Absent values are kept.
    Reprioritise {
        priority: Option<Priority>,
        tags: Option<Tags>,
        at: DateTime<Utc>,
    },
    /// The task belongs to `team_id` too, finished or not; sharing it with its team again
    /// changes nothing.
    ShareTask {
        team_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Back to its owner alone; a task shared with no team is left as it is.
    UnshareTask {
        at: DateTime<Utc>,
    },
}

crate::command_names!(TaskCommand {
    CreateTask,
    LeaseTask,
    StartTask,
    ReportProgress,
    ExtendLease,
    CompleteTask,
    FailTask,
    ExpireLease,
    CancelTask,
    RetryTask,
    Reprioritise,
    ShareTask,
    UnshareTask
});

/// At most one event: `None` means the command is accepted and changes nothing.
type Decision = Result<Option<TaskEvent>, TaskError>;

fn existing(state: Option<&TaskState>) -> Result<&TaskState, TaskError> {
    state.ok_or(TaskError::NotFound)
}

fn decide(state: Option<&TaskState>, command: TaskCommand) -> Decision {
    match command {
        TaskCommand::CreateTask {
            task_id,
            owner_id,
            spec,
            workflow_run_id,
            at,
        } => lifecycle::create(state, task_id, owner_id, spec, workflow_run_id, at),
        TaskCommand::LeaseTask {
            agent_id,
            lease_id,
            at,
        } => lease::lease(state, agent_id, lease_id, at),
        TaskCommand::StartTask { lease_id, at } => lease::start(state, lease_id, at),
        TaskCommand::ReportProgress {
            lease_id,
            progress,
            at,
        } => lease::progress(state, lease_id, progress, at),
        TaskCommand::ExtendLease { lease_id, at } => lease::extend(state, lease_id, at),
        TaskCommand::CompleteTask {
            lease_id,
            output,
            at,
        } => lease::complete(state, lease_id, output, at),
        TaskCommand::FailTask {
            lease_id,
            error,
            permanent,
            jitter,
            at,
        } => lease::fail(state, lease_id, error, permanent, jitter, at),
        TaskCommand::ExpireLease {
            lease_id,
            jitter,
            at,
        } => lease::expire(state, lease_id, jitter, at),
        TaskCommand::CancelTask { reason, at } => lifecycle::cancel(state, reason, at),
        TaskCommand::RetryTask { at } => lifecycle::retry(state, at),
        TaskCommand::Reprioritise { priority, tags, at } => {
            lifecycle::reprioritise(state, priority, tags, at)
        }
        TaskCommand::ShareTask { team_id, at } => lifecycle::share(state, team_id, at),
        TaskCommand::UnshareTask { at } => lifecycle::unshare(state, at),
    }
}

impl Aggregate for Task {
    const TYPE: &'static str = "task";
    type Command = TaskCommand;
    type Event = TaskEvent;
    type Error = TaskError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if let Some(event) = decide(self.state.as_ref(), command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match (event, self.state.as_mut()) {
            (TaskEvent::TaskCreated(created), _) => self.state = Some(TaskState::created(created)),
            (event, Some(state)) => state.apply(event),
            // Only a corrupt stream has events before its `TaskCreated`; there is nothing
            // for them to change.
            (_, None) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
