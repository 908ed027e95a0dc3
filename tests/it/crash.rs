//! The real binary, killed with SIGKILL and restarted: nothing committed is lost and the
//! hash chain is intact.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{Backend, TestDb};

fn free_port() -> u16 {
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
        .env_remove("CHRONICLE_CONFIG")
        .current_dir(db.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// The caller kills and waits for the child.
#[allow(clippy::zombie_processes)]
async fn start(db: &TestDb, port: u16) -> Child {
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
