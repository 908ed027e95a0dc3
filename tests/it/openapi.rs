//! `GET /api/openapi.json` against the running server: the document parses, every
//! operation in it exists with the credentials it claims, no method it leaves out is
//! served, and every endpoint of API.md that the server answers is in it.

use std::collections::BTreeSet;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use rstest::rstest;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{spawn_app_with, Backend, TestApp};

/// Every endpoint in API.md's tables, `{…}` standing for any path parameter.
const API_MD: &[(&str, &str)] = &[
    // Auth
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("GET", "/api/users/me"),
    ("POST", "/api/users/me/api-keys"),
    ("GET", "/api/users/me/api-keys"),
    ("POST", "/api/users/me/api-keys/{}/rotate"),
    ("DELETE", "/api/users/me/api-keys/{}"),
    // Agents
    ("POST", "/api/agents/register"),
    ("GET", "/api/agents"),
    ("GET", "/api/agents/{}"),
    ("POST", "/api/agents/{}/heartbeat"),
    ("POST", "/api/agents/{}/lease"),
    ("POST", "/api/agents/{}/execute"),
    ("DELETE", "/api/agents/{}"),
    ("GET", "/api/agents/{}/ws"),
    ("GET", "/api/agents/{}/events"),
    // Tasks
    ("POST", "/api/tasks"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/{}"),
    ("PATCH", "/api/tasks/{}"),
    ("DELETE", "/api/tasks/{}"),
    ("POST", "/api/tasks/{}/retry"),
    ("GET", "/api/tasks/{}/events"),
    ("GET", "/api/tasks/{}/stream"),
    // Workflows
    ("POST", "/api/workflows"),
    ("GET", "/api/workflows"),
    ("GET", "/api/workflows/{}"),
    ("PUT", "/api/workflows/{}"),
    ("DELETE", "/api/workflows/{}"),
    ("POST", "/api/workflows/{}/execute"),
    ("GET", "/api/workflows/{}/status"),
    ("GET", "/api/workflow-runs/{}"),
    ("DELETE", "/api/workflow-runs/{}"),
    ("GET", "/api/workflow-runs/{}/events"),
    ("GET", "/api/workflow-templates"),
    ("POST", "/api/workflows/{}/schedules"),
    ("GET", "/api/workflows/{}/schedules"),
    ("GET", "/api/workflows/{}/schedules/{}"),
    ("DELETE", "/api/workflows/{}/schedules/{}"),
    // Search, RAG
    ("GET", "/api/search"),
    ("POST", "/api/rag/context"),
    // Analytics, audit, admin, system
    ("GET", "/api/analytics/usage"),
    ("GET", "/api/analytics/status"),
    ("GET", "/api/events"),
    ("GET", "/api/audit/verify"),
    ("GET", "/api/audit/checkpoint"),
    ("GET", "/api/admin/projections"),
    ("POST", "/api/admin/projections/{}/rebuild"),
    ("GET", "/api/health"),
    ("GET", "/api/status"),
    ("GET", "/api/metrics"),
    ("GET", "/api/ws"),
    // Teams
    ("POST", "/api/teams"),
    ("GET", "/api/teams"),
    ("GET", "/api/teams/{}"),
    ("DELETE", "/api/teams/{}"),
    ("POST", "/api/teams/{}/invitations"),
    ("POST", "/api/invitations/{}/accept"),
    ("PATCH", "/api/teams/{}/members/{}"),
    ("DELETE", "/api/teams/{}/members/{}"),
    ("POST", "/api/workflows/{}/share"),
    ("POST", "/api/workflows/{}/unshare"),
    ("POST", "/api/agents/{}/share"),
    ("POST", "/api/agents/{}/unshare"),
    // Sync
    ("POST", "/api/sync/push"),
    ("GET", "/api/sync/pull"),
];

/// The endpoints of API.md's Auth, Agents and Tasks tables that the server implements
/// today; each must answer and be documented.
const IMPLEMENTED: &[(&str, &str)] = &[
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("GET", "/api/users/me"),
    ("POST", "/api/users/me/api-keys"),
    ("GET", "/api/users/me/api-keys"),
    ("POST", "/api/users/me/api-keys/{}/rotate"),
    ("DELETE", "/api/users/me/api-keys/{}"),
    ("POST", "/api/agents/register"),
    ("GET", "/api/agents"),
    ("GET", "/api/agents/{}"),
    ("POST", "/api/agents/{}/heartbeat"),
    ("POST", "/api/agents/{}/lease"),
    ("POST", "/api/agents/{}/execute"),
    ("DELETE", "/api/agents/{}"),
    ("GET", "/api/agents/{}/ws"),
    ("POST", "/api/tasks"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/{}"),
    ("PATCH", "/api/tasks/{}"),
    ("DELETE", "/api/tasks/{}"),
    ("POST", "/api/tasks/{}/retry"),
    ("GET", "/api/tasks/{}/events"),
    ("GET", "/api/agents/{}/events"),
    ("GET", "/api/events"),
    ("GET", "/api/audit/verify"),
    ("GET", "/api/tasks/{}/stream"),
    ("GET", "/api/ws"),
    ("GET", "/api/admin/projections"),
    ("POST", "/api/admin/projections/{}/rebuild"),
    ("GET", "/api/health"),
    ("GET", "/api/status"),
    ("GET", "/api/metrics"),
    ("GET", "/api/audit/checkpoint"),
    ("POST", "/api/teams"),
    ("GET", "/api/teams"),
    ("GET", "/api/teams/{}"),
    ("DELETE", "/api/teams/{}"),
    ("POST", "/api/teams/{}/invitations"),
    ("POST", "/api/invitations/{}/accept"),
    ("PATCH", "/api/teams/{}/members/{}"),
    ("DELETE", "/api/teams/{}/members/{}"),
    ("POST", "/api/workflows/{}/share"),
    ("POST", "/api/workflows/{}/unshare"),
    ("POST", "/api/agents/{}/share"),
    ("POST", "/api/agents/{}/unshare"),
    ("POST", "/api/sync/push"),
    ("GET", "/api/sync/pull"),
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// `/api/tasks/{id}` → `/api/tasks/{}`: parameter names do not matter for matching.
fn shape(path: &str) -> String {
    let mut shaped = String::new();
    let mut in_parameter = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_parameter = true;
                shaped.push_str("{}");
            }
            '}' => in_parameter = false,
            _ if in_parameter => {}
            _ => shaped.push(c),
        }
    }
    shaped
}

