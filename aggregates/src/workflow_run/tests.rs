//! Given/when/then tests of the WorkflowRun aggregate and of what a run does next.

use chronicle_commands::workflow::WorkflowDefinitionRequest;
use chrono::TimeZone;
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use proptest::prelude::*;
use serde_json::json;

use super::*;

type RunTest = TestFramework<WorkflowRun>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0).unwrap()
}

fn run_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0e01)
}

fn task_id(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0d00 + n)
}

fn definition(value: Value) -> WorkflowDefinition {
    serde_json::from_value::<WorkflowDefinitionRequest>(value)
        .unwrap()
        .validate()
        .unwrap()
}

fn linear() -> WorkflowDefinition {
    definition(json!({
        "name": "linear",
        "params": {"url": {"type": "string"}},
        "steps": [
            {"id": "fetch", "capability": "http.request", "input": {"url": "{{params.url}}"}},
            {"id": "sum", "capability": "llm.chat", "depends_on": ["fetch"],
             "input": {"n": "{{steps.fetch.output.count}}", "text": "got {{steps.fetch.output.count}}"}},
        ],
    }))
}

fn diamond() -> WorkflowDefinition {
    definition(json!({
        "name": "diamond",
        "steps": [
            {"id": "a", "capability": "x.y", "input": null},
            {"id": "b", "capability": "x.y", "depends_on": ["a"],
             "condition": {"==": [{"var": "steps.a.output.go"}, true]}},
            {"id": "c", "capability": "x.y", "depends_on": ["a"]},
            {"id": "d", "capability": "x.y", "depends_on": ["b"]},
            {"id": "e", "capability": "x.y", "depends_on": ["c", "d"]},
        ],
    }))
}

fn started(definition: WorkflowDefinition) -> WorkflowRunEvent {
    let mut params = Map::new();
    params.insert("url".into(), json!("https://example.com"));
    WorkflowRunEvent::RunStarted(WorkflowRunStarted {
        run_id: run_id(),
        workflow_id: Uuid::nil(),
        owner_id: Uuid::nil(),
        version: 1,
        definition,
        params,
        at: at(0),
        team_id: None,
    })
}

fn step_started(step: &str, n: u128) -> WorkflowRunEvent {
    WorkflowRunEvent::StepStarted(WorkflowStepStarted {
        step_id: step.into(),
        task_id: task_id(n),
        at: at(1),
    })
}

fn step_succeeded(step: &str, output: Value) -> WorkflowRunEvent {
    WorkflowRunEvent::StepSucceeded(WorkflowStepSucceeded {
        step_id: step.into(),
        output,
        attempt: 1,
        at: at(2),
    })
}

fn failure() -> TaskFailure {
    TaskFailure {
        message: "boom".into(),
        code: Some("x".into()),
        details: None,
    }
}

fn state_after(events: Vec<WorkflowRunEvent>) -> RunState {
    let mut run = WorkflowRun::default();
    for event in events {
        run.apply(event);
    }
    run.state().unwrap().clone()
}

#[test]
fn start_run_then_refuse_a_second_start() {
    let start = WorkflowRunCommand::StartRun {
        run_id: run_id(),
        workflow_id: Uuid::nil(),
        owner_id: Uuid::nil(),
        version: 1,
        definition: linear(),
        params: [("url".to_owned(), json!("https://example.com"))]
            .into_iter()
            .collect(),
        team_id: None,
        at: at(0),
    };
    RunTest::with(())
        .given_no_previous_events()
        .when(start.clone())
        .then_expect_events(vec![started(linear())]);
    RunTest::with(())
        .given(vec![started(linear())])
        .when(start)
        .then_expect_error(WorkflowRunError::AlreadyExists);
}

#[test]
fn a_step_starts_once() {
    let start = WorkflowRunCommand::StartStep {
        step_id: "fetch".into(),
        task_id: task_id(1),
        at: at(1),
    };
    RunTest::with(())
        .given(vec![started(linear())])
        .when(start.clone())
        .then_expect_events(vec![step_started("fetch", 1)]);
    RunTest::with(())
        .given(vec![started(linear()), step_started("fetch", 1)])
        .when(start)
        .then_expect_error(WorkflowRunError::StepNotPending("fetch".into()));
    RunTest::with(())
        .given(vec![started(linear())])
        .when(WorkflowRunCommand::StartStep {
            step_id: "nope".into(),
            task_id: task_id(1),
            at: at(1),
        })
        .then_expect_error(WorkflowRunError::UnknownStep("nope".into()));
}

