//! The Workflow aggregate: a named, versioned definition. Creating it is version 1, each
//! update appends the next version (older ones stay readable), archiving ends it.

mod error;
mod events;

use chronicle_commands::workflow::WorkflowDefinition;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::WorkflowError;
pub use events::{
    WorkflowArchived, WorkflowCreated, WorkflowEvent, WorkflowShared, WorkflowUnshared,
    WorkflowUpdated,
};

/// The aggregate: empty until `WorkflowCreated`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    state: Option<WorkflowState>,
}

/// A workflow and every version of its definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub id: Uuid,
    pub owner_id: Uuid,
    /// Version `n` is `versions[n - 1]`.
    pub versions: Vec<WorkflowDefinition>,
    pub archived: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The team it is shared with: its members read it, run it and (maintainers) change it.
    #[serde(default)]
    pub team_id: Option<Uuid>,
}

impl WorkflowState {
    /// The latest version's number (1-based).
    pub fn version(&self) -> u32 {
        u32::try_from(self.versions.len()).unwrap_or(u32::MAX)
    }

    /// The latest definition.
    pub fn latest(&self) -> Option<&WorkflowDefinition> {
        self.versions.last()
    }

    /// Version `version` (1-based), if it exists.
    pub fn at_version(&self, version: u32) -> Option<&WorkflowDefinition> {
        let index = usize::try_from(version).ok()?.checked_sub(1)?;
        self.versions.get(index)
    }
}

impl Workflow {
    /// The workflow, or `None` when no `WorkflowCreated` has been applied.
    pub fn state(&self) -> Option<&WorkflowState> {
        self.state.as_ref()
    }
}

/// What can be asked of a workflow. Time and identities come in the command.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowCommand {
    CreateWorkflow {
        workflow_id: Uuid,
        owner_id: Uuid,
        definition: WorkflowDefinition,
        team_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// Appends the next version.
    UpdateWorkflow {
        definition: WorkflowDefinition,
        at: DateTime<Utc>,
    },
    /// Idempotent.
    ArchiveWorkflow { at: DateTime<Utc> },
    /// Idempotent for the same team; another team replaces the first.
    ShareWorkflow { team_id: Uuid, at: DateTime<Utc> },
    /// Idempotent.
    UnshareWorkflow { at: DateTime<Utc> },
}

crate::command_names!(WorkflowCommand {
    CreateWorkflow,
    UpdateWorkflow,
    ArchiveWorkflow,
    ShareWorkflow,
    UnshareWorkflow
});

type Decision = Result<Option<WorkflowEvent>, WorkflowError>;

fn decide(state: Option<&WorkflowState>, command: WorkflowCommand) -> Decision {
    match command {
        WorkflowCommand::CreateWorkflow {
            workflow_id,
            owner_id,
            definition,
            team_id,
            at,
        } => {
            if state.is_some() {
                return Err(WorkflowError::AlreadyExists);
            }
            Ok(Some(WorkflowEvent::WorkflowCreated(WorkflowCreated {
                workflow_id,
                owner_id,
                definition,
                at,
                team_id,
            })))
        }
        WorkflowCommand::UpdateWorkflow { definition, at } => {
            let state = live(state)?;
            Ok(Some(WorkflowEvent::WorkflowUpdated(WorkflowUpdated {
                version: state.version().saturating_add(1),
                definition,
                at,
            })))
        }
        WorkflowCommand::ArchiveWorkflow { at } => {
            let state = state.ok_or(WorkflowError::NotFound)?;
            Ok((!state.archived)
                .then_some(WorkflowEvent::WorkflowArchived(WorkflowArchived { at })))
        }
        WorkflowCommand::ShareWorkflow { team_id, at } => {
            let state = live(state)?;
            Ok(
                (state.team_id != Some(team_id)).then_some(WorkflowEvent::WorkflowShared(
                    WorkflowShared { team_id, at },
                )),
            )
        }
        WorkflowCommand::UnshareWorkflow { at } => {
            let state = live(state)?;
            Ok(state
                .team_id
                .map(|team_id| WorkflowEvent::WorkflowUnshared(WorkflowUnshared { team_id, at })))
        }
    }
}

/// The workflow, if it exists and is not archived.
fn live(state: Option<&WorkflowState>) -> Result<&WorkflowState, WorkflowError> {
    match state {
        None => Err(WorkflowError::NotFound),
        Some(state) if state.archived => Err(WorkflowError::Archived),
        Some(state) => Ok(state),
    }
}

impl Aggregate for Workflow {
    const TYPE: &'static str = "workflow";
    type Command = WorkflowCommand;
    type Event = WorkflowEvent;
    type Error = WorkflowError;
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
            (WorkflowEvent::WorkflowCreated(created), _) => {
                self.state = Some(WorkflowState {
                    id: created.workflow_id,
                    owner_id: created.owner_id,
                    versions: vec![created.definition],
                    archived: false,
                    created_at: created.at,
                    updated_at: created.at,
                    team_id: created.team_id,
                });
            }
            (WorkflowEvent::WorkflowUpdated(updated), Some(state)) => {
                state.versions.push(updated.definition);
                state.updated_at = updated.at;
            }
            (WorkflowEvent::WorkflowArchived(archived), Some(state)) => {
                state.archived = true;
                state.updated_at = archived.at;
            }
            (WorkflowEvent::WorkflowShared(shared), Some(state)) => {
                state.team_id = Some(shared.team_id);
                state.updated_at = shared.at;
            }
            (WorkflowEvent::WorkflowUnshared(unshared), Some(state)) => {
                state.team_id = None;
                state.updated_at = unshared.at;
            }
            // Only a corrupt stream has events before its `WorkflowCreated`.
            (_, None) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
