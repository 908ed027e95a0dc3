//! Workflows over HTTP: definitions, runs driven by the process manager while a test agent
//! leases and reports the step tasks, skips, failures, cancellation and isolation — on
//! both backends.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Backend, TestApp};

pub(crate) async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub(crate) async fn create_workflow(app: &TestApp, definition: Value) -> String {
    let (status, body) = send(app.client.post(app.url("/api/workflows")).json(&definition)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 1);
    body["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn execute(app: &TestApp, workflow: &str, params: Value) -> String {
    let (status, body) = send(
        app.client
            .post(app.url(&format!("/api/workflows/{workflow}/execute")))
            .json(&json!({"params": params})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "running");
    body["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn register_agent(app: &TestApp, capabilities: Value) -> String {
    let (status, body) = send(
        app.client
            .post(app.url("/api/agents/register"))
            .json(&json!({
                "name": "workflow agent",
                "kind": "remote",
                "capabilities": capabilities,
                "max_concurrency": 4,
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn run_view(app: &TestApp, run: &str) -> Value {
    let (status, body) = send(
        app.client
            .get(app.url(&format!("/api/workflow-runs/{run}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Reads the run until `done` holds; the driver works in the background.
pub(crate) async fn wait_run(app: &TestApp, run: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = run_view(app, run).await;
        if done(&current) {
            return current;
        }
        assert!(Instant::now() < deadline, "run never got there: {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Leases one task (waiting for one to be ready).
pub(crate) async fn lease_one(app: &TestApp, agent: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = send(
            app.client
                .post(app.url(&format!("/api/agents/{agent}/lease")))
                .json(&json!({"max_tasks": 1})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(task) = body["tasks"].as_array().and_then(|t| t.first()) {
            return task.clone();
        }
        assert!(Instant::now() < deadline, "no task became leasable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn report(app: &TestApp, task: &Value, body: Value) {
    let mut body = body;
    body["lease_id"] = task["lease_id"].clone();
    let id = task["id"].as_str().unwrap();
    let (status, answer) = send(
        app.client
            .patch(app.url(&format!("/api/tasks/{id}")))
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

pub(crate) async fn succeed(app: &TestApp, task: &Value, output: Value) {
    report(app, task, json!({"status": "succeeded", "output": output})).await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_linear_workflow_runs_to_success_with_outputs_templated_into_inputs(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["browser.navigate", "browser.extract"])).await;
    let workflow = create_workflow(
        &app,
        json!({
            "name": "open and extract",
            "params": {"url": {"type": "string"}, "depth": {"type": "integer", "default": 2}},
            "steps": [
                {"id": "open", "capability": "browser.navigate",
                 "input": {"url": "{{params.url}}", "depth": "{{params.depth}}"}},
                {"id": "extract", "capability": "browser.extract", "depends_on": ["open"],
                 "max_attempts": 1, "timeout_secs": 60,
                 "input": {"links": "{{steps.open.output.links}}",
                           "count": "{{steps.open.output.count}}",
                           "title": "page: {{steps.open.output.title}} ({{steps.open.output.count}})"}},
            ],
        }),
    )
    .await;
    let run = execute(&app, &workflow, json!({"url": "https://example.com"})).await;

    let first = lease_one(&app, &agent).await;
    assert_eq!(first["capability"], "browser.navigate");
    assert_eq!(
        first["input"],
        json!({"url": "https://example.com", "depth": 2})
    );
    assert_eq!(first["workflow_run_id"], run.as_str());
    let view = run_view(&app, &run).await;
    assert_eq!(view["steps"]["open"]["status"], "running");
    assert_eq!(view["steps"]["open"]["task_id"], first["id"]);
    assert_eq!(view["steps"]["extract"]["status"], "pending");
    succeed(
        &app,
        &first,
        json!({"links": ["https://a.example", "https://b.example"], "count": 2, "title": "Example"}),
    )
    .await;

    let second = lease_one(&app, &agent).await;
    assert_eq!(second["capability"], "browser.extract");
    assert_eq!(
        second["input"],
        json!({"links": ["https://a.example", "https://b.example"], "count": 2,
               "title": "page: Example (2)"})
    );
    assert_eq!(second["max_attempts"], 1);
    succeed(&app, &second, json!({"text": "hello"})).await;

    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"]["extract"]["output"], json!({"text": "hello"}));
    assert_eq!(done["steps"]["open"]["attempt"], 1);
    assert!(done["finished_at"].is_string());

    // The run's tasks are filterable by run.
    let (_, tasks) = send(
        app.client
            .get(app.url(&format!("/api/tasks?workflow_run_id={run}"))),
    )
    .await;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 2, "{tasks}");
    // Its history is its events, started first.
    let (_, status) = send(
        app.client
            .get(app.url(&format!("/api/workflows/{workflow}/status"))),
    )
    .await;
    assert_eq!(status["runs"][0]["id"], run.as_str());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_false_condition_skips_its_step_and_the_steps_that_depend_only_on_it(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.run"])).await;
    let workflow = create_workflow(
        &app,
        json!({
            "name": "diamond",
            "steps": [
                {"id": "a", "capability": "x.run", "input": {}},
                {"id": "b", "capability": "x.run", "depends_on": ["a"], "input": {},
                 "condition": {"==": [{"var": "steps.a.output.go"}, true]}},
                {"id": "b2", "capability": "x.run", "depends_on": ["b"], "input": {}},
                {"id": "c", "capability": "x.run", "depends_on": ["a"], "input": {}},
                {"id": "d", "capability": "x.run", "depends_on": ["b2", "c"],
                 "input": {"from_c": "{{steps.c.output.n}}"}},
            ],
        }),
    )
    .await;
    let run = execute(&app, &workflow, json!({})).await;
    let a = lease_one(&app, &agent).await;
    succeed(&app, &a, json!({"go": false})).await;
    let c = lease_one(&app, &agent).await;
    let view = wait_run(&app, &run, |r| r["steps"]["b2"]["status"] == "skipped").await;
    assert_eq!(view["steps"]["b"]["status"], "skipped");
    assert_eq!(view["steps"]["b"]["task_id"], Value::Null);
    assert_eq!(view["steps"]["c"]["status"], "running");
    assert_eq!(view["steps"]["d"]["status"], "pending");
    succeed(&app, &c, json!({"n": 7})).await;
    let d = lease_one(&app, &agent).await;
    assert_eq!(d["input"], json!({"from_c": 7}));
    succeed(&app, &d, json!(null)).await;
    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, tasks) = send(
        app.client
            .get(app.url(&format!("/api/tasks?workflow_run_id={run}"))),
    )
    .await;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 3, "{tasks}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_step_failing_for_good_fails_the_run_with_its_error(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.run"])).await;
    let workflow = create_workflow(
        &app,
        json!({
            "name": "fails",
            "steps": [
                {"id": "a", "capability": "x.run", "input": {}, "max_attempts": 1},
                {"id": "b", "capability": "x.run", "depends_on": ["a"], "input": {}},
            ],
        }),
    )
    .await;
    let run = execute(&app, &workflow, json!({})).await;
    let a = lease_one(&app, &agent).await;
    report(
        &app,
        &a,
        json!({"status": "failed", "error": {"message": "page not found", "code": "http_404"}}),
    )
    .await;
    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["step_id"], "a");
    assert_eq!(done["error"]["error"]["message"], "page not found");
    assert_eq!(done["steps"]["a"]["status"], "failed");
    assert_eq!(done["steps"]["b"]["status"], "pending");
    assert_eq!(done["steps"]["b"]["task_id"], Value::Null);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn cancelling_a_run_cancels_its_open_tasks(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let workflow = create_workflow(
        &app,
        json!({
            "name": "fan out",
            "steps": [
                {"id": "a", "capability": "x.run", "input": {}},
                {"id": "b", "capability": "x.run", "input": {}},
                {"id": "c", "capability": "x.run", "depends_on": ["a", "b"], "input": {}},
            ],
        }),
    )
    .await;
    let run = execute(&app, &workflow, json!({})).await;
    let running = wait_run(&app, &run, |r| {
        r["steps"]["a"]["status"] == "running" && r["steps"]["b"]["status"] == "running"
    })
    .await;
    let (status, cancelled) = send(
        app.client
            .delete(app.url(&format!("/api/workflow-runs/{run}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    for step in ["a", "b", "c"] {
        assert_eq!(cancelled["steps"][step]["status"], "cancelled");
    }
    for step in ["a", "b"] {
        let task = running["steps"][step]["task_id"].as_str().unwrap();
        let (_, task) = send(app.client.get(app.url(&format!("/api/tasks/{task}")))).await;
        assert_eq!(task["status"], "cancelled", "{task}");
    }
    // Again: the same answer, nothing new.
    let (status, again) = send(
        app.client
            .delete(app.url(&format!("/api/workflow-runs/{run}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["status"], "cancelled");
    // A cancelled run starts no more steps.
    let (_, tasks) = send(
        app.client
            .get(app.url(&format!("/api/tasks?workflow_run_id={run}"))),
    )
    .await;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 2, "{tasks}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn versions_archive_and_bad_definitions(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let one = json!({"name": "one", "steps": [{"id": "a", "capability": "x.run", "input": {}}]});
    let workflow = create_workflow(&app, one).await;
    let (status, updated) = send(
        app.client
            .put(app.url(&format!("/api/workflows/{workflow}")))
            .json(
                &json!({"name": "two", "steps": [{"id": "a", "capability": "x.run", "input": {}}]}),
            ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        (updated["version"].clone(), updated["name"].clone()),
        (json!(2), json!("two"))
    );
    let (_, old) = send(
        app.client
            .get(app.url(&format!("/api/workflows/{workflow}?version=1"))),
    )
    .await;
    assert_eq!(
        (old["version"].clone(), old["name"].clone()),
        (json!(1), json!("one"))
    );
    let (status, _) = send(
        app.client
            .get(app.url(&format!("/api/workflows/{workflow}?version=3"))),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, cycle) = send(app.client.post(app.url("/api/workflows")).json(&json!({
        "name": "cycle",
        "steps": [
            {"id": "a", "capability": "x.run", "depends_on": ["b"]},
            {"id": "b", "capability": "x.run", "depends_on": ["a"]},
        ],
    })))
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(cycle.to_string().contains("→"), "{cycle}");

    let (_, list) = send(app.client.get(app.url("/api/workflows"))).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (status, _) = send(
        app.client
            .delete(app.url(&format!("/api/workflows/{workflow}"))),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = send(app.client.get(app.url("/api/workflows"))).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let (status, _) = send(
        app.client
            .post(app.url(&format!("/api/workflows/{workflow}/execute")))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn another_user_gets_404_for_a_workflow_and_its_run(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // The first user is an admin: take two after it.
    let _admin = app.register_user().await;
    let a = app.register_user().await;
    let b = app.register_user().await;
    let (status, workflow) = send(a.client.post(app.url("/api/workflows")).json(&json!({
        "name": "mine", "params": {"n": {"type": "integer", "default": 1}},
        "steps": [{"id": "a", "capability": "x.run", "input": {}}],
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = workflow["id"].as_str().unwrap();
    let (status, run) = send(
        a.client
            .post(app.url(&format!("/api/workflows/{id}/execute")))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let run = run["id"].as_str().unwrap();
    let (status, bad) = send(
        a.client
            .post(app.url(&format!("/api/workflows/{id}/execute")))
            .json(&json!({"params": {"n": "one"}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.to_string().contains("params.n"), "{bad}");

    let definition = json!({"name": "x", "steps": [{"id": "a", "capability": "x.run"}]});
    for request in [
        b.client.get(app.url(&format!("/api/workflows/{id}"))),
        b.client
            .put(app.url(&format!("/api/workflows/{id}")))
            .json(&definition),
        b.client.delete(app.url(&format!("/api/workflows/{id}"))),
        b.client
            .post(app.url(&format!("/api/workflows/{id}/execute")))
            .json(&json!({})),
        b.client
            .get(app.url(&format!("/api/workflows/{id}/status"))),
        b.client.get(app.url(&format!("/api/workflow-runs/{run}"))),
        b.client
            .delete(app.url(&format!("/api/workflow-runs/{run}"))),
    ] {
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    let (_, list) = send(b.client.get(app.url("/api/workflows"))).await;
    assert_eq!(list["items"], json!([]));
    // Still A's, unchanged.
    let (status, mine) = send(a.client.get(app.url(&format!("/api/workflows/{id}")))).await;
    assert_eq!(
        (status, mine["version"].clone()),
        (StatusCode::OK, json!(1))
    );
    let (status, _) = send(a.client.get(app.url(&format!("/api/workflow-runs/{run}")))).await;
    assert_eq!(status, StatusCode::OK);
}
