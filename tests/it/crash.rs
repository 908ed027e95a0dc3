//! The real binary, killed with SIGKILL and restarted: nothing committed is lost, nothing
//! happens twice, and the hash chain is intact.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, TestDb};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn chronicle(db: &TestDb, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    command
        .env("CHRONICLE_DATABASE_URL", &db.url)
        .env("CHRONICLE_BIND", format!("127.0.0.1:{port}"))
        .env("CHRONICLE_DATA_DIR", db.data_dir())
        .env("CHRONICLE_LOG__FORMAT", "json")
        // Its agent's registration and heartbeats would join the exact event counts below.
        .env("CHRONICLE_HTTP_AGENT__ENABLED", "false")
        // A burst sends thousands of requests as one user.
        .env("CHRONICLE_RATE_LIMIT__PER_MINUTE", "1000000000")
        .env("CHRONICLE_STORE__MAX_CONNECTIONS", "8")
        .env_remove("CHRONICLE_CONFIG")
        .current_dir(db.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// The caller kills and waits for the child.
#[allow(clippy::zombie_processes)]
pub(crate) async fn start(db: &TestDb, port: u16) -> Child {
    let child = chronicle(db, port)
        .arg("serve")
        .spawn()
        .expect("spawn chronicle");
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/api/health"))
            .send()
            .await
        {
            if response.status() == StatusCode::OK {
                return child;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chronicle did not start on port {port}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_task_survives_sigkill(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    let mut server = start(&db, port).await;
    let registered: Value = reqwest::Client::new()
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The token must still be good after the restart: the development secret is kept in
    // the data dir.
    let client = crate::helpers::bearer_client(registered["access_token"].as_str().unwrap());
    let mut ids = Vec::new();
    for n in 0..5 {
        let task: Value = client
            .post(format!("{base}/api/tasks"))
            .json(&json!({"capability": "browser.navigate", "input": {"n": n}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let cancelled = client
        .delete(format!("{base}/api/tasks/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);

    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");

    let mut server = start(&db, port).await;
    for (n, id) in ids.iter().enumerate() {
        let task: Value = client
            .get(format!("{base}/api/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(task["input"]["n"], n);
        let expected = if n == 0 { "cancelled" } else { "queued" };
        assert_eq!(task["status"], expected);
        let events: Vec<Value> = client
            .get(format!("{base}/api/tasks/{id}/events"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(events.len(), if n == 0 { 2 } else { 1 });
    }
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");

    let verify = chronicle(&db, port)
        .args(["audit", "verify"])
        .stdout(Stdio::piped())
        .output()
        .expect("audit verify");
    assert!(verify.status.success(), "audit verify failed");
    let report: Value = serde_json::from_slice(&verify.stdout).expect("JSON report");
    assert_eq!(report["ok"], true);
    // 6 task events, and the registration's EmailClaimed, FirstUserClaimed, UserRegistered
    // and SessionStarted.
    assert_eq!(report["checked"], 10);

    let export = chronicle(&db, port)
        .args(["events", "export"])
        .stdout(Stdio::piped())
        .output()
        .expect("events export");
    assert!(export.status.success());
    let lines: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("NDJSON line"))
        .collect();
    assert_eq!(lines.len(), 10);
    assert!(lines
        .iter()
        .all(|event| event["metadata"]["hash"].is_string()));
}

const BURST: usize = 1_000;
const CAPABILITY: &str = "burst.work";

/// What the creators and agents of the burst share.
struct Burst {
    base: String,
    client: reqwest::Client,
    next: AtomicUsize,
    /// Task id → its number, as the creates were answered.
    created: Mutex<HashMap<String, usize>>,
    /// (tasks created, results accepted): the kill waits for the middle of the burst.
    progress: watch::Sender<(usize, usize)>,
    stop: CancellationToken,
}

impl Burst {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Sends the request until a server answers it with something other than a 5xx: while the
/// server is down (killed, restarting) the connection fails and the request is sent again.
async fn answered(request: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    loop {
        match request().send().await {
            Ok(response) if !response.status().is_server_error() => return response,
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Creates tasks until the burst is all created, each with an `Idempotency-Key`, so a
/// create whose answer was lost in the kill is sent again and answered with the same task.
async fn creator(burst: Arc<Burst>) {
    loop {
        let n = burst.next.fetch_add(1, Ordering::Relaxed);
        if n >= BURST {
            return;
        }
        let body = json!({
            "capability": CAPABILITY,
            "input": {"n": n},
            // Leases held when the server died run out soon and are retried.
            "timeout_secs": 3,
            "max_attempts": 100,
            "retry": {"initial_backoff_ms": 0, "max_backoff_ms": 0},
        });
        let task: Value = loop {
            let response = answered(|| {
                burst
                    .client
                    .post(burst.url("/api/tasks"))
                    .header("idempotency-key", format!("burst-{n}"))
                    .json(&body)
            })
            .await;
            assert_eq!(response.status(), StatusCode::CREATED, "create {n}");
            // The server may die while sending the body: ask again, the key says which.
            if let Ok(task) = response.json().await {
                break task;
            }
        };
        assert_eq!(task["input"]["n"], n);
        let id = task["id"].as_str().unwrap().to_owned();
        let previous = burst.created.lock().unwrap().insert(id, n);
        assert_eq!(previous, None, "two creates answered with one task");
        burst.progress.send_modify(|(created, _)| *created += 1);
    }
}

/// A remote agent over HTTP: long-polls, reports each task succeeded, polls again, until
/// told to stop. A result refused with 409 belongs to a lease that ran out (say, while the
/// server was down): the task is retried and some agent gets it again.
async fn agent(burst: Arc<Burst>, agent_id: String) {
    let lease_url = burst.url(&format!("/api/agents/{agent_id}/lease"));
    loop {
        let lease = answered(|| {
            burst
                .client
                .post(&lease_url)
                .json(&json!({"max_tasks": 10, "wait_secs": 1}))
        });
        let response = tokio::select! {
            () = burst.stop.cancelled() => return,
            response = lease => response,
        };
        assert_eq!(response.status(), StatusCode::OK, "lease");
        let Ok(answer) = response.json::<Value>().await else {
            // The server died while sending the answer; those leases run out.
            continue;
        };
        let reports = answer["tasks"].as_array().unwrap().iter().map(|task| {
            let burst = burst.clone();
            async move {
                let id = task["id"].as_str().unwrap();
                let body = json!({
                    "status": "succeeded",
                    "lease_id": task["lease_id"],
                    "output": {"n": task["input"]["n"]},
                });
                let response = answered(|| {
                    burst
                        .client
                        .patch(burst.url(&format!("/api/tasks/{id}")))
                        .json(&body)
                })
                .await;
                match response.status() {
                    StatusCode::OK => burst.progress.send_modify(|(_, done)| *done += 1),
                    StatusCode::CONFLICT => {}
                    other => panic!("PATCH /api/tasks/{id} answered {other}"),
                }
            }
        });
        futures::future::join_all(reports).await;
    }
}

/// `future`'s output, or a panic naming `what` once `deadline` has passed.
async fn before<T>(
    deadline: Instant,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within the test's deadline"))
}

/// Every page of `GET /api/tasks` with `query`.
async fn list_all(burst: &Burst, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = burst.url(&format!("/api/tasks?limit=500&{query}"));
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let response = answered(|| burst.client.get(&url)).await;
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let page: Value = response.json().await.unwrap();
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

/// A burst of 1,000 tasks with four agents working; the server is SIGKILLed in the middle
/// of it and restarted on the same database while the clients keep retrying. Every task
/// ends succeeded, none is lost, none succeeds twice, and the hash chain verifies.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_survives_sigkill(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start(&db, port).await;
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
    let mut agent_ids = Vec::new();
    for n in 0..4 {
        let response = client
            .post(format!("{base}/api/agents/register"))
            .json(&json!({
                "name": format!("burst agent {n}"),
                "kind": "remote",
                "capabilities": [CAPABILITY],
                "max_concurrency": 10,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let agent: Value = response.json().await.unwrap();
        agent_ids.push(agent["id"].as_str().unwrap().to_owned());
    }

    let (progress, mut watched) = watch::channel((0, 0));
    let burst = Arc::new(Burst {
        base: base.clone(),
        client,
        next: AtomicUsize::new(0),
        created: Mutex::new(HashMap::new()),
        progress,
        stop: CancellationToken::new(),
    });
    let agents: Vec<_> = agent_ids
        .into_iter()
        .map(|id| tokio::spawn(agent(burst.clone(), id)))
        .collect();
    let creators: Vec<_> = (0..8)
        .map(|_| tokio::spawn(creator(burst.clone())))
        .collect();

    // Generous: the test's pace depends on the machine, never on a timed assertion.
    let deadline = Instant::now() + Duration::from_secs(240);

    // The middle of the burst: creates still going, agents at work.
    before(deadline, "the middle of the burst", async {
        watched
            .wait_for(|(created, done)| *created >= 400 && *done >= 25)
            .await
            .map(|_| ())
    })
    .await
    .unwrap();
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    let (created_at_kill, done_at_kill) = *watched.borrow();
    let mut server = start(&db, port).await;

    for creator in creators {
        before(deadline, "every create answered", creator)
            .await
            .unwrap();
    }
    let created = burst.created.lock().unwrap().clone();
    assert_eq!(
        created.len(),
        BURST,
        "every create answered with its own task"
    );
    before(deadline, "every task succeeded", async {
        while list_all(&burst, "status=succeeded").await.len() < BURST {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    burst.stop.cancel();
    for agent in agents {
        agent.await.unwrap();
    }

    // None lost: the list holds exactly the tasks created, all succeeded.
    let listed = list_all(&burst, "").await;
    assert_eq!(listed.len(), BURST);
    let listed_ids: HashSet<&str> = listed.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let created_ids: HashSet<&str> = created.keys().map(String::as_str).collect();
    assert_eq!(listed_ids, created_ids);
    assert!(listed.iter().all(|task| task["status"] == "succeeded"));
    let retried = listed.iter().filter(|task| task["attempt"] != 1).count();
    eprintln!(
        "killed with {created_at_kill} created and {done_at_kill} done; {retried} tasks needed \
         more than one attempt"
    );

    // None succeeded twice: each task, read from its events, completed exactly once.
    let checks = futures::stream::iter(created.iter())
        .map(|(id, n)| {
            let burst = burst.clone();
            async move {
                let task: Value =
                    answered(|| burst.client.get(burst.url(&format!("/api/tasks/{id}"))))
                        .await
                        .json()
                        .await
                        .unwrap();
                assert_eq!(task["status"], "succeeded", "{task}");
                assert_eq!(task["input"]["n"], *n);
                assert_eq!(task["output"], json!({"n": n}));
                let events: Vec<Value> = answered(|| {
                    burst
                        .client
                        .get(burst.url(&format!("/api/tasks/{id}/events")))
                })
                .await
                .json()
                .await
                .unwrap();
                let count = |event_type: &str| {
                    events
                        .iter()
                        .filter(|event| event["event_type"] == event_type)
                        .count()
                };
                assert_eq!(count("TaskCreated"), 1, "{id}");
                assert_eq!(count("TaskSucceeded"), 1, "{id}: {events:?}");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    checks.await;

    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    let verify = chronicle(&db, port)
        .args(["audit", "verify"])
        .stdout(Stdio::piped())
        .output()
        .expect("audit verify");
    assert!(verify.status.success(), "audit verify failed");
    let report: Value = serde_json::from_slice(&verify.stdout).expect("JSON report");
    assert_eq!(report["ok"], true);
}
