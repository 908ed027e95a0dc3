//! Orchestration over HTTP: agents register, lease, report; leases expire; dispatch keeps
//! owners, pins and concurrency limits — on both backends.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chronicle::bus::{CommandBus, CommandContext};
use chronicle::read_side::ReadSide;
use chronicle_aggregates::agent::{Agent, AgentCommand};
use chronicle_aggregates::task::{Task, TaskCommand};
use chronicle_commands::agent::RegisterAgentRequest;
use chronicle_commands::task::NewTaskRequest;
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};

async fn register(app: &TestApp, capabilities: Value, max_concurrency: u32) -> String {
    let response = app
        .client
        .post(app.url("/api/agents/register"))
        .json(&json!({
            "name": "test agent",
            "kind": "remote",
            "capabilities": capabilities,
            "max_concurrency": max_concurrency,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let agent: Value = response.json().await.unwrap();
    agent["id"].as_str().unwrap().to_owned()
}

async fn create(app: &TestApp, body: Value) -> String {
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let task: Value = response.json().await.unwrap();
    task["id"].as_str().unwrap().to_owned()
}

async fn lease(app: &TestApp, agent: &str, body: Value) -> Vec<Value> {
    let response = app
        .client
        .post(app.url(&format!("/api/agents/{agent}/lease")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    answer["tasks"].as_array().unwrap().clone()
}

async fn patch(app: &TestApp, task: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/api/tasks/{task}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get(app: &TestApp, path: &str) -> Value {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

async fn event_count(app: &TestApp, task: &str) -> usize {
    get(app, &format!("/api/tasks/{task}/events"))
        .await
        .as_array()
        .unwrap()
        .len()
}

/// Reads the task until `done` holds; the lease timer works in the background.
async fn wait_for(app: &TestApp, task: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let current = get(app, &format!("/api/tasks/{task}")).await;
        if done(&current) {
            return current;
        }
        assert!(Instant::now() < deadline, "task never got there: {current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(tasks: &[Value]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn agents_register_list_read_heartbeat(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let response = app
        .client
        .post(app.url("/api/agents/register"))
        .json(&json!({
            "name": "Chrome",
            "kind": "remote",
            "capabilities": ["browser.navigate", "browser.click"],
            "max_concurrency": 2,
            "metadata": {"version": "1.0"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let agent: Value = response.json().await.unwrap();
    let mut keys: Vec<&str> = agent
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "capabilities",
            "created_at",
            "id",
            "kind",
            "last_heartbeat_at",
            "max_concurrency",
            "metadata",
            "name",
            "owner_id",
            "running",
            "status"
        ]
    );
    assert_eq!(agent["status"], "online");
    assert_eq!(agent["running"], 0);
    assert_eq!(agent["max_concurrency"], 2);
    assert_eq!(agent["metadata"], json!({"version": "1.0"}));
    let id = agent["id"].as_str().unwrap();
    let other = register(&app, json!(["llm.chat"]), 1).await;

    let read = get(&app, &format!("/api/agents/{id}")).await;
    assert_eq!(read, agent);
    let all = get(&app, "/api/agents").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert_eq!(all["items"][0]["id"], other.as_str(), "newest first");
    let browsing = get(&app, "/api/agents?capability=browser.click").await;
    assert_eq!(ids(browsing["items"].as_array().unwrap()), [id]);
    let online = get(&app, "/api/agents?status=online").await;
    assert_eq!(online["items"].as_array().unwrap().len(), 2);
    let offline = get(&app, "/api/agents?status=offline").await;
    assert!(offline["items"].as_array().unwrap().is_empty());

    let beat = app
        .client
        .post(app.url(&format!("/api/agents/{id}/heartbeat")))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), StatusCode::OK);
    let beat: Value = beat.json().await.unwrap();
    assert_eq!(beat["status"], "online");

    let status = get(&app, "/api/status").await;
    assert_eq!(status["agents_online"], 2);

    let invalid = app
        .client
        .post(app.url("/api/agents/register"))
        .json(&json!({"name": "", "kind": "remote", "capabilities": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let absent = app
        .client
        .get(app.url(&format!("/api/agents/{}", Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(absent.status(), StatusCode::NOT_FOUND);
    let bad_status = app
        .client
        .get(app.url("/api/agents?status=sleepy"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_status.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn register_create_lease_start_complete(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register(&app, json!(["browser.navigate"]), 1).await;
    let task = create(
        &app,
        json!({"capability": "browser.navigate", "input": {"url": "https://example.com"}}),
    )
    .await;

    let leased = lease(&app, &agent, json!({})).await;
    assert_eq!(ids(&leased), [task.as_str()]);
    let granted = &leased[0];
    assert_eq!(granted["status"], "leased");
    assert_eq!(granted["attempt"], 1);
    assert_eq!(granted["agent_id"], agent.as_str());
    assert!(granted["lease_expires_at"].is_string());
    let lease_id = granted["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(
        get(&app, &format!("/api/agents/{agent}")).await["running"],
        1
    );

    let started = patch(
        &app,
        &task,
        json!({"status": "running", "lease_id": lease_id}),
    )
    .await;
    assert_eq!(started.status(), StatusCode::OK);
    let started: Value = started.json().await.unwrap();
    assert_eq!(started["status"], "running");
    assert!(started["started_at"].is_string());

    let progressed = patch(
        &app,
        &task,
        json!({"lease_id": lease_id, "progress": {"percent": 50}}),
    )
    .await;
    assert_eq!(progressed.status(), StatusCode::OK);

    let output = json!({"title": "Example Domain"});
    let done = patch(
        &app,
        &task,
        json!({"status": "succeeded", "lease_id": lease_id, "output": output}),
    )
    .await;
    assert_eq!(done.status(), StatusCode::OK);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["output"], output);
    let read = get(&app, &format!("/api/tasks/{task}")).await;
    assert_eq!(read["output"], output);
    assert!(read["finished_at"].is_string());
    assert_eq!(
        get(&app, &format!("/api/agents/{agent}")).await["running"],
        0
    );
    let listed = get(&app, "/api/tasks?status=succeeded").await;
    assert_eq!(ids(listed["items"].as_array().unwrap()), [task.as_str()]);

    // The same result again: accepted, no second effect.
    let events = event_count(&app, &task).await;
    let again = patch(
        &app,
        &task,
        json!({"status": "succeeded", "lease_id": lease_id, "output": output}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(event_count(&app, &task).await, events);
    // A different result for the ended lease is refused.
    let changed = patch(
        &app,
        &task,
        json!({"status": "succeeded", "lease_id": lease_id, "output": {"other": true}}),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::CONFLICT);
    assert_eq!(event_count(&app, &task).await, events);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_failure_reported_twice_has_one_effect_and_retry_requeues(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register(&app, json!(["mail.send"]), 1).await;
    let task = create(&app, json!({"capability": "mail.send", "max_attempts": 1})).await;
    let leased = lease(&app, &agent, json!({"max_tasks": 3})).await;
    let lease_id = leased[0]["lease_id"].as_str().unwrap().to_owned();
    let failed = patch(
        &app,
        &task,
        json!({"status": "failed", "lease_id": lease_id, "error": "timeout"}),
    )
    .await;
    assert_eq!(failed.status(), StatusCode::OK);
    let failed: Value = failed.json().await.unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], json!({"message": "timeout"}));
    let events = event_count(&app, &task).await;
    let again = patch(
        &app,
        &task,
        json!({"status": "failed", "lease_id": lease_id, "error": {"message": "timeout"}}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(event_count(&app, &task).await, events);

    // Illegal transitions are 409 and change nothing.
    let start = patch(
        &app,
        &task,
        json!({"status": "running", "lease_id": lease_id}),
    )
    .await;
    assert_eq!(start.status(), StatusCode::CONFLICT);
    let unknown = patch(
        &app,
        &task,
        json!({"status": "running", "lease_id": Uuid::now_v7()}),
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::CONFLICT);
    let no_lease = patch(&app, &task, json!({"status": "running"})).await;
    assert_eq!(no_lease.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let retried = app
        .client
        .post(app.url(&format!("/api/tasks/{task}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["status"], "queued");
    assert_eq!(retried["attempt"], 0);
    let again = lease(&app, &agent, json!({})).await;
    assert_eq!(ids(&again), [task.as_str()]);
    assert_eq!(again[0]["attempt"], 1);
    let queued_retry = app
        .client
        .post(app.url(&format!("/api/tasks/{task}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(queued_retry.status(), StatusCode::CONFLICT);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_owner_reprioritises_and_if_match_guards(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let task = create(&app, json!({"capability": "a.b", "priority": 2})).await;
    let changed = patch(&app, &task, json!({"priority": 9, "tags": ["urgent"]})).await;
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["priority"], 9);
    assert_eq!(changed["tags"], json!(["urgent"]));
    assert_eq!(changed["version"], 2);
    let stale = app
        .client
        .patch(app.url(&format!("/api/tasks/{task}")))
        .header("if-match", "\"1\"")
        .json(&json!({"priority": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let invalid = patch(&app, &task, json!({"priority": 12})).await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let mixed = patch(
        &app,
        &task,
        json!({"priority": 3, "lease_id": Uuid::now_v7(), "status": "running"}),
    )
    .await;
    assert_eq!(mixed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let empty = patch(&app, &task, json!({})).await;
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(get(&app, &format!("/api/tasks/{task}")).await["version"], 2);

    // History: the task as it stood then.
    let then = app
        .client
        .get(app.url(&format!("/api/tasks/{task}?as_of_version=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(then.status(), StatusCode::OK);
    assert_eq!(then.headers()["etag"], "\"1\"");
    let then: Value = then.json().await.unwrap();
    assert_eq!(then["priority"], 2);
    assert_eq!(then["tags"], json!([]));
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let as_of_now = get(
        &app,
        &format!("/api/tasks/{task}?as_of={}", now.replace('+', "%2B")),
    )
    .await;
    assert_eq!(as_of_now["priority"], 9);
    for (query, status) in [
        ("as_of_version=3", StatusCode::NOT_FOUND),
        ("as_of=2000-01-01T00:00:00Z", StatusCode::NOT_FOUND),
        ("as_of_version=0", StatusCode::UNPROCESSABLE_ENTITY),
        // Both: the last event within both bounds, and there is none before 2000.
        (
            "as_of_version=1&as_of=2000-01-01T00:00:00Z",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let response = app
            .client
            .get(app.url(&format!("/api/tasks/{task}?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{query}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_expired_lease_is_retried_and_the_late_result_refused(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let slow = register(&app, json!(["browser.navigate"]), 1).await;
    let quick = register(&app, json!(["browser.navigate"]), 1).await;
    let task = create(
        &app,
        json!({
            "capability": "browser.navigate",
            "timeout_secs": 1,
            "retry": {"initial_backoff_ms": 0, "max_backoff_ms": 0},
        }),
    )
    .await;
    let first = lease(&app, &slow, json!({})).await;
    let slow_lease = first[0]["lease_id"].as_str().unwrap().to_owned();

    // Nobody reports: the timer expires the lease, a failed attempt that is retried.
    let expired = wait_for(&app, &task, |t| t["status"] != "leased").await;
    assert_eq!(expired["status"], "retry_scheduled");
    assert_eq!(expired["error"]["code"], "lease_expired");

    let second = lease(&app, &quick, json!({"wait_secs": 5})).await;
    assert_eq!(ids(&second), [task.as_str()]);
    assert_eq!(second[0]["attempt"], 2);
    let quick_lease = second[0]["lease_id"].as_str().unwrap().to_owned();

    let late = patch(
        &app,
        &task,
        json!({"status": "succeeded", "lease_id": slow_lease, "output": "late"}),
    )
    .await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    let held = get(&app, &format!("/api/tasks/{task}")).await;
    assert_eq!(held["status"], "leased");
    assert_eq!(held["agent_id"], quick.as_str());
    assert_eq!(held["attempt"], 2);
    assert!(held["output"].is_null());

    let done = patch(
        &app,
        &task,
        json!({"status": "succeeded", "lease_id": quick_lease, "output": "on time"}),
    )
    .await;
    assert_eq!(done.status(), StatusCode::OK);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["output"], "on time");
    assert_eq!(done["attempt"], 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn racing_agents_never_share_a_task(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agents = [
        register(&app, json!(["x.work"]), 10).await,
        register(&app, json!(["x.work"]), 10).await,
        register(&app, json!(["x.work"]), 10).await,
    ];
    let only = create(&app, json!({"capability": "x.work"})).await;
    let (a, b) = tokio::join!(
        lease(&app, &agents[0], json!({})),
        lease(&app, &agents[1], json!({}))
    );
    assert_eq!(a.len() + b.len(), 1, "exactly one agent gets the task");
    assert_eq!(ids(&[a, b].concat()), [only.as_str()]);

    let mut created = HashSet::new();
    for _ in 0..12 {
        created.insert(create(&app, json!({"capability": "x.work"})).await);
    }
    let (a, b, c) = tokio::join!(
        lease(&app, &agents[0], json!({"max_tasks": 8})),
        lease(&app, &agents[1], json!({"max_tasks": 8})),
        lease(&app, &agents[2], json!({"max_tasks": 8}))
    );
    let all: Vec<String> = ids(&[a, b, c].concat());
    let distinct: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), distinct.len(), "no task leased twice");
    assert_eq!(distinct, created, "every ready task was leased");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn pins_priorities_and_concurrency_limits(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let free = register(&app, json!(["x.work"]), 2).await;
    let pinned_to = register(&app, json!(["x.work"]), 5).await;

    let executed = app
        .client
        .post(app.url(&format!("/api/agents/{pinned_to}/execute")))
        .json(&json!({"input": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(executed.status(), StatusCode::ACCEPTED);
    let executed: Value = executed.json().await.unwrap();
    assert_eq!(executed["pinned_agent_id"], pinned_to.as_str());
    assert_eq!(executed["capability"], "x.work");
    let pinned = executed["id"].as_str().unwrap().to_owned();
    let wrong = app
        .client
        .post(app.url(&format!("/api/agents/{pinned_to}/execute")))
        .json(&json!({"input": {}, "capability": "y.other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let low = create(&app, json!({"capability": "x.work", "priority": 1})).await;
    let high = create(&app, json!({"capability": "x.work", "priority": 9})).await;
    let middle = create(&app, json!({"capability": "x.work", "priority": 5})).await;
    let other_capability = create(&app, json!({"capability": "y.other", "priority": 9})).await;

    // Never the pinned task, never the other capability, best first, at most 2.
    let first = lease(&app, &free, json!({"max_tasks": 10})).await;
    assert_eq!(ids(&first), [high.as_str(), middle.as_str()]);
    assert!(lease(&app, &free, json!({"max_tasks": 10}))
        .await
        .is_empty());
    let lease_id = first[0]["lease_id"].as_str().unwrap();
    let done = patch(
        &app,
        &high,
        json!({"status": "succeeded", "lease_id": lease_id}),
    )
    .await;
    assert_eq!(done.status(), StatusCode::OK);
    let next = lease(&app, &free, json!({"max_tasks": 10})).await;
    assert_eq!(ids(&next), [low.as_str()]);

    let mine = lease(&app, &pinned_to, json!({"max_tasks": 10})).await;
    assert_eq!(ids(&mine), [pinned.as_str()]);
    let untouched = get(&app, &format!("/api/tasks/{other_capability}")).await;
    assert_eq!(untouched["status"], "queued");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn long_poll_wakes_on_a_new_task_and_times_out_empty(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = register(&app, json!(["x.work"]), 1).await;

    let started = Instant::now();
    let empty = lease(&app, &agent, json!({"wait_secs": 1})).await;
    assert!(empty.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));

    // wait_secs equals the poll's own re-check period, so only the wake-up can answer it
    // before the time is up.
    let wait_secs = 5;
    let started = Instant::now();
    let poll = lease(&app, &agent, json!({"wait_secs": wait_secs}));
    let create_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        create(&app, json!({"capability": "y.unrelated"})).await;
        create(&app, json!({"capability": "x.work"})).await
    };
    let (leased, created) = tokio::join!(poll, create_later);
    assert!(started.elapsed() < Duration::from_secs(wait_secs));
    assert_eq!(ids(&leased), [created.as_str()]);

    let invalid = app
        .client
        .post(app.url(&format!("/api/agents/{agent}/lease")))
        .json(&json!({"wait_secs": 31}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn deregistering_returns_leased_tasks_to_the_queue(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let leaving = register(&app, json!(["x.work"]), 2).await;
    let staying = register(&app, json!(["x.work"]), 2).await;
    let task = create(
        &app,
        json!({"capability": "x.work", "retry": {"initial_backoff_ms": 0, "max_backoff_ms": 0}}),
    )
    .await;
    assert_eq!(lease(&app, &leaving, json!({})).await.len(), 1);

    let gone = app
        .client
        .delete(app.url(&format!("/api/agents/{leaving}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let released = get(&app, &format!("/api/tasks/{task}")).await;
    assert_eq!(released["status"], "retry_scheduled");
    assert_eq!(released["error"]["code"], "agent_deregistered");
    let agent = get(&app, &format!("/api/agents/{leaving}")).await;
    assert_eq!(agent["status"], "deregistered");
    assert_eq!(agent["running"], 0);
    let again = app
        .client
        .delete(app.url(&format!("/api/agents/{leaving}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    let refused = app
        .client
        .post(app.url(&format!("/api/agents/{leaving}/lease")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);

    let taken = lease(&app, &staying, json!({"wait_secs": 5})).await;
    assert_eq!(ids(&taken), [task.as_str()]);
    assert_eq!(taken[0]["attempt"], 2);
}

/// The test's own read side beside the server's. On SQLite this is a second writer on the
/// server's file, which can lose the lock to the server while setting up; that is retried.
async fn read_side(store: &chronicle::store::Store) -> ReadSide {
    for _ in 0..40 {
        match ReadSide::start(store).await {
            Ok(read) => return read,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    ReadSide::start(store).await.unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn agents_lease_only_their_owners_tasks(#[case] backend: Backend) {
    // The first user is an admin, who may drive any agent: act as the second, a plain user.
    let app = spawn_app(backend).await;
    app.register_user().await;
    let app = app.signed_in().await;
    let store = app.db.store(Default::default()).await;
    let bus = CommandBus::new(store.clone());
    let read = read_side(&store).await;
    let stranger = Uuid::now_v7();

    // A stranger's task, written straight through the bus.
    let theirs = Uuid::now_v7();
    let spec = serde_json::from_value::<NewTaskRequest>(json!({"capability": "x.work"}))
        .unwrap()
        .validate()
        .unwrap();
    let created = bus
        .execute::<Task, chronicle::api::error::ApiError>(
            &theirs.to_string(),
            &CommandContext::default(),
            None,
            |_| {
                Ok(TaskCommand::CreateTask {
                    task_id: theirs,
                    owner_id: stranger,
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

    // My agent does not get it.
    let mine = register(&app, json!(["x.work"]), 5).await;
    assert!(lease(&app, &mine, json!({"max_tasks": 5})).await.is_empty());

    // My task is not leased by the stranger's agent.
    let my_task = create(&app, json!({"capability": "x.work"})).await;
    let agent_id = Uuid::now_v7();
    let agent_spec = serde_json::from_value::<RegisterAgentRequest>(
        json!({"name": "theirs", "kind": "remote", "capabilities": ["x.work"], "max_concurrency": 5}),
    )
    .unwrap()
    .validate()
    .unwrap();
    let registered = bus
        .execute::<Agent, chronicle::api::error::ApiError>(
            &agent_id.to_string(),
            &CommandContext::default(),
            None,
            |_| {
                Ok(AgentCommand::RegisterAgent {
                    agent_id,
                    owner_id: stranger,
                    spec: agent_spec.clone(),
                    at: chrono::Utc::now(),
                })
            },
        )
        .await
        .unwrap();
    let their_agent = registered.aggregate.state().unwrap();
    // Until the stranger's task reaches the view (the inline write from this second store
    // may lose the SQLite lock; the server's catch-up then brings it) nothing is offered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let granted = loop {
        let granted = chronicle::process::dispatch::lease_ready(
            &bus,
            &read,
            their_agent,
            registered.version,
            5,
            &CommandContext::default(),
        )
        .await
        .unwrap();
        if !granted.is_empty() || Instant::now() > deadline {
            break granted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let granted: Vec<Uuid> = granted.iter().map(|g| g.task.state().unwrap().id).collect();
    assert_eq!(granted, [theirs], "only the stranger's own task");
    assert_eq!(
        get(&app, &format!("/api/tasks/{my_task}")).await["status"],
        "queued"
    );
    // Nor can I see or drive the stranger's agent.
    let hidden = app
        .client
        .post(app.url(&format!("/api/agents/{agent_id}/lease")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_idempotency_key_creates_once(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let body = json!({"capability": "x.work", "input": {"n": 1}});
    let send = |key: &'static str, body: Value| {
        app.client
            .post(app.url("/api/tasks"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let (first, second) = tokio::join!(send("key-1", body.clone()), send("key-1", body.clone()));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(second.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second, "the same answer");
    let id = first["id"].as_str().unwrap();
    assert_eq!(event_count(&app, id).await, 1, "one effect");

    // Later, after the task moved on, the key still answers the first answer.
    let agent = register(&app, json!(["x.work"]), 1).await;
    assert_eq!(lease(&app, &agent, json!({})).await.len(), 1);
    let third = send("key-1", body.clone()).await.unwrap();
    assert_eq!(third.status(), StatusCode::CREATED);
    assert_eq!(third.json::<Value>().await.unwrap(), first);

    let reused = send("key-1", json!({"capability": "x.work", "input": {"n": 2}}))
        .await
        .unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let other = send("key-2", body.clone()).await.unwrap();
    assert_eq!(other.status(), StatusCode::CREATED);
    assert_ne!(other.json::<Value>().await.unwrap()["id"], first["id"]);
    let listed = get(&app, "/api/tasks").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}

/// Two nodes on one PostgreSQL: a task created on one wakes an agent long-polling on the
/// other at once, through LISTEN/NOTIFY. The periodic re-check is set far beyond the
/// poll's wait, so without the wake-up the poll would come back empty.
#[tokio::test]
async fn a_task_created_on_one_node_wakes_a_poll_on_another() {
    let quiet = |settings: &mut chronicle::config::Settings| {
        settings.dispatch.recheck_secs = 3600;
    };
    let app = spawn_app_with(Backend::Postgres, quiet)
        .await
        .signed_in()
        .await;
    let (other, _stop) = app.second_node(quiet).await;
    let agent = register(&app, json!(["browser.click"]), 1).await;
    assert!(lease(&app, &agent, json!({})).await.is_empty());

    let poll = {
        let client = app.client.clone();
        let url = app.url(&format!("/api/agents/{agent}/lease"));
        tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"wait_secs": 30}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        })
    };
    // Let the poll look at the empty queue and start waiting first; were the task there
    // before, the poll would find it without any wake-up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let created = app
        .client
        .post(format!("{other}/api/tasks"))
        .json(&json!({"capability": "browser.click"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let task: Value = created.json().await.unwrap();
    // Not a performance bound: at its 30 s deadline the poll looks once more and would
    // find the task anyway, so only a wake-up brings it back well before then.
    let answer = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the poll on the first node was not woken by the second node's task")
        .unwrap();
    assert_eq!(
        ids(answer["tasks"].as_array().unwrap()),
        [task["id"].as_str().unwrap()],
        "the poll on the first node was not woken by the second node's task"
    );
}

/// `Idempotency-Key` on every write, not only task creation: the same key from the same
/// user returns the first answer (marked as a replay) and has no second effect.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn every_write_honours_an_idempotency_key(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let post = |path: String, key: &'static str, body: Value| {
        app.client
            .post(app.url(&path))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let registration = json!({"name": "ext", "kind": "remote", "capabilities": ["x.work"]});
    let first = post("/api/agents/register".into(), "reg", registration.clone())
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let etag = first.headers().get("etag").cloned();
    let first: Value = first.json().await.unwrap();
    let again = post("/api/agents/register".into(), "reg", registration.clone())
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.headers().get("etag").cloned(), etag);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let agents = get(&app, "/api/agents").await;
    assert_eq!(agents["items"].as_array().unwrap().len(), 1, "one effect");

    // The same key on another request is refused and changes nothing.
    let other = post(
        "/api/agents/register".into(),
        "reg",
        json!({"name": "other", "kind": "remote", "capabilities": ["x.work"]}),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other.json::<Value>().await.unwrap()["code"],
        "idempotency.key_reused"
    );
    assert_eq!(
        get(&app, "/api/agents").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Pinned execution, twice: one task.
    let agent = first["id"].as_str().unwrap();
    let execute = || {
        post(
            format!("/api/agents/{agent}/execute"),
            "exec",
            json!({"input": 1}),
        )
    };
    let (a, b) = tokio::join!(execute(), execute());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        (a.status(), b.status()),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["id"], b["id"], "racing repeats get the first answer");
    assert_eq!(
        get(&app, "/api/tasks").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A new API key's secret is shown once: a replay names the key but not its secret.
    let issued = post(
        "/api/users/me/api-keys".into(),
        "key",
        json!({"name": "ci"}),
    )
    .await
    .unwrap();
    assert_eq!(issued.status(), StatusCode::CREATED);
    let issued: Value = issued.json().await.unwrap();
    assert!(issued["key"].as_str().unwrap().starts_with("chr_"));
    let replayed = post(
        "/api/users/me/api-keys".into(),
        "key",
        json!({"name": "ci"}),
    )
    .await
    .unwrap();
    assert_eq!(replayed.status(), StatusCode::CREATED);
    let replayed: Value = replayed.json().await.unwrap();
    assert_eq!(replayed["id"], issued["id"]);
    assert_eq!(replayed["key"], Value::Null);
    let keys = get(&app, "/api/users/me/api-keys").await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 1);

    // Keys belong to their user: another user's "reg" is their own.
    let stranger = app.register_user().await;
    let theirs = stranger
        .client
        .post(app.url("/api/agents/register"))
        .header("idempotency-key", "reg")
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::CREATED);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    assert_ne!(theirs.json::<Value>().await.unwrap()["id"], first["id"]);

    // Refused answers are answers too: a repeat gets the same 409, without a second try.
    let task = a["id"].as_str().unwrap();
    let stale = json!({"status": "running", "lease_id": Uuid::now_v7()});
    let patch = || {
        app.client
            .patch(app.url(&format!("/api/tasks/{task}")))
            .header("idempotency-key", "stale")
            .json(&stale)
            .send()
    };
    let refused = patch().await.unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let refused_again = patch().await.unwrap();
    assert_eq!(refused_again.status(), StatusCode::CONFLICT);
    assert_eq!(
        refused_again.headers().get("idempotent-replayed").unwrap(),
        "true"
    );

    let bad_key = app
        .client
        .post(app.url("/api/agents/register"))
        .header("idempotency-key", "")
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), StatusCode::BAD_REQUEST);
}
