//! The server's log at trace level over a whole authentication flow: every line is JSON,
//! request lines carry the request id, route template, method and actor, and no password,
//! token or key secret is ever written.

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{bearer_client, Backend, TestDb};
use crate::server_process::ServerProcess;

const PASSWORD: &str = "log-test password 7f3a9c";
const WRONG_PASSWORD: &str = "log-test wrong guess 51be";

async fn json_of(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    response.json().await.unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_level_log_of_an_auth_flow_names_requests_and_holds_no_secret(
    #[case] backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = ServerProcess::start(
        &db,
        &[
            ("RUST_LOG", "trace"),
            ("CHRONICLE_LOG__FORMAT", "json"),
            (
                "CHRONICLE_JWT_SECRET",
                "a log test secret of thirty-two bytes or more",
            ),
        ],
    )
    .await;
    let anonymous = reqwest::Client::new();
    let mut secrets: Vec<String> = vec![PASSWORD.into(), WRONG_PASSWORD.into()];

    let registered = json_of(
        anonymous
            .post(server.url("/api/auth/register"))
            .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let user_id = registered["user"]["id"].as_str().unwrap().to_owned();
    secrets.push(registered["access_token"].as_str().unwrap().into());
    secrets.push(registered["refresh_token"].as_str().unwrap().into());

    let refused = anonymous
        .post(server.url("/api/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": WRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let login = json_of(
        anonymous
            .post(server.url("/api/auth/login"))
            .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    secrets.push(login["access_token"].as_str().unwrap().into());
    secrets.push(refresh.clone());

    let refreshed = json_of(
        anonymous
            .post(server.url("/api/auth/refresh"))
            .json(&json!({"refresh_token": refresh}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    let refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    secrets.push(access.clone());
    secrets.push(refresh.clone());
    let user = bearer_client(&access);

    let key = json_of(
        user.post(server.url("/api/users/me/api-keys"))
            .json(&json!({"name": "laptop"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let key = key["key"].as_str().unwrap().to_owned();
    // The key's secret part alone, too: `chr_<id>_<secret>`.
    secrets.push(key.rsplit('_').next().unwrap().to_owned());
    secrets.push(key.clone());
    let by_header = anonymous
        .get(server.url("/api/users/me"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), StatusCode::OK);
    let task = json_of(
        bearer_client(&key)
            .post(server.url("/api/tasks"))
            .json(&json!({"capability": "browser.click", "input": {"selector": "#go"}}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let read = user
        .get(server.url(&format!("/api/tasks/{task_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let read_request_id = read.headers()["x-request-id"].to_str().unwrap().to_owned();
    let out = anonymous
        .post(server.url("/api/auth/logout"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);

    let log = server.stop().await;
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log holds a secret ({} bytes of log)",
            log.len()
        );
    }

    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.len() > 50, "a trace-level log: {} lines", lines.len());
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("request_id").is_some())
        .collect();
    assert!(!requests.is_empty());
    for line in &requests {
        assert!(line["route"].is_string(), "{line}");
        assert!(line["method"].is_string(), "{line}");
        assert!(line.get("path").is_none(), "no raw path: {line}");
    }
    let routes: std::collections::BTreeSet<&str> = requests
        .iter()
        .filter_map(|l| l["route"].as_str())
        .collect();
    for route in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/refresh",
        "/api/auth/logout",
        "/api/users/me/api-keys",
        "/api/users/me",
        "/api/tasks",
        "/api/tasks/{id}",
    ] {
        assert!(routes.contains(route), "{route} not among {routes:?}");
    }
    // The task read: its request id, the template, the task and who asked, on every line.
    let read_lines: Vec<&&Value> = requests
        .iter()
        .filter(|l| l["request_id"] == read_request_id.as_str())
        .collect();
    assert!(
        !read_lines.is_empty(),
        "no line of request {read_request_id}"
    );
    for line in &read_lines {
        assert_eq!(line["route"], "/api/tasks/{id}", "{line}");
        assert_eq!(line["task_id"], task_id.as_str(), "{line}");
    }
    assert!(
        read_lines.iter().any(|l| l["actor"] == user_id.as_str()),
        "the actor is recorded once known: {read_lines:?}"
    );
}