/// Any path parameter filled in with a fresh UUID: a real route answers for it (401 to an
/// anonymous caller), only a missing one answers 404.
fn concrete(path: &str) -> String {
    shape(path).replace("{}", &Uuid::now_v7().to_string())
}

/// Whether every alternative of the operation's (or the document's) security names a
/// scheme; `{}` is "no credentials needed".
fn needs_credentials(operation: &Value, global: &[Value]) -> bool {
    let requirements = operation["security"]
        .as_array()
        .map_or(global, Vec::as_slice);
    !requirements.is_empty()
        && requirements
            .iter()
            .all(|requirement| requirement.as_object().is_some_and(|r| !r.is_empty()))
}

/// What an anonymous request without a body gets.
async fn probe(app: &TestApp, method: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(path),
        )
        .send()
        .await
        .unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_document_describes_the_running_server(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.rate_limit.per_minute = 100_000;
        settings.rate_limit.auth_per_minute = 100_000;
    })
    .await;

    let response = probe(&app, "GET", "/api/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["openapi"], "3.1.0");
    assert_eq!(
        json,
        serde_json::to_value(chronicle::api::openapi::document()).unwrap(),
        "the server serves the document built from its routes"
    );
    let no_security = Vec::new();
    let global = json["security"].as_array().unwrap_or(&no_security);

    let mut documented = BTreeSet::new();
    for (path, item) in json["paths"].as_object().unwrap() {
        let methods: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|method| method.to_uppercase())
            .filter(|method| METHODS.contains(&method.as_str()))
            .collect();
        for method in &methods {
            let operation = &item[method.to_lowercase()];
            documented.insert((method.clone(), shape(path)));
            let response = probe(&app, method, &concrete(path)).await;
            let status = response.status();
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but the server answers {status}"
            );
            if needs_credentials(operation, global) {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} is documented as needing credentials; check them before \
                     anything else"
                );
                assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
            } else {
                assert_ne!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} is documented as anonymous"
                );
            }
        }
        for method in METHODS.iter().filter(|m| !methods.iter().any(|d| d == *m)) {
            let status = probe(&app, method, &concrete(path)).await.status();
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is served but not documented"
            );
        }
    }

    for (method, path) in API_MD {
        let status = probe(&app, method, &concrete(path)).await.status();
        let served = status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED;
        assert!(
            !served || documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} of API.md is served ({status}) but not in /api/openapi.json"
        );
    }
    for (method, path) in IMPLEMENTED {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is not in /api/openapi.json"
        );
    }
}
