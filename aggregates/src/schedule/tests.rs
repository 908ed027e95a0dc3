//! Given/when/then tests of the Schedule aggregate.

use chronicle_commands::schedule::NewScheduleRequest;
use chrono::TimeZone;
use cqrs_es::test::TestFramework;
use serde_json::json;

use super::*;
use crate::error::{DomainError, RefusalKind};

type ScheduleTest = TestFramework<Schedule>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0).unwrap()
}

fn schedule_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0c01)
}

fn run_id(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0d00 + n)
}

fn spec() -> ScheduleSpec {
    serde_json::from_value::<NewScheduleRequest>(
        json!({"cron": "*/10 * * * * *", "params": {"x": 1}}),
    )
    .unwrap()
    .validate()
    .unwrap()
}

fn created() -> ScheduleEvent {
    ScheduleEvent::ScheduleCreated(ScheduleCreated {
        schedule_id: schedule_id(),
        workflow_id: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0f01),
        owner_id: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_00aa),
        spec: spec(),
        at: at(0),
    })
}

fn fired(fire_at: i64, run: u128) -> ScheduleEvent {
    ScheduleEvent::ScheduleFired(ScheduleFired {
        fire_at: at(fire_at),
        run_id: Some(run_id(run)),
        version: Some(1),
        skipped: None,
        at: at(fire_at),
    })
}

fn record(fire_at: i64, run: u128) -> ScheduleCommand {
    ScheduleCommand::RecordFiring {
        fire_at: at(fire_at),
        run_id: Some(run_id(run)),
        version: Some(1),
        skipped: None,
        at: at(fire_at),
    }
}

#[test]
fn create_records_the_spec() {
    ScheduleTest::with(())
        .given_no_previous_events()
        .when(ScheduleCommand::CreateSchedule {
            schedule_id: schedule_id(),
            workflow_id: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0f01),
            owner_id: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_00aa),
            spec: spec(),
            at: at(0),
        })
        .then_expect_events(vec![created()]);
}

#[test]
fn create_twice_is_refused() {
    ScheduleTest::with(())
        .given(vec![created()])
        .when(ScheduleCommand::CreateSchedule {
            schedule_id: schedule_id(),
            workflow_id: Uuid::nil(),
            owner_id: Uuid::nil(),
            spec: spec(),
            at: at(1),
        })
        .then_expect_error(ScheduleError::AlreadyExists);
}

#[test]
fn a_firing_is_recorded_once() {
    ScheduleTest::with(())
        .given(vec![created()])
        .when(record(10, 1))
        .then_expect_events(vec![fired(10, 1)]);
    ScheduleTest::with(())
        .given(vec![created(), fired(10, 1)])
        .when(record(10, 1))
        .then_expect_error(ScheduleError::AlreadyFired);
}

#[test]
fn an_older_firing_than_the_last_is_refused() {
    ScheduleTest::with(())
        .given(vec![created(), fired(20, 2)])
        .when(record(10, 1))
        .then_expect_error(ScheduleError::AlreadyFired);
    ScheduleTest::with(())
        .given(vec![created()])
        .when(record(0, 1))
        .then_expect_error(ScheduleError::AlreadyFired);
}

#[test]
fn a_skipped_firing_is_recorded_without_a_run() {
    let skipped = ScheduleCommand::RecordFiring {
        fire_at: at(10),
        run_id: None,
        version: None,
        skipped: Some("params.x is required".into()),
        at: at(11),
    };
    ScheduleTest::with(())
        .given(vec![created()])
        .when(skipped)
        .then_expect_events(vec![ScheduleEvent::ScheduleFired(ScheduleFired {
            fire_at: at(10),
            run_id: None,
            version: None,
            skipped: Some("params.x is required".into()),
            at: at(11),
        })]);
}

#[test]
fn delete_is_idempotent_and_ends_the_firings() {
    let deleted = ScheduleEvent::ScheduleDeleted(ScheduleDeleted { at: at(5) });
    ScheduleTest::with(())
        .given(vec![created()])
        .when(ScheduleCommand::DeleteSchedule { at: at(5) })
        .then_expect_events(vec![deleted.clone()]);
    ScheduleTest::with(())
        .given(vec![created(), deleted.clone()])
        .when(ScheduleCommand::DeleteSchedule { at: at(6) })
        .then_expect_events(vec![]);
    ScheduleTest::with(())
        .given(vec![created(), deleted])
        .when(record(10, 1))
        .then_expect_error(ScheduleError::Deleted);
}

#[test]
fn commands_on_a_missing_schedule_are_not_found() {
    ScheduleTest::with(())
        .given_no_previous_events()
        .when(ScheduleCommand::DeleteSchedule { at: at(0) })
        .then_expect_error(ScheduleError::NotFound);
    ScheduleTest::with(())
        .given_no_previous_events()
        .when(record(10, 1))
        .then_expect_error(ScheduleError::NotFound);
}

#[test]
fn the_next_fire_time_follows_the_last_firing() {
    let mut schedule = Schedule::default();
    schedule.apply(created());
    assert_eq!(
        schedule.state().unwrap().next_fire_at(),
        spec().next_after(at(0))
    );
    schedule.apply(fired(40, 4));
    let state = schedule.state().unwrap();
    assert_eq!(state.fired, 1);
    assert_eq!(state.next_fire_at(), spec().next_after(at(40)));
    schedule.apply(ScheduleEvent::ScheduleDeleted(ScheduleDeleted {
        at: at(41),
    }));
    assert_eq!(schedule.state().unwrap().next_fire_at(), None);
}

#[test]
fn refusals_are_classified() {
    assert_eq!(ScheduleError::NotFound.kind(), RefusalKind::NotFound);
    assert_eq!(ScheduleError::Deleted.kind(), RefusalKind::NotFound);
    assert_eq!(ScheduleError::AlreadyFired.kind(), RefusalKind::Conflict);
    assert_eq!(ScheduleError::AlreadyFired.code(), "schedule.already_fired");
}

#[test]
fn events_carry_written_out_types_and_versions() {
    use cqrs_es::DomainEvent;
    assert_eq!(created().event_type(), "ScheduleCreated");
    assert_eq!(fired(10, 1).event_type(), "ScheduleFired");
    assert_eq!(created().event_version(), "1.0");
    let round = serde_json::to_value(fired(10, 1)).unwrap();
    assert_eq!(
        serde_json::from_value::<ScheduleEvent>(round).unwrap(),
        fired(10, 1)
    );
}
