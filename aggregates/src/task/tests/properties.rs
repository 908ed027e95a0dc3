//! Property tests: random command sequences against the Task aggregate never panic, every
//! event it emits survives the codec and applies, replaying the history rebuilds the
//! state, and the lease invariants hold after every step.

use proptest::prelude::*;

use super::*;
use crate::codec;

/// Which lease a generated command names: the live one, the one that ended last, or one
/// nobody was granted.
#[derive(Debug, Clone, Copy)]
enum LeaseRef {
    Live,
    Ended,
    Unknown,
}

#[derive(Debug, Clone)]
enum Op {
    Create,
    Lease {
        other_agent: bool,
        lease: LeaseRef,
    },
    Start(LeaseRef),
    Progress(LeaseRef),
    Extend(LeaseRef),
    Complete {
        lease: LeaseRef,
        output: u8,
    },
    Fail {
        lease: LeaseRef,
        permanent: bool,
        jitter: f64,
        message: u8,
    },
    Expire {
        lease: LeaseRef,
        jitter: f64,
    },
    Cancel,
    Retry,
    Reprioritise {
        priority: u8,
    },
}

/// One command, and how far the clock moves before it.
#[derive(Debug, Clone)]
struct Step {
    advance_ms: i64,
    op: Op,
}

/// The task's spec: few attempts and short leases, so that sequences reach retries,
/// expiries and used-up attempts.
#[derive(Debug, Clone)]
struct SpecParams {
    max_attempts: i64,
    timeout_secs: i64,
    pinned: Option<bool>,
    not_before_secs: Option<i64>,
}

