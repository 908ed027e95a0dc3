//! Rebuilding projections without downtime, and a projection that cannot apply an event.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_projections::{on_reader, ReadDb};
use reqwest::{Client, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp, TestUser, PASSWORD};

/// Every read-model table, with its columns in a fixed order and its key.
const TABLES: &[(&str, &str, &str)] = &[
    (
        "task_view_v4",
        "id, owner_id, status, capability, priority, agent_id, pinned_agent_id, \
         workflow_run_id, not_before, created_at, updated_at, version, state, lease_expires_at, \
         concurrency_key, concurrency_limit, team_id",
        "id",
    ),
    ("task_view_tags_v4", "task_id, tag", "task_id, tag"),
    (
        "agent_view_v2",
        "id, owner_id, kind, lifecycle, last_heartbeat_at, created_at, updated_at, version, state, \
         team_id",
        "id",
    ),
    (
        "agent_view_caps_v2",
        "agent_id, capability",
        "agent_id, capability",
    ),
    (
        "api_key_view_v1",
        "id, owner_id, name, prefix, created_at, expires_at, rotated_at, revoked_at, version",
        "id",
    ),
    (
        "aggregate_owners_v2",
        "aggregate_type, aggregate_id, owner_id, team_id",
        "aggregate_type, aggregate_id",
    ),
    (
        "team_view_v1",
        "id, name, created_at, deleted, version, state",
        "id",
    ),
    (
        "team_members_v1",
        "team_id, user_id, email, role",
        "team_id, user_id",
    ),
];

/// Every row of every read-model table, each column as text.
async fn snapshot(db: &ReadDb) -> Vec<(String, Vec<Vec<Option<String>>>)> {
    let mut tables = Vec::new();
    for (table, columns, key) in TABLES {
        let select: Vec<String> = columns
            .split(", ")
            .map(|c| format!("CAST({c} AS TEXT)"))
            .collect();
        let sql = format!("SELECT {} FROM {table} ORDER BY {key}", select.join(", "));
        let width = select.len();
        let rows: Vec<Vec<Option<String>>> = on_reader!(db, |pool| {
            use sqlx::Row;
            sqlx::query(&sql).fetch_all(pool).await.map(|rows| {
                rows.iter()
                    .map(|row| (0..width).map(|i| row.get(i)).collect())
                    .collect()
            })
        })
        .unwrap();
        tables.push(((*table).to_owned(), rows));
    }
    tables
}

async fn execute(db: &ReadDb, sql: &str) {
    match db {
        ReadDb::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        ReadDb::Sqlite { writer, .. } => sqlx::query(sql).execute(writer).await.map(|_| ()),
    }
    .unwrap();
}

/// A small deterministic generator (xorshift), one per client.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the clients of one user know of its resources.
#[derive(Default)]
struct Known {
    tasks: Vec<String>,
    agents: Vec<String>,
    keys: Vec<String>,
    /// The user's team: tasks are shared with it and taken back.
    team: Option<String>,
}

/// Sends one request; anything but a server error is a fair answer in a race.
async fn send(request: reqwest::RequestBuilder, commands: &AtomicU64) -> Option<Value> {
    let response = request.send().await.unwrap();
    let status = response.status();
    assert!(!status.is_server_error(), "server error {status}");
    commands.fetch_add(1, Ordering::Relaxed);
    if status.is_success() {
        response.json().await.ok()
    } else {
        assert!(
            [
                StatusCode::NOT_FOUND,
                StatusCode::CONFLICT,
                StatusCode::UNPROCESSABLE_ENTITY
            ]
            .contains(&status),
            "unexpected {status}"
        );
        None
    }
}

