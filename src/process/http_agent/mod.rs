//! The built-in HTTP agent: runs the `http.request` tasks of every user inside the node,
//! through an HTTP client that refuses internal addresses (see [`guard`]).
//!
//! Its identity, registration, lease loop, renewals and shutdown are those of every
//! built-in agent ([`super::builtin_agent`]): system-owned, kind `http`, generation 0's id
//! `UUIDv8(SHA-256("chronicle:builtin-agent:http:0"))`, `max_concurrency` a limit for the
//! whole cluster (`http_agent.max_concurrency`). A failure is permanent (the task fails at
//! once) when another attempt cannot help — a refused address, an invalid input, an
//! oversize body — and retried per the task's policy otherwise ([`exchange::codes`]).
//!
//! Layout:
//! - [`guard`]: the SSRF guard: address classes, the filtering resolver, redirect checks.
//! - [`exchange`]: one HTTP exchange, input to output or failure.

pub mod exchange;
pub mod guard;

use chronicle_aggregates::task::TaskState;
use chronicle_commands::agent::{AgentKind, AgentName, AgentSpec, MaxConcurrency};
use chronicle_commands::http_request::CAPABILITY;
use chronicle_commands::values::Capability;
use serde_json::{Map, Value};
use uuid::Uuid;

use self::exchange::Exchanger;
use super::builtin_agent::{self, Builtin, BuiltinAgent, Failure, RegisterError, Runner};
use crate::bus::CommandBus;
use crate::config::HttpAgentSettings;
use crate::read_side::ReadSide;

/// The name in the agent's derived id.
const NAME: &str = "http";

/// The id of the built-in HTTP agent's `generation`.
pub fn agent_id(generation: u32) -> Uuid {
    builtin_agent::agent_id(NAME, generation)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Client(#[from] exchange::ExchangerError),
    #[error("invalid built-in agent: {0}")]
    Spec(&'static str),
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// The registered agent, ready to run.
pub type HttpAgent = BuiltinAgent<Exchanger>;

impl Runner for Exchanger {
    async fn run(&self, task: &TaskState) -> Result<Value, Failure> {
        Exchanger::run(self, &task.input).await
    }
}

/// Registers this cluster's HTTP agent, or finds it registered and brings its concurrency
/// limit to `settings`.
pub async fn register(
    bus: &CommandBus,
    read: &ReadSide,
    settings: &HttpAgentSettings,
) -> Result<HttpAgent, StartError> {
    let exchanger = Exchanger::new(settings)?;
    let spec = AgentSpec {
        name: AgentName::parse("Built-in HTTP agent").map_err(StartError::Spec)?,
        kind: AgentKind::Http,
        capabilities: vec![Capability::parse(CAPABILITY).map_err(StartError::Spec)?],
        max_concurrency: MaxConcurrency::new(i64::from(settings.max_concurrency))
            .map_err(StartError::Spec)?,
        metadata: Map::from_iter([("builtin".to_owned(), Value::Bool(true))]),
        config: None,
    };
    let builtin = Builtin { name: NAME, spec };
    Ok(BuiltinAgent::register(bus, read, builtin, exchanger).await?)
}
