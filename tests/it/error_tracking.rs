//! Error tracking against a local server that speaks Sentry's envelope protocol: a request
//! that fails inside is reported with its request id, route, release and user id, and
//! never with the password or the tokens the test used.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{bearer_client, Backend, TestDb};
use crate::server_process::ServerProcess;

const PASSWORD: &str = "sentry-test password 2c81f0";

/// What a Sentry ingest endpoint received: each envelope's raw bytes.
type Received = Arc<Mutex<Vec<Bytes>>>;

/// A stand-in for Sentry at `/api/<project>/envelope/`, answering as Sentry does.
async fn fake_sentry() -> (String, Received) {
    let received: Received = Arc::default();
    let kept = received.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
        let kept = kept.clone();
        async move {
            if uri.path() == "/api/42/envelope/" {
                kept.lock().unwrap().push(body);
            }
            axum::Json(json!({"id": "0123456789abcdef0123456789abcdef"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (
        format!("http://public0123456789@127.0.0.1:{port}/42"),
        received,
    )
}

/// The event items of an envelope: a header line, then per item a header line and a
/// payload (whose length the item header may give).
fn events(envelope: &[u8]) -> Vec<Value> {
    let mut events = Vec::new();
    let mut rest = match envelope.iter().position(|&b| b == b'\n') {
        Some(end) => &envelope[end + 1..],
        None => return events,
    };
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let header: Value = serde_json::from_slice(&rest[..end]).unwrap();
        rest = rest.get(end + 1..).unwrap_or_default();
        let length = header["length"].as_u64().map_or_else(
            || rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len()),
            |n| n as usize,
        );
        let payload = &rest[..length];
        rest = rest.get(length + 1..).unwrap_or_default();
        if header["type"] == "event" {
            events.push(serde_json::from_slice(payload).unwrap());
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_reaches_sentry_tagged_and_scrubbed() {
    let (dsn, received) = fake_sentry().await;
    let db = TestDb::new(Backend::Postgres).await;
    let server = ServerProcess::start(
        &db,
        &[
            ("CHRONICLE_SENTRY__DSN", dsn.as_str()),
            (
                "CHRONICLE_JWT_SECRET",
                "a sentry test secret of thirty-two bytes",
            ),
        ],
    )
    .await;
    let registered: Value = reqwest::Client::new()
        .post(server.url("/api/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = registered["access_token"].as_str().unwrap().to_owned();
    let refresh = registered["refresh_token"].as_str().unwrap().to_owned();
    let user_id = registered["user"]["id"].as_str().unwrap().to_owned();

    // A read model the server cannot read: the query fails inside, an `error!` is logged and
    // the caller gets a plain 500.
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let version: i64 = sqlx::query_scalar(
        "SELECT max(version) FROM projection_checkpoints WHERE name = 'task_view'",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    sqlx::query(&format!(
        "ALTER TABLE task_view_v{version} RENAME TO task_view_gone"
    ))
    .execute(&mut connection)
    .await
    .unwrap();
    let failed = bearer_client(&access)
        .get(server.url("/api/analytics/status"))
        .header("X-Request-Id", "sentry-test-request-1")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.headers()["content-type"], "application/problem+json");

    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let envelopes = received.lock().unwrap().clone();
        let found = envelopes
            .iter()
            .flat_map(|envelope| events(envelope))
            .find(|event| event["tags"]["request_id"] == "sentry-test-request-1");
        if let Some(event) = found {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no event in {} envelopes",
            envelopes.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["tags"]["route"], "/api/analytics/status", "{event}");
    assert_eq!(event["tags"]["method"], "GET", "{event}");
    assert_eq!(
        event["release"],
        format!("chronicle@{}", env!("CARGO_PKG_VERSION")),
        "{event}"
    );
    assert_eq!(event["environment"], "development", "{event}");
    // Sentry's default level, `error`, is left out of the payload.
    assert!(
        event["level"].is_null() || event["level"] == "error",
        "{event}"
    );
    assert_eq!(event["user"], json!({"id": user_id}), "{event}");
    assert!(event.get("request").is_none(), "{event}");

    server.stop().await;
    let everything: Vec<u8> = received.lock().unwrap().concat();
    let everything = String::from_utf8_lossy(&everything);
    for secret in [PASSWORD, access.as_str(), refresh.as_str()] {
        assert!(
            !everything.contains(secret),
            "a secret reached Sentry: {everything}"
        );
    }
}
