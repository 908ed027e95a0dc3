//! The built-in HTTP agent end to end: real local servers on loopback addresses, the real
//! server with its agent on a fresh database, tasks created over the API.
//!
//! Refused addresses other than loopback ones (10.0.0.1, 169.254.169.254) are IP literals
//! the guard refuses before any connection is tried; no packet leaves the machine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use base64::Engine;
use chronicle::app::Application;
use chronicle::bus::{CommandBus, CommandContext};
use chronicle::config::Settings;
use chronicle::process::http_agent::{self, agent_id};
use chronicle::read_side::ReadSide;
use chronicle_aggregates::task::{Task, TaskCommand, TaskStatus};
use chronicle_commands::task::NewTaskRequest;
use rstest::rstest;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{spawn_app_with, test_settings, Backend, TestApp, TestDb};

/// A local server that counts the requests it gets.
struct Target {
    address: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Target {
    /// Serves [`routes`] on `ip` (a loopback address) at a free port.
    async fn start(ip: &str) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let app = routes(hits.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[derive(Deserialize)]
struct To {
    to: String,
}

#[derive(Deserialize)]
struct Size {
    bytes: usize,
}

fn routes(hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route("/echo", any(echo))
        .route(
            "/teapot",
            get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
        )
        .route(
            "/binary",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    vec![0x89u8, 0xff, 0x00],
                )
            }),
        )
        .route(
            "/big",
            get(|Query(size): Query<Size>| async move { "x".repeat(size.bytes) }),
        )
        .route(
            "/big-stream",
            get(|Query(size): Query<Size>| async move {
                let chunks = (0..size.bytes / 512)
                    .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 512])));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route(
            "/redirect",
            get(|Query(to): Query<To>| async move { Redirect::to(&to.to) }),
        )
        .route("/loop", get(|| async { Redirect::to("/loop") }))
        .route("/hang", any(std::future::pending::<Response>))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    next.run(request).await
                }
            },
        ))
}

/// Answers with what it was sent.
async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Value::String(value.to_str().unwrap_or_default().to_owned()),
            )
        })
        .collect();
    (
        [("x-echo", "yes")],
        Json(json!({
            "method": method.as_str(),
            "uri": uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        })),
    )
}

async fn app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(backend, |settings| {
        settings.http_agent.enabled = true;
        configure(settings);
    })
    .await
    .signed_in()
    .await
}