#[test]
fn a_step_completes_or_fails_only_while_running() {
    RunTest::with(())
        .given(vec![started(linear()), step_started("fetch", 1)])
        .when(WorkflowRunCommand::CompleteStep {
            step_id: "fetch".into(),
            output: json!({"count": 3}),
            attempt: 1,
            at: at(2),
        })
        .then_expect_events(vec![step_succeeded("fetch", json!({"count": 3}))]);
    RunTest::with(())
        .given(vec![started(linear())])
        .when(WorkflowRunCommand::CompleteStep {
            step_id: "fetch".into(),
            output: json!(null),
            attempt: 1,
            at: at(2),
        })
        .then_expect_error(WorkflowRunError::StepNotRunning("fetch".into()));
    RunTest::with(())
        .given(vec![started(linear()), step_started("fetch", 1)])
        .when(WorkflowRunCommand::FailStep {
            step_id: "fetch".into(),
            error: failure(),
            attempt: 3,
            at: at(2),
        })
        .then_expect_events(vec![WorkflowRunEvent::StepFailed(WorkflowStepFailed {
            step_id: "fetch".into(),
            error: failure(),
            attempt: 3,
            at: at(2),
        })]);
}

#[test]
fn skip_only_a_pending_step() {
    RunTest::with(())
        .given(vec![started(linear()), step_started("fetch", 1)])
        .when(WorkflowRunCommand::SkipStep {
            step_id: "fetch".into(),
            reason: "r".into(),
            at: at(2),
        })
        .then_expect_error(WorkflowRunError::StepNotPending("fetch".into()));
}

#[test]
fn succeed_only_when_every_step_is_done() {
    RunTest::with(())
        .given(vec![
            started(linear()),
            step_started("fetch", 1),
            step_succeeded("fetch", json!({})),
        ])
        .when(WorkflowRunCommand::SucceedRun { at: at(3) })
        .then_expect_error(WorkflowRunError::StepsOpen);
    RunTest::with(())
        .given(vec![
            started(linear()),
            step_started("fetch", 1),
            step_succeeded("fetch", json!({})),
            step_started("sum", 2),
            step_succeeded("sum", json!({})),
        ])
        .when(WorkflowRunCommand::SucceedRun { at: at(3) })
        .then_expect_events(vec![WorkflowRunEvent::RunSucceeded(WorkflowRunSucceeded {
            at: at(3),
        })]);
}

#[test]
fn a_finished_run_refuses_everything() {
    let cancelled = WorkflowRunEvent::RunCancelled(WorkflowRunCancelled { at: at(3) });
    RunTest::with(())
        .given(vec![started(linear())])
        .when(WorkflowRunCommand::CancelRun { at: at(3) })
        .then_expect_events(vec![cancelled.clone()]);
    for command in [
        WorkflowRunCommand::CancelRun { at: at(4) },
        WorkflowRunCommand::StartStep {
            step_id: "fetch".into(),
            task_id: task_id(1),
            at: at(4),
        },
        WorkflowRunCommand::FailRun {
            step_id: "fetch".into(),
            error: failure(),
            at: at(4),
        },
    ] {
        RunTest::with(())
            .given(vec![started(linear()), cancelled.clone()])
            .when(command)
            .then_expect_error(WorkflowRunError::Finished);
    }
    RunTest::with(())
        .given_no_previous_events()
        .when(WorkflowRunCommand::CancelRun { at: at(4) })
        .then_expect_error(WorkflowRunError::NotFound);
}

#[test]
fn cancelling_cancels_open_steps_and_names_their_tasks() {
    let state = state_after(vec![started(linear()), step_started("fetch", 1)]);
    assert_eq!(state.open_tasks(), vec![task_id(1)]);
    let state = state_after(vec![
        started(linear()),
        step_started("fetch", 1),
        WorkflowRunEvent::RunCancelled(WorkflowRunCancelled { at: at(3) }),
    ]);
    assert_eq!(state.status, RunStatus::Cancelled);
    assert!(state
        .steps
        .values()
        .all(|s| s.status == StepStatus::Cancelled));
}

#[test]
fn next_starts_ready_steps_with_rendered_input_keeping_types() {
    let state = state_after(vec![started(linear())]);
    assert_eq!(
        next(&state),
        vec![Next::Start {
            step_id: "fetch".into(),
            input: json!({"url": "https://example.com"}),
        }]
    );
    let state = state_after(vec![started(linear()), step_started("fetch", 1)]);
    assert_eq!(next(&state), vec![]);
    let state = state_after(vec![
        started(linear()),
        step_started("fetch", 1),
        step_succeeded("fetch", json!({"count": 3})),
    ]);
    assert_eq!(
        next(&state),
        vec![Next::Start {
            step_id: "sum".into(),
            input: json!({"n": 3, "text": "got 3"}),
        }]
    );
}

