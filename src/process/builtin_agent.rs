//! What the node's built-in agents (the HTTP agent, the LLM agent) share: their identity,
//! their registration and the loop that leases, runs, renews and reports their tasks. Each
//! agent brings only a [`Runner`]: its work on one task.
//!
//! **Identity.** A built-in agent is system-owned (nil owner), so it serves every user.
//! Its id is derived, not minted: generation `g` of the agent named `n` is
//! `UUIDv8(SHA-256("chronicle:builtin-agent:<n>:<g>"))`, so a restarted node finds the
//! agent it registered before, and every node on one PostgreSQL serves the *same* agent:
//! its `max_concurrency` is a limit for the whole cluster (dispatch decides it under the
//! agent's slot row), and each node also keeps at most that many tasks in flight. Each
//! start reconfigures the agent to the node's setting, so nodes should share it. An
//! operator who drains or deregisters the agent stops it on every node; a node that starts
//! after that skips the retired generation and registers the next one.
//!
//! **Work.** The loop leases ready tasks when the queue signal fires, when a slot frees up
//! and at least every few seconds (tasks created on another node), runs each in its own
//! tokio task, renews the lease every third of the task's timeout while it runs, and
//! reports the output or the failure. A task cancelled meanwhile is noticed at the next
//! renewal, and its work is dropped.
//!
//! **Shutdown.** On the node's stop signal the loop takes no more work and waits for the
//! tasks in flight up to the grace period; those still running then are reported as
//! failed with `agent_shutdown` (retried), not left for their leases to run out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chronicle_aggregates::agent::{Agent, AgentCommand, AgentError, AgentLifecycle, AgentState};
use chronicle_aggregates::task::{Task, TaskCommand, TaskError, TaskFailure, TaskState};
use chronicle_commands::agent::AgentSpec;
use chrono::Utc;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::{Builder, Uuid};

use super::dispatch::{lease_ready, DispatchError, Granted};
use super::{heartbeat_resolution, jitter};
use crate::bus::{CommandBus, CommandContext, CommandError, Committed};
use crate::read_side::ReadSide;

/// Generations skipped (drained or deregistered by an operator) before registration gives
/// up: enough for years of operators' changes, few enough to load at start.
pub const MAX_GENERATIONS: u32 = 64;

/// Even with no wake-up the loop looks at the queue this often: a task created on another
/// node is found within this time.
const RECHECK: Duration = Duration::from_secs(5);

/// A renewal at most this often, however short the task's lease.
const MIN_RENEWAL: Duration = Duration::from_millis(100);

/// The failure code of work cut short by the node's shutdown (retried).
pub const AGENT_SHUTDOWN: &str = "agent_shutdown";

/// Why a task's work failed, as the task records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Another attempt cannot help: the task fails at once instead of per its retry policy.
    pub permanent: bool,
}

impl Failure {
    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            permanent: true,
        }
    }

    pub fn retryable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            permanent: false,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn shutdown() -> Self {
        Self {
            code: AGENT_SHUTDOWN,
            message: "the node stopped before the work finished".into(),
            details: None,
            permanent: false,
        }
    }
}

/// A built-in agent's work on one leased, started task.
pub trait Runner: Send + Sync + 'static {
    /// The task's output, or why it failed.
    fn run(&self, task: &TaskState) -> impl Future<Output = Result<Value, Failure>> + Send;
}

/// Which built-in agent: its name in ids and logs, and what it registers as.
pub struct Builtin {
    /// The name in the derived id and in logs: `http`, `llm`.
    pub name: &'static str,
    pub spec: AgentSpec,
}

/// The id of generation `generation` of the built-in agent `name`.
pub fn agent_id(name: &str, generation: u32) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"chronicle:builtin-agent:");
    hasher.update(name.as_bytes());
    hasher.update(b":");
    hasher.update(generation.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Builder::from_custom_bytes(bytes).into_uuid()
}

/// How often the agent records that it is alive: twice per heartbeat resolution, so its
/// recorded heartbeat never gets old enough to show it offline.
fn heartbeat_every() -> Duration {
    (heartbeat_resolution() / 2)
        .to_std()
        .unwrap_or(Duration::from_secs(10))
}

