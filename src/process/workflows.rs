//! The workflow driver: moves every running run forward. It looks at the tasks of running
//! steps, records how they ended, times out approvals whose deadline has come, and carries
//! out what the run is ready for ([`next`]): steps started as tasks, approval steps set
//! waiting, skips, the run's end.
//!
//! Its state is the events. Each step's task id is derived from (run, step, attempt), so
//! a second start — another node, a restart between creating the task and recording the
//! step — meets `AlreadyExists` and records the same task; the run refuses whatever has
//! become stale. Any number of drivers may therefore look after the same runs.
//!
//! Two loops share the work. The reacting one advances a run as soon as one of its step
//! tasks ends on this node (the read side hears of every task commit, [`EndedSteps`]):
//! that is the path from a step's success to the next step's task, and it touches only
//! the runs concerned. The sweep looks at every running run every [`POLL`], the safety
//! net for what the reacting one cannot see: a node that died between a task's end and
//! its run's step, a task ended by another process.

use chronicle_aggregates::task::{Task, TaskCommand, TaskError, TaskFailure, TaskStatus};
use chronicle_aggregates::workflow_run::{
    next, Next, RunState, RunStatus, StepStatus, WorkflowRun, WorkflowRunCommand, WorkflowRunError,
};
use chronicle_commands::task::{NewTaskRequest, TaskSpec};
use chronicle_commands::workflow::StepRequest;
use chronicle_projections::workflow_run_view::WorkflowRunView;
use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::{Builder, Uuid};

use super::try_task_command;
use crate::bus::{CommandBus, CommandContext, CommandError};
use crate::read_side::ReadSide;
use crate::store::StoreError;

/// How often the sweep looks at every running run.
const POLL: Duration = Duration::from_millis(500);

/// Runs the reacting loop advances at once. Each advance holds at most one pooled
/// connection at a time, so a burst of endings cannot take the pool from requests; the
/// runs beyond wait their turn (and endings of one run while it waits are one look).
const REACT_AT_ONCE: usize = 8;

/// Most runs waiting for the reacting loop; beyond, endings are left to the sweep (only a
/// process that records task commits without driving runs would get there).
const MAX_ENDED: usize = 100_000;

/// Runs looked after per sweep.
const BATCH: u32 = 1_000;

/// At most this many rounds of decisions per run per pass (a round can make more steps
/// ready: a chain of skips takes one round per link).
const MAX_ROUNDS: usize = 256;

/// The id of the task that runs `step_id` of `run_id` at `attempt`: the same on every node.
pub fn step_task_id(run_id: Uuid, step_id: &str, attempt: u32) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"chronicle:workflow-step:");
    hasher.update(run_id.as_bytes());
    hasher.update((step_id.len() as u64).to_be_bytes());
    hasher.update(step_id.as_bytes());
    hasher.update(attempt.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Builder::from_custom_bytes(bytes).into_uuid()
}

fn context(run_id: Uuid) -> CommandContext {
    CommandContext {
        actor: "system:workflows".into(),
        correlation_id: run_id.to_string(),
        ..CommandContext::default()
    }
}

/// Runs whose step task ended on this node and that the driver has not looked at since.
/// Owned by the server (through its read side), so two servers in one process are two
/// nodes; it is only a hint, the sweep finds anything it misses.
#[derive(Default)]
pub struct EndedSteps {
    runs: Mutex<HashSet<Uuid>>,
    signal: Notify,
}

