//! The schedule process: starts a run of a workflow each time one of its schedules is due.
//!
//! Each firing starts exactly one run, on any number of nodes and across restarts:
//! - the firing is first recorded on the Schedule aggregate, which refuses a fire time
//!   that is not later than the last one recorded — of two nodes racing for one fire
//!   time, one records it (optimistic concurrency), the other is refused and does nothing;
//! - the run's id is derived from (schedule, fire time) ([`schedule_run_id`]), so starting
//!   it again — after a crash between recording and starting, noticed at the schedule's
//!   next due time — meets `AlreadyExists`.
//!
//! Missed firings (every node down) are caught up with one run, not one per missed fire
//! time: when a schedule is due, the firing is the latest fire time not after now.
//! A run uses the workflow's latest version at fire time; a schedule whose workflow is
//! archived (or gone) is deleted when it is next due. A workflow that declares an object
//! param `previous` which the schedule's params do not set gets the step outputs of the
//! workflow's latest finished run (`{<step id>: output}`), so a run can compare itself
//! with the last one (the `monitor-page` template does).

use std::time::Duration;

use chronicle_aggregates::schedule::{Schedule, ScheduleCommand, ScheduleError, ScheduleState};
use chronicle_aggregates::workflow::Workflow;
use chronicle_aggregates::workflow_run::{
    RunStatus, WorkflowRun, WorkflowRunCommand, WorkflowRunError,
};
use chronicle_commands::workflow::ParamType;
use chronicle_projections::schedule_view::ScheduleView;
use chronicle_projections::workflow_run_view::WorkflowRunView;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::{Builder, Uuid};

use super::workflows::advance;
use crate::bus::{CommandBus, CommandContext, CommandError};
use crate::read_side::ReadSide;
use crate::store::StoreError;

/// The longest the process sleeps without looking at the schedules (a new schedule on
/// another node wakes it through the events signal sooner).
const POLL: Duration = Duration::from_secs(1);

/// After a wake-up by an event, this long, so a burst of commits is one look.
const SETTLE: Duration = Duration::from_millis(20);

/// The pause after firing before the next look.
const AFTER_FIRING: Duration = Duration::from_millis(100);

/// How many of a workflow's newest runs are looked through for the latest finished one.
const PREVIOUS_LOOK_BACK: u32 = 50;

/// Due schedules handled per look.
const BATCH: u32 = 500;

/// The param a scheduled run's previous outputs are given in, when the workflow declares it.
pub const PREVIOUS_PARAM: &str = "previous";

/// The id of the run a schedule starts for `fire_at`: the same on every node. A UUIDv7
/// whose time is the fire time, so runs list in firing order.
pub fn schedule_run_id(schedule_id: Uuid, fire_at: DateTime<Utc>) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"chronicle:schedule-run:");
    hasher.update(schedule_id.as_bytes());
    hasher.update(fire_at.timestamp_micros().to_be_bytes());
    let digest = hasher.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(fire_at.timestamp_millis()).unwrap_or_default();
    Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

fn context(correlation: Uuid) -> CommandContext {
    CommandContext {
        actor: "system:schedules".into(),
        correlation_id: correlation.to_string(),
        ..CommandContext::default()
    }
}

