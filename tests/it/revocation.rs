//! Credentials that end before they expire end everywhere within a second: a logged-out
//! session's access tokens, a reused refresh token's family, tokens naming roles the user
//! no longer has — on the node that decided and on another one. And `?access_token=` is
//! taken only by the WebSocket upgrades that need it.

use std::time::{Duration, Instant};

use chronicle::bus::{CommandBus, CommandContext, CommandError};
use chronicle::store::StoreOptions;
use chronicle_aggregates::user::{User, UserCommand, UserError};
use chronicle_commands::auth::Role;
use reqwest::{Client, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{api_key, bearer_client, spawn_app, Backend, TestApp};

/// The requirement: refused within a second of the call that ended the credential.
const WITHIN: Duration = Duration::from_secs(1);

async fn me(app_url: &str, client: &Client) -> StatusCode {
    client
        .get(format!("{app_url}/api/users/me"))
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls `GET /api/users/me` on `node` until it answers 401; panics if that takes longer
/// than [`WITHIN`] from `since`.
async fn refused_within(node: &str, client: &Client, since: Instant) {
    loop {
        let status = me(node, client).await;
        if status == StatusCode::UNAUTHORIZED {
            return;
        }
        assert_eq!(status, StatusCode::OK, "only 200 until refused");
        assert!(
            since.elapsed() < WITHIN,
            "still accepted {:?} after it ended",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Grants `user_id` the auditor role straight in the store, as an operator's tool would:
/// no node is told, they find it in the feed.
async fn make_auditor(app: &TestApp, user_id: &str) {
    let bus = CommandBus::new(app.db.store(StoreOptions::default()).await);
    let context = CommandContext {
        actor: "system:test".into(),
        correlation_id: "role-change".into(),
        ..CommandContext::default()
    };
    bus.execute::<User, CommandError<UserError>>(user_id, &context, None, |_| {
        Ok(UserCommand::GrantRole {
            role: Role::Auditor,
            at: chrono::Utc::now(),
        })
    })
    .await
    .unwrap();
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    Client::new()
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn logout_on_one_node_ends_the_access_token_on_another(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let user = app.register_user().await;
    let other = app.register_user().await;
    assert_eq!(me(&node_b, &user.client).await, StatusCode::OK);

    let out = post(
        &app,
        "/api/auth/logout",
        json!({"refresh_token": user.refresh_token}),
    )
    .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let ended = Instant::now();
    refused_within(&node_b, &user.client, ended).await;
    refused_within(&app.address, &user.client, ended).await;
    // Another session is untouched.
    assert_eq!(me(&node_b, &other.client).await, StatusCode::OK);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_reused_refresh_token_ends_its_sessions_access_tokens(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let user = app.register_user().await;
    let body = json!({"refresh_token": user.refresh_token});
    let first = post(&app, "/api/auth/refresh", body.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    let rotated: Value = first.json().await.unwrap();
    let rotated = bearer_client(rotated["access_token"].as_str().unwrap());
    assert_eq!(me(&node_b, &rotated).await, StatusCode::OK);

    // The retired token again: the family is revoked, with every access token of it.
    let reused = post(&app, "/api/auth/refresh", body).await;
    assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
    let ended = Instant::now();
    refused_within(&node_b, &rotated, ended).await;
    refused_within(&node_b, &user.client, ended).await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_role_change_refuses_tokens_that_name_the_old_roles(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let user = app.register_user().await;
    assert_eq!(me(&node_b, &user.client).await, StatusCode::OK);

    // No route changes roles yet; the command goes straight to the store, as an operator's
    // tool would, so no node is told: they find it in the feed.
    make_auditor(&app, &user.id).await;
    let changed = Instant::now();
    refused_within(&node_b, &user.client, changed).await;
    refused_within(&app.address, &user.client, changed).await;

    // A token issued now names the new roles and is accepted.
    let fresh = post(
        &app,
        "/api/auth/refresh",
        json!({"refresh_token": user.refresh_token}),
    )
    .await;
    assert_eq!(fresh.status(), StatusCode::OK);
    let fresh: Value = fresh.json().await.unwrap();
    let fresh = bearer_client(fresh["access_token"].as_str().unwrap());
    assert_eq!(me(&node_b, &fresh).await, StatusCode::OK);
    assert_eq!(me(&app.address, &fresh).await, StatusCode::OK);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_query_token_is_refused_on_a_plain_route_even_as_an_upgrade(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.register_user().await;
    let token = user.body["access_token"].as_str().unwrap();
    for path in [
        format!("/api/users/me?access_token={token}"),
        format!("/api/tasks?access_token={token}"),
    ] {
        let answer = Client::new()
            .get(app.url(&path))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_long_transaction_elsewhere_does_not_hold_a_logout_back(#[case] backend: Backend) {
    use sqlx::Connection;
    let app = spawn_app(backend).await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let user = app.register_user().await;

    // An open transaction holds the PostgreSQL feed's horizon (cluster-wide) until it ends;
    // on SQLite a reader's transaction holds nothing back.
    let _open = match backend {
        Backend::Postgres => {
            let mut open = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut open).await.unwrap();
            sqlx::query("SELECT pg_current_xact_id()")
                .execute(&mut open)
                .await
                .unwrap();
            Some(open)
        }
        Backend::Sqlite => None,
    };
    let out = post(
        &app,
        "/api/auth/logout",
        json!({"refresh_token": user.refresh_token}),
    )
    .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let ended = Instant::now();
    refused_within(&node_b, &user.client, ended).await;
    refused_within(&app.address, &user.client, ended).await;
}

/// Everything logged at DEBUG and above in this test process (nextest runs each test in a
/// process of its own).
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
    .clone()
}

struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_query_token_never_reaches_the_logs(#[case] backend: Backend) {
    let logs = captured_logs();
    let app = spawn_app(backend).await;
    let user = app.register_user().await;
    let token = user.body["access_token"].as_str().unwrap().to_owned();
    let agent: Value = user
        .client
        .post(app.url("/api/agents/register"))
        .json(&json!({"name": "tab", "kind": "remote", "capabilities": ["browser.click"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let socket = format!(
        "{}/api/agents/{}/ws",
        app.address.replacen("http://", "ws://", 1),
        agent["id"].as_str().unwrap()
    );
    let (mut open, _) = tokio_tungstenite::connect_async(format!("{socket}?access_token={token}"))
        .await
        .unwrap();
    let bogus = format!("not-a-token-{}", uuid::Uuid::new_v4().simple());
    assert!(
        tokio_tungstenite::connect_async(format!("{socket}?access_token={bogus}"))
            .await
            .is_err()
    );
    let plain = Client::new()
        .get(app.url(&format!("/api/users/me?access_token={bogus}")))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    open.close(None).await.unwrap();

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("/ws"), "the requests were logged: {logs}");
    assert!(!logs.contains(&token), "the access token was logged");
    assert!(!logs.contains(&bogus), "the bogus token was logged");
    assert!(!logs.contains("access_token="), "a query was logged");
}

/// `key` answers 200 on every node, twice: the second time from the node's cache of
/// verified keys.
async fn accepted_everywhere(nodes: &[&str], key: &Client) {
    for node in nodes {
        for _ in 0..2 {
            assert_eq!(me(node, key).await, StatusCode::OK, "{node}");
        }
    }
}

/// Revoking a key a node has verified (and keeps as verified) ends it at once on that node
/// — the very next request — and within a second on another node that holds it too.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_revoked_api_key_is_refused_at_once_here_and_soon_on_another_node(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let user = app.register_user().await;
    let (id, key) = api_key(&app, &user.client).await;
    let (_, kept) = api_key(&app, &user.client).await;
    let (key, kept) = (bearer_client(&key), bearer_client(&kept));
    accepted_everywhere(&[&app.address, &node_b], &key).await;
    accepted_everywhere(&[&app.address, &node_b], &kept).await;

    let revoked = user
        .client
        .delete(app.url(&format!("/api/users/me/api-keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let ended = Instant::now();
    assert_eq!(me(&app.address, &key).await, StatusCode::UNAUTHORIZED);
    refused_within(&node_b, &key, ended).await;
    // The user's other key is untouched.
    accepted_everywhere(&[&app.address, &node_b], &kept).await;
}

/// After a rotation the old secret is refused — at once on the rotating node, within a
/// second on another that had verified it — and the new one is accepted on both.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_rotated_api_keys_old_secret_is_refused(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let user = app.register_user().await;
    let (id, old) = api_key(&app, &user.client).await;
    let old = bearer_client(&old);
    accepted_everywhere(&[&app.address, &node_b], &old).await;

    let rotated = user
        .client
        .post(app.url(&format!("/api/users/me/api-keys/{id}/rotate")))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::CREATED);
    let ended = Instant::now();
    let rotated: Value = rotated.json().await.unwrap();
    let new = bearer_client(rotated["key"].as_str().unwrap());
    assert_eq!(me(&app.address, &old).await, StatusCode::UNAUTHORIZED);
    refused_within(&node_b, &old, ended).await;
    accepted_everywhere(&[&app.address, &node_b], &new).await;
}

/// A verified key carries its owner's roles as they were: a role change (here straight to
/// the store, as an operator's tool would make it, so no node is told) ends what every
/// node kept, within a second, and the key then acts with the new roles — an auditor
/// creates nothing.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_role_change_reaches_api_keys_every_node_verified(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let user = app.register_user().await;
    let (_, key) = api_key(&app, &user.client).await;
    let key = bearer_client(&key);
    let create = |node: &str| {
        key.post(format!("{node}/api/tasks"))
            .json(&json!({"capability": "a.b", "input": {}}))
            .send()
    };
    for node in [&app.address, &node_b] {
        for _ in 0..2 {
            assert_eq!(create(node).await.unwrap().status(), StatusCode::CREATED);
        }
    }

    make_auditor(&app, &user.id).await;
    let changed = Instant::now();
    for node in [&app.address, &node_b] {
        loop {
            let status = create(node).await.unwrap().status();
            if status == StatusCode::FORBIDDEN {
                break;
            }
            assert_eq!(status, StatusCode::CREATED, "only 201 until refused");
            assert!(
                changed.elapsed() < WITHIN,
                "{node} still created as a user {:?} after the role change",
                changed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // Still authenticated: the key itself did not end.
    assert_eq!(me(&node_b, &key).await, StatusCode::OK);
}