#[test]
fn a_false_condition_skips_and_skips_propagate() {
    let mut events = vec![
        started(diamond()),
        step_started("a", 1),
        step_succeeded("a", json!({"go": false})),
    ];
    let state = state_after(events.clone());
    assert_eq!(
        next(&state),
        vec![
            Next::Skip {
                step_id: "b".into(),
                reason: "its condition was false".into()
            },
            Next::Start {
                step_id: "c".into(),
                input: Value::Null
            },
        ]
    );
    events.push(WorkflowRunEvent::StepSkipped(WorkflowStepSkipped {
        step_id: "b".into(),
        reason: "r".into(),
        at: at(3),
    }));
    let state = state_after(events.clone());
    assert!(next(&state)
        .iter()
        .any(|n| matches!(n, Next::Skip { step_id, .. } if step_id == "d")));
    events.push(WorkflowRunEvent::StepSkipped(WorkflowStepSkipped {
        step_id: "d".into(),
        reason: "r".into(),
        at: at(3),
    }));
    events.push(step_started("c", 3));
    let state = state_after(events.clone());
    // `e` waits for `c`; it depends on a skipped step, but not only on skipped ones.
    assert!(next(&state)
        .iter()
        .all(|n| !matches!(n, Next::Skip { step_id, .. } if step_id == "e")));
    events.push(step_succeeded("c", json!(1)));
    let state = state_after(events);
    assert_eq!(
        next(&state),
        vec![Next::Start {
            step_id: "e".into(),
            input: Value::Null
        }]
    );
}

#[test]
fn a_failed_step_fails_the_run_with_its_error() {
    let state = state_after(vec![
        started(linear()),
        step_started("fetch", 1),
        WorkflowRunEvent::StepFailed(WorkflowStepFailed {
            step_id: "fetch".into(),
            error: failure(),
            attempt: 3,
            at: at(2),
        }),
    ]);
    assert_eq!(
        next(&state),
        vec![Next::FailRun {
            step_id: "fetch".into(),
            error: failure()
        }]
    );
}

#[test]
fn events_round_trip_through_the_codec() {
    let event = step_succeeded("fetch", json!({"a": [1, "b"]}));
    let (event_type, _, payload) = crate::codec::encode::<WorkflowRun>(&event).unwrap();
    assert_eq!(event_type, "WorkflowStepSucceeded");
    assert_eq!(
        crate::codec::decode::<WorkflowRun>(&event_type, payload).unwrap(),
        event
    );
}

fn approval() -> WorkflowDefinition {
    definition(json!({
        "name": "approve then publish",
        "steps": [
            {"id": "draft", "capability": "llm.chat", "input": {"text": "write"}},
            {"id": "ok", "depends_on": ["draft"],
             "approval": {"prompt": "Publish it?", "timeout_secs": 60}},
            {"id": "publish", "capability": "http.request", "depends_on": ["ok"],
             "input": {"note": "{{steps.ok.output.note}}"}},
        ],
    }))
}

fn person() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0a01)
}

/// The approval run with `draft` done and `ok` waiting since `at(10)` (deadline `at(70)`).
fn waiting() -> Vec<WorkflowRunEvent> {
    vec![
        started(approval()),
        step_started("draft", 1),
        step_succeeded("draft", json!("text")),
        WorkflowRunEvent::ApprovalRequested(WorkflowApprovalRequested {
            step_id: "ok".into(),
            prompt: "Publish it?".into(),
            deadline: Some(at(70)),
            at: at(10),
        }),
    ]
}

fn decide_ok(decision: ApprovalDecision, data: Value, when: i64) -> WorkflowRunCommand {
    WorkflowRunCommand::DecideApproval {
        step_id: "ok".into(),
        decision,
        data,
        decided_by: person(),
        at: at(when),
    }
}

fn decided_ok(decision: ApprovalDecision, data: Value, when: i64) -> WorkflowRunEvent {
    WorkflowRunEvent::ApprovalDecided(WorkflowApprovalDecided {
        step_id: "ok".into(),
        decision,
        data,
        decided_by: person(),
        at: at(when),
    })
}