/// Runs until `stop` is cancelled; errors are logged and the loop goes on.
pub async fn run(bus: CommandBus, read: ReadSide, stop: CancellationToken) {
    let signal = read.events_signal();
    loop {
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // One query per look while nothing is due; the due ones only when one is.
        let wait = match ScheduleView::earliest(&read.db).await {
            Ok(Some(at)) if at <= Utc::now() => {
                fire_due(&bus, &read).await;
                // The views now say the next fire times; a pause, should one lag.
                AFTER_FIRING
            }
            Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or_default().min(POLL),
            Ok(None) => POLL,
            Err(error) => {
                tracing::warn!(%error, "could not read the next fire time");
                POLL
            }
        };
        tokio::select! {
            () = &mut notified => tokio::time::sleep(SETTLE).await,
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Fires every schedule due now.
async fn fire_due(bus: &CommandBus, read: &ReadSide) {
    match ScheduleView::due(&read.db, Utc::now(), BATCH).await {
        Ok(due) => {
            for schedule_id in due {
                if let Err(error) = fire(bus, read, schedule_id, Utc::now()).await {
                    tracing::warn!(%schedule_id, %error, "could not fire the schedule");
                }
            }
        }
        Err(error) => tracing::warn!(%error, "could not list due schedules"),
    }
}

/// Fires `schedule_id` if a fire time is due at `now`: records the firing, then starts
/// its run. Nothing happens when another node was first or nothing is due.
pub async fn fire(
    bus: &CommandBus,
    read: &ReadSide,
    schedule_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let loaded = bus
        .store()
        .aggregate::<Schedule>()
        .load(&schedule_id.to_string())
        .await?;
    let Some(schedule) = loaded.aggregate.state() else {
        return Ok(());
    };
    if schedule.deleted {
        return Ok(());
    }
    restart_last_run(bus, read, schedule).await?;
    let Some(fire_at) = schedule.spec.latest_due(schedule.fired_until(), now) else {
        return Ok(());
    };
    let workflow = bus
        .store()
        .aggregate::<Workflow>()
        .load(&schedule.workflow_id.to_string())
        .await?;
    let live = workflow
        .aggregate
        .state()
        .filter(|w| !w.archived)
        .and_then(|w| Some((w.version(), w.latest()?.clone(), w.team_id)));
    let Some((version, definition, team_id)) = live else {
        // Archiving is final: the schedule goes with its workflow.
        return record(
            bus,
            read,
            schedule_id,
            ScheduleCommand::DeleteSchedule { at: Utc::now() },
        )
        .await
        .map(|_| ());
    };
    let mut params = schedule.spec.params.clone();
    let wants_previous = definition
        .request()
        .params
        .get(PREVIOUS_PARAM)
        .is_some_and(|spec| spec.kind == ParamType::Object);
    if wants_previous && !params.contains_key(PREVIOUS_PARAM) {
        if let Some(outputs) = previous_outputs(read, schedule.workflow_id).await? {
            params.insert(PREVIOUS_PARAM.into(), Value::Object(outputs));
        }
    }
    let (run_id, skipped) = match definition.bind_params(params) {
        Ok(bound) => (Some((schedule_run_id(schedule_id, fire_at), bound)), None),
        Err(errors) => {
            let why: Vec<String> = errors
                .0
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            (
                None,
                Some(format!("the run's params are invalid: {}", why.join("; "))),
            )
        }
    };
    let recorded = record(
        bus,
        read,
        schedule_id,
        ScheduleCommand::RecordFiring {
            fire_at,
            run_id: run_id.as_ref().map(|(id, _)| *id),
            version: run_id.as_ref().map(|_| version),
            skipped,
            at: Utc::now(),
        },
    )
    .await?;
    if let (true, Some((run_id, params))) = (recorded, run_id) {
        tracing::info!(%schedule_id, %run_id, %fire_at, "schedule fired");
        let start = StartRun {
            run_id,
            workflow_id: schedule.workflow_id,
            owner_id: schedule.owner_id,
            version,
            params,
            team_id,
        };
        start_run(bus, read, start, definition).await?;
    }
    Ok(())
}

/// Runs a command on the schedule: whether it was recorded (a refusal means another node
/// was first, or the schedule is gone).
async fn record(
    bus: &CommandBus,
    read: &ReadSide,
    schedule_id: Uuid,
    command: ScheduleCommand,
) -> Result<bool, StoreError> {
    match bus
        .execute::<Schedule, CommandError<ScheduleError>>(
            &schedule_id.to_string(),
            &context(schedule_id),
            None,
            |_| Ok(command.clone()),
        )
        .await
    {
        Ok(committed) => {
            read.schedule_committed(&committed.aggregate, committed.version)
                .await;
            Ok(true)
        }
        Err(CommandError::Store(error)) => Err(error),
        Err(refused) => {
            tracing::debug!(%schedule_id, error = %refused, "schedule command refused");
            Ok(false)
        }
    }
}

struct StartRun {
    run_id: Uuid,
    workflow_id: Uuid,
    owner_id: Uuid,
    version: u32,
    params: Map<String, Value>,
    team_id: Option<Uuid>,
}

/// Starts the run (or finds it started) and moves it forward in the background.
async fn start_run(
    bus: &CommandBus,
    read: &ReadSide,
    start: StartRun,
    definition: chronicle_commands::workflow::WorkflowDefinition,
) -> Result<(), StoreError> {
    let run_id = start.run_id;
    let created = bus
        .create::<WorkflowRun, CommandError<WorkflowRunError>>(
            &run_id.to_string(),
            &context(run_id),
            |_| {
                Ok(WorkflowRunCommand::StartRun {
                    run_id,
                    workflow_id: start.workflow_id,
                    owner_id: start.owner_id,
                    version: start.version,
                    definition: definition.clone(),
                    params: start.params.clone(),
                    team_id: start.team_id,
                    at: Utc::now(),
                })
            },
        )
        .await;
    match created {
        Ok(committed) => {
            read.workflow_run_committed(&committed.aggregate, committed.version)
                .await;
        }
        Err(CommandError::Store(error)) => return Err(error),
        Err(refused) => {
            tracing::debug!(%run_id, error = %refused, "scheduled run not started");
            return Ok(());
        }
    }
    let (bus, read) = (bus.clone(), read.clone());
    tokio::spawn(async move {
        if let Err(error) = advance(&bus, &read, run_id).await {
            tracing::warn!(%run_id, %error, "could not advance the scheduled run");
        }
    });
    Ok(())
}

/// The step outputs (`{<step id>: output}`) of the workflow's latest finished run, for
/// the next run's [`PREVIOUS_PARAM`]: a run still going when the next one fires is passed
/// over, so a slow run does not leave its successor nothing to compare with.
async fn previous_outputs(
    read: &ReadSide,
    workflow_id: Uuid,
) -> Result<Option<Map<String, Value>>, StoreError> {
    let rows = WorkflowRunView::of_workflow(&read.db, workflow_id, None, PREVIOUS_LOOK_BACK)
        .await
        .map_err(|e| StoreError::Database(Box::new(e)))?;
    Ok(rows
        .iter()
        .filter_map(|row| row.state())
        .find(|run| run.status != RunStatus::Running)
        .map(|run| {
            run.steps
                .iter()
                .filter_map(|(id, step)| Some((id.clone(), step.output.clone()?)))
                .collect()
        }))
}

/// Starts the last recorded firing's run if it never started (the node that recorded it
/// stopped in between).
async fn restart_last_run(
    bus: &CommandBus,
    read: &ReadSide,
    schedule: &ScheduleState,
) -> Result<(), StoreError> {
    let Some(last) = &schedule.last_firing else {
        return Ok(());
    };
    let (Some(run_id), Some(version)) = (last.run_id, last.version) else {
        return Ok(());
    };
    let loaded = bus
        .store()
        .aggregate::<WorkflowRun>()
        .load(&run_id.to_string())
        .await?;
    if loaded.aggregate.state().is_some() {
        return Ok(());
    }
    let workflow = bus
        .store()
        .aggregate::<Workflow>()
        .load(&schedule.workflow_id.to_string())
        .await?;
    let team_id = workflow.aggregate.state().and_then(|w| w.team_id);
    let Some(definition) = workflow
        .aggregate
        .state()
        .and_then(|w| w.at_version(version))
        .cloned()
    else {
        return Ok(());
    };
    let Ok(params) = definition.bind_params(schedule.spec.params.clone()) else {
        return Ok(());
    };
    tracing::info!(schedule_id = %schedule.id, %run_id, "starting a recorded firing's run");
    let start = StartRun {
        run_id,
        workflow_id: schedule.workflow_id,
        owner_id: schedule.owner_id,
        version,
        params,
        team_id,
    };
    start_run(bus, read, start, definition).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_run_id_is_the_same_everywhere_and_ordered_by_fire_time() {
        let schedule = Uuid::from_u128(7);
        let at = |s: i64| DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap_or_default();
        assert_eq!(
            schedule_run_id(schedule, at(1)),
            schedule_run_id(schedule, at(1))
        );
        assert_ne!(
            schedule_run_id(schedule, at(1)),
            schedule_run_id(schedule, at(2))
        );
        assert_ne!(
            schedule_run_id(schedule, at(1)),
            schedule_run_id(Uuid::from_u128(8), at(1))
        );
        assert!(schedule_run_id(schedule, at(1)) < schedule_run_id(schedule, at(2)));
        assert_eq!(schedule_run_id(schedule, at(1)).get_version_num(), 7);
    }
}
