//! Three real server processes on one PostgreSQL serve one workload; one of them is
//! SIGKILLed in the middle. Creators and agents (long-poll and WebSocket) are spread over
//! the nodes and move to another node when theirs stops answering. Every task ends
//! succeeded exactly once, no agent ever holds more than its `max_concurrency` (sampled in
//! the event store, the truth at one moment), the hash chain verifies, and the survivors'
//! read models agree with each other and with a rebuild.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::crash::{before, chronicle, free_port};
use crate::helpers::{Backend, TestDb, PASSWORD};

const TASKS: usize = 3_000;
const CAPABILITY: &str = "cluster.work";
const MAX_CONCURRENCY: i64 = 4;
/// Shared by the nodes, so a token one node signed is good on the others.
const JWT_SECRET: &str = "a cluster test secret of more than thirty-two bytes";

struct Cluster {
    nodes: Vec<String>,
    /// Nodes no client should use any more (the killed one).
    down: Mutex<HashSet<usize>>,
    client: reqwest::Client,
    token: String,
    next: AtomicUsize,
    created: Mutex<HashMap<String, usize>>,
    /// (tasks created, results accepted).
    progress: watch::Sender<(usize, usize)>,
    stop: CancellationToken,
}

impl Cluster {
    /// The node `preferred` if it is up, else the next one that is.
    fn node(&self, preferred: usize) -> String {
        let down = self.down.lock().unwrap();
        (0..self.nodes.len())
            .map(|offset| (preferred + offset) % self.nodes.len())
            .find(|n| !down.contains(n))
            .map(|n| self.nodes[n].clone())
            .expect("a node is up")
    }