/// Creates an `http.request` task as `client`; its id.
async fn create(app: &TestApp, client: &reqwest::Client, body: Value) -> String {
    let mut body = body;
    body["capability"] = json!("http.request");
    let response = client
        .post(app.url("/api/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let task: Value = response.json().await.unwrap();
    task["id"].as_str().unwrap().to_owned()
}

async fn read(app: &TestApp, path: &str) -> Value {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

/// Reads the task until it has ended; the agent works in the background.
async fn finished(app: &TestApp, task: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = read(app, &format!("/api/tasks/{task}")).await;
        if matches!(
            current["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return current;
        }
        assert!(Instant::now() < deadline, "task never ended: {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(app: &TestApp, input: Value) -> Value {
    let task = create(app, &app.client, json!({ "input": input })).await;
    finished(app, &task).await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_request_round_trips_for_any_user(#[case] backend: Backend) {
    let app = app_with(backend, |s| s.http_agent.allow_private = true).await;
    let target = Target::start("127.0.0.1").await;
    // A plain user's task: the built-in agent serves every user.
    let user = app.register_user().await;
    let task = create(
        &app,
        &user.client,
        json!({"input": {
            "method": "put",
            "url": target.url("/echo?q=1"),
            "headers": {"X-Test": "yes", "Authorization": "Bearer token"},
            "body": {"a": [1, 2]},
        }}),
    )
    .await;
    let done = finished(&app, &task).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["agent_id"], agent_id(0).to_string());
    let output = &done["output"];
    assert_eq!(output["status"], 200);
    assert_eq!(output["url"], target.url("/echo?q=1"));
    assert_eq!(output["headers"]["x-echo"], "yes");
    assert_eq!(output["headers"]["content-type"], "application/json");
    let echoed: Value = serde_json::from_str(output["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["uri"], "/echo?q=1");
    assert_eq!(echoed["headers"]["x-test"], "yes");
    assert_eq!(echoed["headers"]["authorization"], "Bearer token");
    assert_eq!(echoed["headers"]["content-type"], "application/json");
    assert_eq!(echoed["body"], r#"{"a":[1,2]}"#);

    // Any status is a result; a binary body comes as base64.
    let teapot = run(&app, json!({"url": target.url("/teapot")})).await;
    assert_eq!(teapot["status"], "succeeded");
    assert_eq!(teapot["output"]["status"], 418);
    assert_eq!(teapot["output"]["body"], "short and stout");
    let binary = run(&app, json!({"url": target.url("/binary")})).await;
    let encoded = binary["output"]["body_base64"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
        [0x89, 0xff, 0x00]
    );
    assert!(binary["output"].get("body").is_none());
    // A redirect to an allowed address is followed.
    let redirected = run(
        &app,
        json!({"url": target.url(&format!("/redirect?to={}", target.url("/echo")))}),
    )
    .await;
    assert_eq!(redirected["output"]["status"], 200);
    assert_eq!(redirected["output"]["url"], target.url("/echo"));

    let agent = read(&app, &format!("/api/agents/{}", agent_id(0))).await;
    assert_eq!(agent["kind"], "http");
    assert_eq!(agent["capabilities"], json!(["http.request"]));
    assert_eq!(agent["owner_id"], uuid::Uuid::nil().to_string());
    assert_eq!(agent["status"], "online");
    assert_eq!(agent["running"], 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn internal_addresses_are_refused_by_default(#[case] backend: Backend) {
    let app = app_with(backend, |_| {}).await;
    let v4 = Target::start("127.0.0.1").await;
    let v6 = Target::start("::1").await;
    let port = v4.address.port();
    let refused = [
        (v4.url("/echo"), "loopback"),
        (format!("http://localhost:{port}/echo"), "loopback"),
        (v6.url("/echo"), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{port}/echo"), "loopback"),
        (format!("http://2130706433:{port}/echo"), "loopback"),
        ("http://10.0.0.1/".to_owned(), "private"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local",
        ),
        ("http://[fd00::1]/".to_owned(), "unique-local"),
        ("http://100.64.0.1/".to_owned(), "shared (CGNAT)"),
    ];
    for (url, kind) in refused {
        let task = run(&app, json!({ "url": url })).await;
        assert_eq!(task["status"], "failed", "{url}: {task}");
        // Permanent: the first attempt is the last, with attempts left.
        assert_eq!(task["attempt"], 1, "{url}");
        assert_eq!(task["max_attempts"], 3, "{url}");
        assert_eq!(task["error"]["code"], "ssrf_blocked", "{url}");
        assert_eq!(task["error"]["details"]["kind"], kind, "{url}");
    }
    assert_eq!(
        v4.hits(),
        0,
        "no request may reach the IPv4 loopback server"
    );
    assert_eq!(
        v6.hits(),
        0,
        "no request may reach the IPv6 loopback server"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_redirect_to_a_refused_address_is_not_followed(#[case] backend: Backend) {
    // Only 127.0.0.1 is allowed: 127.0.0.2 and ::1 are loopback addresses the guard refuses.
    let app = app_with(backend, |s| {
        s.http_agent.allow_networks = vec!["127.0.0.1/32".into()];
    })
    .await;
    let allowed = Target::start("127.0.0.1").await;
    let forbidden = Target::start("127.0.0.2").await;
    let forbidden_v6 = Target::start("::1").await;
    for hop in [forbidden.url("/echo"), forbidden_v6.url("/echo")] {
        let url = allowed.url(&format!("/redirect?to={hop}"));
        let task = run(&app, json!({ "url": url })).await;
        assert_eq!(task["status"], "failed", "{task}");
        assert_eq!(task["attempt"], 1);
        assert_eq!(task["error"]["code"], "ssrf_blocked");
        assert_eq!(task["error"]["details"]["url"], url);
        assert_eq!(task["error"]["details"]["refused_url"], hop);
    }
    assert_eq!(allowed.hits(), 2);
    assert_eq!(forbidden.hits(), 0, "the redirect must not reach 127.0.0.2");
    assert_eq!(forbidden_v6.hits(), 0, "the redirect must not reach ::1");

    // Endless redirects stop after `max_redirects` (5) hops.
    let looping = run(&app, json!({"url": allowed.url("/loop")})).await;
    assert_eq!(looping["status"], "failed");
    assert_eq!(looping["error"]["code"], "redirect_refused");
    assert_eq!(allowed.hits(), 2 + 6);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_oversize_body_fails_for_good(#[case] backend: Backend) {
    let app = app_with(backend, |s| {
        s.http_agent.allow_private = true;
        s.http_agent.max_response_bytes = 4096;
    })
    .await;
    let target = Target::start("127.0.0.1").await;
    let fits = run(&app, json!({"url": target.url("/big?bytes=4096")})).await;
    assert_eq!(fits["status"], "succeeded");
    assert_eq!(fits["output"]["body"].as_str().unwrap().len(), 4096);
    // Announced by Content-Length, and streamed without one.
    for path in ["/big?bytes=4097", "/big-stream?bytes=65536"] {
        let task = run(&app, json!({ "url": target.url(path) })).await;
        assert_eq!(task["status"], "failed", "{path}: {task}");
        assert_eq!(task["attempt"], 1, "{path}");
        assert_eq!(task["error"]["code"], "response_too_large", "{path}");
        assert_eq!(task["error"]["details"]["max_response_bytes"], 4096);
        assert!(task["output"].is_null());
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_timeout_is_retried_per_policy(#[case] backend: Backend) {
    let app = app_with(backend, |s| s.http_agent.allow_private = true).await;
    let target = Target::start("127.0.0.1").await;
    let task = create(
        &app,
        &app.client,
        json!({
            "input": {"url": target.url("/hang"), "timeout_ms": 200},
            "max_attempts": 2,
            "retry": {"initial_backoff_ms": 0, "max_backoff_ms": 0},
        }),
    )
    .await;
    let done = finished(&app, &task).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["error"]["code"], "timeout");
    assert_eq!(target.hits(), 2, "one request per attempt");
    let events = read(&app, &format!("/api/tasks/{task}/events")).await;
    let failures: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "TaskAttemptFailed")
        .collect();
    assert_eq!(failures.len(), 2);
    assert!(failures[0]["payload"]["retry_at"].is_string(), "retried");
    assert!(
        failures[1]["payload"]["retry_at"].is_null(),
        "attempts used up"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn invalid_inputs_are_422_and_change_nothing(#[case] backend: Backend) {
    let app = app_with(backend, |_| {}).await;
    let cases = [
        (json!({}), "input.url"),
        (json!({"url": "ftp://example.com/file"}), "input.url"),
        (json!({"url": "not a url"}), "input.url"),
        (
            json!({"url": "https://example.com", "method": "BREW"}),
            "input.method",
        ),
        (
            json!({"url": "https://example.com", "timeout_ms": 0}),
            "input.timeout_ms",
        ),
        (
            json!({"url": "https://example.com", "headers": {"Host": "internal"}}),
            "input.headers.Host",
        ),
        (json!("https://example.com"), "input"),
    ];
    for (input, field) in cases {
        let response = app
            .client
            .post(app.url("/api/tasks"))
            .json(&json!({"capability": "http.request", "input": input}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{input}"
        );
        let problem: Value = response.json().await.unwrap();
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [field], "{input}");
    }
    let tasks = read(&app, "/api/tasks").await;
    assert!(tasks["items"].as_array().unwrap().is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_cancelled_request_frees_its_slot(#[case] backend: Backend) {
    let app = app_with(backend, |s| {
        s.http_agent.allow_private = true;
        s.http_agent.max_concurrency = 1;
    })
    .await;
    let target = Target::start("127.0.0.1").await;
    let hanging = create(
        &app,
        &app.client,
        json!({"input": {"url": target.url("/hang")}, "timeout_secs": 3}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read(&app, &format!("/api/tasks/{hanging}")).await["status"] != "running" {
        assert!(
            Instant::now() < deadline,
            "the agent never started the task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = app
        .client
        .delete(app.url(&format!("/api/tasks/{hanging}")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    // With one slot, the next task runs only once the cancelled request was dropped.
    let next = run(&app, json!({"url": target.url("/echo")})).await;
    assert_eq!(next["status"], "succeeded");
    assert_eq!(finished(&app, &hanging).await["status"], "cancelled");
}

fn settings_on(db: &TestDb, configure: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = test_settings(db);
    settings.http_agent.enabled = true;
    configure(&mut settings);
    settings
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_restarted_node_keeps_its_agent(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = Application::build(settings_on(&db, |_| {})).await.unwrap();
    assert_eq!(first.http_agent_id(), Some(agent_id(0)));
    drop(first);
    // A restart with another limit reconfigures the same agent.
    let second = Application::build(settings_on(&db, |s| s.http_agent.max_concurrency = 3))
        .await
        .unwrap();
    assert_eq!(second.http_agent_id(), Some(agent_id(0)));
    let store = second.state().store.clone();
    let agent = store
        .aggregate::<chronicle_aggregates::agent::Agent>()
        .load(&agent_id(0).to_string())
        .await
        .unwrap();
    let state = agent.aggregate.state().unwrap();
    assert_eq!(state.max_concurrency.get(), 3);
    assert_eq!(state.owner_id, uuid::Uuid::nil());

    // An operator deregisters it; the next start registers a fresh one.
    let address = format!("http://127.0.0.1:{}", second.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(second.run_until(async move {
        let _ = stopped.await;
    }));
    let admin = crate::helpers::TestUser::new(
        reqwest::Client::new()
            .post(format!("{address}/api/auth/register"))
            .json(&json!({"email": "admin@example.com", "password": crate::helpers::PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    let deleted = admin
        .client
        .delete(format!("{address}/api/agents/{}", agent_id(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let third = Application::build(settings_on(&db, |_| {})).await.unwrap();
    assert_eq!(third.http_agent_id(), Some(agent_id(1)));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn on_shutdown_the_agent_stops_and_reports_what_it_still_ran(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store(Default::default()).await;
    let bus = CommandBus::new(store.clone());
    let read = ReadSide::start(&store).await.unwrap();
    let settings = settings_on(&db, |s| s.http_agent.allow_private = true);
    let agent = http_agent::register(&bus, &read, &settings.http_agent)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    // No grace: whatever runs at shutdown is given up at once.
    let running =
        tokio::spawn(agent.run(bus.clone(), read.clone(), shutdown.clone(), Duration::ZERO));

    let target = Target::start("127.0.0.1").await;
    let task_id = uuid::Uuid::now_v7();
    let spec = serde_json::from_value::<NewTaskRequest>(json!({
        "capability": "http.request",
        "input": {"url": target.url("/hang")},
    }))
    .unwrap()
    .validate()
    .unwrap();
    let created = bus
        .execute::<Task, chronicle::api::error::ApiError>(
            &task_id.to_string(),
            &CommandContext::default(),
            None,
            |_| {
                Ok(TaskCommand::CreateTask {
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
    read.task_committed(&created.aggregate, created.version)
        .await;
    let load = || async {
        store
            .aggregate::<Task>()
            .load(&task_id.to_string())
            .await
            .unwrap()
            .aggregate
            .state()
            .cloned()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while target.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the agent never sent the request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(load().await.status, TaskStatus::Running);

    shutdown.cancel();
    running.await.unwrap();
    let task = load().await;
    assert_eq!(task.status, TaskStatus::RetryScheduled);
    assert_eq!(task.attempt, 1);
    assert_eq!(
        task.error.and_then(|e| e.code).as_deref(),
        Some("agent_shutdown")
    );
}
