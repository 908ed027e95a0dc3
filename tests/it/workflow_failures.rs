//! Failures a workflow handles, over HTTP on both backends: a step whose condition reads
//! the status of a step it depends on runs when that step fails — a rejected or timed-out
//! approval, a task that used up its attempts — and the run succeeds; without such a
//! condition the failure still fails the run.

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Backend, TestApp};
use crate::workflows::{
    create_workflow, execute, lease_one, register_agent, report, send, succeed, wait_run,
};

async fn signal(app: &TestApp, run: &str, body: Value) -> Value {
    let (status, answer) = send(
        app.client
            .post(app.url(&format!("/api/workflow-runs/{run}/signals")))
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// The tasks of the run, as `GET /api/tasks?workflow_run_id=` lists them.
async fn run_tasks(app: &TestApp, run: &str) -> Vec<Value> {
    let (status, tasks) = send(
        app.client
            .get(app.url(&format!("/api/tasks?workflow_run_id={run}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tasks}");
    tasks["items"].as_array().cloned().unwrap_or_default()
}

/// approve (an approval) → notify when it failed, publish (from its output) when it did not.
fn ask_then_publish_or_notify(timeout_secs: Option<u64>, handler: Option<Value>) -> Value {
    let mut approval = json!({"prompt": "Publish the post?"});
    if let Some(timeout) = timeout_secs {
        approval["timeout_secs"] = json!(timeout);
    }
    let mut notify = json!({"id": "notify", "capability": "x.notify", "depends_on": ["approve"],
                            "input": {"text": "the post was not published"}});
    if let Some(condition) = handler {
        notify["condition"] = condition;
    }
    json!({
        "name": "ask, publish or say why not",
        "steps": [
            {"id": "approve", "approval": approval},
            notify,
            {"id": "publish", "capability": "x.run", "depends_on": ["approve"],
             "input": {"note": "{{steps.approve.output.note}}"}},
            {"id": "announce", "capability": "x.run", "depends_on": ["publish"], "input": {}},
        ],
    })
}

fn on_failure() -> Value {
    json!({"==": [{"var": "steps.approve.status"}, "failed"]})
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_rejected_approval_with_a_handler_runs_the_handler_and_the_run_succeeds(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.run", "x.notify"])).await;
    let workflow =
        create_workflow(&app, ask_then_publish_or_notify(None, Some(on_failure()))).await;
    let run = execute(&app, &workflow, json!({})).await;
    wait_run(&app, &run, |r| {
        r["steps"]["approve"]["status"] == "waiting_approval"
    })
    .await;

    let rejected = signal(
        &app,
        &run,
        json!({"step_id": "approve", "decision": "reject", "data": {"why": "typos"}}),
    )
    .await;
    assert_eq!(rejected["steps"]["approve"]["status"], "failed");

    let notify = lease_one(&app, &agent).await;
    assert_eq!(notify["capability"], "x.notify", "{notify}");
    assert_eq!(
        notify["input"],
        json!({"text": "the post was not published"})
    );
    succeed(&app, &notify, json!({"sent": true})).await;

    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["error"], Value::Null, "{done}");
    // The failure stays visible in the run.
    assert_eq!(done["steps"]["approve"]["status"], "failed");
    assert_eq!(
        done["steps"]["approve"]["error"]["code"], "approval_rejected",
        "{done}"
    );
    assert_eq!(
        done["steps"]["approve"]["error"]["details"],
        json!({"why": "typos"})
    );
    assert_eq!(done["steps"]["notify"]["status"], "succeeded");
    assert_eq!(done["steps"]["notify"]["output"], json!({"sent": true}));
    // The step that needed the approval's output, and the one after it, never ran.
    for step in ["publish", "announce"] {
        assert_eq!(done["steps"][step]["status"], "skipped", "{done}");
        assert_eq!(done["steps"][step]["task_id"], Value::Null, "{done}");
    }
    let tasks = run_tasks(&app, &run).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["id"], notify["id"]);

    // The rule is in the API's description of a step.
    let (status, document) = send(app.client.get(app.url("/api/openapi.json"))).await;
    assert_eq!(status, StatusCode::OK);
    let step = &document["components"]["schemas"]["StepRequest"];
    let described = step["description"].as_str().unwrap_or_default();
    assert!(described.contains("A failure is handled"), "{step}");
    let condition = step["properties"]["condition"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(condition.contains("steps.<id>.status"), "{step}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_handler_is_skipped_when_the_approval_is_given(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.run", "x.notify"])).await;
    let workflow =
        create_workflow(&app, ask_then_publish_or_notify(None, Some(on_failure()))).await;
    let run = execute(&app, &workflow, json!({})).await;
    wait_run(&app, &run, |r| {
        r["steps"]["approve"]["status"] == "waiting_approval"
    })
    .await;
    signal(
        &app,
        &run,
        json!({"step_id": "approve", "decision": "approve", "data": {"note": "ship it"}}),
    )
    .await;
    let publish = lease_one(&app, &agent).await;
    assert_eq!(publish["capability"], "x.run", "{publish}");
    assert_eq!(publish["input"], json!({"note": "ship it"}));
    succeed(&app, &publish, json!({})).await;
    let announce = lease_one(&app, &agent).await;
    assert_eq!(announce["input"], json!({}));
    succeed(&app, &announce, json!({})).await;
    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"]["notify"]["status"], "skipped", "{done}");
    assert_eq!(done["steps"]["notify"]["task_id"], Value::Null);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_task_step_out_of_attempts_with_a_handler_runs_the_handler_and_the_run_succeeds(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.fetch", "x.run", "x.notify"])).await;
    let workflow = create_workflow(
        &app,
        json!({
            "name": "fetch or report",
            "steps": [
                {"id": "fetch", "capability": "x.fetch", "input": {"url": "https://example.com"},
                 "max_attempts": 2},
                {"id": "report", "capability": "x.notify", "depends_on": ["fetch"],
                 "condition": {"and": [
                     {"==": [{"var": "steps.fetch.status"}, "failed"]},
                     {"==": [{"var": "steps.fetch.error.code"}, "http_503"]},
                 ]},
                 "input": {"text": "the page could not be fetched"}},
                {"id": "summarise", "capability": "x.run", "depends_on": ["fetch"],
                 "input": {"text": "{{steps.fetch.output.text}}"}},
            ],
        }),
    )
    .await;
    let run = execute(&app, &workflow, json!({})).await;

    for attempt in 1..=2 {
        let fetch = lease_one(&app, &agent).await;
        assert_eq!(fetch["capability"], "x.fetch", "{fetch}");
        assert_eq!(fetch["attempt"], attempt);
        report(
            &app,
            &fetch,
            json!({"status": "failed", "error": {"message": "unavailable", "code": "http_503"}}),
        )
        .await;
    }
    let handler = lease_one(&app, &agent).await;
    assert_eq!(handler["capability"], "x.notify", "{handler}");
    assert_eq!(
        handler["input"],
        json!({"text": "the page could not be fetched"})
    );
    succeed(&app, &handler, json!({"sent": true})).await;

    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"]["fetch"]["status"], "failed");
    assert_eq!(done["steps"]["fetch"]["attempt"], 2);
    assert_eq!(done["steps"]["fetch"]["error"]["code"], "http_503");
    assert_eq!(done["steps"]["report"]["status"], "succeeded");
    assert_eq!(done["steps"]["summarise"]["status"], "skipped", "{done}");
    assert_eq!(run_tasks(&app, &run).await.len(), 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_rejected_approval_without_a_handler_still_fails_the_run(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.run", "x.notify"])).await;
    // `notify`'s condition reads the approval's output, not its status: it handles nothing.
    let workflow = create_workflow(
        &app,
        ask_then_publish_or_notify(
            None,
            Some(json!({"==": [{"var": "steps.approve.output.note"}, null]})),
        ),
    )
    .await;
    let run = execute(&app, &workflow, json!({})).await;
    wait_run(&app, &run, |r| {
        r["steps"]["approve"]["status"] == "waiting_approval"
    })
    .await;
    signal(
        &app,
        &run,
        json!({"step_id": "approve", "decision": "reject"}),
    )
    .await;

    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["step_id"], "approve");
    assert_eq!(done["error"]["error"]["code"], "approval_rejected");
    for step in ["notify", "publish", "announce"] {
        assert_eq!(done["steps"][step]["status"], "pending", "{done}");
    }
    assert!(run_tasks(&app, &run).await.is_empty());
    // Nothing was started for the agent.
    let (status, leased) = send(
        app.client
            .post(app.url(&format!("/api/agents/{agent}/lease")))
            .json(&json!({"max_tasks": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{leased}");
    assert_eq!(leased["tasks"], json!([]), "{leased}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_handler_on_a_timed_out_approval_runs_and_the_run_succeeds(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.run", "x.notify"])).await;
    let workflow = create_workflow(
        &app,
        ask_then_publish_or_notify(
            Some(1),
            Some(json!({"==": [{"var": "steps.approve.error.code"}, "approval_timed_out"]})),
        ),
    )
    .await;
    let run = execute(&app, &workflow, json!({})).await;

    let notify = lease_one(&app, &agent).await;
    assert_eq!(notify["capability"], "x.notify", "{notify}");
    let waited = wait_run(&app, &run, |r| r["steps"]["notify"]["status"] == "running").await;
    assert_eq!(waited["steps"]["approve"]["status"], "failed");
    assert_eq!(
        waited["steps"]["approve"]["error"]["code"],
        "approval_timed_out"
    );
    succeed(&app, &notify, json!({})).await;

    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"]["approve"]["status"], "failed");
    assert_eq!(done["steps"]["notify"]["status"], "succeeded");
    assert_eq!(done["steps"]["publish"]["status"], "skipped");
    assert_eq!(done["steps"]["announce"]["status"], "skipped");
}