    /// Sends the request (built for a node's base URL) until some node answers it with
    /// something other than a 5xx, moving to the next node after a failed attempt.
    async fn answered(
        &self,
        preferred: usize,
        request: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> reqwest::Response {
        let mut attempt = 0;
        loop {
            let base = self.node(preferred + attempt);
            match request(&base).send().await {
                Ok(response) if !response.status().is_server_error() => return response,
                Ok(_) | Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Creates tasks through node `home` (or the next one up), each with an idempotency key,
/// so a create whose answer was lost with a node is answered with the same task elsewhere.
async fn creator(cluster: Arc<Cluster>, home: usize) {
    loop {
        let n = cluster.next.fetch_add(1, Ordering::Relaxed);
        if n >= TASKS {
            return;
        }
        let body = json!({
            "capability": CAPABILITY,
            "input": {"n": n},
            "timeout_secs": 3,
            "max_attempts": 100,
            "retry": {"initial_backoff_ms": 0, "max_backoff_ms": 0},
        });
        let task: Value = loop {
            let response = cluster
                .answered(home, |base| {
                    cluster
                        .client
                        .post(format!("{base}/api/tasks"))
                        .header("idempotency-key", format!("cluster-{n}"))
                        .json(&body)
                })
                .await;
            assert_eq!(response.status(), StatusCode::CREATED, "create {n}");
            if let Ok(task) = response.json().await {
                break task;
            }
        };
        let id = task["id"].as_str().unwrap().to_owned();
        let previous = cluster.created.lock().unwrap().insert(id, n);
        assert_eq!(previous, None, "two creates answered with one task");
        cluster.progress.send_modify(|(created, _)| *created += 1);
    }
}

/// Reports `task` succeeded through any node; a 409 is a lease that ran out meanwhile.
async fn complete(cluster: &Cluster, home: usize, task: &Value) {
    let id = task["id"].as_str().unwrap();
    let body = json!({"status": "succeeded", "lease_id": task["lease_id"], "output": {"n": task["input"]["n"]}});
    let response = cluster
        .answered(home, |base| {
            cluster
                .client
                .patch(format!("{base}/api/tasks/{id}"))
                .json(&body)
        })
        .await;
    match response.status() {
        StatusCode::OK => cluster.progress.send_modify(|(_, done)| *done += 1),
        StatusCode::CONFLICT => {}
        other => panic!("PATCH /api/tasks/{id} answered {other}"),
    }
}

/// A long-polling agent whose home is node `home`.
async fn poller(cluster: Arc<Cluster>, home: usize, agent_id: String) {
    loop {
        let lease = cluster.answered(home, |base| {
            cluster
                .client
                .post(format!("{base}/api/agents/{agent_id}/lease"))
                .json(&json!({"max_tasks": 4, "wait_secs": 1}))
        });
        let response = tokio::select! {
            () = cluster.stop.cancelled() => return,
            response = lease => response,
        };
        assert_eq!(response.status(), StatusCode::OK, "lease");
        let Ok(answer) = response.json::<Value>().await else {
            continue;
        };
        let tasks = answer["tasks"].as_array().unwrap();
        futures::future::join_all(tasks.iter().map(|task| complete(&cluster, home, task))).await;
    }
}

/// An agent on the agent socket of node `home`; when the socket breaks (its node died) it
/// connects to the next node up. Its assignments are completed over HTTP.
async fn socket_agent(cluster: Arc<Cluster>, home: usize, agent_id: String) {
    let mut attempt = 0;
    loop {
        let base = cluster.node(home + attempt);
        let url = format!("{base}/api/agents/{agent_id}/ws").replacen("http://", "ws://", 1);
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", cluster.token)).unwrap(),
        );
        let connected = tokio::select! {
            () = cluster.stop.cancelled() => return,
            connected = tokio_tungstenite::connect_async(request) => connected,
        };
        let Ok((mut socket, _)) = connected else {
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let message = tokio::select! {
                () = cluster.stop.cancelled() => {
                    let _ = socket.close(None).await;
                    return;
                }
                message = socket.next() => message,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(text.as_str()).unwrap();
                    if message["type"] == "task.assigned" {
                        let cluster = cluster.clone();
                        tokio::spawn(async move {
                            complete(&cluster, home, &message["task"]).await;
                        });
                    }
                }
                Some(Ok(Message::Ping(payload))) => {
                    let _ = socket.send(Message::Pong(payload)).await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        attempt += 1;
    }
}

/// The most leases any one agent holds right now, read from the event store in one
/// snapshot: for each task whose latest event leaves it held, the agent of its last lease.
async fn most_held(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "WITH latest AS (
             SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type FROM events
              WHERE aggregate_type = 'task' ORDER BY aggregate_id, sequence DESC),
         lease AS (
             SELECT DISTINCT ON (aggregate_id) aggregate_id,
                    coalesce(payload->'TaskLeased'->>'agent_id', payload->>'agent_id') AS agent
               FROM events
              WHERE aggregate_type = 'task' AND event_type = 'TaskLeased'
              ORDER BY aggregate_id, sequence DESC)
         SELECT coalesce(max(held), 0) FROM (
             SELECT count(*) AS held FROM latest JOIN lease USING (aggregate_id)
              WHERE latest.event_type IN ('TaskLeased', 'TaskStarted', 'TaskProgressed', 'LeaseExtended')
              GROUP BY lease.agent) per_agent",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Every page of `GET /api/tasks` on `base`.
async fn all_tasks(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/tasks?limit=500");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

/// What the survivors' read models say: every task, the usage and status analytics
/// (over a fixed window: the default one ends now).
async fn read_models(client: &reqwest::Client, base: &str) -> Value {
    let mut tasks = all_tasks(client, base).await;
    tasks.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let get = |path: &str| client.get(format!("{base}{path}")).send();
    let usage: Value = get(
        "/api/analytics/usage?group_by=agent&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let status: Value = get("/api/analytics/status")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    json!({"tasks": tasks, "usage": usage, "status": status})
}

/// Panics with what differs (the tasks by id) unless `a` equals `b`.
fn same(a: &Value, b: &Value, what: &str) {
    if a == b {
        return;
    }
    let tasks = |v: &Value| -> HashMap<String, Value> {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_str().unwrap().to_owned(), t.clone()))
            .collect()
    };
    let (left, right) = (tasks(a), tasks(b));
    let differing: Vec<_> = left
        .iter()
        .filter(|(id, task)| right.get(*id) != Some(task))
        .take(3)
        .map(|(id, task)| (task.clone(), right.get(id).cloned()))
        .collect();
    panic!(
        "{what}: {} vs {} tasks, first differing {differing:?}; usage {} / {}; status {} / {}",
        left.len(),
        right.len(),
        a["usage"],
        b["usage"],
        a["status"],
        b["status"]
    );
}

/// Waits until every projection on `base` is live and caught up.
async fn caught_up(client: &reqwest::Client, base: &str, deadline: Instant) {
    before(deadline, "the projections catch up", async {
        loop {
            let projections: Value = client
                .get(format!("{base}/api/admin/projections"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if projections
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["status"] == "live" && p["lag_events"] == 0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_killed_finish_every_task_once_within_limits() {
    let db = TestDb::new(Backend::Postgres).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes: Vec<String> = ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let mut servers = Vec::new();
    for (n, port) in ports.iter().enumerate() {
        let data_dir = db.dir.path().join(format!("node-{n}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut command = chronicle(&db, *port);
        command
            .env("CHRONICLE_DATA_DIR", &data_dir)
            .env("CHRONICLE_JWT_SECRET", JWT_SECRET)
            .arg("serve");
        servers.push(crate::crash::started(command, *port).await);
    }

    // The first user is the admin, who may rebuild read models at the end.
    let registered: Value = reqwest::Client::new()
        .post(format!("{}/api/auth/register", nodes[0]))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let client = crate::helpers::bearer_client(&token);
    let mut agents = Vec::new();
    for n in 0..6 {
        let response = client
            .post(format!("{}/api/agents/register", nodes[n % 3]))
            .json(&json!({
                "name": format!("cluster agent {n}"),
                "kind": "remote",
                "capabilities": [CAPABILITY],
                "max_concurrency": MAX_CONCURRENCY,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let agent: Value = response.json().await.unwrap();
        agents.push(agent["id"].as_str().unwrap().to_owned());
    }

    let (progress, mut watched) = watch::channel((0, 0));
    let cluster = Arc::new(Cluster {
        nodes: nodes.clone(),
        down: Mutex::new(HashSet::new()),
        client: client.clone(),
        token,
        next: AtomicUsize::new(0),
        created: Mutex::new(HashMap::new()),
        progress,
        stop: CancellationToken::new(),
    });
    // Agents 0, 2, 4 long-poll; 1, 3, 5 hold a socket; homes spread over the nodes.
    let agent_tasks: Vec<_> = agents
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let (cluster, id) = (cluster.clone(), id.clone());
            if n % 2 == 0 {
                tokio::spawn(poller(cluster, n % 3, id))
            } else {
                tokio::spawn(socket_agent(cluster, n % 3, id))
            }
        })
        .collect();
    let creators: Vec<_> = (0..6)
        .map(|n| tokio::spawn(creator(cluster.clone(), n % 3)))
        .collect();

    // A sampler reads the held leases per agent from the event store all along.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let sampling = CancellationToken::new();
    let sampler = {
        let (pool, sampling) = (pool.clone(), sampling.clone());
        tokio::spawn(async move {
            let (mut most, mut samples) = (0, 0u32);
            while !sampling.is_cancelled() {
                most = most.max(most_held(&pool).await);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (most, samples)
        })
    };

    let deadline = Instant::now() + Duration::from_secs(600);
    before(deadline, "the middle of the workload", async {
        watched
            .wait_for(|(created, done)| *created >= TASKS / 3 && *done >= TASKS / 10)
            .await
            .map(|_| ())
    })
    .await
    .unwrap();
    cluster.down.lock().unwrap().insert(2);
    servers[2].kill().expect("SIGKILL");
    servers[2].wait().expect("reaped");
    let (created_at_kill, done_at_kill) = *watched.borrow();

    for creator in creators {
        before(deadline, "every create answered", creator)
            .await
            .unwrap();
    }
    let created = cluster.created.lock().unwrap().clone();
    assert_eq!(
        created.len(),
        TASKS,
        "every create answered with its own task"
    );
    before(deadline, "every task succeeded", async {
        loop {
            let status: Value = client
                .get(format!("{}/api/analytics/status", nodes[0]))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if status["counts"]["succeeded"].as_u64() == Some(TASKS as u64) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    cluster.stop.cancel();
    for agent in agent_tasks {
        agent.await.unwrap();
    }
    sampling.cancel();
    let (most, samples) = sampler.await.unwrap();
    eprintln!(
        "node 2 killed with {created_at_kill} created and {done_at_kill} done; {samples} \
         samples, at most {most} leases held by one agent"
    );
    assert!(samples > 10, "the sampler ran");
    assert!(
        most <= MAX_CONCURRENCY,
        "an agent held {most} leases at once (max_concurrency {MAX_CONCURRENCY})"
    );

    // Exactly once: each task created once and succeeded once, read from the event store.
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_id,
                count(*) FILTER (WHERE event_type = 'TaskCreated'),
                count(*) FILTER (WHERE event_type = 'TaskSucceeded')
           FROM events WHERE aggregate_type = 'task' GROUP BY aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(counts.len(), TASKS);
    let stored: HashSet<&str> = counts.iter().map(|(id, _, _)| id.as_str()).collect();
    let answered: HashSet<&str> = created.keys().map(String::as_str).collect();
    assert_eq!(stored, answered, "the tasks stored are the tasks created");
    for (id, creates, successes) in &counts {
        assert_eq!((*creates, *successes), (1, 1), "task {id}");
    }

    // The survivors agree, and a rebuild of their read models changes nothing.
    caught_up(&client, &nodes[0], deadline).await;
    caught_up(&client, &nodes[1], deadline).await;
    let first = read_models(&client, &nodes[0]).await;
    assert_eq!(first["tasks"].as_array().unwrap().len(), TASKS);
    same(
        &first,
        &read_models(&client, &nodes[1]).await,
        "the survivors disagree",
    );
    for name in ["task_view", "usage"] {
        let response = client
            .post(format!("{}/api/admin/projections/{name}/rebuild", nodes[1]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "rebuild {name}");
        // It says `rebuilding` from its 202 on until it has switched and caught up.
        caught_up(&client, &nodes[1], deadline).await;
    }
    same(
        &first,
        &read_models(&client, &nodes[1]).await,
        "a rebuild differs",
    );

    for server in servers.iter_mut().take(2) {
        server.kill().expect("SIGKILL");
        server.wait().expect("reaped");
    }
    let mut verify = chronicle(&db, ports[0]);
    // The chain checkpoints' MAC key derives from the server secret.
    verify.env("CHRONICLE_JWT_SECRET", JWT_SECRET);
    let verify = tokio::process::Command::from(verify)
        .args(["audit", "verify"])
        .stdout(Stdio::piped())
        .output()
        .await
        .expect("audit verify");
    assert!(
        verify.status.success(),
        "audit verify failed: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let report: Value = serde_json::from_slice(&verify.stdout).expect("JSON report");
    assert_eq!(report["ok"], true);
}
