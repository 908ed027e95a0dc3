//! Given/when/then tests of the Agent aggregate, and its status over time.

mod properties;

use chronicle_commands::agent::RegisterAgentRequest;
use chronicle_commands::values::Capability;
use chrono::{TimeDelta, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use serde_json::json;

use super::*;
use crate::error::{DomainError, RefusalKind};

type AgentTest = TestFramework<Agent>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0).unwrap()
}

fn agent_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0a01)
}

fn owner_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_00aa)
}

fn spec() -> AgentSpec {
    serde_json::from_value::<RegisterAgentRequest>(json!({
        "name": "Chrome on laptop",
        "kind": "remote",
        "capabilities": ["browser.navigate", "browser.click"],
        "max_concurrency": 2,
        "metadata": {"extension_version": "0.4.1"},
    }))
    .unwrap()
    .validate()
    .unwrap()
}

fn register() -> AgentCommand {
    AgentCommand::RegisterAgent {
        agent_id: agent_id(),
        owner_id: owner_id(),
        spec: spec(),
        at: at(0),
    }
}

fn registered() -> AgentEvent {
    let spec = spec();
    AgentEvent::AgentRegistered(AgentRegistered {
        agent_id: agent_id(),
        owner_id: owner_id(),
        name: spec.name,
        kind: spec.kind,
        capabilities: spec.capabilities,
        max_concurrency: spec.max_concurrency,
        metadata: spec.metadata,
        config: spec.config,
        at: at(0),
    })
}

const RESOLUTION: i64 = 10;

fn heartbeat(s: i64) -> AgentCommand {
    AgentCommand::RecordHeartbeat {
        at: at(s),
        resolution: TimeDelta::seconds(RESOLUTION),
    }
}

fn heartbeat_recorded(s: i64) -> AgentEvent {
    AgentEvent::AgentHeartbeatRecorded(AgentHeartbeatRecorded { at: at(s) })
}

fn drained(s: i64) -> AgentEvent {
    AgentEvent::AgentDraining(AgentDraining { at: at(s) })
}

fn deregistered(s: i64) -> AgentEvent {
    AgentEvent::AgentDeregistered(AgentDeregistered { at: at(s) })
}

fn reconfigure(max_concurrency: i64, s: i64) -> AgentCommand {
    AgentCommand::ReconfigureAgent {
        max_concurrency: MaxConcurrency::new(max_concurrency).unwrap(),
        at: at(s),
    }
}

fn reconfigured(max_concurrency: i64, s: i64) -> AgentEvent {
    AgentEvent::AgentReconfigured(AgentReconfigured {
        max_concurrency: MaxConcurrency::new(max_concurrency).unwrap(),
        at: at(s),
    })
}

fn state_after(events: Vec<AgentEvent>) -> AgentState {
    let mut agent = Agent::default();
    for event in events {
        agent.apply(event);
    }
    agent.state().unwrap().clone()
}

#[test]
fn register_emits_registered() {
    AgentTest::with(())
        .given_no_previous_events()
        .when(register())
        .then_expect_events(vec![registered()]);
}

#[test]
fn register_twice_is_refused() {
    AgentTest::with(())
        .given(vec![registered()])
        .when(register())
        .then_expect_error(AgentError::AlreadyExists);
}

#[test]
fn register_deregistered_agent_is_refused() {
    // The id stays taken: an agent that comes back registers under a new one.
    AgentTest::with(())
        .given(vec![registered(), deregistered(5)])
        .when(register())
        .then_expect_error(AgentError::AlreadyExists);
}

#[test]
fn heartbeat_is_recorded_once_per_resolution() {
    AgentTest::with(())
        .given(vec![registered()])
        .when(heartbeat(RESOLUTION))
        .then_expect_events(vec![heartbeat_recorded(RESOLUTION)]);
}

#[test]
fn heartbeat_within_the_resolution_changes_nothing() {
    AgentTest::with(())
        .given(vec![registered(), heartbeat_recorded(10)])
        .when(heartbeat(19))
        .then_expect_events(vec![]);
}

#[test]
fn heartbeat_older_than_the_recorded_one_changes_nothing() {
    AgentTest::with(())
        .given(vec![registered(), heartbeat_recorded(10)])
        .when(heartbeat(5))
        .then_expect_events(vec![]);
}