#[test]
fn a_ready_approval_step_waits_with_its_prompt_and_deadline() {
    let events = waiting()[..3].to_vec();
    assert_eq!(
        next(&state_after(events.clone())),
        vec![Next::AwaitApproval {
            step_id: "ok".into()
        }]
    );
    RunTest::with(())
        .given(events)
        .when(WorkflowRunCommand::AwaitApproval {
            step_id: "ok".into(),
            at: at(10),
        })
        .then_expect_events(vec![waiting()[3].clone()]);
    let state = state_after(waiting());
    assert_eq!(state.steps["ok"].status, StepStatus::WaitingApproval);
    assert_eq!(state.steps["ok"].deadline, Some(at(70)));
    // Waiting is not done: nothing more is ready, the run does not end.
    assert_eq!(next(&state), vec![]);
}

#[test]
fn only_a_pending_approval_step_starts_waiting() {
    RunTest::with(())
        .given(waiting())
        .when(WorkflowRunCommand::AwaitApproval {
            step_id: "ok".into(),
            at: at(11),
        })
        .then_expect_error(WorkflowRunError::StepNotPending("ok".into()));
    RunTest::with(())
        .given(vec![started(approval())])
        .when(WorkflowRunCommand::AwaitApproval {
            step_id: "draft".into(),
            at: at(11),
        })
        .then_expect_error(WorkflowRunError::NotAnApproval("draft".into()));
}

#[test]
fn an_approval_without_a_timeout_has_no_deadline() {
    let definition = definition(json!({
        "name": "forever",
        "steps": [{"id": "ok", "approval": {"prompt": "Go?"}}],
    }));
    RunTest::with(())
        .given(vec![started(definition)])
        .when(WorkflowRunCommand::AwaitApproval {
            step_id: "ok".into(),
            at: at(5),
        })
        .then_expect_events(vec![WorkflowRunEvent::ApprovalRequested(
            WorkflowApprovalRequested {
                step_id: "ok".into(),
                prompt: "Go?".into(),
                deadline: None,
                at: at(5),
            },
        )]);
}

#[test]
fn approving_completes_the_step_with_the_data_as_its_output() {
    RunTest::with(())
        .given(waiting())
        .when(decide_ok(
            ApprovalDecision::Approve,
            json!({"note": "ship it"}),
            20,
        ))
        .then_expect_events(vec![decided_ok(
            ApprovalDecision::Approve,
            json!({"note": "ship it"}),
            20,
        )]);
    let mut events = waiting();
    events.push(decided_ok(
        ApprovalDecision::Approve,
        json!({"note": "ship it"}),
        20,
    ));
    let state = state_after(events);
    assert_eq!(state.steps["ok"].status, StepStatus::Succeeded);
    assert_eq!(state.steps["ok"].output, Some(json!({"note": "ship it"})));
    assert_eq!(
        next(&state),
        vec![Next::Start {
            step_id: "publish".into(),
            input: json!({"note": "ship it"})
        }]
    );
}

#[test]
fn rejecting_fails_the_step_and_so_the_run() {
    RunTest::with(())
        .given(waiting())
        .when(decide_ok(
            ApprovalDecision::Reject,
            json!({"why": "typo"}),
            20,
        ))
        .then_expect_events(vec![decided_ok(
            ApprovalDecision::Reject,
            json!({"why": "typo"}),
            20,
        )]);
    let mut events = waiting();
    events.push(decided_ok(
        ApprovalDecision::Reject,
        json!({"why": "typo"}),
        20,
    ));
    let state = state_after(events);
    let error = state.steps["ok"].error.clone().unwrap();
    assert_eq!(error.code.as_deref(), Some("approval_rejected"));
    assert_eq!(error.details, Some(json!({"why": "typo"})));
    assert_eq!(
        next(&state),
        vec![Next::FailRun {
            step_id: "ok".into(),
            error
        }]
    );
}

