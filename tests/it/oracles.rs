//! Issue 8, items 3 and 5: a stranger cannot tell another user's resource from a missing
//! one, and a lease id is only good in the hands of the agent holding the lease.

use std::time::{Duration, Instant};

use chronicle::process::http_agent::agent_id;
use chronicle::store::StoreOptions;
use reqwest::{Method, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp, TestUser};

/// An app with an admin (its first user) and two plain users, A and B.
async fn three_users(app: &TestApp) -> (TestUser, TestUser, TestUser) {
    let admin = app.register_user().await;
    (admin, app.register_user().await, app.register_user().await)
}

/// Sends `method url` with `If-Match: "<if_match>"`; the status, `ETag` and body.
async fn send(
    client: &reqwest::Client,
    method: Method,
    url: String,
    if_match: usize,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = client
        .request(method, url)
        .header("If-Match", format!("\"{if_match}\""));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, etag, body)
}

async fn create_task(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let response = user
        .client
        .post(app.url("/api/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn register_agent(app: &TestApp, user: &TestUser) -> String {
    let response = user
        .client
        .post(app.url("/api/agents/register"))
        .json(&json!({"name": "laptop", "kind": "remote", "capabilities": ["browser.navigate"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let agent: Value = response.json().await.unwrap();
    agent["id"].as_str().unwrap().to_owned()
}

async fn create_key(app: &TestApp, user: &TestUser) -> String {
    let response = user
        .client
        .post(app.url("/api/users/me/api-keys"))
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let key: Value = response.json().await.unwrap();
    key["id"].as_str().unwrap().to_owned()
}

/// Every route that takes an id answers B for A's resource exactly as for a missing one:
/// the same status, the same body, no `ETag` — with a stale `If-Match` on every request,
/// since a precondition checked before ownership answered 412 (and the version) for A's
/// task.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_stranger_cannot_tell_anothers_resource_from_a_missing_one(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let (_admin, a, b) = three_users(&app).await;
    let task = create_task(
        &app,
        &a,
        json!({"capability": "browser.navigate", "input": {}}),
    )
    .await;
    let task = task["id"].as_str().unwrap().to_owned();
    let agent = register_agent(&app, &a).await;
    let key = create_key(&app, &a).await;
    let missing = Uuid::now_v7().to_string();

    let routes: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/api/tasks/{}", None),
        (Method::GET, "/api/tasks/{}?as_of_version=1", None),
        (Method::GET, "/api/tasks/{}/events", None),
        (Method::PATCH, "/api/tasks/{}", Some(json!({"priority": 9}))),
        (
            Method::PATCH,
            "/api/tasks/{}",
            Some(json!({"status": "succeeded", "lease_id": Uuid::now_v7()})),
        ),
        (Method::DELETE, "/api/tasks/{}", None),
        (Method::POST, "/api/tasks/{}/retry", None),
        (Method::GET, "/api/agents/{}", None),
        (Method::POST, "/api/agents/{}/heartbeat", None),
        (Method::POST, "/api/agents/{}/lease", None),
        (
            Method::POST,
            "/api/agents/{}/execute",
            Some(json!({"input": {}})),
        ),
        (Method::GET, "/api/agents/{}/ws", None),
        (Method::DELETE, "/api/agents/{}", None),
        (Method::POST, "/api/users/me/api-keys/{}/rotate", None),
        (Method::DELETE, "/api/users/me/api-keys/{}", None),
    ];
    for (method, template, body) in routes {
        let theirs = if template.contains("/agents/") {
            &agent
        } else if template.contains("/api-keys/") {
            &key
        } else {
            &task
        };
        let answer_for = |id: &str| app.url(&template.replace("{}", id));
        let for_theirs = send(
            &b.client,
            method.clone(),
            answer_for(theirs),
            99,
            body.clone(),
        )
        .await;
        let for_missing = send(
            &b.client,
            method.clone(),
            answer_for(&missing),
            99,
            body.clone(),
        )
        .await;
        assert_eq!(
            for_theirs.0,
            StatusCode::NOT_FOUND,
            "{method} {template}: {:?}",
            for_theirs.2
        );
        assert_eq!(for_theirs, for_missing, "{method} {template}");
    }
    // For A, If-Match works as before: a stale version fails, the current one passes.
    let url = app.url(&format!("/api/tasks/{task}"));
    let (status, _, problem) = send(&a.client, Method::DELETE, url.clone(), 99, None).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{problem}");
    let change = Some(json!({"priority": 9}));
    let (status, etag, _) = send(&a.client, Method::PATCH, url, 1, change).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag.as_deref(), Some("\"2\""));
}

/// A pin to another user's agent is refused with the same 422 as a pin to no agent at all;
/// a pin to one's own agent or to a built-in one is taken.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_pin_to_an_agent_the_caller_may_not_use_is_422_whether_it_exists_or_not(
    #[case] backend: Backend,
) {
    let app = spawn_app_with(backend, |s| s.http_agent.enabled = true).await;
    let (admin, a, b) = three_users(&app).await;
    let theirs = register_agent(&app, &a).await;
    let pin =
        |agent: &str| json!({"capability": "browser.navigate", "input": {}, "agent_id": agent});
    let mut answers = Vec::new();
    for agent in [theirs.clone(), Uuid::now_v7().to_string()] {
        let response = b
            .client
            .post(app.url("/api/tasks"))
            .json(&pin(&agent))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "agent_id", "{problem}");
        answers.push(problem);
    }
    assert_eq!(answers[0], answers[1]);
    let own = create_task(&app, &a, pin(&theirs)).await;
    assert_eq!(own["pinned_agent_id"], json!(theirs));
    let built_in = agent_id(0).to_string();
    // The node registers its built-in agent as it starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin
        .client
        .get(app.url(&format!("/api/agents/{built_in}")))
        .send()
        .await
        .unwrap()
        .status()
        != StatusCode::OK
    {
        assert!(
            Instant::now() < deadline,
            "the built-in agent never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({"capability": "http.request", "input": {"url": "http://127.0.0.1:9/"}, "agent_id": built_in, "not_before": "2999-01-01T00:00:00Z"});
    let served = create_task(&app, &b, body).await;
    assert_eq!(served["pinned_agent_id"], json!(built_in));
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Reads the task until `done` says so.
async fn wait_for(
    app: &TestApp,
    user: &TestUser,
    task: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current: Value = user
            .client
            .get(app.url(&format!("/api/tasks/{task}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&current) {
            return current;
        }
        assert!(Instant::now() < deadline, "never got there: {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events of a task as `user` reads them.
async fn events(app: &TestApp, user: &TestUser, task: &str) -> Value {
    let response = user
        .client
        .get(app.url(&format!("/api/tasks/{task}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The owner of a task the built-in HTTP agent holds cannot forge its result, not even
/// with the real lease id (read here from the store), and no event view shows that id.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_owner_cannot_report_on_the_built_in_agents_lease(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.http_agent.enabled = true;
        s.http_agent.allow_private = true;
    })
    .await;
    let (admin, owner, _) = three_users(&app).await;
    // A server that takes the request and never answers: the agent holds the lease.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            open.push(connection);
        }
    });
    let task = create_task(
        &app,
        &owner,
        json!({"capability": "http.request", "input": {"url": url, "timeout_ms": 120_000}}),
    )
    .await;
    let task = task["id"].as_str().unwrap().to_owned();
    wait_for(&app, &owner, &task, |t| t["status"] == "running").await;

    let store = app.db.store(StoreOptions::default()).await;
    let history = store.history("task", &task).await.unwrap();
    let leased = history
        .iter()
        .find(|e| e.event_type == "TaskLeased")
        .unwrap();
    let lease_id = leased.payload["lease_id"].as_str().unwrap().to_owned();

    for reader in [&owner, &admin] {
        let seen = events(&app, reader, &task).await;
        let text = seen.to_string();
        assert!(
            !text.contains(&lease_id),
            "a lease id in an event view: {text}"
        );
        let leased = seen
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_type"] == "TaskLeased")
            .unwrap();
        assert_eq!(
            leased["payload"]["lease_id_sha256"],
            json!(sha256_hex(&lease_id))
        );
        assert_eq!(leased["payload"]["agent_id"], json!(agent_id(0)));
    }
    for forger in [&owner, &admin] {
        let response = forger
            .client
            .patch(app.url(&format!("/api/tasks/{task}")))
            .json(&json!({"status": "succeeded", "lease_id": lease_id, "output": {"status": 200, "body": "forged"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "task.stale_lease", "{problem}");
    }
    // Nor may an admin act as the built-in agent to get at its leases.
    for action in ["lease", "heartbeat"] {
        let response = admin
            .client
            .post(app.url(&format!("/api/agents/{}/{action}", agent_id(0))))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{action}");
    }
    let current = wait_for(&app, &owner, &task, |_| true).await;
    assert_eq!(current["status"], "running", "{current}");
    assert!(current["output"].is_null(), "{current}");
}

/// A remote agent's owner is its holder: its report is taken. Nobody else's is, and the
/// event views show the lease only as a hash.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn only_the_holder_reports_and_event_views_hide_lease_ids(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin, owner, stranger) = three_users(&app).await;
    let agent = register_agent(&app, &owner).await;
    let task = create_task(
        &app,
        &owner,
        json!({"capability": "browser.navigate", "input": {}}),
    )
    .await;
    let task = task["id"].as_str().unwrap().to_owned();
    let granted: Value = owner
        .client
        .post(app.url(&format!("/api/agents/{agent}/lease")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lease_id = granted["tasks"][0]["lease_id"].as_str().unwrap().to_owned();
    let report = json!({"status": "succeeded", "lease_id": lease_id, "output": {"ok": true}});
    let patch = |user: &TestUser| {
        user.client
            .patch(app.url(&format!("/api/tasks/{task}")))
            .json(&report)
            .send()
    };
    assert_eq!(
        patch(&stranger).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(patch(&admin).await.unwrap().status(), StatusCode::CONFLICT);
    let done = patch(&owner).await.unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["status"], "succeeded");
    for reader in [&owner, &admin] {
        let text = events(&app, reader, &task).await.to_string();
        assert!(!text.contains(&lease_id), "{text}");
        assert!(text.contains(&sha256_hex(&lease_id)), "{text}");
    }
}
