//! Property tests: random command sequences against the Agent aggregate never panic, every
//! event it emits survives the codec and applies, replaying the history rebuilds the
//! state, and the agent's invariants hold after every step.

use proptest::prelude::*;

use super::*;
use crate::codec;

#[derive(Debug, Clone)]
enum Op {
    Register,
    /// A heartbeat this many seconds from the latest command; negative when another
    /// node's clock is behind.
    Heartbeat {
        skew_secs: i64,
    },
    Drain,
    Deregister,
    Reconfigure {
        max_concurrency: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Register),
        8 => (-30i64..60).prop_map(|skew_secs| Op::Heartbeat { skew_secs }),
        1 => Just(Op::Drain),
        1 => Just(Op::Deregister),
        2 => (1i64..5).prop_map(|max_concurrency| Op::Reconfigure { max_concurrency }),
    ]
}

fn handle(
    runtime: &tokio::runtime::Runtime,
    agent: &mut Agent,
    command: AgentCommand,
) -> Result<Vec<AgentEvent>, AgentError> {
    runtime.block_on(async {
        let sink = cqrs_es::event_sink::EventSink::default();
        agent.handle(command, &(), &sink).await?;
        Ok(sink.collect().await)
    })
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let resolution = TimeDelta::seconds(RESOLUTION);
    let mut agent = Agent::default();
    let mut history: Vec<AgentEvent> = Vec::new();
    let mut clock = 0i64;
    let mut recorded_heartbeats: Vec<DateTime<Utc>> = Vec::new();
    let first = [Op::Register];
    for op in first.iter().chain(ops) {
        let command = match op {
            Op::Register => register(),
            Op::Heartbeat { skew_secs } => {
                clock += skew_secs.max(&0);
                AgentCommand::RecordHeartbeat {
                    at: at(clock + skew_secs.min(&0)),
                    resolution,
                }
            }
            Op::Drain => AgentCommand::DrainAgent { at: at(clock) },
            Op::Deregister => AgentCommand::DeregisterAgent { at: at(clock) },
            Op::Reconfigure { max_concurrency } => reconfigure(*max_concurrency, clock),
        };
        let before = agent.clone();
        match handle(&runtime, &mut agent, command) {
            Ok(events) => {
                prop_assert!(events.len() <= 1, "one event at most per command");
                if events.is_empty() {
                    prop_assert_eq!(&agent, &before, "accepted without an event, yet changed");
                }
                for event in events {
                    // A deregistered agent is gone for good: nothing happens to it.
                    prop_assert!(
                        before
                            .state()
                            .is_none_or(|s| s.lifecycle != AgentLifecycle::Deregistered),
                        "a deregistered agent changed: {:?}",
                        event
                    );
                    if let AgentEvent::AgentRegistered(_) = &event {
                        prop_assert!(before.state().is_none(), "registered twice");
                    }
                    if let AgentEvent::AgentHeartbeatRecorded(recorded) = &event {
                        recorded_heartbeats.push(recorded.at);
                    }
                    let (event_type, version, payload) = codec::encode::<Agent>(&event).unwrap();
                    prop_assert_eq!(version, event.event_version());
                    let decoded = codec::decode::<Agent>(&event_type, payload).unwrap();
                    prop_assert_eq!(&decoded, &event);
                    history.push(decoded);
                }
            }
            Err(_) => prop_assert_eq!(&agent, &before),
        }
        let (Some(now), Some(was)) = (agent.state(), before.state()) else {
            continue;
        };
        // Who the agent is never changes after registration.
        prop_assert_eq!(now.id, was.id);
        prop_assert_eq!(now.owner_id, was.owner_id);
        prop_assert_eq!(now.kind, was.kind);
        prop_assert_eq!(&now.capabilities, &was.capabilities);
        prop_assert_eq!(now.created_at, was.created_at);
        // Its life only goes forward: active → draining → deregistered.
        let rank = |lifecycle: AgentLifecycle| match lifecycle {
            AgentLifecycle::Active => 0,
            AgentLifecycle::Draining => 1,
            AgentLifecycle::Deregistered => 2,
        };
        prop_assert!(rank(now.lifecycle) >= rank(was.lifecycle));
        // The recorded heartbeat never moves back, whatever the clocks say.
        prop_assert!(now.last_heartbeat_at >= was.last_heartbeat_at);
    }
    // Recorded heartbeats are at least a resolution apart (at most one event per
    // resolution), counting registration as the first.
    let registered_at = [at(0)];
    for pair in registered_at
        .iter()
        .chain(&recorded_heartbeats)
        .collect::<Vec<_>>()
        .windows(2)
    {
        prop_assert!(*pair[1] - *pair[0] >= resolution, "{:?}", pair);
    }
    let mut replayed = Agent::default();
    for event in history {
        replayed.apply(event);
    }
    prop_assert_eq!(replayed, agent);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_agent_invariants(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(&ops)?;
    }
}