#[test]
fn an_approval_times_out_at_its_deadline_once() {
    RunTest::with(())
        .given(waiting())
        .when(WorkflowRunCommand::TimeOutApproval {
            step_id: "ok".into(),
            at: at(69),
        })
        .then_expect_error(WorkflowRunError::ApprovalNotDue("ok".into()));
    let timed_out = WorkflowRunEvent::ApprovalTimedOut(WorkflowApprovalTimedOut {
        step_id: "ok".into(),
        deadline: at(70),
        at: at(71),
    });
    RunTest::with(())
        .given(waiting())
        .when(WorkflowRunCommand::TimeOutApproval {
            step_id: "ok".into(),
            at: at(71),
        })
        .then_expect_events(vec![timed_out.clone()]);
    let mut events = waiting();
    events.push(timed_out);
    // A second node's time-out of the same step is stale.
    RunTest::with(())
        .given(events.clone())
        .when(WorkflowRunCommand::TimeOutApproval {
            step_id: "ok".into(),
            at: at(72),
        })
        .then_expect_error(WorkflowRunError::StepNotWaiting("ok".into()));
    let state = state_after(events);
    assert_eq!(state.steps["ok"].status, StepStatus::Failed);
    assert_eq!(
        state.steps["ok"].error.as_ref().unwrap().code.as_deref(),
        Some("approval_timed_out")
    );
    assert!(matches!(&next(&state)[..], [Next::FailRun { step_id, .. }] if step_id == "ok"));
    assert_eq!(
        state_after(waiting()).due_approvals(at(69)),
        Vec::<String>::new()
    );
    assert_eq!(
        state_after(waiting()).due_approvals(at(70)),
        vec!["ok".to_owned()]
    );
}

#[test]
fn a_stale_or_misdirected_signal_is_refused() {
    let cases = [
        (
            waiting(),
            WorkflowRunCommand::DecideApproval {
                step_id: "nope".into(),
                decision: ApprovalDecision::Approve,
                data: Value::Null,
                decided_by: person(),
                at: at(20),
            },
            WorkflowRunError::UnknownStep("nope".into()),
        ),
        (
            waiting(),
            WorkflowRunCommand::DecideApproval {
                step_id: "draft".into(),
                decision: ApprovalDecision::Approve,
                data: Value::Null,
                decided_by: person(),
                at: at(20),
            },
            WorkflowRunError::NotAnApproval("draft".into()),
        ),
        // Not waiting yet.
        (
            waiting()[..3].to_vec(),
            decide_ok(ApprovalDecision::Approve, Value::Null, 20),
            WorkflowRunError::StepNotWaiting("ok".into()),
        ),
        // Decided already.
        (
            [
                waiting(),
                vec![decided_ok(ApprovalDecision::Approve, Value::Null, 20)],
            ]
            .concat(),
            decide_ok(ApprovalDecision::Reject, Value::Null, 21),
            WorkflowRunError::StepNotWaiting("ok".into()),
        ),
        // Past the deadline, before the time-out was recorded.
        (
            waiting(),
            decide_ok(ApprovalDecision::Approve, Value::Null, 70),
            WorkflowRunError::ApprovalExpired("ok".into()),
        ),
        (
            [
                waiting(),
                vec![WorkflowRunEvent::RunCancelled(WorkflowRunCancelled {
                    at: at(15),
                })],
            ]
            .concat(),
            decide_ok(ApprovalDecision::Approve, Value::Null, 20),
            WorkflowRunError::Finished,
        ),
    ];
    for (given, command, error) in cases {
        RunTest::with(())
            .given(given)
            .when(command)
            .then_expect_error(error);
    }
}

#[test]
fn cancelling_cancels_a_waiting_approval() {
    let mut events = waiting();
    events.push(WorkflowRunEvent::RunCancelled(WorkflowRunCancelled {
        at: at(15),
    }));
    let state = state_after(events);
    assert_eq!(state.steps["ok"].status, StepStatus::Cancelled);
    assert_eq!(state.steps["publish"].status, StepStatus::Cancelled);
}

#[test]
fn approval_events_round_trip_through_the_codec() {
    for event in [
        waiting()[3].clone(),
        decided_ok(ApprovalDecision::Reject, json!({"why": 1}), 20),
        WorkflowRunEvent::ApprovalTimedOut(WorkflowApprovalTimedOut {
            step_id: "ok".into(),
            deadline: at(70),
            at: at(71),
        }),
    ] {
        let (event_type, _, payload) = crate::codec::encode::<WorkflowRun>(&event).unwrap();
        assert_eq!(event_type, event.event_type());
        assert_eq!(
            crate::codec::decode::<WorkflowRun>(&event_type, payload).unwrap(),
            event
        );
    }
}

