//! What the schema-driven fuzzing (`scripts/fuzz-api`) found, pinned as black-box tests:
//! the server accepts what the document calls valid and refuses the rest the way it says.

use reqwest::{Method, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Backend};

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_server_keeps_the_rules_its_document_states(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;

    // TRACE reaches routing (405), whatever Idempotency-Key it carries.
    let trace = app
        .client
        .request(Method::TRACE, app.url("/api/tasks"))
        .header("idempotency-key", "has spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(trace.status(), StatusCode::METHOD_NOT_ALLOWED);

    // A whole float is an integer; the answer names no Rust type.
    let created = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "x.work", "priority": 5.0, "timeout_secs": 30.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let task: Value = created.json().await.unwrap();
    assert_eq!(task["priority"], 5);
    let id = task["id"].as_str().unwrap();
    let wrong = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "x.work", "priority": "high"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let wrong = wrong.text().await.unwrap();
    assert!(!wrong.contains("i64"), "{wrong}");

    // A malformed If-Match is a bad request; a stale one is 412.
    for (if_match, status) in [
        ("null", StatusCode::BAD_REQUEST),
        ("", StatusCode::BAD_REQUEST),
        ("\"9\"", StatusCode::PRECONDITION_FAILED),
    ] {
        let response = app
            .client
            .delete(app.url(&format!("/api/tasks/{id}")))
            .header("if-match", if_match)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "If-Match: {if_match:?}");
    }

    // An empty Idempotency-Key or cursor is refused as the document says.
    let empty_key = app
        .client
        .post(app.url("/api/tasks"))
        .header("idempotency-key", "")
        .json(&json!({"capability": "x.work"}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty_key.status(), StatusCode::BAD_REQUEST);
    let empty_cursor = app
        .client
        .get(app.url("/api/tasks?cursor="))
        .send()
        .await
        .unwrap();
    assert_eq!(empty_cursor.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // `null` is the empty body where the body is optional; an array is not a body.
    let agent: Value = app
        .client
        .post(app.url("/api/agents/register"))
        .json(&json!({"name": "ext", "kind": "remote", "capabilities": ["x.work"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = agent["id"].as_str().unwrap();
    for (body, status) in [
        ("null", StatusCode::OK),
        ("[null, null]", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let response = app
            .client
            .post(app.url(&format!("/api/agents/{agent}/heartbeat")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "heartbeat body {body}");
    }
}