#[test]
fn heartbeat_after_a_silence_is_recorded() {
    AgentTest::with(())
        .given(vec![registered(), heartbeat_recorded(10)])
        .when(heartbeat(500))
        .then_expect_events(vec![heartbeat_recorded(500)]);
}

#[test]
fn heartbeat_of_a_draining_agent_is_recorded() {
    AgentTest::with(())
        .given(vec![registered(), drained(5)])
        .when(heartbeat(20))
        .then_expect_events(vec![heartbeat_recorded(20)]);
}

#[test]
fn heartbeat_of_a_deregistered_agent_is_refused() {
    AgentTest::with(())
        .given(vec![registered(), deregistered(5)])
        .when(heartbeat(20))
        .then_expect_error(AgentError::Deregistered);
}

#[test]
fn heartbeat_of_a_missing_agent_is_refused() {
    AgentTest::with(())
        .given_no_previous_events()
        .when(heartbeat(20))
        .then_expect_error(AgentError::NotFound);
}

#[test]
fn drain_active_agent() {
    AgentTest::with(())
        .given(vec![registered()])
        .when(AgentCommand::DrainAgent { at: at(5) })
        .then_expect_events(vec![drained(5)]);
}

#[test]
fn drain_is_idempotent() {
    AgentTest::with(())
        .given(vec![registered(), drained(5)])
        .when(AgentCommand::DrainAgent { at: at(6) })
        .then_expect_events(vec![]);
}

#[test]
fn drain_deregistered_agent_is_refused() {
    AgentTest::with(())
        .given(vec![registered(), deregistered(5)])
        .when(AgentCommand::DrainAgent { at: at(6) })
        .then_expect_error(AgentError::Deregistered);
}

#[test]
fn drain_missing_agent_is_refused() {
    AgentTest::with(())
        .given_no_previous_events()
        .when(AgentCommand::DrainAgent { at: at(6) })
        .then_expect_error(AgentError::NotFound);
}

#[test]
fn deregister_active_agent() {
    AgentTest::with(())
        .given(vec![registered()])
        .when(AgentCommand::DeregisterAgent { at: at(5) })
        .then_expect_events(vec![deregistered(5)]);
}

#[test]
fn deregister_draining_agent() {
    AgentTest::with(())
        .given(vec![registered(), drained(3)])
        .when(AgentCommand::DeregisterAgent { at: at(5) })
        .then_expect_events(vec![deregistered(5)]);
}

#[test]
fn deregister_twice_is_refused() {
    AgentTest::with(())
        .given(vec![registered(), deregistered(5)])
        .when(AgentCommand::DeregisterAgent { at: at(6) })
        .then_expect_error(AgentError::Deregistered);
}

#[test]
fn deregister_missing_agent_is_refused() {
    AgentTest::with(())
        .given_no_previous_events()
        .when(AgentCommand::DeregisterAgent { at: at(6) })
        .then_expect_error(AgentError::NotFound);
}

#[test]
fn reconfigure_changes_the_concurrency_limit() {
    AgentTest::with(())
        .given(vec![registered()])
        .when(reconfigure(8, 5))
        .then_expect_events(vec![reconfigured(8, 5)]);
    let state = state_after(vec![registered(), reconfigured(8, 5)]);
    assert_eq!(state.max_concurrency.get(), 8);
    assert_eq!(state.updated_at, at(5));
}

#[test]
fn reconfigure_to_the_same_limit_changes_nothing() {
    AgentTest::with(())
        .given(vec![registered()])
        .when(reconfigure(2, 5))
        .then_expect_events(vec![]);
}

#[test]
fn reconfigure_deregistered_or_missing_agent_is_refused() {
    AgentTest::with(())
        .given(vec![registered(), deregistered(3)])
        .when(reconfigure(8, 5))
        .then_expect_error(AgentError::Deregistered);
    AgentTest::with(())
        .given_no_previous_events()
        .when(reconfigure(8, 5))
        .then_expect_error(AgentError::NotFound);
}

