//! The Schedule aggregate: a cron expression that starts runs of one workflow. It records
//! each firing once — a second node's attempt at the same fire time, or an older one, is
//! refused — and ends with its deletion.

mod error;
mod events;

use chronicle_commands::schedule::ScheduleSpec;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::ScheduleError;
pub use events::{ScheduleCreated, ScheduleDeleted, ScheduleEvent, ScheduleFired};

/// The aggregate: empty until `ScheduleCreated`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    state: Option<ScheduleState>,
}

/// The last firing recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastFiring {
    pub fire_at: DateTime<Utc>,
    pub run_id: Option<Uuid>,
    pub version: Option<u32>,
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub owner_id: Uuid,
    pub spec: ScheduleSpec,
    pub last_firing: Option<LastFiring>,
    /// How many firings were recorded.
    pub fired: u64,
    pub deleted: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ScheduleState {
    /// Fire times are counted from here: the last firing, or the creation.
    pub fn fired_until(&self) -> DateTime<Utc> {
        self.last_firing
            .as_ref()
            .map_or(self.created_at, |last| last.fire_at)
    }

    /// The next fire time after the last firing; `None` once deleted (or never again).
    pub fn next_fire_at(&self) -> Option<DateTime<Utc>> {
        if self.deleted {
            return None;
        }
        self.spec.next_after(self.fired_until())
    }
}

impl Schedule {
    /// The schedule, or `None` when no `ScheduleCreated` has been applied.
    pub fn state(&self) -> Option<&ScheduleState> {
        self.state.as_ref()
    }
}

/// What can be asked of a schedule. Time and identities come in the command.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleCommand {
    CreateSchedule {
        schedule_id: Uuid,
        workflow_id: Uuid,
        owner_id: Uuid,
        spec: ScheduleSpec,
        at: DateTime<Utc>,
    },
    /// Records the firing for `fire_at`; refused unless `fire_at` is later than the last
    /// one recorded, so of two nodes racing for one fire time exactly one records it.
    RecordFiring {
        fire_at: DateTime<Utc>,
        run_id: Option<Uuid>,
        version: Option<u32>,
        skipped: Option<String>,
        at: DateTime<Utc>,
    },
    /// Idempotent.
    DeleteSchedule { at: DateTime<Utc> },
}

crate::command_names!(ScheduleCommand {
    CreateSchedule,
    RecordFiring,
    DeleteSchedule
});

type Decision = Result<Option<ScheduleEvent>, ScheduleError>;

fn decide(state: Option<&ScheduleState>, command: ScheduleCommand) -> Decision {
    match command {
        ScheduleCommand::CreateSchedule {
            schedule_id,
            workflow_id,
            owner_id,
            spec,
            at,
        } => {
            if state.is_some() {
                return Err(ScheduleError::AlreadyExists);
            }
            Ok(Some(ScheduleEvent::ScheduleCreated(ScheduleCreated {
                schedule_id,
                workflow_id,
                owner_id,
                spec,
                at,
            })))
        }
        ScheduleCommand::RecordFiring {
            fire_at,
            run_id,
            version,
            skipped,
            at,
        } => {
            let state = state.ok_or(ScheduleError::NotFound)?;
            if state.deleted {
                return Err(ScheduleError::Deleted);
            }
            if fire_at <= state.fired_until() {
                return Err(ScheduleError::AlreadyFired);
            }
            Ok(Some(ScheduleEvent::ScheduleFired(ScheduleFired {
                fire_at,
                run_id,
                version,
                skipped,
                at,
            })))
        }
        ScheduleCommand::DeleteSchedule { at } => {
            let state = state.ok_or(ScheduleError::NotFound)?;
            Ok((!state.deleted).then_some(ScheduleEvent::ScheduleDeleted(ScheduleDeleted { at })))
        }
    }
}

impl Aggregate for Schedule {
    const TYPE: &'static str = "schedule";
    type Command = ScheduleCommand;
    type Event = ScheduleEvent;
    type Error = ScheduleError;
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
            (ScheduleEvent::ScheduleCreated(created), _) => {
                self.state = Some(ScheduleState {
                    id: created.schedule_id,
                    workflow_id: created.workflow_id,
                    owner_id: created.owner_id,
                    spec: created.spec,
                    last_firing: None,
                    fired: 0,
                    deleted: false,
                    created_at: created.at,
                    updated_at: created.at,
                });
            }
            (ScheduleEvent::ScheduleFired(fired), Some(state)) => {
                state.last_firing = Some(LastFiring {
                    fire_at: fired.fire_at,
                    run_id: fired.run_id,
                    version: fired.version,
                    skipped: fired.skipped,
                });
                state.fired = state.fired.saturating_add(1);
                state.updated_at = fired.at;
            }
            (ScheduleEvent::ScheduleDeleted(deleted), Some(state)) => {
                state.deleted = true;
                state.updated_at = deleted.at;
            }
            // Only a corrupt stream has events before its `ScheduleCreated`.
            (_, None) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