/// One client's share of the workload: random commands on its user's tasks, agents and
/// keys, racing the other client of the same user.
async fn client_workload(
    app: Arc<TestApp>,
    client: Client,
    known: Arc<Mutex<Known>>,
    seed: u64,
    rounds: u32,
    commands: Arc<AtomicU64>,
) {
    let mut dice = Dice(seed);
    let pick = |list: &Vec<String>, dice: &mut Dice| -> Option<String> {
        (!list.is_empty()).then(|| list[dice.below(list.len() as u64) as usize].clone())
    };
    for _ in 0..rounds {
        let roll = dice.below(100);
        let (task, agent, key) = {
            let known = known.lock().unwrap();
            (
                pick(&known.tasks, &mut dice),
                pick(&known.agents, &mut dice),
                pick(&known.keys, &mut dice),
            )
        };
        match roll {
            0..=29 => {
                let capability = ["cap.a", "cap.b"][dice.below(2) as usize];
                let tags: Vec<String> = (0..dice.below(3)).map(|n| format!("t{n}")).collect();
                let body = json!({
                    "capability": capability,
                    "input": {"n": dice.below(1000)},
                    "priority": dice.below(10),
                    "max_attempts": 1 + dice.below(3),
                    "retry": {"initial_backoff_ms": 1, "max_backoff_ms": 2},
                    "tags": tags,
                });
                if let Some(task) =
                    send(client.post(app.url("/api/tasks")).json(&body), &commands).await
                {
                    known
                        .lock()
                        .unwrap()
                        .tasks
                        .push(task["id"].as_str().unwrap().to_owned());
                }
            }
            30..=34 => {
                let body = json!({
                    "name": format!("agent {}", dice.below(100)),
                    "kind": "remote",
                    "capabilities": ["cap.a", "cap.b"],
                    "max_concurrency": 1 + dice.below(4),
                });
                let url = app.url("/api/agents/register");
                if let Some(agent) = send(client.post(url).json(&body), &commands).await {
                    known
                        .lock()
                        .unwrap()
                        .agents
                        .push(agent["id"].as_str().unwrap().to_owned());
                }
            }
            35..=59 => {
                let Some(agent) = agent else { continue };
                let url = app.url(&format!("/api/agents/{agent}/lease"));
                let body = json!({"max_tasks": 2, "wait_secs": 0});
                let Some(answer) = send(client.post(url).json(&body), &commands).await else {
                    continue;
                };
                for leased in answer["tasks"].as_array().cloned().unwrap_or_default() {
                    let id = leased["id"].as_str().unwrap();
                    let lease_id = &leased["lease_id"];
                    let body = match dice.below(3) {
                        0 => json!({"status": "failed", "lease_id": lease_id, "error": "boom"}),
                        1 => json!({"status": "running", "lease_id": lease_id}),
                        _ => {
                            json!({"status": "succeeded", "lease_id": lease_id, "output": {"ok": true}})
                        }
                    };
                    let url = app.url(&format!("/api/tasks/{id}"));
                    send(client.patch(url).json(&body), &commands).await;
                }
            }
            60..=67 => {
                let Some(agent) = agent else { continue };
                let url = app.url(&format!("/api/agents/{agent}/heartbeat"));
                send(client.post(url).json(&json!({})), &commands).await;
            }
            68..=75 => {
                let Some(task) = task else { continue };
                send(
                    client.delete(app.url(&format!("/api/tasks/{task}"))),
                    &commands,
                )
                .await;
            }
            76..=83 => {
                let Some(task) = task else { continue };
                let url = app.url(&format!("/api/tasks/{task}/retry"));
                send(client.post(url), &commands).await;
            }
            84..=88 => {
                let url = app.url("/api/users/me/api-keys");
                let body = json!({"name": format!("key {}", dice.below(100))});
                if let Some(key) = send(client.post(url).json(&body), &commands).await {
                    known
                        .lock()
                        .unwrap()
                        .keys
                        .push(key["id"].as_str().unwrap().to_owned());
                }
            }
            89..=92 => {
                let Some(key) = key else { continue };
                let url = app.url(&format!("/api/users/me/api-keys/{key}/rotate"));
                send(client.post(url), &commands).await;
            }
            93..=95 => {
                let Some(key) = key else { continue };
                let url = app.url(&format!("/api/users/me/api-keys/{key}"));
                send(client.delete(url), &commands).await;
            }
            96 => {
                let (Some(task), Some(team)) = (task, known.lock().unwrap().team.clone()) else {
                    continue;
                };
                let url = app.url(&format!("/api/tasks/{task}/share"));
                send(client.post(url).json(&json!({"team_id": team})), &commands).await;
            }
            97 => {
                let Some(task) = task else { continue };
                let url = app.url(&format!("/api/tasks/{task}/unshare"));
                send(client.post(url), &commands).await;
            }
            _ => {
                let Some(agent) = agent else { continue };
                send(
                    client.delete(app.url(&format!("/api/agents/{agent}"))),
                    &commands,
                )
                .await;
            }
        }
    }
}

