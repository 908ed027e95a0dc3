//! The agent WebSocket, spoken to by a real WebSocket client: assignments are pushed as
//! tasks become ready (within the agent's concurrency), reports are acknowledged or refused
//! without closing the connection, and only the agent's owner may connect.

use std::time::Duration;

use tokio::time::Instant;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::helpers::{
    api_key, bearer_client, spawn_app, spawn_app_with, Backend, TestApp, TestUser, PASSWORD,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for a message it is owed before failing (a hang guard, not a
/// performance assertion).
const OWED: Duration = Duration::from_secs(20);

async fn register(app: &TestApp, client: &reqwest::Client, max_concurrency: u32) -> String {
    let response = client
        .post(app.url("/api/agents/register"))
        .json(&json!({
            "name": "extension",
            "kind": "remote",
            "capabilities": ["browser.click"],
            "max_concurrency": max_concurrency,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn create(app: &TestApp, client: &reqwest::Client) -> String {
    let response = client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "browser.click", "input": {"selector": "#go"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn ws_url(app: &TestApp, agent: &str) -> String {
    ws_url_at(&app.address, agent)
}

/// The agent socket's URL on the node serving at `address` (`http://…`).
fn ws_url_at(address: &str, agent: &str) -> String {
    format!("{address}/api/agents/{agent}/ws").replacen("http://", "ws://", 1)
}

fn access_token(user: &TestUser) -> String {
    user.body["access_token"].as_str().unwrap().to_owned()
}

/// Connects with `Authorization: Bearer <token>`.
async fn connect(app: &TestApp, agent: &str, token: &str) -> Socket {
    connect_at(&app.address, agent, token).await
}

/// Connects to the node serving at `address` with `Authorization: Bearer <token>`.
async fn connect_at(address: &str, agent: &str, token: &str) -> Socket {
    let mut request = ws_url_at(address, agent).into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

/// The next JSON message; pings and pongs are skipped.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(OWED, socket.next())
            .await
            .expect("a message within the hang guard")
            .expect("the socket is open")
            .expect("a message, not an error");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// Sends `message` and returns the answer (no assignment may be in flight).
async fn ask(socket: &mut Socket, message: Value) -> Value {
    send(socket, message).await;
    next(socket).await
}

async fn task(app: &TestApp, client: &reqwest::Client, id: &str) -> Value {
    client
        .get(app.url(&format!("/api/tasks/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn assignments_are_pushed_and_reports_acknowledged(#[case] backend: Backend) {
    // The first user of a system is its admin; these tests need plain users.
    let app = spawn_app(backend).await.signed_in().await;
    let user = app.register_user().await;
    let agent = register(&app, &user.client, 1).await;
    // A task queued before the agent connects is pushed on connect.
    let first = create(&app, &user.client).await;
    let mut socket = connect(&app, &agent, &access_token(&user)).await;
    let assigned = next(&mut socket).await;
    assert_eq!(assigned["type"], "task.assigned", "{assigned}");
    assert_eq!(assigned["task"]["id"], first.as_str());
    assert_eq!(assigned["task"]["status"], "leased");
    assert_eq!(assigned["task"]["input"], json!({"selector": "#go"}));
    let lease_id = assigned["task"]["lease_id"].as_str().unwrap().to_owned();
    assert!(assigned["task"]["lease_expires_at"].is_string());

    // The agent is full (max_concurrency 1): a second task waits for a free slot.
    let second = create(&app, &user.client).await;
    let progress = ask(
        &mut socket,
        json!({"type": "progress", "task_id": first, "lease_id": lease_id,
               "progress": {"percent": 50}, "ref": 7}),
    )
    .await;
    assert_eq!(progress["type"], "ack", "{progress}");
    assert_eq!(progress["for"], "progress");
    assert_eq!(progress["ref"], 7);
    assert_eq!(progress["task_id"], first.as_str());
    assert_eq!(task(&app, &user.client, &second).await["status"], "queued");

    let heartbeat = ask(&mut socket, json!({"type": "heartbeat"})).await;
    assert_eq!(heartbeat, json!({"type": "ack", "for": "heartbeat"}));

    // Completing frees the slot: the ack, then the waiting task.
    send(
        &mut socket,
        json!({"type": "complete", "task_id": first, "lease_id": lease_id,
               "output": {"clicked": true}}),
    )
    .await;
    let completed = next(&mut socket).await;
    assert_eq!(completed["type"], "ack", "{completed}");
    assert_eq!(completed["task"]["status"], "succeeded");
    assert_eq!(completed["task"]["output"], json!({"clicked": true}));
    let assigned = next(&mut socket).await;
    assert_eq!(assigned["type"], "task.assigned", "{assigned}");
    assert_eq!(assigned["task"]["id"], second.as_str());

    // A result delivered twice has one effect.
    let events = |id: String| {
        let request = user.client.get(app.url(&format!("/api/tasks/{id}/events")));
        async move {
            request
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
                .as_array()
                .unwrap()
                .len()
        }
    };
    let before = events(first.clone()).await;
    let again = ask(
        &mut socket,
        json!({"type": "complete", "task_id": first, "lease_id": lease_id,
               "output": {"clicked": true}}),
    )
    .await;
    assert_eq!(again["type"], "ack", "{again}");
    assert_eq!(events(first.clone()).await, before);
    let fetched = task(&app, &user.client, &first).await;
    assert_eq!(fetched["status"], "succeeded");
    assert_eq!(fetched["output"], json!({"clicked": true}));

    // A task created while the agent waits with a free slot arrives without asking.
    let second_lease = assigned["task"]["lease_id"].as_str().unwrap().to_owned();
    let failed = ask(
        &mut socket,
        json!({"type": "fail", "task_id": second, "lease_id": second_lease,
               "error": "selector not found"}),
    )
    .await;
    assert_eq!(failed["type"], "ack", "{failed}");
    let third = create(&app, &user.client).await;
    let pushed = next(&mut socket).await;
    // The failed task may come back first once its backoff ends; the new one must come.
    let mut seen = vec![pushed["task"]["id"].as_str().unwrap().to_owned()];
    if seen[0] != third {
        let lease = pushed["task"]["lease_id"].as_str().unwrap();
        let ack = ask(
            &mut socket,
            json!({"type": "complete", "task_id": seen[0], "lease_id": lease}),
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let pushed = next(&mut socket).await;
        seen.push(pushed["task"]["id"].as_str().unwrap().to_owned());
    }
    assert!(seen.contains(&third), "{seen:?}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_messages_are_refused_and_the_connection_stays(#[case] backend: Backend) {
    // The first user of a system is its admin; these tests need plain users.
    let app = spawn_app(backend).await.signed_in().await;
    let user = app.register_user().await;
    let agent = register(&app, &user.client, 2).await;
    let mut socket = connect(&app, &agent, &access_token(&user)).await;

    let not_json = ask(&mut socket, Value::String("{nope".into())).await;
    assert_eq!(not_json["type"], "error", "{not_json}");
    let raw = Message::Text("{nope".into());
    socket.send(raw).await.unwrap();
    let not_json = next(&mut socket).await;
    assert_eq!(not_json["type"], "error");
    assert_eq!(not_json["problem"]["status"], 400);

    let unknown = ask(&mut socket, json!({"type": "dance", "ref": "a"})).await;
    assert_eq!(unknown["type"], "error");
    assert_eq!(unknown["ref"], "a");
    assert_eq!(unknown["problem"]["status"], 422);

    let missing = ask(
        &mut socket,
        json!({"type": "complete", "task_id": Uuid::now_v7()}),
    )
    .await;
    assert_eq!(missing["problem"]["status"], 422, "{missing}");
    assert_eq!(missing["problem"]["errors"][0]["field"], "lease_id");

    let extra = ask(
        &mut socket,
        json!({"type": "heartbeat", "running_task_ids": [], "mood": "good"}),
    )
    .await;
    assert_eq!(extra["problem"]["status"], 422, "{extra}");

    // Someone else's task is not found; a stale lease is a conflict; nothing changes.
    let stranger = app.register_user().await;
    let theirs = create(&app, &stranger.client).await;
    let foreign = ask(
        &mut socket,
        json!({"type": "complete", "task_id": theirs, "lease_id": Uuid::now_v7()}),
    )
    .await;
    assert_eq!(foreign["problem"]["status"], 404, "{foreign}");
    assert_eq!(foreign["task_id"], theirs.as_str());
    assert_eq!(
        task(&app, &stranger.client, &theirs).await["status"],
        "queued"
    );

    let mine = create(&app, &user.client).await;
    let assigned = next(&mut socket).await;
    assert_eq!(assigned["task"]["id"], mine.as_str());
    let stale = ask(
        &mut socket,
        json!({"type": "complete", "task_id": mine, "lease_id": Uuid::now_v7()}),
    )
    .await;
    assert_eq!(stale["problem"]["status"], 409, "{stale}");
    assert_eq!(task(&app, &user.client, &mine).await["status"], "leased");

    // Still connected and working.
    let lease_id = assigned["task"]["lease_id"].as_str().unwrap();
    let done = ask(
        &mut socket,
        json!({"type": "complete", "task_id": mine, "lease_id": lease_id, "output": 1}),
    )
    .await;
    assert_eq!(done["type"], "ack", "{done}");
    assert_eq!(task(&app, &user.client, &mine).await["status"], "succeeded");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn only_the_owner_connects(#[case] backend: Backend) {
    // The first user of a system is its admin; these tests need plain users.
    let app = spawn_app(backend).await.signed_in().await;
    let user = app.register_user().await;
    let stranger = app.register_user().await;
    let agent = register(&app, &user.client, 1).await;

    // No credentials: the upgrade is refused with 401.
    let refused = tokio_tungstenite::connect_async(ws_url(&app, &agent)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    // Another user's agent does not exist for them.
    let mut request = ws_url(&app, &agent).into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", access_token(&stranger))).unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404)
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    // A bad token in the query is 401; a good one connects (browsers cannot send headers).
    let bad = format!("{}?access_token=not-a-token", ws_url(&app, &agent));
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let good = format!(
        "{}?access_token={}",
        ws_url(&app, &agent),
        access_token(&user)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(good).await.unwrap();
    let id = create(&app, &user.client).await;
    let assigned = next(&mut socket).await;
    assert_eq!(assigned["task"]["id"], id.as_str());
    // The query token is not accepted on plain HTTP calls.
    let plain = reqwest::Client::new()
        .get(app.url(&format!(
            "/api/tasks/{id}?access_token={}",
            access_token(&user)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);

    // A deregistered agent's socket is closed, and it cannot connect again.
    let deleted = user
        .client
        .delete(app.url(&format!("/api/agents/{agent}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let request = {
        let mut request = ws_url(&app, &agent).into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", access_token(&user))).unwrap(),
        );
        request
    };
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 409)
        }
        other => panic!("expected a 409, got {other:?}"),
    }
}

/// The close frame that ends `socket` before `deadline`: `(code, reason)`. Other messages
/// (assignments, pings) are skipped.
async fn closed_before(socket: &mut Socket, deadline: Instant) -> (u16, String) {
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("closed before the deadline")
            .expect("a close frame before the end of the stream")
            .expect("a message, not an error");
        if let Message::Close(frame) = message {
            let frame = frame.expect("a close frame with a code");
            return (u16::from(frame.code), frame.reason.to_string());
        }
    }
}

async fn login(app: &TestApp, user: &TestUser) -> String {
    let response = reqwest::Client::new()
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": user.body["user"]["email"], "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The requirement: a socket closes within a second of its credentials ending elsewhere.
const WITHIN: Duration = Duration::from_secs(1);

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn sockets_close_when_their_credentials_end_on_another_node(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let user = app.register_user().await;
    let agent = register(&app, &user.client, 1).await;
    let (revoked_id, revoked_key) = api_key(&app, &user.client).await;
    let (rotated_id, rotated_key) = api_key(&app, &user.client).await;
    let mut by_token = connect_at(&node_b, &agent, &access_token(&user)).await;
    let mut by_revoked = connect_at(&node_b, &agent, &revoked_key).await;
    let mut by_rotated = connect_at(&node_b, &agent, &rotated_key).await;

    let revoked = user
        .client
        .delete(app.url(&format!("/api/users/me/api-keys/{revoked_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + WITHIN;
    assert_eq!(
        closed_before(&mut by_revoked, deadline).await,
        (4401, "API key revoked".to_owned())
    );

    let rotated = user
        .client
        .post(app.url(&format!("/api/users/me/api-keys/{rotated_id}/rotate")))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::CREATED);
    let deadline = Instant::now() + WITHIN;
    assert_eq!(
        closed_before(&mut by_rotated, deadline).await,
        (4401, "API key rotated".to_owned())
    );

    let out = reqwest::Client::new()
        .post(app.url("/api/auth/logout"))
        .json(&json!({"refresh_token": user.refresh_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + WITHIN;
    assert_eq!(
        closed_before(&mut by_token, deadline).await,
        (4401, "session ended".to_owned())
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_expiring_token_closes_the_socket_unless_an_auth_message_extends_it(
    #[case] backend: Backend,
) {
    const TTL: u64 = 2;
    let app = spawn_app_with(backend, |settings| settings.auth.access_ttl_secs = TTL)
        .await
        .signed_in()
        .await;
    // Keys do not expire; every access token lives two seconds, so log in right before use.
    let stranger = app.register_user().await;
    let (_, theirs) = api_key(&app, &stranger.client).await;
    let user = app.register_user().await;
    let client = bearer_client(&login(&app, &user).await);
    let agent = register(&app, &client, 1).await;
    let (_, key) = api_key(&app, &client).await;

    let mut expiring = connect(&app, &agent, &login(&app, &user).await).await;
    let mut extended = connect(&app, &agent, &login(&app, &user).await).await;
    let ack = ask(
        &mut extended,
        json!({"type": "auth", "token": key, "ref": 2}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!((&ack["for"], &ack["ref"]), (&json!("auth"), &json!(2)));
    // Refused extensions change nothing.
    let foreign = ask(&mut extended, json!({"type": "auth", "token": theirs})).await;
    assert_eq!(foreign["type"], "error", "{foreign}");
    assert_eq!(foreign["problem"]["errors"][0]["field"], "token");
    let junk = ask(&mut extended, json!({"type": "auth", "token": "junk"})).await;
    assert_eq!(junk["problem"]["status"], 401, "{junk}");

    let expired = closed_before(&mut expiring, Instant::now() + OWED).await;
    assert_eq!(expired, (4401, "credentials expired".to_owned()));
    // Past the first token's expiry, the extended socket still works.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive = ask(&mut extended, json!({"type": "heartbeat"})).await;
    assert_eq!(alive["type"], "ack", "{alive}");
}