fn agent_context(agent_id: Uuid) -> CommandContext {
    CommandContext {
        actor: format!("agent:{agent_id}"),
        correlation_id: Uuid::now_v7().to_string(),
        ..CommandContext::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot register the built-in agent: {0}")]
    Register(#[from] CommandError<AgentError>),
    #[error("every one of the built-in {name} agent's {MAX_GENERATIONS} ids is retired")]
    NoGeneration { name: &'static str },
}

/// A registered built-in agent, ready to run.
pub struct BuiltinAgent<R> {
    name: &'static str,
    agent: AgentState,
    /// The agent's version as registered.
    version: usize,
    runner: Arc<R>,
    max_concurrency: usize,
}

impl<R: Runner> BuiltinAgent<R> {
    /// Registers this cluster's agent `builtin`, or finds it registered and brings its
    /// concurrency limit to the spec's.
    pub async fn register(
        bus: &CommandBus,
        read: &ReadSide,
        builtin: Builtin,
        runner: R,
    ) -> Result<Self, RegisterError> {
        let Builtin { name, spec } = builtin;
        let max_concurrency = spec.max_concurrency;
        for generation in 0..MAX_GENERATIONS {
            let id = agent_id(name, generation);
            let result = bus
                .execute::<Agent, CommandError<AgentError>>(
                    &id.to_string(),
                    &agent_context(id),
                    None,
                    |agent| match agent.state() {
                        None => Ok(AgentCommand::RegisterAgent {
                            agent_id: id,
                            owner_id: Uuid::nil(),
                            spec: spec.clone(),
                            at: Utc::now(),
                        }),
                        Some(state) if state.lifecycle == AgentLifecycle::Active => {
                            Ok(AgentCommand::ReconfigureAgent {
                                max_concurrency,
                                at: Utc::now(),
                            })
                        }
                        Some(_) => Err(CommandError::Refused(AgentError::Deregistered)),
                    },
                )
                .await;
            match result {
                Ok(Committed {
                    aggregate, version, ..
                }) => {
                    read.agent_committed(&aggregate, version).await;
                    let agent = aggregate
                        .state()
                        .cloned()
                        .ok_or(CommandError::Refused(AgentError::NotFound))?;
                    tracing::info!(agent = name, agent_id = %id, generation, "built-in agent registered");
                    return Ok(Self {
                        name,
                        agent,
                        version,
                        runner: Arc::new(runner),
                        max_concurrency: max_concurrency.get() as usize,
                    });
                }
                Err(CommandError::Refused(AgentError::Deregistered)) => {
                    tracing::info!(agent = name, agent_id = %id, generation, "built-in agent retired; trying the next id");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(RegisterError::NoGeneration { name })
    }

    pub fn id(&self) -> Uuid {
        self.agent.id
    }

    /// Serves tasks until `shutdown`, then lets the work in flight finish for up to
    /// `grace` and reports the rest as failed.
    #[tracing::instrument(skip_all, fields(agent = self.name, agent_id = %self.agent.id))]
    pub async fn run(
        self,
        bus: CommandBus,
        read: ReadSide,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let worker = Arc::new(Worker {
            bus,
            read,
            runner: self.runner,
            agent_id: self.agent.id,
            abort: CancellationToken::new(),
        });
        let mut agent = self.agent;
        let mut version = self.version;
        let slots = Arc::new(Semaphore::new(self.max_concurrency));
        let mut running = JoinSet::new();
        let mut next_heartbeat = Instant::now();
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_heartbeat {
                if let Some((state, now)) = worker.heartbeat(&agent, version).await {
                    agent = state;
                    version = now;
                }
                next_heartbeat = Instant::now() + heartbeat_every();
            }
            // Registered before looking, so a task that becomes ready during the look
            // still wakes the loop.
            let queued = worker.read.queue_signal().notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if agent.lifecycle == AgentLifecycle::Active {
                worker.lease(&agent, version, &slots, &mut running).await;
            }
            let wait = RECHECK.min(next_heartbeat.saturating_duration_since(Instant::now()));
            tokio::select! {
                () = &mut queued => {}
                Some(joined) = running.join_next(), if !running.is_empty() => report_panic(joined),
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => {}
            }
        }
        tracing::info!(in_flight = running.len(), "built-in agent stopping");
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = running.join_next().await {
                report_panic(joined);
            }
        })
        .await;
        if drained.is_err() {
            worker.abort.cancel();
            while let Some(joined) = running.join_next().await {
                report_panic(joined);
            }
        }
    }
}

fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!(%error, "a built-in agent's task runner failed");
    }
}

/// What every task runner shares.
struct Worker<R> {
    bus: CommandBus,
    read: ReadSide,
    runner: Arc<R>,
    agent_id: Uuid,
    /// Cancelled when the shutdown grace is over: work still running gives up.
    abort: CancellationToken,
}

/// How a task command went.
enum Sent {
    Committed,
    /// The task refused it: cancelled, or the lease is no longer ours.
    Refused,
    /// The store did not take it; the lease timer will clean up if nothing else does.
    Failed,
}

impl<R: Runner> Worker<R> {
    /// Records a sign of life; the agent and its version as they are now, `None` when that
    /// is unknown.
    async fn heartbeat(&self, agent: &AgentState, version: usize) -> Option<(AgentState, usize)> {
        let result = self
            .bus
            .execute::<Agent, CommandError<AgentError>>(
                &agent.id.to_string(),
                &agent_context(agent.id),
                None,
                |_| {
                    Ok(AgentCommand::RecordHeartbeat {
                        at: Utc::now(),
                        resolution: heartbeat_resolution(),
                    })
                },
            )
            .await;
        match result {
            Ok(Committed {
                aggregate, version, ..
            }) => {
                self.read.agent_committed(&aggregate, version).await;
                if agent.lifecycle == AgentLifecycle::Active
                    && aggregate
                        .state()
                        .is_some_and(|now| now.lifecycle != AgentLifecycle::Active)
                {
                    tracing::warn!("the built-in agent was drained; it takes no new work");
                }
                aggregate.state().cloned().map(|state| (state, version))
            }
            Err(CommandError::Refused(AgentError::Deregistered)) => {
                if agent.lifecycle != AgentLifecycle::Deregistered {
                    tracing::warn!(
                        "the built-in agent was deregistered; it takes no new work until the node restarts"
                    );
                }
                Some((
                    AgentState {
                        lifecycle: AgentLifecycle::Deregistered,
                        ..agent.clone()
                    },
                    version,
                ))
            }
            Err(error) => {
                tracing::warn!(%error, "heartbeat of the built-in agent failed");
                None
            }
        }
    }

    /// Leases as many ready tasks as there are free slots and starts a runner for each.
    async fn lease(
        self: &Arc<Self>,
        agent: &AgentState,
        version: usize,
        slots: &Arc<Semaphore>,
        running: &mut JoinSet<()>,
    ) {
        let free = slots.available_permits();
        if free == 0 {
            return;
        }
        let context = agent_context(agent.id);
        let max_tasks = u32::try_from(free).unwrap_or(u32::MAX);
        let leasing = lease_ready(&self.bus, &self.read, agent, version, max_tasks, &context);
        let granted = match leasing.await {
            Ok(granted) => granted,
            Err(DispatchError::AgentRetired) => {
                tracing::info!("the built-in agent retired; its next heartbeat says how");
                return;
            }
            Err(error) => {
                tracing::error!(%error, "leasing tasks failed");
                return;
            }
        };
        for grant in granted {
            // Only this loop takes slots, and it asked for no more than were free.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::error!("no free slot for a granted task; its lease will expire");
                continue;
            };
            running.spawn(self.clone().serve(grant, permit));
        }
    }

    /// Runs one leased task to its report.
    #[tracing::instrument(skip_all, fields(task_id))]
    async fn serve(self: Arc<Self>, grant: Granted, _slot: OwnedSemaphorePermit) {
        let Some(task) = grant.task.state() else {
            return;
        };
        let (task_id, lease_id) = (task.id, grant.lease_id);
        tracing::Span::current().record("task_id", tracing::field::display(task_id));
        let start = TaskCommand::StartTask {
            lease_id,
            at: Utc::now(),
        };
        if let Sent::Refused = self.send(task_id, start).await {
            return;
        }
        // A third of the lease: two renewals may be lost before it runs out.
        let every =
            Duration::from_millis(u64::from(task.timeout_secs.get()) * 1000 / 3).max(MIN_RENEWAL);
        let mut renewals = tokio::time::interval_at(Instant::now() + every, every);
        let work = self.runner.run(task);
        tokio::pin!(work);
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                _ = renewals.tick() => {
                    let renew = TaskCommand::ExtendLease { lease_id, at: Utc::now() };
                    if let Sent::Refused = self.send(task_id, renew).await {
                        tracing::info!("the lease ended while the task ran; dropping its work");
                        return;
                    }
                }
                () = self.abort.cancelled() => break Err(Failure::shutdown()),
            }
        };
        let report = match outcome {
            Ok(output) => TaskCommand::CompleteTask {
                lease_id,
                output,
                at: Utc::now(),
            },
            Err(failure) => {
                tracing::info!(
                    code = failure.code,
                    permanent = failure.permanent,
                    "task failed"
                );
                TaskCommand::FailTask {
                    lease_id,
                    error: TaskFailure {
                        message: failure.message,
                        code: Some(failure.code.to_owned()),
                        details: failure.details,
                    },
                    permanent: failure.permanent,
                    jitter: jitter(),
                    at: Utc::now(),
                }
            }
        };
        self.send(task_id, report).await;
    }

    async fn send(&self, task_id: Uuid, command: TaskCommand) -> Sent {
        let context = CommandContext {
            correlation_id: task_id.to_string(),
            ..agent_context(self.agent_id)
        };
        let result = self
            .bus
            .execute::<Task, CommandError<TaskError>>(&task_id.to_string(), &context, None, |_| {
                Ok(command.clone())
            })
            .await;
        match result {
            Ok(Committed {
                aggregate, version, ..
            }) => {
                self.read.task_committed(&aggregate, version).await;
                Sent::Committed
            }
            Err(CommandError::Refused(error)) => {
                tracing::debug!(%error, "task refused the agent's command");
                Sent::Refused
            }
            Err(error) => {
                tracing::warn!(%error, "task command failed; the lease timer will retry the task");
                Sent::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_derived_per_agent_and_generation() {
        assert_eq!(agent_id("http", 0), agent_id("http", 0));
        assert_ne!(agent_id("http", 0), agent_id("http", 1));
        assert_ne!(agent_id("http", 0), agent_id("llm", 0));
    }
}
