//! The Agent aggregate: a worker that registers its capabilities, heartbeats, drains and
//! leaves. Its tasks are the Task aggregate's business; this one only says who it is and
//! whether it is alive.
//!
//! Heartbeats are not all events. An agent heartbeating every few seconds would bury its
//! history, lengthen every load and hash chain, and tell nobody anything new. What status
//! needs is "heard from within `offline_after`", so a heartbeat is recorded only when the
//! last recorded one is at least `resolution` old: at most one event per `resolution` per
//! agent however often it beats, and `last_heartbeat_at` is at most `resolution` stale.
//! A heartbeat after a silence (offline → online) is always older than the resolution, so
//! that transition is always recorded. Offline itself is derived ([`AgentState::status_at`]),
//! never stored: nothing has to fire to make an agent offline.

mod error;
mod events;
mod state;

use chronicle_commands::agent::{AgentSpec, MaxConcurrency};
use chrono::{DateTime, TimeDelta, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::AgentError;
pub use events::{
    AgentDeregistered, AgentDraining, AgentEvent, AgentHeartbeatRecorded, AgentReconfigured,
    AgentRegistered, AgentShared, AgentUnshared,
};
pub use state::{AgentLifecycle, AgentState, AgentStatus};

/// The aggregate: empty until `AgentRegistered`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    state: Option<AgentState>,
}

impl Agent {
    /// The agent, or `None` when no `AgentRegistered` has been applied.
    pub fn state(&self) -> Option<&AgentState> {
        self.state.as_ref()
    }
}

/// What can be asked of an agent. Time and identities come in the command.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentCommand {
    RegisterAgent {
        agent_id: Uuid,
        owner_id: Uuid,
        spec: AgentSpec,
        at: DateTime<Utc>,
    },
    /// Recorded only when the last recorded heartbeat is at least `resolution` old
    /// (see the module docs); a third of `offline_after` is a good choice.
    RecordHeartbeat {
        at: DateTime<Utc>,
        resolution: TimeDelta,
    },
    /// No new work; idempotent.
    DrainAgent {
        at: DateTime<Utc>,
    },
    DeregisterAgent {
        at: DateTime<Utc>,
    },
    /// A new concurrency limit; the same one again changes nothing. Built-in agents follow
    /// their node's configuration with it.
    ReconfigureAgent {
        max_concurrency: MaxConcurrency,
        at: DateTime<Utc>,
    },
    /// Idempotent for the same team; another team replaces the first.
    ShareAgent {
        team_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Idempotent.
    UnshareAgent {
        at: DateTime<Utc>,
    },
}

crate::command_names!(AgentCommand {
    RegisterAgent,
    RecordHeartbeat,
    DrainAgent,
    DeregisterAgent,
    ReconfigureAgent,
    ShareAgent,
    UnshareAgent
});

/// At most one event: `None` means the command is accepted and changes nothing.
type Decision = Result<Option<AgentEvent>, AgentError>;

fn decide(state: Option<&AgentState>, command: AgentCommand) -> Decision {
    match command {
        AgentCommand::RegisterAgent {
            agent_id,
            owner_id,
            spec,
            at,
        } => {
            if state.is_some() {
                return Err(AgentError::AlreadyExists);
            }
            Ok(Some(AgentEvent::AgentRegistered(AgentRegistered {
                agent_id,
                owner_id,
                name: spec.name,
                kind: spec.kind,
                capabilities: spec.capabilities,
                max_concurrency: spec.max_concurrency,
                metadata: spec.metadata,
                config: spec.config,
                at,
            })))
        }
        AgentCommand::RecordHeartbeat { at, resolution } => {
            let state = registered(state)?;
            // Also drops a heartbeat older than the recorded one (clocks of two nodes).
            let recent = state
                .last_heartbeat_at
                .is_some_and(|last| at.signed_duration_since(last) < resolution);
            Ok(
                (!recent).then_some(AgentEvent::AgentHeartbeatRecorded(AgentHeartbeatRecorded {
                    at,
                })),
            )
        }
        AgentCommand::DrainAgent { at } => {
            let state = registered(state)?;
            Ok((state.lifecycle == AgentLifecycle::Active)
                .then_some(AgentEvent::AgentDraining(AgentDraining { at })))
        }
        AgentCommand::DeregisterAgent { at } => {
            registered(state)?;
            Ok(Some(AgentEvent::AgentDeregistered(AgentDeregistered {
                at,
            })))
        }
        AgentCommand::ReconfigureAgent {
            max_concurrency,
            at,
        } => {
            let state = registered(state)?;
            Ok(
                (state.max_concurrency != max_concurrency).then_some(
                    AgentEvent::AgentReconfigured(AgentReconfigured {
                        max_concurrency,
                        at,
                    }),
                ),
            )
        }
        AgentCommand::ShareAgent { team_id, at } => {
            let state = registered(state)?;
            Ok((state.team_id != Some(team_id))
                .then_some(AgentEvent::AgentShared(AgentShared { team_id, at })))
        }
        AgentCommand::UnshareAgent { at } => {
            let state = registered(state)?;
            Ok(state
                .team_id
                .map(|team_id| AgentEvent::AgentUnshared(AgentUnshared { team_id, at })))
        }
    }
}

/// The agent, if it exists and has not left.
fn registered(state: Option<&AgentState>) -> Result<&AgentState, AgentError> {
    match state {
        None => Err(AgentError::NotFound),
        Some(state) if state.lifecycle == AgentLifecycle::Deregistered => {
            Err(AgentError::Deregistered)
        }
        Some(state) => Ok(state),
    }
}

impl Aggregate for Agent {
    const TYPE: &'static str = "agent";
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;
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
            (AgentEvent::AgentRegistered(registered), _) => {
                self.state = Some(AgentState::registered(registered));
            }
            (event, Some(state)) => state.apply(event),
            // Only a corrupt stream has events before its `AgentRegistered`.
            (_, None) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
