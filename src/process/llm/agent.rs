//! The built-in LLM agent: runs the `llm.chat` tasks of every user inside the node, through
//! the configured provider. Its identity, registration, lease loop, renewals (while the
//! answer streams) and shutdown are those of every built-in agent
//! ([`crate::process::builtin_agent`]): system-owned, kind `llm`, one derived id for the
//! cluster (`UUIDv8(SHA-256("chronicle:builtin-agent:llm:<generation>"))`),
//! `max_concurrency` a limit for the whole cluster.

use std::sync::Arc;

use chronicle_aggregates::task::TaskState;
use chronicle_commands::agent::{AgentKind, AgentName, AgentSpec, MaxConcurrency};
use chronicle_commands::llm_chat::{ChatMessage, LlmChatInput, Role, CAPABILITY};
use chronicle_commands::values::Capability;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::context::{ContextSource, Retrieved};
use super::conversation::{fit, turn_messages};
use super::provider::{codes, ChatProvider, ChatRequest, LlmFailure};
use super::tokens::TokenHub;
use crate::bus::CommandBus;
use crate::config::LlmSettings;
use crate::process::builtin_agent::{self, Builtin, BuiltinAgent, Failure, RegisterError, Runner};
use crate::read_side::ReadSide;

/// The name in the agent's derived id.
const NAME: &str = "llm";

/// The id of the built-in LLM agent's `generation`.
pub fn agent_id(generation: u32) -> Uuid {
    builtin_agent::agent_id(NAME, generation)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot build the LLM client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("invalid built-in agent: {0}")]
    Spec(&'static str),
    #[error(transparent)]
    Register(#[from] RegisterError),
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
pub type LlmAgent = BuiltinAgent<LlmRunner>;

/// Registers this cluster's LLM agent, or finds it registered and brings its concurrency
/// limit to the settings.
pub async fn register(
    bus: &CommandBus,
    read: &ReadSide,
    services: LlmServices,
) -> Result<LlmAgent, StartError> {
    let spec = AgentSpec {
        name: AgentName::parse("Built-in LLM agent").map_err(StartError::Spec)?,
        kind: AgentKind::Llm,
        capabilities: vec![Capability::parse(CAPABILITY).map_err(StartError::Spec)?],
        max_concurrency: MaxConcurrency::new(i64::from(services.settings.max_concurrency))
            .map_err(StartError::Spec)?,
        metadata: Map::from_iter([
            ("builtin".to_owned(), Value::Bool(true)),
            (
                "provider".to_owned(),
                Value::String(services.provider.name().to_owned()),
            ),
        ]),
        config: None,
    };
    let runner = LlmRunner {
        read: read.clone(),
        services,
    };
    let builtin = Builtin { name: NAME, spec };
    Ok(BuiltinAgent::register(bus, read, builtin, runner).await?)
}

/// One `llm.chat` task's answer.
pub struct LlmRunner {
    read: ReadSide,
    services: LlmServices,
}

impl Runner for LlmRunner {
    async fn run(&self, task: &TaskState) -> Result<Value, Failure> {
        self.answer(task).await
    }
}

impl LlmRunner {
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
}