fn lease_ref() -> impl Strategy<Value = LeaseRef> {
    prop_oneof![
        6 => Just(LeaseRef::Live),
        2 => Just(LeaseRef::Ended),
        1 => Just(LeaseRef::Unknown),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Create),
        6 => (any::<bool>(), prop_oneof![4 => Just(LeaseRef::Unknown), 1 => lease_ref()])
            .prop_map(|(other_agent, lease)| Op::Lease { other_agent, lease }),
        3 => lease_ref().prop_map(Op::Start),
        2 => lease_ref().prop_map(Op::Progress),
        2 => lease_ref().prop_map(Op::Extend),
        4 => (lease_ref(), 0u8..3).prop_map(|(lease, output)| Op::Complete { lease, output }),
        4 => (lease_ref(), any::<bool>(), 0.0f64..=1.0, 0u8..3).prop_map(
            |(lease, permanent, jitter, message)| Op::Fail { lease, permanent, jitter, message }
        ),
        3 => (lease_ref(), 0.0f64..=1.0).prop_map(|(lease, jitter)| Op::Expire { lease, jitter }),
        1 => Just(Op::Cancel),
        2 => Just(Op::Retry),
        1 => (0u8..10).prop_map(|priority| Op::Reprioritise { priority }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    // Mostly small steps, sometimes past a lease or a backoff.
    let advance_ms = prop_oneof![
        6 => 0i64..2_000,
        3 => 0i64..120_000,
        1 => 0i64..900_000,
    ];
    (advance_ms, op()).prop_map(|(advance_ms, op)| Step { advance_ms, op })
}

fn spec_params() -> impl Strategy<Value = SpecParams> {
    (
        1i64..=4,
        1i64..=120,
        proptest::option::of(any::<bool>()),
        proptest::option::of(0i64..60),
    )
        .prop_map(
            |(max_attempts, timeout_secs, pinned, not_before_secs)| SpecParams {
                max_attempts,
                timeout_secs,
                pinned,
                not_before_secs,
            },
        )
}

fn random_spec(params: &SpecParams) -> TaskSpec {
    let pinned = params
        .pinned
        .map(|other| if other { other_agent() } else { agent() });
    serde_json::from_value::<NewTaskRequest>(json!({
        "capability": "browser.navigate",
        "input": {"url": "https://example.com"},
        "max_attempts": params.max_attempts,
        "timeout_secs": params.timeout_secs,
        "retry": {"initial_backoff_ms": 500, "max_backoff_ms": 20_000},
        "agent_id": pinned,
        "not_before": params.not_before_secs.map(at),
    }))
    .unwrap()
    .validate()
    .unwrap()
}

/// Runs a command through the aggregate as the command bus does: `handle` writes its
/// events to a sink, which applies them.
fn handle(
    runtime: &tokio::runtime::Runtime,
    task: &mut Task,
    command: TaskCommand,
) -> Result<Vec<TaskEvent>, TaskError> {
    runtime.block_on(async {
        let sink = cqrs_es::event_sink::EventSink::default();
        task.handle(command, &(), &sink).await?;
        Ok(sink.collect().await)
    })
}

/// The generated operation as a command against the task as it stands.
fn command(
    task: &Task,
    op: &Op,
    now: DateTime<Utc>,
    minted: &mut u128,
    spec: &TaskSpec,
) -> TaskCommand {
    let state = task.state();
    let mut named = |which: LeaseRef| {
        match which {
            LeaseRef::Live => state.and_then(|s| s.lease_id),
            LeaseRef::Ended => state.and_then(|s| s.last_lease).map(|ended| ended.lease_id),
            LeaseRef::Unknown => None,
        }
        .unwrap_or_else(|| {
            *minted += 1;
            lease(1_000 + *minted)
        })
    };
    match op {
        Op::Create => TaskCommand::CreateTask {
            task_id: task_id(),
            owner_id: owner_id(),
            spec: spec.clone(),
            workflow_run_id: None,
            at: now,
        },
        Op::Lease {
            other_agent: other,
            lease,
        } => TaskCommand::LeaseTask {
            agent_id: if *other { other_agent() } else { agent() },
            lease_id: named(*lease),
            at: now,
        },
        Op::Start(lease) => TaskCommand::StartTask {
            lease_id: named(*lease),
            at: now,
        },
        Op::Progress(lease) => TaskCommand::ReportProgress {
            lease_id: named(*lease),
            progress: json!({"at": now}),
            at: now,
        },
        Op::Extend(lease) => TaskCommand::ExtendLease {
            lease_id: named(*lease),
            at: now,
        },
        Op::Complete { lease, output } => TaskCommand::CompleteTask {
            lease_id: named(*lease),
            output: json!({ "n": output }),
            at: now,
        },
        Op::Fail {
            lease,
            permanent,
            jitter,
            message,
        } => TaskCommand::FailTask {
            lease_id: named(*lease),
            error: TaskFailure {
                message: format!("failure {message}"),
                code: None,
                details: None,
            },
            permanent: *permanent,
            jitter: *jitter,
            at: now,
        },
        Op::Expire { lease, jitter } => TaskCommand::ExpireLease {
            lease_id: named(*lease),
            jitter: *jitter,
            at: now,
        },
        Op::Cancel => TaskCommand::CancelTask {
            reason: None,
            at: now,
        },
        Op::Retry => TaskCommand::RetryTask { at: now },
        Op::Reprioritise { priority } => TaskCommand::Reprioritise {
            priority: Some(Priority::new(i64::from(*priority)).unwrap()),
            tags: None,
            at: now,
        },
    }
}

/// What must hold of any task, whatever happened to it.
fn check_invariants(state: &TaskState) -> Result<(), TestCaseError> {
    // At most one open lease, and exactly while leased or running.
    prop_assert_eq!(
        state.lease_id.is_some(),
        state.status.is_held(),
        "{:?}",
        state
    );
    prop_assert_eq!(state.lease_expires_at.is_some(), state.status.is_held());
    if state.status.is_held() {
        prop_assert!(state.agent_id.is_some());
        prop_assert!(state.attempt >= 1);
    }
    if let (Some(live), Some(ended)) = (state.lease_id, state.last_lease) {
        prop_assert_ne!(live, ended.lease_id, "a lease id names one lease");
    }
    // Attempts never exceed the policy's maximum.
    prop_assert!(
        state.attempt <= state.retry.max_attempts,
        "attempt {} of {}",
        state.attempt,
        state.retry.max_attempts
    );
    if let Some(pinned) = state.pinned_agent_id {
        if state.status.is_held() {
            prop_assert_eq!(state.agent_id, Some(pinned));
        }
    }
    match state.status {
        TaskStatus::Succeeded => {
            prop_assert!(state.output.is_some() && state.error.is_none());
            prop_assert!(state.finished_at.is_some());
        }
        TaskStatus::Failed | TaskStatus::Cancelled => prop_assert!(state.finished_at.is_some()),
        TaskStatus::RetryScheduled => {
            prop_assert!(state.not_before.is_some() && state.error.is_some());
        }
        _ => prop_assert!(state.finished_at.is_none()),
    }
    Ok(())
}

fn run(params: &SpecParams, steps: &[Step]) -> Result<(), TestCaseError> {
    let spec = random_spec(params);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut task = Task::default();
    let mut history: Vec<TaskEvent> = Vec::new();
    let mut now = at(0);
    let mut minted = 0;
    let mut granted: Vec<Uuid> = Vec::new();
    // The first step always creates the task, so that sequences are about a live one.
    let create = Step {
        advance_ms: 0,
        op: Op::Create,
    };
    for step in std::iter::once(&create).chain(steps) {
        now += TimeDelta::milliseconds(step.advance_ms);
        let before = task.clone();
        let command = command(&task, &step.op, now, &mut minted, &spec);
        match handle(&runtime, &mut task, command) {
            Ok(events) => {
                prop_assert!(events.len() <= 1, "one event at most per command");
                if events.is_empty() {
                    prop_assert_eq!(&task, &before, "accepted without an event, yet changed");
                }
                let succeeded = before
                    .state()
                    .is_some_and(|s| s.status == TaskStatus::Succeeded);
                for event in events {
                    // A succeeded task is done: nothing happens to it any more, and above
                    // all it is never leased again.
                    prop_assert!(!succeeded, "a succeeded task changed: {:?}", event);
                    if let TaskEvent::TaskLeased(leased) = &event {
                        prop_assert!(
                            !granted.contains(&leased.lease_id),
                            "a lease id granted twice"
                        );
                        granted.push(leased.lease_id);
                    }
                    // Every event survives the store's codec unchanged.
                    let (event_type, version, payload) = codec::encode::<Task>(&event).unwrap();
                    prop_assert_eq!(version, event.event_version());
                    let decoded = codec::decode::<Task>(&event_type, payload).unwrap();
                    prop_assert_eq!(&decoded, &event);
                    history.push(decoded);
                }
            }
            // A refusal changes nothing.
            Err(_) => prop_assert_eq!(&task, &before),
        }
        if let Some(state) = task.state() {
            check_invariants(state)?;
        }
    }
    // Every emitted event applies: the history alone rebuilds the same task.
    let mut replayed = Task::default();
    for event in history {
        replayed.apply(event);
    }
    prop_assert_eq!(replayed, task);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_task_invariants(
        params in spec_params(),
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        run(&params, &steps)?;
    }
}
