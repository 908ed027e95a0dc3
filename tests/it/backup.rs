//! `ops/backup.sh` while writers create tasks, then `ops/restore.sh` into an empty database:
//! every event the backup's snapshot held is back, unchanged, the chain verifies, and the read
//! models equal the original's and a rebuild of themselves.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronicle::app::Application;
use reqwest::StatusCode;
use rstest::rstest;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::{bearer_client, spawn_app_with, test_settings, Backend, TestDb};

const SECRET: &str = "a backup test secret of at least thirty-two bytes";
const WRITERS: usize = 3;

fn ops(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ops")
        .join(script)
}

/// Runs `program` with `db`'s settings in the environment, without blocking the runtime
/// (the source server serves on this test's runtime).
async fn run(program: &Path, args: &[&str], db: &TestDb) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .env("CHRONICLE_DATABASE_URL", &db.url)
        .env("CHRONICLE_DATA_DIR", db.data_dir())
        .env("CHRONICLE_JWT_SECRET", SECRET)
        .env("CHRONICLE_BIN", env!("CARGO_BIN_EXE_chronicle"))
        .env("CHRONICLE_LOG__FORMAT", "json")
        .env_remove("CHRONICLE_CONFIG")
        .current_dir(db.dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run")
}

async fn chronicle(db: &TestDb, args: &[&str]) -> Output {
    run(Path::new(env!("CARGO_BIN_EXE_chronicle")), args, db).await
}

async fn export(db: &TestDb) -> Vec<Value> {
    let output = chronicle(db, &["events", "export"]).await;
    assert!(output.status.success(), "{output:?}");
    std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Creates tasks until `stop`, noting each one the server acknowledged. A 503 (the store
/// slow to answer on a loaded machine) is retried with the same `Idempotency-Key`, as a
/// client does: one task either way.
async fn writer(
    writer: usize,
    address: String,
    client: reqwest::Client,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut attempts = 0;
        let response = loop {
            attempts += 1;
            let response = client
                .post(format!("{address}/api/tasks"))
                .header("Idempotency-Key", format!("writer-{writer}-{n}"))
                .json(
                    &json!({"capability": "browser.click", "input": {"n": n}, "priority": n % 10}),
                )
                .send()
                .await
                .unwrap();
            if response.status() != StatusCode::SERVICE_UNAVAILABLE || attempts == 50 {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(response.status(), StatusCode::CREATED);
        let task: Value = response.json().await.unwrap();
        acked
            .lock()
            .unwrap()
            .push(task["id"].as_str().unwrap().to_owned());
    }
}

/// What the read models answer an admin: the lists, and every task with its history.
async fn read_models(address: &str, client: &reqwest::Client) -> BTreeMap<String, Value> {
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{address}{path}");
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        }
    };
    let mut answers = BTreeMap::new();
    let mut after: Option<String> = None;
    let mut tasks = Vec::new();
    loop {
        let page = get(match &after {
            Some(cursor) => format!("/api/tasks?limit=500&cursor={cursor}"),
            None => "/api/tasks?limit=500".into(),
        })
        .await;
        tasks.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_owned()),
            None => break,
        }
    }
    for path in [
        "/api/agents?limit=500",
        "/api/users/me/api-keys",
        "/api/analytics/status",
    ] {
        answers.insert(path.to_owned(), get(path.into()).await);
    }
    for task in &tasks {
        let id = task["id"].as_str().unwrap();
        answers.insert(
            format!("/api/tasks/{id}"),
            get(format!("/api/tasks/{id}")).await,
        );
        answers.insert(
            format!("/api/tasks/{id}/events"),
            get(format!("/api/tasks/{id}/events")).await,
        );
    }
    answers
}

