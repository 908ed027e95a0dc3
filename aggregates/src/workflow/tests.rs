//! Given/when/then tests of the Workflow aggregate.

use chronicle_commands::workflow::WorkflowDefinitionRequest;
use chrono::TimeZone;
use cqrs_es::test::TestFramework;
use serde_json::json;

use super::*;
use crate::error::{DomainError, RefusalKind};

type WorkflowTest = TestFramework<Workflow>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0).unwrap()
}

fn workflow_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0f01)
}

fn owner_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_00aa)
}

fn definition(name: &str) -> WorkflowDefinition {
    serde_json::from_value::<WorkflowDefinitionRequest>(json!({
        "name": name,
        "steps": [{"id": "a", "capability": "http.request", "input": {"url": "https://example.com"}}],
    }))
    .unwrap()
    .validate()
    .unwrap()
}

fn created() -> WorkflowEvent {
    WorkflowEvent::WorkflowCreated(WorkflowCreated {
        workflow_id: workflow_id(),
        owner_id: owner_id(),
        definition: definition("one"),
        at: at(0),
        team_id: None,
    })
}

#[test]
fn create_is_version_one() {
    WorkflowTest::with(())
        .given_no_previous_events()
        .when(WorkflowCommand::CreateWorkflow {
            workflow_id: workflow_id(),
            owner_id: owner_id(),
            definition: definition("one"),
            team_id: None,
            at: at(0),
        })
        .then_expect_events(vec![created()]);
}

#[test]
fn create_twice_is_refused() {
    WorkflowTest::with(())
        .given(vec![created()])
        .when(WorkflowCommand::CreateWorkflow {
            workflow_id: workflow_id(),
            owner_id: owner_id(),
            definition: definition("one"),
            team_id: None,
            at: at(1),
        })
        .then_expect_error(WorkflowError::AlreadyExists);
}

#[test]
fn update_appends_the_next_version() {
    let updated = |version, name| {
        WorkflowEvent::WorkflowUpdated(WorkflowUpdated {
            version,
            definition: definition(name),
            at: at(5),
        })
    };
    WorkflowTest::with(())
        .given(vec![created(), updated(2, "two")])
        .when(WorkflowCommand::UpdateWorkflow {
            definition: definition("three"),
            at: at(5),
        })
        .then_expect_events(vec![updated(3, "three")]);
}

#[test]
fn versions_are_kept() {
    let mut workflow = Workflow::default();
    workflow.apply(created());
    workflow.apply(WorkflowEvent::WorkflowUpdated(WorkflowUpdated {
        version: 2,
        definition: definition("two"),
        at: at(1),
    }));
    let state = workflow.state().unwrap();
    assert_eq!(state.version(), 2);
    assert_eq!(state.at_version(1).unwrap().name(), "one");
    assert_eq!(state.latest().unwrap().name(), "two");
    assert!(state.at_version(0).is_none());
    assert!(state.at_version(3).is_none());
}

#[test]
fn update_of_a_missing_or_archived_workflow_is_refused() {
    WorkflowTest::with(())
        .given_no_previous_events()
        .when(WorkflowCommand::UpdateWorkflow {
            definition: definition("two"),
            at: at(1),
        })
        .then_expect_error(WorkflowError::NotFound);
    WorkflowTest::with(())
        .given(vec![
            created(),
            WorkflowEvent::WorkflowArchived(WorkflowArchived { at: at(1) }),
        ])
        .when(WorkflowCommand::UpdateWorkflow {
            definition: definition("two"),
            at: at(2),
        })
        .then_expect_error(WorkflowError::Archived);
}

#[test]
fn archive_once() {
    let archived = WorkflowEvent::WorkflowArchived(WorkflowArchived { at: at(1) });
    WorkflowTest::with(())
        .given(vec![created()])
        .when(WorkflowCommand::ArchiveWorkflow { at: at(1) })
        .then_expect_events(vec![archived.clone()]);
    WorkflowTest::with(())
        .given(vec![created(), archived])
        .when(WorkflowCommand::ArchiveWorkflow { at: at(2) })
        .then_expect_events(vec![]);
    WorkflowTest::with(())
        .given_no_previous_events()
        .when(WorkflowCommand::ArchiveWorkflow { at: at(2) })
        .then_expect_error(WorkflowError::NotFound);
}

#[test]
fn refusals_are_classified() {
    assert_eq!(WorkflowError::NotFound.kind(), RefusalKind::NotFound);
    assert_eq!(WorkflowError::Archived.kind(), RefusalKind::Conflict);
    assert_eq!(WorkflowError::Archived.code(), "workflow.archived");
}

#[test]
fn events_round_trip_through_the_codec() {
    let (event_type, version, payload) = crate::codec::encode::<Workflow>(&created()).unwrap();
    assert_eq!(
        (event_type.as_str(), version.as_str()),
        ("WorkflowCreated", "1.0")
    );
    assert_eq!(
        crate::codec::decode::<Workflow>(&event_type, payload).unwrap(),
        created()
    );
}

fn team_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_7e01)
}

fn shared(seconds: i64) -> WorkflowEvent {
    WorkflowEvent::WorkflowShared(WorkflowShared {
        team_id: team_id(),
        at: at(seconds),
    })
}

#[test]
fn share_gives_the_workflow_to_a_team_once() {
    WorkflowTest::with(())
        .given(vec![created()])
        .when(WorkflowCommand::ShareWorkflow {
            team_id: team_id(),
            at: at(1),
        })
        .then_expect_events(vec![shared(1)]);
    WorkflowTest::with(())
        .given(vec![created(), shared(1)])
        .when(WorkflowCommand::ShareWorkflow {
            team_id: team_id(),
            at: at(2),
        })
        .then_expect_events(vec![]);
}

#[test]
fn unshare_takes_it_back_and_is_idempotent() {
    WorkflowTest::with(())
        .given(vec![created(), shared(1)])
        .when(WorkflowCommand::UnshareWorkflow { at: at(2) })
        .then_expect_events(vec![WorkflowEvent::WorkflowUnshared(WorkflowUnshared {
            team_id: team_id(),
            at: at(2),
        })]);
    WorkflowTest::with(())
        .given(vec![created()])
        .when(WorkflowCommand::UnshareWorkflow { at: at(2) })
        .then_expect_events(vec![]);
}

#[test]
fn an_archived_workflow_is_not_shared() {
    WorkflowTest::with(())
        .given(vec![
            created(),
            WorkflowEvent::WorkflowArchived(WorkflowArchived { at: at(1) }),
        ])
        .when(WorkflowCommand::ShareWorkflow {
            team_id: team_id(),
            at: at(2),
        })
        .then_expect_error(WorkflowError::Archived);
}

#[test]
fn a_workflow_created_for_a_team_belongs_to_it() {
    let mut workflow = Workflow::default();
    workflow.apply(WorkflowEvent::WorkflowCreated(WorkflowCreated {
        workflow_id: workflow_id(),
        owner_id: owner_id(),
        definition: definition("one"),
        at: at(0),
        team_id: Some(team_id()),
    }));
    assert_eq!(workflow.state().unwrap().team_id, Some(team_id()));
    // A payload from before teams decodes, without a team.
    let (event_type, _, payload) = crate::codec::encode::<Workflow>(&created()).unwrap();
    assert!(payload.get("team_id").is_none());
    crate::codec::decode::<Workflow>(&event_type, payload).unwrap();
}
