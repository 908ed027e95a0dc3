//! Workflows beyond the happy DAG, over HTTP on both backends: approval steps (approve,
//! reject, time-out, misdirected signals), YAML definitions, a run's history, ETags, a
//! step retried until it succeeds, and a run that survives a SIGKILL of the server.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Backend, TestApp, TestDb};
use crate::workflows::{
    create_workflow, execute, lease_one, register_agent, report, run_view, send, succeed, wait_run,
};

/// draft (a task) → ok (an approval) → publish (a task templated from ok's output).
fn approve_then_publish(timeout_secs: Option<u64>) -> Value {
    let mut approval = json!({"prompt": "Publish the draft?"});
    if let Some(timeout) = timeout_secs {
        approval["timeout_secs"] = json!(timeout);
    }
    json!({
        "name": "approve then publish",
        "steps": [
            {"id": "draft", "capability": "x.run", "input": {"text": "write"}},
            {"id": "ok", "depends_on": ["draft"], "approval": approval},
            {"id": "publish", "capability": "x.run", "depends_on": ["ok"],
             "input": {"note": "{{steps.ok.output.note}}", "all": "{{steps.ok.output}}"}},
        ],
    })
}

async fn signal(
    app: &TestApp,
    client: &reqwest::Client,
    run: &str,
    body: Value,
) -> (StatusCode, Value) {
    send(
        client
            .post(app.url(&format!("/api/workflow-runs/{run}/signals")))
            .json(&body),
    )
    .await
}

async fn run_events(client: &reqwest::Client, app: &TestApp, run: &str) -> (StatusCode, Value) {
    send(client.get(app.url(&format!("/api/workflow-runs/{run}/events")))).await
}