#[test]
fn registered_state_is_online_until_silent_for_offline_after() {
    let offline_after = TimeDelta::seconds(30);
    let state = state_after(vec![registered()]);
    assert_eq!(state.lifecycle, AgentLifecycle::Active);
    assert_eq!(state.last_heartbeat_at, Some(at(0)));
    assert_eq!(state.max_concurrency.get(), 2);
    assert_eq!(state.status_at(at(29), offline_after), AgentStatus::Online);
    assert_eq!(state.status_at(at(30), offline_after), AgentStatus::Offline);

    let state = state_after(vec![registered(), heartbeat_recorded(100)]);
    assert_eq!(state.last_heartbeat_at, Some(at(100)));
    assert_eq!(state.status_at(at(120), offline_after), AgentStatus::Online);
}

#[test]
fn draining_and_deregistered_override_liveness() {
    let offline_after = TimeDelta::seconds(30);
    let draining = state_after(vec![registered(), drained(5)]);
    assert_eq!(
        draining.status_at(at(6), offline_after),
        AgentStatus::Draining
    );
    assert_eq!(
        draining.status_at(at(1_000), offline_after),
        AgentStatus::Draining
    );
    let gone = state_after(vec![registered(), drained(5), deregistered(6)]);
    assert_eq!(
        gone.status_at(at(7), offline_after),
        AgentStatus::Deregistered
    );
    assert_eq!(gone.updated_at, at(6));
}

#[test]
fn serves_only_its_capabilities() {
    let state = state_after(vec![registered()]);
    assert!(state.serves(&Capability::parse("browser.click").unwrap()));
    assert!(!state.serves(&Capability::parse("llm.chat").unwrap()));
}

#[test]
fn event_names_match_their_serde_tags() {
    for event in [
        registered(),
        heartbeat_recorded(1),
        drained(2),
        deregistered(3),
        reconfigured(8, 4),
    ] {
        let value = serde_json::to_value(&event).unwrap();
        let tag = value.as_object().unwrap().keys().next().unwrap().clone();
        assert_eq!(tag, event.event_type());
        assert_eq!(event.event_version(), "1.0");
        let back: AgentEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }
}

#[test]
fn unknown_payload_fields_are_refused() {
    let parsed = serde_json::from_value::<AgentEvent>(json!({
        "AgentDraining": {"at": at(1), "reason": "x"}
    }));
    assert!(parsed.is_err());
}

#[test]
fn refusals_are_classified() {
    assert_eq!(AgentError::NotFound.kind(), RefusalKind::NotFound);
    assert_eq!(AgentError::AlreadyExists.kind(), RefusalKind::Conflict);
    assert_eq!(AgentError::Deregistered.kind(), RefusalKind::Conflict);
    assert_eq!(AgentError::Deregistered.code(), "agent.deregistered");
}

#[test]
fn the_retiring_types_name_the_events_that_retire() {
    for event in [
        registered(),
        heartbeat_recorded(1),
        drained(2),
        deregistered(3),
    ] {
        let listed = AgentEvent::RETIRING_TYPES.contains(&event.event_type().as_str());
        assert_eq!(listed, event.retires(), "{}", event.event_type());
    }
}

fn team_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_7e01)
}

#[test]
fn share_gives_the_agent_to_a_team_once_and_unshare_takes_it_back() {
    let shared = AgentEvent::AgentShared(AgentShared {
        team_id: team_id(),
        at: at(5),
    });
    AgentTest::with(())
        .given(vec![registered()])
        .when(AgentCommand::ShareAgent {
            team_id: team_id(),
            at: at(5),
        })
        .then_expect_events(vec![shared.clone()]);
    AgentTest::with(())
        .given(vec![registered(), shared.clone()])
        .when(AgentCommand::ShareAgent {
            team_id: team_id(),
            at: at(6),
        })
        .then_expect_events(vec![]);
    AgentTest::with(())
        .given(vec![registered(), shared.clone()])
        .when(AgentCommand::UnshareAgent { at: at(7) })
        .then_expect_events(vec![AgentEvent::AgentUnshared(AgentUnshared {
            team_id: team_id(),
            at: at(7),
        })]);
    AgentTest::with(())
        .given(vec![registered()])
        .when(AgentCommand::UnshareAgent { at: at(7) })
        .then_expect_events(vec![]);
    AgentTest::with(())
        .given(vec![registered(), deregistered(3)])
        .when(AgentCommand::ShareAgent {
            team_id: team_id(),
            at: at(5),
        })
        .then_expect_error(AgentError::Deregistered);
    assert_eq!(
        state_after(vec![registered(), shared]).team_id,
        Some(team_id())
    );
}
