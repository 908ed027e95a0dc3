//! The built-in LLM agent: runs the `llm.chat` tasks of every user inside the node, through
//! the configured provider, with the life cycle of the built-in HTTP agent (see
//! [`crate::process::http_agent`]): system-owned, kind `llm`, one derived id for the cluster
//! (`UUIDv8(SHA-256("chronicle:builtin-agent:llm:<generation>"))`), `max_concurrency` a
//! limit for the whole cluster, leases renewed while the answer streams, drained on
//! shutdown (what still runs after the grace period fails with `agent_shutdown`, retried).

use std::sync::Arc;
use std::time::Duration;

use chronicle_aggregates::agent::{Agent, AgentCommand, AgentError, AgentLifecycle, AgentState};
use chronicle_aggregates::task::{Task, TaskCommand, TaskError, TaskFailure, TaskState};
use chronicle_commands::agent::{AgentKind, AgentName, AgentSpec, MaxConcurrency};
use chronicle_commands::llm_chat::{ChatMessage, LlmChatInput, Role, CAPABILITY};
use chronicle_commands::values::Capability;
use chrono::Utc;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::{Builder, Uuid};

use super::context::{ContextSource, Retrieved};
use super::conversation::{fit, turn_messages};
use super::provider::{codes, ChatProvider, ChatRequest, LlmFailure};
use super::tokens::TokenHub;
use crate::bus::{CommandBus, CommandContext, CommandError, Committed};
use crate::config::LlmSettings;
use crate::process::dispatch::{lease_ready, DispatchError, Granted};
use crate::process::{heartbeat_resolution, jitter};
use crate::read_side::ReadSide;

/// Generations skipped (drained or deregistered by an operator) before registration gives up.
const MAX_GENERATIONS: u32 = 64;

/// Even with no wake-up the loop looks at the queue this often.
const RECHECK: Duration = Duration::from_secs(5);

/// A renewal at most this often, however short the task's lease.
const MIN_RENEWAL: Duration = Duration::from_millis(100);

