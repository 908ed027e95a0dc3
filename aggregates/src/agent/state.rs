//! What is known about an agent, how each event changes it, and its status at a time.

use chronicle_commands::agent::{AgentKind, AgentName, MaxConcurrency};
use chronicle_commands::values::Capability;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::events::{AgentEvent, AgentRegistered};

/// What the agent's own commands made of it. Online and offline are not here: they depend
/// on the time of asking, see [`AgentState::status_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentLifecycle {
    Active,
    Draining,
    Deregistered,
}

/// The status clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    Offline,
    Draining,
    Deregistered,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Draining => "draining",
            Self::Deregistered => "deregistered",
        }
    }
}

impl std::fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything known about an agent that exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: AgentName,
    pub kind: AgentKind,
    pub capabilities: Vec<Capability>,
    pub max_concurrency: MaxConcurrency,
    pub lifecycle: AgentLifecycle,
    /// The latest *recorded* heartbeat (registration counts as one); heartbeats closer
    /// together than the caller's resolution are not recorded.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub metadata: Map<String, Value>,
    pub config: Option<Map<String, Value>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The team it is shared with: it leases the team's tasks too, and the team reads it.
    #[serde(default)]
    pub team_id: Option<Uuid>,
}

impl AgentState {
    /// The status at `now`: an active agent is online while its last recorded heartbeat is
    /// younger than `offline_after`. `offline_after` must exceed the heartbeat resolution
    /// plus the agent's heartbeat period, or a live agent would flicker offline.
    pub fn status_at(&self, now: DateTime<Utc>, offline_after: TimeDelta) -> AgentStatus {
        match self.lifecycle {
            AgentLifecycle::Deregistered => AgentStatus::Deregistered,
            AgentLifecycle::Draining => AgentStatus::Draining,
            AgentLifecycle::Active => {
                let fresh = self
                    .last_heartbeat_at
                    .is_some_and(|last| now.signed_duration_since(last) < offline_after);
                if fresh {
                    AgentStatus::Online
                } else {
                    AgentStatus::Offline
                }
            }
        }
    }

    pub fn serves(&self, capability: &Capability) -> bool {
        self.capabilities.contains(capability)
    }

    pub(crate) fn registered(registered: AgentRegistered) -> Self {
        Self {
            id: registered.agent_id,
            owner_id: registered.owner_id,
            name: registered.name,
            kind: registered.kind,
            capabilities: registered.capabilities,
            max_concurrency: registered.max_concurrency,
            lifecycle: AgentLifecycle::Active,
            // Registering is a sign of life.
            last_heartbeat_at: Some(registered.at),
            metadata: registered.metadata,
            config: registered.config,
            created_at: registered.at,
            updated_at: registered.at,
            team_id: None,
        }
    }

    /// Applies every event but `AgentRegistered`, which makes the state.
    pub(crate) fn apply(&mut self, event: AgentEvent) {
        match event {
            AgentEvent::AgentRegistered(_) => {}
            AgentEvent::AgentHeartbeatRecorded(e) => {
                self.last_heartbeat_at = Some(e.at);
                self.updated_at = e.at;
            }
            AgentEvent::AgentDraining(e) => {
                self.lifecycle = AgentLifecycle::Draining;
                self.updated_at = e.at;
            }
            AgentEvent::AgentDeregistered(e) => {
                self.lifecycle = AgentLifecycle::Deregistered;
                self.updated_at = e.at;
            }
            AgentEvent::AgentReconfigured(e) => {
                self.max_concurrency = e.max_concurrency;
                self.updated_at = e.at;
            }
            AgentEvent::AgentShared(e) => {
                self.team_id = Some(e.team_id);
                self.updated_at = e.at;
            }
            AgentEvent::AgentUnshared(e) => {
                self.team_id = None;
                self.updated_at = e.at;
            }
        }
    }
}
