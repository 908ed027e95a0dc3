//! `chronicle events export` then `chronicle events import` into an empty store: the same
//! events (positions, sequences, metadata, hashes, recorded_at), a chain that verifies,
//! and read models equal to the original's; on both backends, and SQLite → PostgreSQL.

use std::process::{Output, Stdio};
use std::time::Duration;

use chronicle::app::Application;
use reqwest::StatusCode;
use rstest::rstest;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::{bearer_client, spawn_app_with, test_settings, Backend, TestApp, TestDb};

const SECRET: &str = "an import test secret of at least thirty-two bytes";

/// Runs the CLI on `db` without blocking the runtime: the source server's projections run
/// on this test's runtime, and a CLI that waits for the feed's horizon waits for them.
async fn chronicle(db: &TestDb, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chronicle"));
    command
        .args(args)
        .env("CHRONICLE_DATABASE_URL", &db.url)
        .env("CHRONICLE_DATA_DIR", db.data_dir())
        .env("CHRONICLE_JWT_SECRET", SECRET)
        .env("CHRONICLE_LOG__FORMAT", "json")
        .env_remove("CHRONICLE_CONFIG")
        .current_dir(db.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("run chronicle");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.expect("write stdin");
    }
    drop(input);
    child.wait_with_output().await.expect("chronicle output")
}

fn lines(ndjson: &[u8]) -> Vec<Value> {
    std::str::from_utf8(ndjson)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event line"))
        .collect()
}

/// A little of everything: users, an API key, tasks queued and cancelled. (No agent: its
/// liveness depends on the clock, so two servers would not agree on it.)
async fn workload(app: &TestApp) -> reqwest::Client {
    let admin = app.register("admin@example.com").await;
    let ada = app.register("ada@example.com").await;
    let created = ada
        .client
        .post(app.url("/api/users/me/api-keys"))
        .json(&json!({"name": "laptop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    for n in 0..12 {
        let task: Value = ada
            .client
            .post(app.url("/api/tasks"))
            .json(&json!({"capability": "browser.click", "input": {"n": n}, "priority": n % 10}))
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
            assert!(cancelled.status().is_success(), "{}", cancelled.status());
        }
    }
    admin.client
}

/// What the read models answer an admin, task by task.
async fn read_models(address: &str, client: &reqwest::Client) -> Vec<Value> {
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{address}{path}");
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        }
    };
    let tasks = get("/api/tasks?limit=500".into()).await;
    let mut answers = vec![tasks.clone(), get("/api/agents?limit=500".into()).await];
    for task in tasks["items"].as_array().unwrap() {
        let id = task["id"].as_str().unwrap();
        answers.push(get(format!("/api/tasks/{id}")).await);
        answers.push(get(format!("/api/tasks/{id}/events")).await);
    }
    answers
}

#[rstest]
#[case::sqlite_to_sqlite(Backend::Sqlite, Backend::Sqlite)]
#[case::postgres_to_postgres(Backend::Postgres, Backend::Postgres)]
#[case::sqlite_to_postgres(Backend::Sqlite, Backend::Postgres)]
#[tokio::test]
async fn export_then_import_keeps_events_chain_and_read_models(
    #[case] from: Backend,
    #[case] to: Backend,
) {
    let app = spawn_app_with(from, |settings| {
        settings.jwt_secret = Some(SecretString::from(SECRET));
        settings.audit.checkpoint_every = 0;
    })
    .await;
    let admin = workload(&app).await;
    let published = chronicle(&app.db, &["audit", "checkpoint"], None).await;
    assert!(published.status.success(), "{published:?}");
    let exported = chronicle(&app.db, &["events", "export"], None).await;
    assert!(exported.status.success(), "{exported:?}");
    let original = lines(&exported.stdout);
    assert!(original.len() > 20, "{} events", original.len());

    let target = TestDb::new(to).await;
    let imported = chronicle(&target, &["events", "import"], Some(&exported.stdout)).await;
    assert!(imported.status.success(), "{imported:?}");
    // A second import finds the store no longer empty.
    let again = chronicle(&target, &["events", "import"], Some(&exported.stdout)).await;
    assert!(!again.status.success());
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(
        message.contains("import only into an empty store"),
        "{message}"
    );

    let copy = lines(&chronicle(&target, &["events", "export"], None).await.stdout);
    assert_eq!(
        copy, original,
        "the same events, in the same order, with the same numbers"
    );
    let verify = chronicle(&target, &["audit", "verify"], None).await;
    assert!(verify.status.success(), "{verify:?}");
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["checked"], original.len());
    // The checkpoint published on the original holds for the copy.
    let file = target.dir.path().join("published.ndjson");
    std::fs::write(&file, &published.stdout).unwrap();
    let against = chronicle(
        &target,
        &["audit", "verify", "--against", file.to_str().unwrap()],
        None,
    )
    .await;
    assert!(against.status.success(), "{against:?}");
    let report: Value = serde_json::from_slice(&against.stdout).unwrap();
    assert_eq!(report["checkpoint"]["status"], "ok", "{report}");

    // A server on the copy rebuilds every read model from the events: the same answers.
    let mut settings = test_settings(&target);
    settings.jwt_secret = Some(SecretString::from(SECRET));
    let server = Application::build(settings)
        .await
        .expect("server on the copy");
    let address = format!("http://127.0.0.1:{}", server.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    let expected = read_models(&app.address, &admin).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answers = read_models(&address, &admin).await;
        if answers == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "read models differ after 10 s:\n{answers:#?}\n{expected:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New appends continue after the imported positions.
    let more = bearer_client(&admin_token(&address).await);
    let created = more
        .post(format!("{address}/api/tasks"))
        .json(&json!({"capability": "browser.click", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let after = lines(&chronicle(&target, &["events", "export"], None).await.stdout);
    let last_imported = original.last().unwrap()["position"].as_i64().unwrap();
    assert!(after[original.len()..]
        .iter()
        .all(|event| event["position"].as_i64().unwrap() > last_imported));
    let _ = stop.send(());
}

async fn admin_token(address: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{address}/api/auth/login"))
        .json(&json!({"email": "admin@example.com", "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}