/// `ok` (an approval) handled by `notify`, whose condition reads its status; `publish`
/// takes `ok`'s output and `after` follows `publish`; `report` reads `ok`'s status too but
/// only through `publish`, so it handles nothing.
fn handled() -> WorkflowDefinition {
    definition(json!({
        "name": "ask, and say so when refused",
        "steps": [
            {"id": "ok", "approval": {"prompt": "Publish it?", "timeout_secs": 60}},
            {"id": "notify", "capability": "http.request", "depends_on": ["ok"],
             "condition": {"==": [{"var": "steps.ok.status"}, "failed"]},
             "input": {"text": "not published"}},
            {"id": "publish", "capability": "http.request", "depends_on": ["ok"],
             "input": {"note": "{{steps.ok.output.note}}"}},
            {"id": "after", "capability": "http.request", "depends_on": ["publish"]},
        ],
    }))
}

fn handled_waiting() -> Vec<WorkflowRunEvent> {
    vec![
        started(handled()),
        WorkflowRunEvent::ApprovalRequested(WorkflowApprovalRequested {
            step_id: "ok".into(),
            prompt: "Publish it?".into(),
            deadline: Some(at(70)),
            at: at(10),
        }),
    ]
}

fn skipped(step: &str, reason: &str) -> WorkflowRunEvent {
    WorkflowRunEvent::StepSkipped(WorkflowStepSkipped {
        step_id: step.into(),
        reason: reason.into(),
        at: at(3),
    })
}

#[test]
fn a_failure_is_handled_only_by_a_direct_dependant_whose_condition_reads_its_status() {
    let handled = handled();
    assert!(handled.failure_is_handled("ok"));
    assert!(!handled.failure_is_handled("notify"));
    assert!(!handled.failure_is_handled("publish"));
    let through = definition(json!({
        "name": "indirect",
        "steps": [
            {"id": "a", "capability": "x.y"},
            {"id": "b", "capability": "x.y", "depends_on": ["a"]},
            {"id": "c", "capability": "x.y", "depends_on": ["b"],
             "condition": {"==": [{"var": "steps.a.status"}, "failed"]}},
        ],
    }));
    assert!(!through.failure_is_handled("a"));
    assert!(!through.failure_is_handled("b"));
}

#[test]
fn a_handled_rejection_runs_its_handler_skips_the_rest_and_the_run_succeeds() {
    let mut events = handled_waiting();
    events.push(decided_ok(
        ApprovalDecision::Reject,
        json!({"why": "typo"}),
        20,
    ));
    let state = state_after(events.clone());
    assert_eq!(state.steps["ok"].status, StepStatus::Failed);
    // The handler's condition sees the failure, status and error.
    let context = context(&state);
    assert_eq!(context["steps"]["ok"]["status"], "failed");
    assert_eq!(context["steps"]["ok"]["error"]["code"], "approval_rejected");
    assert_eq!(
        next(&state),
        vec![
            Next::Start {
                step_id: "notify".into(),
                input: json!({"text": "not published"}),
            },
            Next::Skip {
                step_id: "publish".into(),
                reason: "step `ok`, which it depends on, failed".into(),
            },
        ]
    );
    events.push(skipped("publish", "step `ok`, which it depends on, failed"));
    events.push(step_started("notify", 1));
    let state = state_after(events.clone());
    assert_eq!(
        next(&state),
        vec![Next::Skip {
            step_id: "after".into(),
            reason: "every step it depends on was skipped".into(),
        }]
    );
    // Not yet: `after` is pending and `notify` running.
    RunTest::with(())
        .given(events.clone())
        .when(WorkflowRunCommand::SucceedRun { at: at(5) })
        .then_expect_error(WorkflowRunError::StepsOpen);
    events.push(skipped("after", "r"));
    events.push(step_succeeded("notify", json!({"sent": true})));
    assert_eq!(next(&state_after(events.clone())), vec![Next::Succeed]);
    RunTest::with(())
        .given(events.clone())
        .when(WorkflowRunCommand::SucceedRun { at: at(5) })
        .then_expect_events(vec![WorkflowRunEvent::RunSucceeded(WorkflowRunSucceeded {
            at: at(5),
        })]);
    events.push(WorkflowRunEvent::RunSucceeded(WorkflowRunSucceeded {
        at: at(5),
    }));
    let state = state_after(events);
    assert_eq!(state.status, RunStatus::Succeeded);
    assert_eq!(state.error, None);
    assert_eq!(state.steps["ok"].status, StepStatus::Failed);
}

#[test]
fn a_handler_is_skipped_when_the_step_it_handles_succeeds() {
    let mut events = handled_waiting();
    events.push(decided_ok(
        ApprovalDecision::Approve,
        json!({"note": "go"}),
        20,
    ));
    assert_eq!(
        next(&state_after(events)),
        vec![
            Next::Skip {
                step_id: "notify".into(),
                reason: "its condition was false".into(),
            },
            Next::Start {
                step_id: "publish".into(),
                input: json!({"note": "go"}),
            },
        ]
    );
}

