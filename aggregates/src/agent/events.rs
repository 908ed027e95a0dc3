//! Agent events: what has happened to an agent. Type strings and versions are written out,
//! never derived from Rust names, so renaming a variant cannot orphan stored events.

use chronicle_commands::agent::{AgentKind, AgentName, MaxConcurrency};
use chronicle_commands::values::Capability;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Serialized externally tagged; the store keeps the tag in `event_type` and the inner
/// object as `payload`, so each `rename` must equal its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentEvent {
    #[serde(rename = "AgentRegistered")]
    AgentRegistered(AgentRegistered),
    #[serde(rename = "AgentHeartbeatRecorded")]
    AgentHeartbeatRecorded(AgentHeartbeatRecorded),
    #[serde(rename = "AgentDraining")]
    AgentDraining(AgentDraining),
    #[serde(rename = "AgentDeregistered")]
    AgentDeregistered(AgentDeregistered),
    #[serde(rename = "AgentReconfigured")]
    AgentReconfigured(AgentReconfigured),
    #[serde(rename = "AgentShared")]
    AgentShared(AgentShared),
    #[serde(rename = "AgentUnshared")]
    AgentUnshared(AgentUnshared),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRegistered {
    pub agent_id: Uuid,
    pub owner_id: Uuid,
    pub name: AgentName,
    pub kind: AgentKind,
    pub capabilities: Vec<Capability>,
    pub max_concurrency: MaxConcurrency,
    pub metadata: Map<String, Value>,
    pub config: Option<Map<String, Value>>,
    pub at: DateTime<Utc>,
}

/// A heartbeat worth keeping: not every heartbeat is recorded, see `RecordHeartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentHeartbeatRecorded {
    pub at: DateTime<Utc>,
}

/// The agent takes no new work; its running tasks may finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDraining {
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDeregistered {
    pub at: DateTime<Utc>,
}

/// The agent's concurrency limit changed (a built-in agent whose node configuration says
/// so); the new, whole value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReconfigured {
    pub max_concurrency: MaxConcurrency,
    pub at: DateTime<Utc>,
}

/// The agent serves `team_id` too: it leases the team's tasks beside its owner's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentShared {
    pub team_id: Uuid,
    pub at: DateTime<Utc>,
}

/// The agent serves its owner alone again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentUnshared {
    pub team_id: Uuid,
    pub at: DateTime<Utc>,
}

impl AgentEvent {
    /// The types of the events after which the agent takes no new work; a lease appended
    /// after one of them is refused by the store.
    pub const RETIRING_TYPES: [&'static str; 2] = ["AgentDraining", "AgentDeregistered"];

    /// Whether the agent takes no new work after this event (see [`Self::RETIRING_TYPES`]).
    pub fn retires(&self) -> bool {
        match self {
            Self::AgentDraining(_) | Self::AgentDeregistered(_) => true,
            Self::AgentRegistered(_)
            | Self::AgentHeartbeatRecorded(_)
            | Self::AgentReconfigured(_)
            | Self::AgentShared(_)
            | Self::AgentUnshared(_) => false,
        }
    }
}

impl DomainEvent for AgentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AgentRegistered(_) => "AgentRegistered",
            Self::AgentHeartbeatRecorded(_) => "AgentHeartbeatRecorded",
            Self::AgentDraining(_) => "AgentDraining",
            Self::AgentDeregistered(_) => "AgentDeregistered",
            Self::AgentReconfigured(_) => "AgentReconfigured",
            Self::AgentShared(_) => "AgentShared",
            Self::AgentUnshared(_) => "AgentUnshared",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::AgentRegistered(_) => "1.0",
            Self::AgentHeartbeatRecorded(_) => "1.0",
            Self::AgentDraining(_) => "1.0",
            Self::AgentDeregistered(_) => "1.0",
            Self::AgentReconfigured(_) => "1.0",
            Self::AgentShared(_) | Self::AgentUnshared(_) => "1.0",
        }
        .to_owned()
    }
}
