//! Black-box tests of the HTTP API: a real server on port 0, spoken to over HTTP.

use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};

async fn create_task(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/tasks"))
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "application/problem+json",
        "errors are problem+json"
    );
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status.as_u16());
    for key in ["type", "title", "detail"] {
        assert!(body[key].is_string(), "problem.{key} missing: {body}");
    }
    body
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn create_read_cancel_and_history(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let response = create_task(
        &app,
        json!({
            "capability": "browser.navigate",
            "input": {"url": "https://example.com"},
            "priority": 8,
            "tags": ["demo"],
        }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()[ETAG], "\"1\"");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let task: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/tasks/{}", task["id"].as_str().unwrap())
    );
    assert_eq!(task["status"], "queued");
    assert_eq!(task["priority"], 8);
    assert_eq!(task["attempt"], 0);
    assert_eq!(task["max_attempts"], 3);
    assert_eq!(task["timeout_secs"], 300);
    assert_eq!(task["tags"], json!(["demo"]));
    assert_eq!(task["version"], 1);
    assert!(task["output"].is_null() && task["error"].is_null());
    let id = task["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let read = app.client.get(app.url(&location)).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()[ETAG], "\"1\"");
    let read: Value = read.json().await.unwrap();
    assert_eq!(read, task);

    // A stale If-Match is refused and changes nothing.
    let stale = app
        .client
        .delete(app.url(&location))
        .header(IF_MATCH, "\"7\"")
        .send()
        .await
        .unwrap();
    problem(stale, StatusCode::PRECONDITION_FAILED).await;

    let cancelled = app
        .client
        .delete(app.url(&location))
        .header(IF_MATCH, "\"1\"")
        .header("x-request-id", "req-cancel-1")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(cancelled.headers()["x-request-id"], "req-cancel-1");
    assert_eq!(cancelled.headers()[ETAG], "\"2\"");
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finished_at"].is_string());

    // Cancelling again is idempotent: same task, no new event.
    let again = app.client.delete(app.url(&location)).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()[ETAG], "\"2\"");

    let events: Value = app
        .client
        .get(app.url(&format!("{location}/events")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_type"], "TaskCreated");
    assert_eq!(events[1]["event_type"], "TaskCancelled");
    assert_eq!(events[0]["aggregate_type"], "task");
    assert_eq!(events[0]["aggregate_id"], id);
    assert_eq!(events[0]["sequence"], 1);
    assert_eq!(events[0]["event_version"], "1.0");
    assert_eq!(events[0]["payload"]["capability"], "browser.navigate");
    assert_eq!(events[1]["prev_hash"], events[0]["hash"]);
    assert_eq!(events[1]["metadata"]["request_id"], "req-cancel-1");
    assert_eq!(events[1]["metadata"]["correlation_id"], "req-cancel-1");
    assert!(events[0]["metadata"]["actor"]
        .as_str()
        .unwrap()
        .starts_with("user:"));
    assert!(events[0]["metadata"]["recorded_at"].is_string());
    assert!(events[0]["position"].as_i64().unwrap() < events[1]["position"].as_i64().unwrap());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_input_is_a_clear_problem_and_changes_nothing(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;

    let malformed = app
        .client
        .post(app.url("/api/tasks"))
        .header(CONTENT_TYPE, "application/json")
        .body("{\"capability\": ")
        .send()
        .await
        .unwrap();
    let body = problem(malformed, StatusCode::BAD_REQUEST).await;
    assert!(body["detail"].as_str().unwrap().contains("malformed JSON"));

    let invalid = create_task(
        &app,
        json!({"capability": "Not A Capability", "input": {}, "priority": 12, "timeout_secs": -1}),
    )
    .await;
    let body = problem(invalid, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["capability", "priority", "timeout_secs"]);

    let wrong_type = create_task(&app, json!({"capability": "a.b", "priority": "high"})).await;
    let body = problem(wrong_type, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "priority");

    let missing = create_task(&app, json!({"input": {}})).await;
    problem(missing, StatusCode::UNPROCESSABLE_ENTITY).await;

    let nul = create_task(
        &app,
        json!({"capability": "a.b", "input": {"text": "a\u{0}b"}}),
    )
    .await;
    let body = problem(nul, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "input.text");

    let deep = "[".repeat(5_000) + &"]".repeat(5_000);
    let deep = app
        .client
        .post(app.url("/api/tasks"))
        .header(CONTENT_TYPE, "application/json")
        .body(format!("{{\"capability\": \"a.b\", \"input\": {deep}}}"))
        .send()
        .await
        .unwrap();
    problem(deep, StatusCode::BAD_REQUEST).await;

    let not_json = app
        .client
        .post(app.url("/api/tasks"))
        .header(CONTENT_TYPE, "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    problem(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    let huge = "x".repeat(3 * 1024 * 1024);
    let too_large = create_task(&app, json!({"capability": "a.b", "input": {"blob": huge}})).await;
    problem(too_large, StatusCode::PAYLOAD_TOO_LARGE).await;

    for path in [
        "/api/tasks/not-a-uuid",
        "/api/tasks/0193a0a0-0000-7000-8000-000000000000",
    ] {
        let absent = app.client.get(app.url(path)).send().await.unwrap();
        problem(absent, StatusCode::NOT_FOUND).await;
        let absent = app.client.delete(app.url(path)).send().await.unwrap();
        problem(absent, StatusCode::NOT_FOUND).await;
        let absent = app
            .client
            .get(app.url(&format!("{path}/events")))
            .send()
            .await
            .unwrap();
        problem(absent, StatusCode::NOT_FOUND).await;
    }

    let unknown = app
        .client
        .get(app.url("/api/nothing-here"))
        .send()
        .await
        .unwrap();
    problem(unknown, StatusCode::NOT_FOUND).await;
    let wrong_method = app.client.put(app.url("/api/health")).send().await.unwrap();
    problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;

    // None of it reached the store.
    let status: Value = app
        .client
        .get(app.url("/api/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["queue_depth"], 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn health_status_and_request_ids(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let health = app.client.get(app.url("/api/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let generated = health.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok());
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    let echoed = app
        .client
        .get(app.url("/api/health"))
        .header("x-request-id", "client-chosen-id")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "client-chosen-id");

    create_task(
        &app,
        json!({"capability": "llm.chat", "input": {"messages": [{"role": "user", "content": "hi"}]}}),
    )
    .await;
    let status = app.client.get(app.url("/api/status")).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    let status: Value = status.json().await.unwrap();
    assert_eq!(status["store"]["ok"], true);
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(status["store"]["backend"], expected);
    assert!(status["store"]["latency_ms"].is_number());
    assert!(status["uptime_secs"].is_u64());
    assert_eq!(status["queue_depth"], 1);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn status_is_503_when_the_store_is_down() {
    let app = spawn_app(Backend::Postgres).await.signed_in().await;
    // Take the database away from under the running server.
    let name = app.db.url.rsplit('/').next().unwrap().to_owned();
    let admin = std::env::var("CHRONICLE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut connection)
        .await
        .unwrap();
    let status = app.client.get(app.url("/api/status")).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = status.json().await.unwrap();
    assert_eq!(body["store"]["ok"], false);
    let create = create_task(&app, json!({"capability": "a.b"})).await;
    assert!(create.status().is_server_error());
    let text = create.text().await.unwrap();
    assert!(
        !text.to_lowercase().contains("database \""),
        "no SQL detail leaks: {text}"
    );
    // The health check still answers: the process serves.
    let health = app.client.get(app.url("/api/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_users_task_is_not_found() {
    // A task owned by someone else (written straight through the bus) must be invisible.
    let mut app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    // The first user is an admin, who may see everything; act as the second.
    app.register_user().await;
    app.client = app.register_user().await.client;
    let store = app.db.store(Default::default()).await;
    let bus = chronicle::bus::CommandBus::new(store);
    let task_id = uuid::Uuid::now_v7();
    let spec = serde_json::from_value::<chronicle_commands::task::NewTaskRequest>(
        json!({"capability": "a.b"}),
    )
    .unwrap()
    .validate()
    .unwrap();
    bus.execute::<chronicle_aggregates::task::Task, chronicle::api::error::ApiError>(
        &task_id.to_string(),
        &chronicle::bus::CommandContext::default(),
        None,
        |_| {
            Ok(chronicle_aggregates::task::TaskCommand::CreateTask {
                task_id,
                owner_id: uuid::Uuid::now_v7(),
                spec: spec.clone(),
                workflow_run_id: None,
                at: chrono::Utc::now(),
            })
        },
    )
    .await
    .unwrap();
    let path = format!("/api/tasks/{task_id}");
    problem(
        app.client.get(app.url(&path)).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.client.delete(app.url(&path)).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.client
            .get(app.url(&format!("{path}/events")))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}