#[test]
fn a_timed_out_approval_is_handled_like_a_rejection() {
    let mut events = handled_waiting();
    events.push(WorkflowRunEvent::ApprovalTimedOut(
        WorkflowApprovalTimedOut {
            step_id: "ok".into(),
            deadline: at(70),
            at: at(71),
        },
    ));
    let actions = next(&state_after(events));
    assert!(
        matches!(&actions[0], Next::Start { step_id, .. } if step_id == "notify"),
        "{actions:?}"
    );
    assert!(!actions
        .iter()
        .any(|action| matches!(action, Next::FailRun { .. })));
}

#[test]
fn an_unhandled_failure_fails_the_run_even_beside_a_handled_one() {
    let definition = definition(json!({
        "name": "two failures",
        "steps": [
            {"id": "a", "capability": "x.y"},
            {"id": "b", "capability": "x.y"},
            {"id": "on_a", "capability": "x.y", "depends_on": ["a"],
             "condition": {"in": [{"var": ["steps.a.error.code", ""]}, ["x", "y"]]}},
            {"id": "after_b", "capability": "x.y", "depends_on": ["b"]},
        ],
    }));
    let failed = |step: &str| {
        WorkflowRunEvent::StepFailed(WorkflowStepFailed {
            step_id: step.into(),
            error: failure(),
            attempt: 1,
            at: at(2),
        })
    };
    let mut events = vec![
        started(definition),
        step_started("a", 1),
        step_started("b", 2),
        failed("a"),
    ];
    // `a` failed, handled: `on_a` starts while `b` still runs.
    assert_eq!(
        next(&state_after(events.clone())),
        vec![Next::Start {
            step_id: "on_a".into(),
            input: Value::Null,
        }]
    );
    events.push(failed("b"));
    assert_eq!(
        next(&state_after(events.clone())),
        vec![Next::FailRun {
            step_id: "b".into(),
            error: failure(),
        }]
    );
    RunTest::with(())
        .given(events)
        .when(WorkflowRunCommand::SucceedRun { at: at(5) })
        .then_expect_error(WorkflowRunError::FailureUnhandled("b".into()));
}

/// A chain of `n` steps where each step depends on a random subset of earlier ones; some
/// are approval steps, some have a condition on their first dependency (one that handles
/// its failure: runs only then, or always; or one that reads its output and handles
/// nothing). With each step, whether it succeeds (a task's result, an approval).
fn random_dag() -> impl Strategy<Value = (WorkflowDefinition, Vec<bool>)> {
    (2usize..8)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n),
                proptest::collection::vec(any::<bool>(), n),
                proptest::collection::vec(any::<bool>(), n),
                proptest::collection::vec(0u8..4, n),
            )
        })
        .prop_map(|(edges, outcomes, approvals, conditions)| {
            let steps: Vec<Value> = (0..edges.len())
                .map(|i| {
                    let deps: Vec<String> = (0..i)
                        .filter(|j| edges[i][*j])
                        .map(|j| format!("s{j}"))
                        .collect();
                    let mut step = if approvals[i] {
                        json!({"id": format!("s{i}"), "depends_on": deps,
                               "approval": {"prompt": "ok?", "timeout_secs": 5}})
                    } else {
                        json!({"id": format!("s{i}"), "capability": "x.y", "depends_on": deps})
                    };
                    if let Some(first) = deps.first() {
                        let condition = match conditions[i] {
                            1 => {
                                json!({"==": [{"var": format!("steps.{first}.status")}, "failed"]})
                            }
                            2 => json!({"!==": [{"var": [format!("steps.{first}"), null]}, null]}),
                            3 => json!({"!==": [{"var": format!("steps.{first}.output")}, -1]}),
                            _ => Value::Null,
                        };
                        if !condition.is_null() {
                            step["condition"] = condition;
                        }
                    }
                    step
                })
                .collect();
            (definition(json!({"name": "p", "steps": steps})), outcomes)
        })
}