impl EndedSteps {
    /// A task of `run_id` ended (committed): the driver should look at the run now.
    pub(crate) fn ended(&self, run_id: Uuid) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if runs.len() < MAX_ENDED {
            runs.insert(run_id);
        }
        drop(runs);
        // A permit is kept when the driver is not waiting, so no ending is slept through.
        self.signal.notify_one();
    }

    fn take(&self) -> HashSet<Uuid> {
        std::mem::take(&mut *self.runs.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Runs until `stop` is cancelled; errors are logged and the loops go on.
pub async fn run(bus: CommandBus, read: ReadSide, stop: CancellationToken) {
    tokio::join!(react(&bus, &read, &stop), sweep(&bus, &read, &stop));
}

/// Advances each run as soon as one of its step tasks ends here, [`REACT_AT_ONCE`] runs at
/// a time. A run is never advanced twice at once by this loop: an ending that arrives
/// while its run is being advanced makes one more look once that one is done.
async fn react(bus: &CommandBus, read: &ReadSide, stop: &CancellationToken) {
    let ended = read.ended_steps();
    // `waiting` in the order the runs' tasks ended, `queued` the same runs for lookups.
    let mut waiting = VecDeque::<Uuid>::new();
    let mut queued = HashSet::<Uuid>::new();
    let mut advancing = HashSet::<Uuid>::new();
    let mut again = HashSet::<Uuid>::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < REACT_AT_ONCE {
            let Some(run_id) = waiting.pop_front() else {
                break;
            };
            queued.remove(&run_id);
            if !advancing.insert(run_id) {
                again.insert(run_id);
                continue;
            }
            in_flight.push(async move {
                if let Err(error) = advance(bus, read, run_id).await {
                    tracing::warn!(%run_id, %error, "could not advance the run");
                }
                run_id
            });
        }
        tokio::select! {
            () = ended.signal.notified() => {
                for run_id in ended.take() {
                    if queued.insert(run_id) {
                        waiting.push_back(run_id);
                    }
                }
            }
            Some(run_id) = in_flight.next() => {
                advancing.remove(&run_id);
                if again.remove(&run_id) && queued.insert(run_id) {
                    waiting.push_back(run_id);
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Looks at every running run every [`POLL`].
async fn sweep(bus: &CommandBus, read: &ReadSide, stop: &CancellationToken) {
    loop {
        match WorkflowRunView::running(&read.db, BATCH).await {
            Ok(runs) => {
                for run_id in runs {
                    if let Err(error) = advance(bus, read, run_id).await {
                        tracing::warn!(%run_id, %error, "could not advance the run");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not list running workflow runs"),
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Moves one run forward as far as it can go now.
pub async fn advance(bus: &CommandBus, read: &ReadSide, run_id: Uuid) -> Result<(), StoreError> {
    let runs = bus.store().aggregate::<WorkflowRun>();
    let context = context(run_id);
    for _ in 0..MAX_ROUNDS {
        let loaded = runs.load(&run_id.to_string()).await?;
        let Some(state) = loaded.aggregate.state() else {
            return Ok(());
        };
        if state.status != RunStatus::Running {
            return Ok(());
        }
        let mut commands = observe_tasks(bus, state).await?;
        commands.extend(due_approvals(state));
        if commands.is_empty() {
            for action in next(state) {
                commands.extend(carry_out(bus, read, state, action, &context).await?);
            }
        }
        if commands.is_empty() {
            return Ok(());
        }
        for command in commands {
            run_command(bus, read, run_id, &context, command).await?;
        }
    }
    Ok(())
}

/// Runs one command on the run; a refusal (another driver was first) is expected.
pub(crate) async fn run_command(
    bus: &CommandBus,
    read: &ReadSide,
    run_id: Uuid,
    context: &CommandContext,
    command: WorkflowRunCommand,
) -> Result<(), StoreError> {
    match bus
        .execute::<WorkflowRun, CommandError<WorkflowRunError>>(
            &run_id.to_string(),
            context,
            None,
            |_| Ok(command.clone()),
        )
        .await
    {
        Ok(committed) => {
            read.workflow_run_committed(&committed.aggregate, committed.version)
                .await;
            Ok(())
        }
        Err(CommandError::Store(error)) => Err(error),
        Err(refused) => {
            tracing::debug!(%run_id, error = %refused, "run command refused");
            Ok(())
        }
    }
}

/// How the tasks of running steps ended, as commands to the run.
async fn observe_tasks(
    bus: &CommandBus,
    state: &RunState,
) -> Result<Vec<WorkflowRunCommand>, StoreError> {
    let tasks = bus.store().aggregate::<Task>();
    let mut commands = Vec::new();
    for (step_id, step) in &state.steps {
        let (StepStatus::Running, Some(task_id)) = (step.status, step.task_id) else {
            continue;
        };
        let loaded = tasks.load(&task_id.to_string()).await?;
        let Some(task) = loaded.aggregate.state() else {
            continue;
        };
        let at = Utc::now();
        let command = match task.status {
            TaskStatus::Succeeded => Some(WorkflowRunCommand::CompleteStep {
                step_id: step_id.clone(),
                output: task.output.clone().unwrap_or_default(),
                attempt: task.attempt,
                at,
            }),
            TaskStatus::Failed => Some(WorkflowRunCommand::FailStep {
                step_id: step_id.clone(),
                error: task.error.clone().unwrap_or_else(|| TaskFailure {
                    message: "the step's task failed".into(),
                    code: None,
                    details: None,
                }),
                attempt: task.attempt,
                at,
            }),
            TaskStatus::Cancelled => Some(WorkflowRunCommand::FailStep {
                step_id: step_id.clone(),
                error: TaskFailure {
                    message: "the step's task was cancelled".into(),
                    code: Some("task_cancelled".into()),
                    details: None,
                },
                attempt: task.attempt,
                at,
            }),
            _ => None,
        };
        commands.extend(command);
    }
    Ok(commands)
}

/// Time-outs of the approval steps whose deadline has come. The deadline is in the run's
/// events, so it holds across restarts; the aggregate refuses a second node's time-out.
fn due_approvals(state: &RunState) -> impl Iterator<Item = WorkflowRunCommand> {
    let at = Utc::now();
    state
        .due_approvals(at)
        .into_iter()
        .map(move |step_id| WorkflowRunCommand::TimeOutApproval { step_id, at })
}

/// The command that records `action`, after creating the step's task for a start.
async fn carry_out(
    bus: &CommandBus,
    read: &ReadSide,
    state: &RunState,
    action: Next,
    context: &CommandContext,
) -> Result<Option<WorkflowRunCommand>, StoreError> {
    let at = Utc::now();
    Ok(Some(match action {
        Next::Start { step_id, input } => {
            let Some(step) = state.definition.steps().iter().find(|s| s.id == step_id) else {
                return Ok(None);
            };
            match start_task(bus, read, state, step, input, context).await? {
                Ok(task_id) => WorkflowRunCommand::StartStep {
                    step_id,
                    task_id,
                    at,
                },
                Err(error) => WorkflowRunCommand::FailStep {
                    step_id,
                    error,
                    attempt: 0,
                    at,
                },
            }
        }
        Next::Skip { step_id, reason } => WorkflowRunCommand::SkipStep {
            step_id,
            reason,
            at,
        },
        Next::AwaitApproval { step_id } => WorkflowRunCommand::AwaitApproval { step_id, at },
        Next::FailStep { step_id, error } => WorkflowRunCommand::FailStep {
            step_id,
            error,
            attempt: 0,
            at,
        },
        Next::FailRun { step_id, error } => WorkflowRunCommand::FailRun { step_id, error, at },
        Next::Succeed => WorkflowRunCommand::SucceedRun { at },
    }))
}

/// Creates the step's task (or finds it created): its id, or why it cannot be a task
/// (the rendered input breaks the capability's rules).
async fn start_task(
    bus: &CommandBus,
    read: &ReadSide,
    state: &RunState,
    step: &StepRequest,
    input: serde_json::Value,
    context: &CommandContext,
) -> Result<Result<Uuid, TaskFailure>, StoreError> {
    let request = NewTaskRequest {
        capability: step.capability.clone().unwrap_or_default(),
        input,
        priority: None,
        timeout_secs: step.timeout_secs,
        max_attempts: step.max_attempts,
        retry: None,
        agent_id: step.agent_id,
        tags: None,
        not_before: None,
        concurrency_key: None,
        concurrency_limit: None,
        team_id: None,
    };
    let spec = match request.validate() {
        // A team workflow's tasks belong to the team too.
        Ok(spec) => TaskSpec {
            team_id: state.team_id,
            ..spec
        },
        Err(errors) => {
            return Ok(Err(TaskFailure {
                message: "the step's rendered task is invalid".into(),
                code: Some("invalid_step_input".into()),
                details: serde_json::to_value(&errors.0).ok(),
            }))
        }
    };
    let task_id = step_task_id(state.id, &step.id, 1);
    let (run_id, owner_id) = (state.id, state.owner_id);
    let created = bus
        .create::<Task, CommandError<TaskError>>(&task_id.to_string(), context, |_| {
            Ok(TaskCommand::CreateTask {
                task_id,
                owner_id,
                spec: spec.clone(),
                workflow_run_id: Some(run_id),
                at: Utc::now(),
            })
        })
        .await;
    match created {
        Ok(committed) => {
            read.task_committed(&committed.aggregate, committed.version)
                .await;
        }
        Err(CommandError::Refused(TaskError::AlreadyExists)) => {}
        Err(CommandError::Store(error)) => return Err(error),
        Err(other) => {
            tracing::warn!(%run_id, step = %step.id, error = %other, "step task not created");
            return Ok(Err(TaskFailure {
                message: other.to_string(),
                code: Some("task_not_created".into()),
                details: None,
            }));
        }
    }
    Ok(Ok(task_id))
}

/// Cancels the tasks of `task_ids` that are still open (a cancelled run's), each refusal
/// (already finished) expected.
pub async fn cancel_tasks(
    bus: &CommandBus,
    read: &ReadSide,
    task_ids: &[Uuid],
    context: &CommandContext,
) -> Result<(), StoreError> {
    for task_id in task_ids {
        try_task_command(bus, read, *task_id, context, |_| {
            Ok(TaskCommand::CancelTask {
                reason: Some("the workflow run was cancelled".into()),
                at: Utc::now(),
            })
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_task_id_is_the_same_everywhere_and_differs_per_step_and_attempt() {
        let run = Uuid::from_u128(7);
        assert_eq!(step_task_id(run, "a", 1), step_task_id(run, "a", 1));
        assert_ne!(step_task_id(run, "a", 1), step_task_id(run, "a", 2));
        assert_ne!(step_task_id(run, "a", 1), step_task_id(run, "b", 1));
        assert_ne!(
            step_task_id(run, "a", 1),
            step_task_id(Uuid::from_u128(8), "a", 1)
        );
    }

    #[tokio::test]
    async fn an_ending_before_the_driver_waits_is_kept_and_a_burst_is_one_look() {
        let ended = EndedSteps::default();
        let (run, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        ended.ended(run);
        ended.ended(run);
        ended.ended(other);
        // The permit outlives the endings: the driver's next wait returns at once.
        tokio::time::timeout(Duration::from_secs(10), ended.signal.notified())
            .await
            .unwrap();
        assert_eq!(ended.take(), HashSet::from([run, other]));
        assert!(ended.take().is_empty());
    }
}
