//! What can be asked of Chronicle: every command as a type, and the validated values inside
//! them. Untrusted JSON goes in; a command or precise field errors come out. Pure: no IO.
//!
//! Layout:
//! - [`validation`]: field errors, collected rather than stopping at the first.
//! - [`values`]: validated values (capability, priority, retry policy, tags, …).
//! - [`agent`]: the agent registration (`RegisterAgentRequest` → [`agent::AgentSpec`]).
//! - [`task`]: the task requests (`NewTaskRequest` → [`task::TaskSpec`]).
//! - [`http_request`]: the input of an `http.request` task, checked at creation.
//! - [`llm_chat`]: the input of an `llm.chat` task, checked at creation.
//! - [`auth`]: registration, login, refresh and API-key requests; email, role, hashes.
//! - [`workflow`]: workflow definitions — the DAG, conditions, templates, params, and the
//!   built-in workflow templates ([`workflow::catalog`]).
//! - [`schedule`]: cron schedules — the expression, the IANA zone, the fire times.
//! - [`schema`]: JSON Schema patterns for the rules the OpenAPI document states.
//! - [`team`]: a team's name and a member's role.

pub mod agent;
pub mod auth;
pub mod http_request;
pub mod llm_chat;
pub mod schedule;
pub mod schema;
pub mod task;
pub mod team;
pub mod validation;
pub mod values;
pub mod workflow;

pub use validation::{FieldError, ValidationErrors};