/// Waits until every projection of the server at `address` is live and has applied the feed.
async fn settle(address: &str, client: &reqwest::Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let all: Vec<Value> = client
            .get(format!("{address}/api/admin/projections"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let live: Vec<&Value> = all.iter().filter(|p| p["status"] != "retired").collect();
        if live
            .iter()
            .all(|p| p["status"] == "live" && p["lag_events"] == 0)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not settle: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn login(address: &str, email: &str) -> reqwest::Client {
    let response = reqwest::Client::new()
        .post(format!("{address}/api/auth/login"))
        .json(&json!({"email": email, "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    bearer_client(body["access_token"].as_str().unwrap())
}

#[rstest]
#[case::postgres(Backend::Postgres, false)]
#[case::sqlite(Backend::Sqlite, false)]
#[case::postgres_from_ndjson(Backend::Postgres, true)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_every_event_and_read_model(
    #[case] backend: Backend,
    #[case] from_ndjson: bool,
) {
    let app = spawn_app_with(backend, |settings| {
        settings.jwt_secret = Some(SecretString::from(SECRET));
        settings.audit.checkpoint_every = 25;
        settings.rate_limit.per_minute = 1_000_000;
    })
    .await;
    // A little of everything first: users, a key, tasks queued and cancelled.
    let admin = app.register("admin@example.com").await;
    let ada = app.register("ada@example.com").await;
    let key = ada
        .client
        .post(app.url("/api/users/me/api-keys"))
        .json(&json!({"name": "laptop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), StatusCode::CREATED);
    for n in 0..10 {
        let task: Value = ada
            .client
            .post(app.url("/api/tasks"))
            .json(&json!({"capability": "browser.click", "input": {"n": n}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if n % 3 == 0 {
            let id = task["id"].as_str().unwrap();
            let cancelled = ada
                .client
                .delete(app.url(&format!("/api/tasks/{id}")))
                .send()
                .await
                .unwrap();
            assert!(cancelled.status().is_success());
        }
    }

    // Writers create tasks all through the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| {
            tokio::spawn(writer(
                n,
                app.address.clone(),
                ada.client.clone(),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    while acked.lock().unwrap().len() < 30 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked_before: Vec<String> = acked.lock().unwrap().clone();
    let folder = app.db.dir.path().join("backup");
    let backed_up = run(&ops("backup.sh"), &[folder.to_str().unwrap()], &app.db).await;
    assert!(backed_up.status.success(), "{backed_up:?}");
    let acked_during = acked.lock().unwrap().len() - acked_before.len();
    // Still writing after the backup ended: what it missed must stay missing.
    let more = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < more + 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(acked_during > 0, "the writers wrote while the backup ran");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["backend"],
        if backend == Backend::Postgres {
            "postgres"
        } else {
            "sqlite"
        }
    );

    // Restore into an empty database (the original wiped, as far as the restore can tell).
    let target = TestDb::new(backend).await;
    let mut args = vec![folder.to_str().unwrap()];
    if from_ndjson {
        args.insert(0, "--from-ndjson");
    }
    let restored = run(&ops("restore.sh"), &args, &target).await;
    assert!(restored.status.success(), "{restored:?}");
    // A second restore finds the target in use and refuses.
    let again = run(&ops("restore.sh"), &args, &target).await;
    assert!(!again.status.success(), "{again:?}");

    let verify = chronicle(&target, &["audit", "verify"]).await;
    assert!(verify.status.success(), "{verify:?}");
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // Every restored event is the original's, unchanged; each aggregate's history is a
    // prefix of the original's; every task acknowledged before the backup began is there.
    let original = export(&app.db).await;
    let copy = export(&target).await;
    let by_position: BTreeMap<i64, &Value> = original
        .iter()
        .map(|event| (event["position"].as_i64().unwrap(), event))
        .collect();
    for event in &copy {
        let position = event["position"].as_i64().unwrap();
        assert_eq!(Some(&event), by_position.get(&position), "event {position}");
    }
    let mut heads: BTreeMap<(String, String), i64> = BTreeMap::new();
    for event in &copy {
        let key = (
            event["aggregate_type"].as_str().unwrap().to_owned(),
            event["aggregate_id"].as_str().unwrap().to_owned(),
        );
        let sequence = event["sequence"].as_i64().unwrap();
        let head = heads.entry(key).or_insert(0);
        assert_eq!(sequence, *head + 1, "no gap in a restored history");
        *head = sequence;
    }
    let restored_tasks: HashSet<&str> = copy
        .iter()
        .filter(|e| e["aggregate_type"] == "task")
        .filter_map(|e| e["aggregate_id"].as_str())
        .collect();
    for id in &acked_before {
        assert!(
            restored_tasks.contains(id.as_str()),
            "task {id} acknowledged before the backup"
        );
    }
    let all_acked = acked.lock().unwrap().len();
    eprintln!(
        "backup: {} of {} events restored; {acked_during} tasks acknowledged while the backup ran, {all_acked} in all",
        copy.len(),
        original.len()
    );
    assert!(
        copy.len() < original.len(),
        "the tasks created after the backup are not in it ({} of {} events, {all_acked} tasks)",
        copy.len(),
        original.len()
    );

    // A server on the copy: its projections catch up, and each task reads as on the original.
    let mut settings = test_settings(&target);
    settings.jwt_secret = Some(SecretString::from(SECRET));
    settings.rate_limit.per_minute = 1_000_000;
    let server = Application::build(settings)
        .await
        .expect("server on the copy");
    let address = format!("http://127.0.0.1:{}", server.port());
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    let restored_admin = login(&address, "admin@example.com").await;
    settle(&address, &restored_admin).await;
    let restored_answers = read_models(&address, &restored_admin).await;
    settle(&app.address, &admin.client).await;
    let original_answers = read_models(&app.address, &admin.client).await;
    let mut compared = 0;
    for (path, answer) in &restored_answers {
        if path.starts_with("/api/tasks/") {
            assert_eq!(Some(answer), original_answers.get(path), "{path}");
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * restored_tasks.len());
    let restored_ada = login(&address, "ada@example.com").await;
    let keys = |client: reqwest::Client, address: String| async move {
        client
            .get(format!("{address}/api/users/me/api-keys"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    assert_eq!(
        keys(restored_ada, address.clone()).await,
        keys(ada.client.clone(), app.address.clone()).await
    );

    // And the restored read models equal a rebuild of themselves from the restored events.
    let rebuilt = chronicle(&target, &["projections", "rebuild", "--all"]).await;
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    settle(&address, &restored_admin).await;
    assert_eq!(
        read_models(&address, &restored_admin).await,
        restored_answers
    );
    let _ = stop_server.send(());
}