async fn projections(client: &Client, app: &TestApp) -> Vec<Value> {
    let response = client
        .get(app.url("/api/admin/projections"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Waits until every live projection has applied the whole feed.
async fn settle(client: &Client, app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = projections(client, app).await;
        if all
            .iter()
            .all(|p| p["status"] == "live" && p["lag_events"] == 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projections did not settle: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the `chronicle` binary against the app's database.
async fn cli(app: &TestApp, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(args)
        .env("CHRONICLE_DATABASE_URL", &app.db.url)
        .env("CHRONICLE_DATA_DIR", app.db.data_dir())
        .env("CHRONICLE_LOG__FORMAT", "json")
        .env_remove("CHRONICLE_CONFIG")
        .current_dir(app.db.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chronicle");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilt_read_models_equal_the_live_ones_while_reads_go_on(#[case] backend: Backend) {
    const CLIENTS_PER_USER: u64 = 2;
    const USERS: u64 = 2;
    const ROUNDS: u32 = 600;
    let app = spawn_app_with(backend, |settings| {
        settings.rate_limit.per_minute = 1_000_000
    })
    .await
    .signed_in()
    .await;
    let admin = app.client.clone();
    let mut users: Vec<TestUser> = Vec::new();
    for _ in 0..USERS {
        users.push(app.register_user().await);
    }
    // Each user has a team; the second is in the first's too (the team view's rows).
    let mut teams = Vec::new();
    for user in &users {
        let response = user
            .client
            .post(app.url("/api/teams"))
            .json(&json!({"name": "rebuilt"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let team: Value = response.json().await.unwrap();
        teams.push(team["id"].as_str().unwrap().to_owned());
    }
    let response = users[0]
        .client
        .post(app.url(&format!("/api/teams/{}/invitations", teams[0])))
        .json(&json!({"email": users[1].body["user"]["email"], "role": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let invitation: Value = response.json().await.unwrap();
    let response = users[1]
        .client
        .post(app.url(&format!(
            "/api/invitations/{}/accept",
            invitation["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let app = Arc::new(app);
    let commands = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for (u, user) in users.iter().enumerate() {
        let known = Arc::new(Mutex::new(Known {
            team: Some(teams[u].clone()),
            ..Known::default()
        }));
        for c in 0..CLIENTS_PER_USER {
            clients.push(tokio::spawn(client_workload(
                app.clone(),
                user.client.clone(),
                known.clone(),
                0x9E37_79B9_7F4A_7C15 ^ (u as u64 * 31 + c + 1),
                ROUNDS,
                commands.clone(),
            )));
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    let commands = commands.load(Ordering::Relaxed);
    assert!(commands >= 2_000, "only {commands} commands");

    settle(&admin, &app).await;
    let store = app.db.store(Default::default()).await;
    let db = store.read_db();
    let live = snapshot(&db).await;
    let count = |name: &str| live.iter().find(|(t, _)| t == name).unwrap().1.len();
    assert!(count("task_view_v4") > 200, "{}", count("task_view_v4"));
    assert!(count("agent_view_v2") > 20);
    assert!(count("api_key_view_v1") > 10);
    assert_eq!(count("team_view_v1"), 2);
    assert_eq!(count("team_members_v1"), 3);
    // Damage the live tables: only a real rebuild brings these rows back.
    execute(&db, "DELETE FROM agent_view_caps_v2").await;
    execute(&db, "UPDATE task_view_v4 SET priority = -1").await;
    execute(&db, "DELETE FROM api_key_view_v1").await;
    execute(&db, "DELETE FROM team_members_v1").await;
    assert_ne!(snapshot(&db).await, live);

    // A reader hits the lists all along the rebuild: never an error, never empty.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let app = app.clone();
        let client = users[0].client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for path in ["/api/tasks", "/api/agents"] {
                    let response = client.get(app.url(path)).send().await.unwrap();
                    assert_eq!(
                        response.status(),
                        StatusCode::OK,
                        "{path} during the rebuild"
                    );
                    let page: Value = response.json().await.unwrap();
                    assert!(
                        !page["items"].as_array().unwrap().is_empty(),
                        "{path} empty during the rebuild"
                    );
                    reads += 1;
                }
            }
            reads
        })
    };
    let output = cli(&app, &["projections", "rebuild", "--all"], "").await;
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(
        output.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(reads > 0);
    let rebuilt = snapshot(&db).await;
    for ((table, live_rows), (_, rebuilt_rows)) in live.iter().zip(&rebuilt) {
        assert_eq!(live_rows.len(), rebuilt_rows.len(), "{table}: row count");
        for (l, r) in live_rows.iter().zip(rebuilt_rows) {
            assert_eq!(l, r, "{table}: a row differs");
        }
    }
    // The server goes on with the switched tables: live, and writes land in them.
    settle(&admin, &app).await;
    let response = users[0]
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "cap.a", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    settle(&admin, &app).await;
    // Nothing of the copies is left behind.
    if let ReadDb::Postgres(pool) = &db {
        let schemas: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'rebuild_%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(schemas, 0);
    }
}

async fn create_user_with_role(app: &TestApp, email: &str, role: &str) -> TestUser {
    let output = cli(
        app,
        &[
            "user",
            "create",
            "--email",
            email,
            "--role",
            role,
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let response = Client::new()
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    TestUser::new(response.json().await.unwrap())
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn admins_rebuild_over_http_auditors_read_others_see_nothing(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let user = app.register_user().await;
    let auditor = create_user_with_role(&app, "auditor@example.com", "auditor").await;
    for _ in 0..5 {
        let response = user
            .client
            .post(app.url("/api/tasks"))
            .json(&json!({"capability": "cap.a", "input": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let listed = projections(&auditor.client, &app).await;
    let names: Vec<&str> = listed.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"task_view"), "{names:?}");
    for p in &listed {
        for field in [
            "name",
            "version",
            "position",
            "lag_events",
            "lag_seconds",
            "status",
        ] {
            assert!(p.get(field).is_some(), "{field} missing in {p}");
        }
    }
    let status_of = |client: Client, method: reqwest::Method, path: String| {
        let app = &app;
        async move {
            client
                .request(method, app.url(&path))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let rebuild = "/api/admin/projections/task_view/rebuild".to_owned();
    let list = "/api/admin/projections".to_owned();
    assert_eq!(
        status_of(user.client.clone(), reqwest::Method::GET, list.clone()).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(user.client.clone(), reqwest::Method::POST, rebuild.clone()).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(
            auditor.client.clone(),
            reqwest::Method::POST,
            rebuild.clone()
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(
            app.client.clone(),
            reqwest::Method::POST,
            "/api/admin/projections/nope/rebuild".into()
        )
        .await,
        StatusCode::NOT_FOUND
    );
    let response = app.client.post(app.url(&rebuild)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "task_view");
    // Until it has switched, it says so; then it is live again and serves every task.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = projections(&app.client, &app).await;
        let task_view = all.iter().find(|p| p["name"] == "task_view").unwrap();
        if task_view["status"] == "live" {
            break;
        }
        // `catching_up` after the switch, when the feed's horizon holds the last events
        // back for a moment.
        assert!(
            ["rebuilding", "catching_up"].contains(&task_view["status"].as_str().unwrap()),
            "{task_view}"
        );
        assert!(Instant::now() < deadline, "the rebuild did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page: Value = user
        .client
        .get(app.url("/api/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
}

/// Appends an event whose payload the task aggregate cannot decode, as a bug or a bad
/// migration would; returns its position.
async fn insert_bad_task_event(db: &ReadDb) -> i64 {
    let id = Uuid::now_v7().to_string();
    match db {
        ReadDb::Postgres(pool) => sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                    event_version, payload, metadata)
             VALUES ('task', $1, 1, 'TaskCreated', '1', '{\"nonsense\": true}', '{}')
             RETURNING position",
        )
        .bind(&id)
        .fetch_one(pool)
        .await
        .unwrap(),
        ReadDb::Sqlite { writer, .. } => sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                    event_version, payload, metadata)
             VALUES ('task', $1, 1, 'TaskCreated', '1', '{\"nonsense\": true}', '{}')
             RETURNING position",
        )
        .bind(&id)
        .fetch_one(writer)
        .await
        .unwrap(),
    }
}

async fn create_task(app: &TestApp) {
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "cap.a", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

fn find<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {all:?}"))
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_projection_that_cannot_apply_an_event_stops_there_and_the_others_go_on(
    #[case] backend: Backend,
) {
    // Each test runs in its own process (nextest): this recorder sees this server only.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the test's own metrics recorder");
    let app = spawn_app(backend).await.signed_in().await;
    create_task(&app).await;
    settle(&app.client, &app).await;
    let store = app.db.store(Default::default()).await;
    let db = store.read_db();
    let bad = insert_bad_task_event(&db).await;
    // Wake the projections with a few good commands after the bad event.
    for _ in 0..3 {
        create_task(&app).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let all = projections(&app.client, &app).await;
        let task_view = find(&all, "task_view").clone();
        let others_done = ["agent_view", "api_key_view", "aggregate_owners"]
            .iter()
            .all(|name| find(&all, name)["lag_events"] == 0);
        if task_view["status"] == "failed" && others_done {
            break task_view;
        }
        assert!(Instant::now() < deadline, "no failure shown: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Counted as a metric, once per stop.
    let failures: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "chronicle_projection_failures_total")
        .filter(|(key, ..)| {
            key.key()
                .labels()
                .any(|label| label.key() == "projection" && label.value() == "task_view")
        })
        .map(|(.., value)| value)
        .collect();
    assert_eq!(
        failures,
        [metrics_util::debugging::DebugValue::Counter(1)],
        "the failure metric"
    );
    // Stopped right before the bad event, naming it.
    let position = failed["position"].as_i64().unwrap();
    assert!(position < bad, "{failed}");
    assert!(position > 0, "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(&format!("at position {bad}")), "{error}");
    // The three good tasks after it and the bad one are behind.
    let lag = failed["lag_events"].as_i64().unwrap();
    assert!(lag >= 4, "{failed}");

    // The inline writes go on (a caller reads its own write), but the stall stays
    // visible: /api/status says failed, and the lag grows.
    create_task(&app).await;
    let status: Value = app
        .client
        .get(app.url("/api/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let in_status = find(status["projections"].as_array().unwrap(), "task_view");
    assert_eq!(in_status["status"], "failed");
    assert_eq!(in_status["error"].as_str(), Some(error));
    assert!(
        in_status["lag_events"].as_i64().unwrap() > lag,
        "{in_status}"
    );
    assert_eq!(in_status["position"], failed["position"]);

    // After a fix — here, the event made readable — a rebuild lets it go on.
    execute(
        &db,
        &format!("UPDATE events SET aggregate_type = 'broken' WHERE position = {bad}"),
    )
    .await;
    let response = app
        .client
        .post(app.url("/api/admin/projections/task_view/rebuild"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = projections(&app.client, &app).await;
        let task_view = find(&all, "task_view");
        if task_view["status"] == "live" && task_view["lag_events"] == 0 {
            assert!(task_view.get("error").is_none(), "{task_view}");
            break;
        }
        assert!(Instant::now() < deadline, "not live again: {task_view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page: Value = app
        .client
        .get(app.url("/api/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
}