/// The event that carries out `action` (as the driver's command would record it).
fn carried_out(run: &WorkflowRun, action: Next) -> WorkflowRunEvent {
    let command = match action {
        Next::Start { step_id, .. } => WorkflowRunCommand::StartStep {
            step_id,
            task_id: task_id(1),
            at: at(3),
        },
        Next::Skip { step_id, reason } => WorkflowRunCommand::SkipStep {
            step_id,
            reason,
            at: at(3),
        },
        Next::AwaitApproval { step_id } => WorkflowRunCommand::AwaitApproval { step_id, at: at(3) },
        Next::FailStep { step_id, error } => WorkflowRunCommand::FailStep {
            step_id,
            error,
            attempt: 0,
            at: at(3),
        },
        Next::FailRun { step_id, error } => WorkflowRunCommand::FailRun {
            step_id,
            error,
            at: at(3),
        },
        Next::Succeed => WorkflowRunCommand::SucceedRun { at: at(3) },
    };
    decide(run.state(), command).unwrap()
}

proptest! {
    /// Driving a run by `next` until it says nothing more ends it, starts (or makes wait)
    /// each step at most once, and ends it failed exactly when a started step failed (a
    /// task's failure, a rejection, a time-out) that no step handles; a run that succeeds
    /// has every step settled. A stale repeat of any decision — the second node's — is
    /// refused.
    #[test]
    fn driving_a_run_by_next_ends_it((definition, outcomes) in random_dag()) {
        let mut run = WorkflowRun::default();
        run.apply(started(definition));
        let mut starts = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..100 {
            let state = run.state().unwrap().clone();
            let mut actions = next(&state);
            if actions.is_empty() {
                // Running steps finish, as their tasks would; waiting ones are decided
                // (an approval, a rejection or a time-out).
                let open: Vec<(String, StepStatus)> = state.steps.iter()
                    .filter(|(_, s)| matches!(s.status, StepStatus::Running | StepStatus::WaitingApproval))
                    .map(|(id, s)| (id.clone(), s.status)).collect();
                if open.is_empty() { break; }
                for (id, status) in open {
                    let index: usize = id[1..].parse().unwrap();
                    let event = match (status, outcomes[index]) {
                        (StepStatus::Running, true) => step_succeeded(&id, json!(index)),
                        (StepStatus::Running, false) => WorkflowRunEvent::StepFailed(WorkflowStepFailed {
                            step_id: id.clone(), error: failure(), attempt: 1, at: at(2),
                        }),
                        (_, succeeds) => {
                            let command = if succeeds {
                                WorkflowRunCommand::DecideApproval {
                                    step_id: id.clone(), decision: ApprovalDecision::Approve,
                                    data: json!(index), decided_by: person(), at: at(4),
                                }
                            } else if index % 2 == 0 {
                                WorkflowRunCommand::DecideApproval {
                                    step_id: id.clone(), decision: ApprovalDecision::Reject,
                                    data: Value::Null, decided_by: person(), at: at(4),
                                }
                            } else {
                                WorkflowRunCommand::TimeOutApproval { step_id: id.clone(), at: at(8) }
                            };
                            let event = decide(run.state(), command.clone()).unwrap();
                            let mut after = run.clone();
                            after.apply(event.clone());
                            prop_assert!(decide(after.state(), command).is_err());
                            event
                        }
                    };
                    run.apply(event);
                }
                continue;
            }
            for action in actions.drain(..) {
                if let Next::Start { step_id, .. } | Next::AwaitApproval { step_id } = &action {
                    *starts.entry(step_id.clone()).or_default() += 1;
                }
                let event = carried_out(&run, action.clone());
                run.apply(event);
                if !matches!(action, Next::FailRun { .. } | Next::Succeed) {
                    let repeat = match action {
                        Next::Start { step_id, .. } => WorkflowRunCommand::StartStep {
                            step_id, task_id: task_id(1), at: at(3),
                        },
                        Next::AwaitApproval { step_id } => WorkflowRunCommand::AwaitApproval {
                            step_id, at: at(3),
                        },
                        Next::Skip { step_id, reason } => WorkflowRunCommand::SkipStep {
                            step_id, reason, at: at(3),
                        },
                        other => unreachable!("{other:?}"),
                    };
                    let refused = decide(run.state(), repeat).is_err();
                    prop_assert!(refused);
                }
            }
        }
        let state = run.state().unwrap();
        prop_assert!(state.status != RunStatus::Running);
        prop_assert!(starts.values().all(|n| *n == 1));
        let unhandled_failed = starts.keys().any(|id| {
            !outcomes[id[1..].parse::<usize>().unwrap()] && !state.definition.failure_is_handled(id)
        });
        prop_assert_eq!(state.status == RunStatus::Failed, unhandled_failed);
        if state.status == RunStatus::Succeeded {
            prop_assert!(state.steps.keys().all(|id| state.is_settled(id)));
        }
    }
}