/// The id of the built-in LLM agent's `generation`.
pub fn agent_id(generation: u32) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"chronicle:builtin-agent:llm:");
    hasher.update(generation.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Builder::from_custom_bytes(bytes).into_uuid()
}

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
pub enum StartError {
    #[error("cannot build the LLM client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("invalid built-in agent: {0}")]
    Spec(&'static str),
    #[error("cannot register the built-in LLM agent: {0}")]
    Register(#[from] CommandError<AgentError>),
    #[error("every one of the built-in LLM agent's {MAX_GENERATIONS} ids is retired")]
    NoGeneration,
}

/// What the agent's runners need besides the bus and the read side.
pub struct LlmServices {
    pub provider: Arc<dyn ChatProvider>,
    pub tokens: TokenHub,
    /// `None`: `use_context` tasks fail with `context_unavailable`.
    pub context: Option<Arc<dyn ContextSource>>,
    pub settings: LlmSettings,
}

/// The registered agent, ready to run.
pub struct LlmAgent {
    agent: AgentState,
    version: usize,
    services: LlmServices,
    max_concurrency: usize,
}

impl LlmAgent {
    /// Registers this cluster's LLM agent, or finds it registered and brings its
    /// concurrency limit to the settings.
    pub async fn register(
        bus: &CommandBus,
        read: &ReadSide,
        services: LlmServices,
    ) -> Result<Self, StartError> {
        let max_concurrency = MaxConcurrency::new(i64::from(services.settings.max_concurrency))
            .map_err(StartError::Spec)?;
        let spec = AgentSpec {
            name: AgentName::parse("Built-in LLM agent").map_err(StartError::Spec)?,
            kind: AgentKind::Llm,
            capabilities: vec![Capability::parse(CAPABILITY).map_err(StartError::Spec)?],
            max_concurrency,
            metadata: Map::from_iter([
                ("builtin".to_owned(), Value::Bool(true)),
                (
                    "provider".to_owned(),
                    Value::String(services.provider.name().to_owned()),
                ),
            ]),
            config: None,
        };
        for generation in 0..MAX_GENERATIONS {
            let id = agent_id(generation);
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
                    tracing::info!(agent_id = %id, generation, provider = services.provider.name(), "built-in LLM agent registered");
                    return Ok(Self {
                        agent,
                        version,
                        services,
                        max_concurrency: max_concurrency.get() as usize,
                    });
                }
                Err(CommandError::Refused(AgentError::Deregistered)) => {
                    tracing::info!(agent_id = %id, generation, "built-in LLM agent retired; trying the next id");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(StartError::NoGeneration)
    }

    pub fn id(&self) -> Uuid {
        self.agent.id
    }

    /// Serves tasks until `shutdown`, then lets the answers in flight finish for up to
    /// `grace` and reports the rest as failed.
    #[tracing::instrument(skip_all, fields(agent_id = %self.agent.id))]
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
            services: self.services,
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
        tracing::info!(in_flight = running.len(), "built-in LLM agent stopping");
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
        tracing::error!(%error, "an llm.chat task runner failed");
    }
}

struct Worker {
    bus: CommandBus,
    read: ReadSide,
    services: LlmServices,
    agent_id: Uuid,
    abort: CancellationToken,
}

enum Sent {
    Committed,
    Refused,
    Failed,
}

impl Worker {
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
                aggregate.state().cloned().map(|state| (state, version))
            }
            Err(CommandError::Refused(AgentError::Deregistered)) => Some((
                AgentState {
                    lifecycle: AgentLifecycle::Deregistered,
                    ..agent.clone()
                },
                version,
            )),
            Err(error) => {
                tracing::warn!(%error, "heartbeat of the built-in LLM agent failed");
                None
            }
        }
    }

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
        let granted =
            match lease_ready(&self.bus, &self.read, agent, version, max_tasks, &context).await {
                Ok(granted) => granted,
                Err(DispatchError::AgentRetired) => return,
                Err(error) => {
                    tracing::error!(%error, "leasing llm.chat tasks failed");
                    return;
                }
            };
        for grant in granted {
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
        let every =
            Duration::from_millis(u64::from(task.timeout_secs.get()) * 1000 / 3).max(MIN_RENEWAL);
        let mut renewals = tokio::time::interval_at(Instant::now() + every, every);
        let answer = self.answer(task);
        tokio::pin!(answer);
        let outcome = loop {
            tokio::select! {
                outcome = &mut answer => break outcome,
                _ = renewals.tick() => {
                    let renew = TaskCommand::ExtendLease { lease_id, at: Utc::now() };
                    if let Sent::Refused = self.send(task_id, renew).await {
                        tracing::info!("the lease ended while the answer streamed; dropping it");
                        return;
                    }
                }
                () = self.abort.cancelled() => break Err(LlmFailure::shutdown()),
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
                    "llm.chat failed"
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

    /// The task's output: the answer, its usage, the context's sources.
    async fn answer(&self, task: &TaskState) -> Result<Value, LlmFailure> {
        let input = LlmChatInput::parse(&task.input).map_err(|errors| {
            LlmFailure::permanent(
                codes::INVALID_INPUT,
                "the input is not a valid llm.chat input",
            )
            .with_details(json!({"errors": errors.0}))
        })?;
        let provider = &self.services.provider;
        if let Some(asked) = input.provider.as_deref().filter(|p| *p != provider.name()) {
            return Err(LlmFailure::permanent(
                codes::PROVIDER_MISMATCH,
                format!(
                    "the task asks for provider {asked}; this cluster's LLM agent speaks {}",
                    provider.name()
                ),
            ));
        }
        let settings = &self.services.settings;
        let mut messages = Vec::new();
        let retrieved = if input.use_context {
            let retrieved = self.context(task, &input).await?;
            if !retrieved.context.is_empty() {
                messages.push(ChatMessage {
                    role: Role::System,
                    content: format!(
                        "Context from the user's earlier tasks (use it when it helps):\n\n{}",
                        retrieved.context
                    ),
                });
            }
            retrieved
        } else {
            Retrieved::default()
        };
        let (history, dropped) = match &input.conversation_id {
            Some(conversation_id) => self.history(task, conversation_id).await?,
            None => (Vec::new(), 0),
        };
        let history_messages = history.len();
        messages.extend(history);
        messages.extend(input.messages);
        let request = ChatRequest {
            model: input
                .model
                .unwrap_or_else(|| provider.default_model().to_owned()),
            messages,
            temperature: input.temperature,
            max_tokens: input.max_tokens.unwrap_or(settings.default_max_tokens),
        };
        let tokens = self.services.tokens.publisher(task.id, task.owner_id);
        let answer = provider.chat(&request, &tokens).await?;
        let mut output = json!({
            "content": answer.content,
            "usage": {
                "input_tokens": answer.usage.input_tokens,
                "output_tokens": answer.usage.output_tokens,
            },
            "sources": retrieved.sources,
            "model": request.model,
            "provider": provider.name(),
        });
        if let Some(conversation_id) = input.conversation_id {
            output["conversation"] = json!({
                "id": conversation_id,
                "history_messages": history_messages,
                "dropped_turns": dropped,
            });
        }
        Ok(output)
    }

    async fn context(
        &self,
        task: &TaskState,
        input: &LlmChatInput,
    ) -> Result<Retrieved, LlmFailure> {
        let Some(source) = &self.services.context else {
            return Err(LlmFailure::permanent(
                codes::CONTEXT_UNAVAILABLE,
                "use_context needs the search index, which this node does not run",
            ));
        };
        // The question is the last user message.
        let query = input
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str());
        let settings = &self.services.settings;
        source
            .context(
                task.owner_id,
                query,
                settings.context_limit,
                settings.context_max_chars,
            )
            .await
            .map_err(|message| {
                LlmFailure::retryable(codes::CONTEXT_UNAVAILABLE, "retrieving context failed")
                    .with_details(json!({"cause": message}))
            })
    }

    /// The conversation's earlier turns that fit the budget, and how many were dropped.
    async fn history(
        &self,
        task: &TaskState,
        conversation_id: &str,
    ) -> Result<(Vec<ChatMessage>, usize), LlmFailure> {
        let rows = chronicle_projections::conversations::turns(
            &self.read.db,
            task.owner_id,
            conversation_id,
            Some(task.id),
        )
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot read the conversation");
            LlmFailure::retryable(codes::REQUEST_FAILED, "cannot read the conversation")
        })?;
        let turns = rows
            .iter()
            .filter_map(|row| row.state().and_then(turn_messages))
            .collect();
        Ok(fit(
            turns,
            u64::from(self.services.settings.conversation_budget_tokens),
        ))
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
