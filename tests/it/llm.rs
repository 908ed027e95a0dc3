//! The built-in LLM agent end to end: a local server in the test speaks each provider's
//! real wire format (SSE chunks for OpenAI-compatible and Anthropic, NDJSON for Ollama),
//! the real server runs `llm.chat` tasks against it on both backends.
//!
//! Streams are gated: the fake provider holds its answer until the test has seen what it
//! waits for, so "a token before the task succeeds" is an order, not a race.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode as Status;
use rstest::rstest;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app_with, Backend, TestApp};

/// A piece of a streamed answer: bytes, or a pause until the test releases it.
#[derive(Clone)]
enum Piece {
    Bytes(String),
    Wait(Arc<Notify>),
}

/// What the fake provider answers to one request.
#[derive(Clone)]
enum Reply {
    Status(u16, Option<&'static str>),
    Stream(&'static str, Vec<Piece>),
}

/// A request the fake provider got.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Value,
    at: Instant,
}

#[derive(Default)]
struct Fake {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

/// A local provider on 127.0.0.1 that answers from a script (500 once it runs out).
struct Provider {
    url: String,
    fake: Arc<Fake>,
}

impl Provider {
    async fn start() -> Self {
        let fake = Arc::new(Fake::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .route("/v1/messages", post(answer))
            .route("/api/chat", post(answer))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, fake }
    }

    fn reply(&self, reply: Reply) {
        self.fake.replies.lock().unwrap().push_back(reply);
    }