/// Runs `draft` and waits until `ok` waits for its decision.
async fn until_waiting(app: &TestApp, agent: &str, run: &str) -> Value {
    let draft = lease_one(app, agent).await;
    assert_eq!(draft["input"], json!({"text": "write"}));
    succeed(app, &draft, json!({"words": 3})).await;
    wait_run(app, run, |r| {
        r["steps"]["ok"]["status"] == "waiting_approval"
    })
    .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_approved_step_hands_its_data_downstream_and_the_decision_is_an_event(
    #[case] backend: Backend,
) {
    let mut app = spawn_app(backend).await;
    let owner = app.register_user().await;
    let stranger = app.register_user().await;
    app.client = owner.client.clone();
    let agent = register_agent(&app, json!(["x.run"])).await;
    let workflow = create_workflow(&app, approve_then_publish(Some(3600))).await;
    let run = execute(&app, &workflow, json!({})).await;

    let waiting = until_waiting(&app, &agent, &run).await;
    assert_eq!(waiting["status"], "running");
    assert_eq!(
        waiting["steps"]["ok"]["approval"]["prompt"],
        "Publish the draft?"
    );
    assert!(
        waiting["steps"]["ok"]["approval"]["deadline"].is_string(),
        "{waiting}"
    );
    assert_eq!(waiting["steps"]["publish"]["status"], "pending");
    // The run view (what `/status` lists) holds the waiting step too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed) = send(
            app.client
                .get(app.url(&format!("/api/workflows/{workflow}/status"))),
        )
        .await;
        if listed["runs"][0]["steps"]["ok"]["status"] == "waiting_approval" {
            assert_eq!(
                listed["runs"][0]["steps"]["ok"]["approval"]["prompt"],
                "Publish the draft?"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another user can neither decide nor read the history: the run does not exist for them.
    let (status, _) = signal(
        &app,
        &stranger.client,
        &run,
        json!({"step_id": "ok", "decision": "approve"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = run_events(&stranger.client, &app, &run).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Misdirected signals change nothing.
    for (body, expected, code) in [
        (
            json!({"step_id": "nope", "decision": "approve"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "workflow_run.unknown_step",
        ),
        (
            json!({"step_id": "draft", "decision": "approve"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "workflow_run.not_an_approval",
        ),
    ] {
        let (status, problem) = signal(&app, &app.client, &run, body).await;
        assert_eq!(status, expected, "{problem}");
        assert_eq!(problem["code"], code, "{problem}");
    }
    let (status, problem) = signal(
        &app,
        &app.client,
        &run,
        json!({"step_id": "ok", "decision": "maybe"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "decision", "{problem}");
    assert_eq!(
        run_view(&app, &run).await["steps"]["ok"]["status"],
        "waiting_approval"
    );

    let (status, approved) = signal(
        &app,
        &app.client,
        &run,
        json!({"step_id": "ok", "decision": "approve", "data": {"note": "ship it"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["steps"]["ok"]["status"], "succeeded");
    assert_eq!(
        approved["steps"]["ok"]["output"],
        json!({"note": "ship it"})
    );
    // Decided once: a second decision is stale.
    let (status, problem) = signal(
        &app,
        &app.client,
        &run,
        json!({"step_id": "ok", "decision": "reject"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "workflow_run.step_not_waiting");

    let publish = lease_one(&app, &agent).await;
    assert_eq!(
        publish["input"],
        json!({"note": "ship it", "all": {"note": "ship it"}})
    );
    succeed(&app, &publish, json!({"url": "https://example.com/post"})).await;
    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let (status, problem) = signal(
        &app,
        &app.client,
        &run,
        json!({"step_id": "ok", "decision": "approve"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "workflow_run.finished");

    // The history names who decided and when, in the task history's shape.
    let (status, events) = run_events(&app.client, &app, &run).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let events = events.as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "WorkflowRunStarted",
            "WorkflowStepStarted",
            "WorkflowStepSucceeded",
            "WorkflowApprovalRequested",
            "WorkflowApprovalDecided",
            "WorkflowStepStarted",
            "WorkflowStepSucceeded",
            "WorkflowRunSucceeded",
        ]
    );
    let decided = &events[4];
    assert_eq!(decided["aggregate_type"], "workflow_run");
    assert_eq!(decided["aggregate_id"], run.as_str());
    assert_eq!(decided["payload"]["decided_by"], owner.id.as_str());
    assert_eq!(decided["payload"]["decision"], "approve");
    assert!(decided["payload"]["at"].is_string());
    assert_eq!(decided["metadata"]["actor"], format!("user:{}", owner.id));
    assert!(decided["hash"].is_string());
    // Paged like every history.
    let (status, page) = send(app.client.get(app.url(&format!(
        "/api/workflow-runs/{run}/events?after_sequence=3&limit=2"
    ))))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page[0]["event_type"], "WorkflowApprovalRequested");
    assert_eq!(page.as_array().unwrap().len(), 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_rejected_approval_fails_the_run_with_the_rejection(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.run"])).await;
    let workflow = create_workflow(&app, approve_then_publish(None)).await;
    let run = execute(&app, &workflow, json!({})).await;
    let waiting = until_waiting(&app, &agent, &run).await;
    assert_eq!(waiting["steps"]["ok"]["approval"]["deadline"], Value::Null);

    let (status, rejected) = signal(
        &app,
        &app.client,
        &run,
        json!({"step_id": "ok", "decision": "reject", "data": {"why": "typos"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["step_id"], "ok");
    assert_eq!(done["error"]["error"]["code"], "approval_rejected");
    assert_eq!(
        done["steps"]["ok"]["error"]["details"],
        json!({"why": "typos"})
    );
    assert_eq!(done["steps"]["publish"]["status"], "pending");
    assert_eq!(done["steps"]["publish"]["task_id"], Value::Null);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_approval_with_no_decision_times_out_once(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.run"])).await;
    let workflow = create_workflow(&app, approve_then_publish(Some(1))).await;
    let run = execute(&app, &workflow, json!({})).await;
    let draft = lease_one(&app, &agent).await;
    succeed(&app, &draft, json!({})).await;

    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["steps"]["ok"]["status"], "failed");
    assert_eq!(done["steps"]["ok"]["error"]["code"], "approval_timed_out");
    assert_eq!(done["error"]["error"]["code"], "approval_timed_out");
    let (status, problem) = signal(
        &app,
        &app.client,
        &run,
        json!({"step_id": "ok", "decision": "approve"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (_, events) = run_events(&app.client, &app, &run).await;
    let timed_out = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "WorkflowApprovalTimedOut")
        .count();
    assert_eq!(timed_out, 1, "{events}");
}

/// Two nodes on one PostgreSQL both drive the run: each approval still times out once (the
/// second node's time-out is refused by the run).
#[tokio::test]
async fn approvals_time_out_once_with_two_nodes() {
    let app = spawn_app(Backend::Postgres).await.signed_in().await;
    let (_other, _stop) = app.second_node(|_| {}).await;
    let steps: Vec<Value> = (0..4)
        .map(|n| json!({"id": format!("ok{n}"), "approval": {"prompt": "yes?", "timeout_secs": 1}}))
        .collect();
    let workflow = create_workflow(&app, json!({"name": "nods", "steps": steps})).await;
    let run = execute(&app, &workflow, json!({})).await;
    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["error"]["code"], "approval_timed_out");
    // A finished run takes no more events: its history is final.
    let (_, events) = run_events(&app.client, &app, &run).await;
    let count = |event_type: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == event_type)
            .count()
    };
    assert_eq!(count("WorkflowApprovalRequested"), 4, "{events}");
    assert!(count("WorkflowApprovalTimedOut") >= 1, "{events}");
    for n in 0..4 {
        let timeouts = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["event_type"] == "WorkflowApprovalTimedOut"
                    && e["payload"]["step_id"] == format!("ok{n}")
            })
            .count();
        assert!(timeouts <= 1, "ok{n} timed out {timeouts} times: {events}");
    }
    let failed = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "WorkflowRunFailed")
        .count();
    assert_eq!(failed, 1);
}

async fn post_yaml(app: &TestApp, content_type: &str, body: &str) -> (StatusCode, Value) {
    send(
        app.client
            .post(app.url("/api/workflows"))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_owned()),
    )
    .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn yaml_definitions_are_checked_like_json_and_run(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;

    let cycle = "name: cycle\nsteps:\n  - id: a\n    capability: x.run\n    depends_on: [b]\n  - id: b\n    capability: x.run\n    depends_on: [a]\n";
    let (status, problem) = post_yaml(&app, "application/yaml", cycle).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let text = problem.to_string();
    assert!(
        text.contains("a → b → a") || text.contains("b → a → b"),
        "{problem}"
    );

    let dangling = "name: dangling\nsteps:\n  - id: a\n    capability: x.run\n  - id: b\n    capability: x.run\n    depends_on: [a]\n  - id: c\n    capability: x.run\n    depends_on: [ghost]\n";
    let (status, problem) = post_yaml(&app, "application/x-yaml", dangling).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(
        problem["errors"][0]["field"], "steps[2].depends_on[0]",
        "{problem}"
    );

    let (status, problem) = post_yaml(&app, "text/yaml", "name: [unclosed\nsteps: {").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["status"], 400);
    let (status, _) = post_yaml(&app, "text/plain", "name: x").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The body limit holds for YAML too, and neither an alias bomb nor deep nesting gets
    // past the parser's limits.
    let big = format!(
        "name: big\ndescription: {}\nsteps: []\n",
        "x".repeat(3 * 1024 * 1024)
    );
    let (status, _) = post_yaml(&app, "application/yaml", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        bomb.push_str(&format!("{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"));
    }
    let (status, problem) = post_yaml(&app, "application/yaml", &bomb).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let deep = format!(
        "name: deep\nsteps: []\ndescription: {}{}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let (status, problem) = post_yaml(&app, "application/yaml", &deep).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    // A wrong type is named like in JSON.
    let (status, problem) = post_yaml(&app, "application/yaml", "name: x\nsteps: 3\n").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "steps", "{problem}");
    let (_, list) = send(app.client.get(app.url("/api/workflows"))).await;
    assert_eq!(list["items"], json!([]), "nothing was created");

    let good = r#"
name: greet
params:
  who: {type: string, default: world}
steps:
  - id: hello
    capability: x.run
    input:
      text: "hello {{params.who}}"
  - id: bye
    capability: x.run
    depends_on: [hello]
    input:
      heard: "{{steps.hello.output.echo}}"
"#;
    let (status, created) = post_yaml(&app, "application/yaml; charset=utf-8", good).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["steps"][1]["depends_on"], json!(["hello"]));
    let workflow = created["id"].as_str().unwrap().to_owned();
    let (status, updated) = send(
        app.client
            .put(app.url(&format!("/api/workflows/{workflow}")))
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(good.replace("name: greet", "name: greet again")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["name"], "greet again");

    let agent = register_agent(&app, json!(["x.run"])).await;
    let run = execute(&app, &workflow, json!({})).await;
    let hello = lease_one(&app, &agent).await;
    assert_eq!(hello["input"], json!({"text": "hello world"}));
    succeed(&app, &hello, json!({"echo": "hi"})).await;
    let bye = lease_one(&app, &agent).await;
    assert_eq!(bye["input"], json!({"heard": "hi"}));
    succeed(&app, &bye, json!({})).await;
    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

fn etag(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::ETAG)
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_owned()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn workflows_and_runs_carry_etags_and_a_stale_if_match_is_refused(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.register_user().await;
    let stranger = app.register_user().await;
    let definition = json!({"name": "one", "steps": [{"id": "a", "capability": "x.run"}]});
    let created = owner
        .client
        .post(app.url("/api/workflows"))
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(etag(&created), "\"1\"");
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = app.url(&format!("/api/workflows/{id}"));
    let read = owner.client.get(&url).send().await.unwrap();
    assert_eq!(etag(&read), "\"1\"");

    // A stranger's If-Match, stale or not, is the same 404 as a missing workflow.
    let foreign = stranger
        .client
        .put(&url)
        .header(reqwest::header::IF_MATCH, "\"1\"")
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    let updated = owner
        .client
        .put(&url)
        .header(reqwest::header::IF_MATCH, "\"1\"")
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    assert_eq!(etag(&updated), "\"2\"");
    let stale = owner
        .client
        .put(&url)
        .header(reqwest::header::IF_MATCH, "\"1\"")
        .json(&definition)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let read = owner.client.get(&url).send().await.unwrap();
    assert_eq!(etag(&read), "\"2\"");
    assert_eq!(read.json::<Value>().await.unwrap()["version"], 2);

    let executed = owner
        .client
        .post(app.url(&format!("/api/workflows/{id}/execute")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(executed.status(), StatusCode::ACCEPTED);
    assert_eq!(etag(&executed), "\"1\"");
    let run = executed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = owner
        .client
        .get(app.url(&format!("/api/workflow-runs/{run}")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let version: usize = etag(&read).trim_matches('"').parse().unwrap();
    assert!(version >= 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_failing_step_is_retried_and_the_run_succeeds_with_the_attempt_recorded(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register_agent(&app, json!(["x.flaky", "x.run"])).await;
    let workflow = create_workflow(
        &app,
        json!({
            "name": "flaky",
            "steps": [
                {"id": "flaky", "capability": "x.flaky", "input": {"n": 1}, "max_attempts": 3},
                {"id": "after", "capability": "x.run", "depends_on": ["flaky"],
                 "input": {"got": "{{steps.flaky.output.ok}}"}},
            ],
        }),
    )
    .await;
    let run = execute(&app, &workflow, json!({})).await;

    // The in-test agent fails the first attempt and succeeds the second.
    let first = lease_one(&app, &agent).await;
    assert_eq!(first["capability"], "x.flaky");
    assert_eq!(first["attempt"], 1);
    report(
        &app,
        &first,
        json!({"status": "failed", "error": {"message": "flaked", "code": "flaky"}}),
    )
    .await;
    let retried = wait_run(&app, &run, |r| r["steps"]["flaky"]["status"] == "running").await;
    assert_eq!(
        retried["status"], "running",
        "a retryable failure is not the step's end"
    );
    let second = lease_one(&app, &agent).await;
    assert_eq!(second["id"], first["id"], "the retry is the same task");
    assert_eq!(second["attempt"], 2);
    succeed(&app, &second, json!({"ok": true})).await;

    let after = lease_one(&app, &agent).await;
    assert_eq!(after["input"], json!({"got": true}));
    succeed(&app, &after, json!({})).await;
    let done = wait_run(&app, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"]["flaky"]["attempt"], 2);
    assert_eq!(done["steps"]["flaky"]["error"], Value::Null);
    assert_eq!(done["steps"]["after"]["attempt"], 1);
}

/// Sends the request until a server answers it (it may be restarting).
async fn answered(request: impl Fn() -> reqwest::RequestBuilder) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = request().send().await {
            if !response.status().is_server_error() {
                let status = response.status();
                let text = response.text().await.unwrap();
                return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
            }
        }
        assert!(Instant::now() < deadline, "the server never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Against the real binary: `client` leases one task of `agent`, waiting for one.
async fn lease_from(client: &reqwest::Client, base: &str, agent: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = answered(|| {
            client
                .post(format!("{base}/api/agents/{agent}/lease"))
                .json(&json!({"max_tasks": 1}))
        })
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(task) = body["tasks"].as_array().and_then(|t| t.first()) {
            return task.clone();
        }
        assert!(Instant::now() < deadline, "no task became leasable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn succeed_on(client: &reqwest::Client, base: &str, task: &Value, output: Value) {
    let id = task["id"].as_str().unwrap();
    let (status, body) = answered(|| {
        client
            .patch(format!("{base}/api/tasks/{id}"))
            .json(&json!({"status": "succeeded", "output": output, "lease_id": task["lease_id"]}))
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn run_on(
    client: &reqwest::Client,
    base: &str,
    run: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) =
            answered(|| client.get(format!("{base}/api/workflow-runs/{run}"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "the run never got there: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server is killed twice in the middle of a run — after a step's result was accepted,
/// and while an approval waits — and the run finishes after each restart with every step
/// started exactly once.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_run_survives_sigkill_of_the_server_and_runs_each_step_once(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = crate::crash::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = crate::crash::start(&db, port).await;
    let registered: Value = reqwest::Client::new()
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = crate::helpers::bearer_client(registered["access_token"].as_str().unwrap());
    let (status, agent) = answered(|| {
        client.post(format!("{base}/api/agents/register")).json(&json!({
            "name": "crash agent", "kind": "remote", "capabilities": ["x.run"], "max_concurrency": 4,
        }))
    })
    .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().unwrap().to_owned();
    let (status, workflow) = answered(|| {
        client.post(format!("{base}/api/workflows")).json(&json!({
            "name": "three and a nod",
            "steps": [
                {"id": "a", "capability": "x.run", "input": {"n": 1}},
                {"id": "b", "capability": "x.run", "depends_on": ["a"],
                 "input": {"from_a": "{{steps.a.output.v}}"}},
                {"id": "ok", "depends_on": ["b"], "approval": {"prompt": "go on?", "timeout_secs": 3600}},
                {"id": "c", "capability": "x.run", "depends_on": ["ok"],
                 "input": {"from_ok": "{{steps.ok.output.v}}"}},
            ],
        }))
    })
    .await;
    assert_eq!(status, StatusCode::CREATED, "{workflow}");
    let workflow = workflow["id"].as_str().unwrap().to_owned();
    let (status, run) = answered(|| {
        client
            .post(format!("{base}/api/workflows/{workflow}/execute"))
            .json(&json!({}))
    })
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run = run["id"].as_str().unwrap().to_owned();

    let a = lease_from(&client, &base, &agent).await;
    succeed_on(&client, &base, &a, json!({"v": "A"})).await;
    // Killed right after the result: whether or not `b` was started, it starts once.
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    let mut server = crate::crash::start(&db, port).await;

    let b = lease_from(&client, &base, &agent).await;
    assert_eq!(b["input"], json!({"from_a": "A"}));
    succeed_on(&client, &base, &b, json!({})).await;
    run_on(&client, &base, &run, |r| {
        r["steps"]["ok"]["status"] == "waiting_approval"
    })
    .await;
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    let mut server = crate::crash::start(&db, port).await;

    let (status, body) = answered(|| {
        client
            .post(format!("{base}/api/workflow-runs/{run}/signals"))
            .json(&json!({"step_id": "ok", "decision": "approve", "data": {"v": "yes"}}))
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = lease_from(&client, &base, &agent).await;
    assert_eq!(c["input"], json!({"from_ok": "yes"}));
    succeed_on(&client, &base, &c, json!({})).await;
    let done = run_on(&client, &base, &run, |r| r["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let (_, events) =
        answered(|| client.get(format!("{base}/api/workflow-runs/{run}/events"))).await;
    let events = events.as_array().unwrap();
    for step in ["a", "b", "c"] {
        let starts = events
            .iter()
            .filter(|e| e["event_type"] == "WorkflowStepStarted" && e["payload"]["step_id"] == step)
            .count();
        assert_eq!(starts, 1, "step {step} started {starts} times");
    }
    let (_, tasks) =
        answered(|| client.get(format!("{base}/api/tasks?workflow_run_id={run}"))).await;
    let tasks = tasks["items"].as_array().unwrap();
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    assert!(tasks
        .iter()
        .all(|t| t["attempt"] == 1 && t["status"] == "succeeded"));
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
}