    fn seen(&self) -> Vec<Seen> {
        self.fake.seen.lock().unwrap().clone()
    }
}

async fn answer(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.seen.lock().unwrap().push(Seen {
        headers,
        body,
        at: Instant::now(),
    });
    let reply = fake
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(500, None));
    match reply {
        Reply::Status(status, retry_after) => {
            let mut response = Response::builder().status(status);
            if let Some(after) = retry_after {
                response = response.header("retry-after", after);
            }
            response
                .body(Body::from(r#"{"error":{"message":"not now"}}"#))
                .unwrap()
        }
        Reply::Stream(content_type, pieces) => {
            let stream = futures::stream::unfold(pieces.into_iter(), |mut pieces| async move {
                loop {
                    match pieces.next()? {
                        Piece::Wait(gate) => gate.notified().await,
                        Piece::Bytes(bytes) => {
                            return Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), pieces))
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", content_type)
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

fn bytes(text: impl Into<String>) -> Piece {
    Piece::Bytes(text.into())
}

/// An OpenAI-compatible stream of `tokens`, then usage and `[DONE]`; `gate` before each
/// token after the first when given.
fn openai_stream(tokens: &[&str], usage: (u64, u64), gates: &[Arc<Notify>]) -> Reply {
    let mut pieces = Vec::new();
    for (n, token) in tokens.iter().enumerate() {
        if let Some(gate) = gates.get(n) {
            pieces.push(Piece::Wait(gate.clone()));
        }
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": null}]});
        pieces.push(bytes(format!("data: {chunk}\n\n")));
    }
    let last = json!({"id": "c1", "choices": [],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1}});
    pieces.push(bytes(format!("data: {last}\n\ndata: [DONE]\n\n")));
    Reply::Stream("text/event-stream", pieces)
}

fn anthropic_event(kind: &str, data: Value) -> Piece {
    bytes(format!("event: {kind}\ndata: {data}\n\n"))
}

fn chat_input(content: &str) -> Value {
    json!({"messages": [{"role": "user", "content": content}]})
}

async fn spawn_with(backend: Backend, provider: &str, fake: &Provider) -> TestApp {
    let url = fake.url.clone();
    let provider = provider.to_owned();
    spawn_app_with(backend, move |settings| {
        settings.llm.provider = Some(provider);
        settings.llm.base_url = Some(url);
        settings.llm.api_key = Some(SecretString::from("sk-test-key"));
        settings.llm.model = Some("test-model".into());
        settings.llm.initial_backoff_ms = 10;
        settings.llm.max_retries = 2;
        settings.dispatch.recheck_secs = 1;
    })
    .await
    .signed_in()
    .await
}

async fn create(client: &reqwest::Client, app: &TestApp, body: Value) -> Value {
    let response = client
        .post(app.url("/api/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), Status::CREATED);
    response.json().await.unwrap()
}

async fn get(client: &reqwest::Client, app: &TestApp, path: &str) -> (Status, Value) {
    let response = client.get(app.url(path)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads the task until it has ended.
async fn finished(client: &reqwest::Client, app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, task) = get(client, app, &format!("/api/tasks/{id}")).await;
        if matches!(
            task["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return task;
        }
        assert!(Instant::now() < deadline, "the task never ended: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An SSE reader: frames as `(event, data)`.
struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: String,
}

impl Sse {
    async fn open(app: &TestApp, id: &str) -> Self {
        let response = app
            .client
            .get(app.url(&format!("/api/tasks/{id}/stream")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), Status::OK);
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(|value| value.trim_start().to_owned())
                };
                match (field("event:"), field("data:")) {
                    (Some(event), Some(data)) => return (event, data),
                    _ => continue,
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("the stream went quiet")
                .expect("the stream ended")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Frames until one of `event`, returned with its data.
    async fn until(&mut self, event: &str) -> (Vec<(String, String)>, Value) {
        let mut before = Vec::new();
        loop {
            let (kind, data) = self.next().await;
            if kind == event {
                return (before, serde_json::from_str(&data).unwrap());
            }
            before.push((kind, data));
        }
    }
}

/// The caller's usage rows, once the analytics projection has the task's tokens.
async fn usage_with_tokens(app: &TestApp) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = |days: i64| {
            (chrono::Utc::now() + chrono::TimeDelta::days(days))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        let path = format!(
            "/api/analytics/usage?from={}&to={}&group_by=capability",
            at(-1),
            at(1)
        );
        let (status, body) = get(&app.client, app, &path).await;
        assert_eq!(status, Status::OK, "{body}");
        let tokens = body["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|row| row["input_tokens"].as_i64().unwrap_or(0) > 0);
        if tokens {
            return body;
        }
        assert!(Instant::now() < deadline, "no tokens in the usage: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn openai_tokens_stream_before_the_task_succeeds_and_usage_is_counted(
    #[case] backend: Backend,
) {
    let fake = Provider::start().await;
    let (first, second) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    fake.reply(openai_stream(
        &["Hel", "lo"],
        (9, 2),
        &[first.clone(), second.clone()],
    ));
    let app = spawn_with(backend, "openai", &fake).await;
    let agents = get(&app.client, &app, "/api/agents?capability=llm.chat")
        .await
        .1;
    assert_eq!(agents["items"][0]["kind"], "llm", "{agents}");

    let task = create(
        &app.client,
        &app,
        json!({"capability": "llm.chat", "input": chat_input("hi")}),
    )
    .await;
    let id = task["id"].as_str().unwrap();
    let mut stream = Sse::open(&app, id).await;
    first.notify_one();
    let (_, token) = stream.until("token").await;
    assert_eq!(token["text"], "Hel");
    assert_eq!(token["index"], 0);
    // The provider holds the rest: the task cannot have succeeded yet.
    let (_, now) = get(&app.client, &app, &format!("/api/tasks/{id}")).await;
    assert_eq!(now["status"], "running");
    second.notify_one();
    let (before, succeeded) = stream.until("TaskSucceeded").await;
    assert!(
        before
            .iter()
            .any(|(kind, data)| kind == "token" && data.contains("\"lo\"")),
        "{before:?}"
    );
    assert!(succeeded.to_string().contains("Hello"), "{succeeded}");

    let task = finished(&app.client, &app, id).await;
    assert_eq!(task["output"]["content"], "Hello");
    assert_eq!(
        task["output"]["usage"],
        json!({"input_tokens": 9, "output_tokens": 2})
    );
    assert_eq!(task["output"]["sources"], json!([]));
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["authorization"], "Bearer sk-test-key");
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(seen[0].body["stream_options"]["include_usage"], true);
    assert_eq!(seen[0].body["model"], "test-model");
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "user", "content": "hi"}])
    );

    let usage = usage_with_tokens(&app).await;
    let row = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["bucket"] == "llm.chat")
        .unwrap();
    assert_eq!(
        (row["input_tokens"].as_i64(), row["output_tokens"].as_i64()),
        (Some(9), Some(2))
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn anthropic_messages_stream_tokens_to_the_live_socket(#[case] backend: Backend) {
    let fake = Provider::start().await;
    let gate = Arc::new(Notify::new());
    let done = Arc::new(Notify::new());
    fake.reply(Reply::Stream(
        "text/event-stream",
        vec![
            Piece::Wait(gate.clone()),
            anthropic_event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                    "role": "assistant", "content": [], "usage": {"input_tokens": 25, "output_tokens": 1}}}),
            ),
            anthropic_event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            anthropic_event("ping", json!({"type": "ping"})),
            anthropic_event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}}),
            ),
            Piece::Wait(done.clone()),
            anthropic_event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " !"}}),
            ),
            anthropic_event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            anthropic_event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}),
            ),
            anthropic_event("message_stop", json!({"type": "message_stop"})),
        ],
    ));
    let app = spawn_with(backend, "anthropic", &fake).await;
    let user = app.register_user().await;
    let task = create(
        &user.client,
        &app,
        json!({"capability": "llm.chat", "input": {
            "messages": [{"role": "system", "content": "Answer in French."},
                         {"role": "user", "content": "Hello"}],
            "max_tokens": 50, "temperature": 0.5,
        }}),
    )
    .await;
    let id = task["id"].as_str().unwrap();

    let url = format!(
        "{}/api/ws?access_token={}",
        app.address.replacen("http://", "ws://", 1),
        user.body["access_token"].as_str().unwrap()
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(Message::Text(
            json!({"type": "subscribe", "topics": [format!("task:{id}")]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let mut token_text = None;
    let mut subscribed = false;
    while token_text.is_none() {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("the socket went quiet")
            .unwrap()
            .unwrap();
        let Ok(text) = message.to_text() else {
            continue;
        };
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        match message["type"].as_str() {
            Some("subscribed") if !subscribed => {
                subscribed = true;
                gate.notify_one();
            }
            Some("token") => {
                assert_eq!(message["topic"], format!("task:{id}"));
                assert_eq!(message["task_id"], id);
                token_text = message["text"].as_str().map(str::to_owned);
            }
            _ => {}
        }
    }
    assert_eq!(token_text.as_deref(), Some("Bonjour"));
    let (_, now) = get(&user.client, &app, &format!("/api/tasks/{id}")).await;
    assert_eq!(now["status"], "running");
    done.notify_one();

    let task = finished(&user.client, &app, id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["output"]["content"], "Bonjour !");
    assert_eq!(
        task["output"]["usage"],
        json!({"input_tokens": 25, "output_tokens": 15})
    );
    assert_eq!(task["output"]["provider"], "anthropic");
    let seen = fake.seen();
    assert_eq!(seen[0].headers["x-api-key"], "sk-test-key");
    assert_eq!(seen[0].headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen[0].body["system"], "Answer in French.");
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "user", "content": "Hello"}])
    );
    assert_eq!(seen[0].body["max_tokens"], 50);
    assert_eq!(seen[0].body["stream"], true);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn ollama_ndjson_streams_and_counts_tokens(#[case] backend: Backend) {
    let fake = Provider::start().await;
    let line = |content: &str, done: bool| {
        let mut chunk = json!({"model": "test-model", "created_at": "2026-12-07T00:00:00Z",
            "message": {"role": "assistant", "content": content}, "done": done});
        if done {
            chunk["done_reason"] = json!("stop");
            chunk["prompt_eval_count"] = json!(26);
            chunk["eval_count"] = json!(4);
        }
        format!("{chunk}\n")
    };
    // One line split across two chunks, two lines in one.
    let second = line("jour", false);
    let (head, tail) = second.split_at(10);
    fake.reply(Reply::Stream(
        "application/x-ndjson",
        vec![
            bytes(line("Bon", false)),
            bytes(head),
            bytes(format!("{tail}{}", line("", true))),
        ],
    ));
    let app = spawn_with(backend, "ollama", &fake).await;
    let task = create(
        &app.client,
        &app,
        json!({"capability": "llm.chat", "input": {"messages": [{"role": "user", "content": "Salut"}],
            "model": "llama3", "temperature": 0.1}}),
    )
    .await;
    let task = finished(&app.client, &app, task["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["output"]["content"], "Bonjour");
    assert_eq!(
        task["output"]["usage"],
        json!({"input_tokens": 26, "output_tokens": 4})
    );
    let seen = fake.seen();
    assert_eq!(seen[0].body["model"], "llama3");
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(seen[0].body["options"]["temperature"], 0.1);
    assert!(seen[0].headers.get("authorization").is_none());
    let usage = usage_with_tokens(&app).await;
    assert_eq!(usage["rows"][0]["output_tokens"], 4, "{usage}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_429_with_retry_after_is_waited_out(#[case] backend: Backend) {
    let fake = Provider::start().await;
    fake.reply(Reply::Status(429, Some("1")));
    fake.reply(openai_stream(&["ok"], (3, 1), &[]));
    let app = spawn_with(backend, "openai", &fake).await;
    let task = create(
        &app.client,
        &app,
        json!({"capability": "llm.chat", "input": chat_input("hi"), "max_attempts": 1}),
    )
    .await;
    let task = finished(&app.client, &app, task["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["output"]["content"], "ok");
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    // Retry-After: 1 was honoured (the configured backoff is 10 ms).
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_secs(1));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_provider_failing_for_good_fails_the_task_with_a_code(#[case] backend: Backend) {
    let fake = Provider::start().await;
    // No script: every answer is a 500.
    let app = spawn_with(backend, "openai", &fake).await;
    let task = create(
        &app.client,
        &app,
        json!({"capability": "llm.chat", "input": chat_input("hi"), "max_attempts": 1}),
    )
    .await;
    let task = finished(&app.client, &app, task["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "provider_unavailable", "{task}");
    assert_eq!(task["error"]["details"]["status"], 500);
    // The first try and max_retries = 2 more.
    assert_eq!(fake.seen().len(), 3);
    // The key is not in what the task shows.
    assert!(!task.to_string().contains("sk-test-key"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_malformed_chunk_fails_the_task_clearly(#[case] backend: Backend) {
    let fake = Provider::start().await;
    fake.reply(Reply::Stream(
        "text/event-stream",
        vec![
            bytes("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"),
            bytes("data: {\"choices\": [ this is not json\n\n"),
        ],
    ));
    let app = spawn_with(backend, "openai", &fake).await;
    let task = create(
        &app.client,
        &app,
        json!({"capability": "llm.chat", "input": chat_input("hi"), "max_attempts": 1}),
    )
    .await;
    let task = finished(&app.client, &app, task["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "malformed_response", "{task}");
    // A stream cut off before [DONE] is its own failure.
    fake.reply(Reply::Stream(
        "text/event-stream",
        vec![bytes(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        )],
    ));
    let task = create(
        &app.client,
        &app,
        json!({"capability": "llm.chat", "input": chat_input("hi"), "max_attempts": 1}),
    )
    .await;
    let task = finished(&app.client, &app, task["id"].as_str().unwrap()).await;
    assert_eq!(task["error"]["code"], "incomplete_response", "{task}");
    let (status, _) = get(&app.client, &app, "/api/health").await;
    assert_eq!(status, Status::OK);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn conversation_turns_are_sent_in_order_within_the_budget(#[case] backend: Backend) {
    let fake = Provider::start().await;
    let url = fake.url.clone();
    let app = spawn_app_with(backend, move |settings| {
        settings.llm.provider = Some("openai".into());
        settings.llm.base_url = Some(url);
        // Each turn below costs 10 + 2 estimated tokens: two earlier turns fit, not three.
        settings.llm.conversation_budget_tokens = 30;
        settings.dispatch.recheck_secs = 1;
    })
    .await
    .signed_in()
    .await;
    let ask = |n: usize| format!("question number {n} {}", "-".repeat(40 - 18));
    for n in 1..=4 {
        fake.reply(openai_stream(&[&format!("answer {n}")], (1, 1), &[]));
        let task = create(
            &app.client,
            &app,
            json!({"capability": "llm.chat", "input": {
                "messages": [{"role": "user", "content": ask(n)}], "conversation_id": "trip-planning"}}),
        )
        .await;
        let task = finished(&app.client, &app, task["id"].as_str().unwrap()).await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    assert_eq!(ask(1).chars().count(), 40);
    let seen = fake.seen();
    let contents = |n: usize| -> Vec<String> {
        seen[n].body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}: {}",
                    m["role"].as_str().unwrap(),
                    m["content"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(contents(0), [format!("user: {}", ask(1))]);
    assert_eq!(
        contents(1),
        [
            format!("user: {}", ask(1)),
            "assistant: answer 1".into(),
            format!("user: {}", ask(2)),
        ]
    );
    // The fourth: the oldest turn dropped, the two newest in order, then the new message.
    assert_eq!(
        contents(3),
        [
            format!("user: {}", ask(2)),
            "assistant: answer 2".into(),
            format!("user: {}", ask(3)),
            "assistant: answer 3".into(),
            format!("user: {}", ask(4)),
        ]
    );

    let (status, conversation) = get(&app.client, &app, "/api/conversations/trip-planning").await;
    assert_eq!(status, Status::OK, "{conversation}");
    let turns = conversation["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 4);
    assert_eq!(turns[0]["messages"][0]["content"], ask(1));
    assert_eq!(turns[3]["content"], "answer 4");
    assert_eq!(turns[3]["usage"]["output_tokens"], 1);

    // Another user: the conversation is not theirs, and their own of the same name starts
    // empty.
    let other = app.register_user().await;
    let (status, _) = get(&other.client, &app, "/api/conversations/trip-planning").await;
    assert_eq!(status, Status::NOT_FOUND);
    let (status, _) = get(&app.client, &app, "/api/conversations/no-such-one").await;
    assert_eq!(status, Status::NOT_FOUND);
    fake.reply(openai_stream(&["fresh"], (1, 1), &[]));
    let task = create(
        &other.client,
        &app,
        json!({"capability": "llm.chat", "input": {
            "messages": [{"role": "user", "content": "mine"}], "conversation_id": "trip-planning"}}),
    )
    .await;
    let task = finished(&other.client, &app, task["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let seen = fake.seen();
    assert_eq!(
        seen[4].body["messages"],
        json!([{"role": "user", "content": "mine"}])
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn without_a_provider_tasks_wait_for_a_remote_agent(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await.signed_in().await;
    // Inputs are checked at creation all the same.
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "llm.chat", "input": {"messages": [{"role": "robot"}], "temperature": 9}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), Status::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "input.messages[0].role",
            "input.messages[0].content",
            "input.temperature"
        ]
    );
    let (_, tasks) = get(&app.client, &app, "/api/tasks").await;
    assert_eq!(tasks["items"], json!([]));

    let task = create(
        &app.client,
        &app,
        json!({"capability": "llm.chat", "input": chat_input("hi")}),
    )
    .await;
    let id = task["id"].as_str().unwrap();
    let (_, agents) = get(&app.client, &app, "/api/agents?capability=llm.chat").await;
    assert_eq!(agents["items"], json!([]), "no built-in LLM agent");
    let (_, task) = get(&app.client, &app, &format!("/api/tasks/{id}")).await;
    assert_eq!(task["status"], "queued");
    // A remote agent of the capability takes it.
    let response = app
        .client
        .post(app.url("/api/agents/register"))
        .json(&json!({"name": "remote llm", "kind": "remote", "capabilities": ["llm.chat"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), Status::CREATED);
    let agent: Value = response.json().await.unwrap();
    let response = app
        .client
        .post(app.url(&format!(
            "/api/agents/{}/lease",
            agent["id"].as_str().unwrap()
        )))
        .json(&json!({"max_tasks": 1}))
        .send()
        .await
        .unwrap();
    let leased: Value = response.json().await.unwrap();
    assert_eq!(leased["tasks"][0]["id"], id, "{leased}");
}

/// `use_context`: the agent searches the task owner's own history in the node's index and
/// sends what it found as a system message; another user's document never reaches it.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn use_context_sends_the_owners_own_history(#[case] backend: Backend) {
    let fake = Provider::start().await;
    let app = spawn_with(backend, "openai", &fake).await;
    let alice = app.register_user().await;
    let bob = app.register_user().await;
    let mine = create(
        &alice.client,
        &app,
        json!({"capability": "notes.save", "input": {"text": "the zanzibar ferry leaves at noon"}}),
    )
    .await;
    create(
        &bob.client,
        &app,
        json!({"capability": "notes.save", "input": {"text": "zanzibar ferry secret of bob"}}),
    )
    .await;
    // Until the index has Alice's note (it follows the feed on its own loop).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, found) = get(&alice.client, &app, "/api/search?q=zanzibar&mode=bm25").await;
        assert_eq!(status, Status::OK, "{found}");
        if found["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty())
        {
            break;
        }
        assert!(Instant::now() < deadline, "never indexed: {found}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fake.reply(openai_stream(&["At noon."], (20, 2), &[]));
    let task = create(
        &alice.client,
        &app,
        json!({"capability": "llm.chat", "input": {
            "messages": [{"role": "user", "content": "When does the zanzibar ferry leave?"}],
            "use_context": true}}),
    )
    .await;
    let task = finished(&alice.client, &app, task["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let sent = fake.seen()[0].body["messages"].to_string();
    assert!(sent.contains("leaves at noon"), "{sent}");
    assert!(!sent.contains("secret of bob"), "{sent}");
    let sources = task["output"]["sources"].as_array().unwrap();
    assert!(sources.iter().any(|s| s["id"] == mine["id"]), "{sources:?}");
}
