//! A small client of `GET /api/ws` for benchmarks and tests: connect, subscribe, receive
//! events with the time they arrived (for commit → client delivery latency).

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What the server sent.
#[derive(Debug)]
pub enum Received {
    /// `{"type":"event"}`, with the moment it arrived.
    Event {
        topic: String,
        event: Value,
        received_at: DateTime<Utc>,
    },
    /// Any other message (`subscribed`, `unsubscribed`, `error`).
    Message(Value),
    /// The server closed, with its code and reason if it gave them.
    Closed(Option<(u16, String)>),
}

impl Received {
    /// The event's position, if this is an event.
    pub fn position(&self) -> Option<i64> {
        match self {
            Self::Event { event, .. } => event["position"].as_i64(),
            _ => None,
        }
    }
}

/// A connected live subscription socket.
pub struct LiveClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl LiveClient {
    /// Connects to `base` (`http://host:port`) with `credential` (an access token or API
    /// key) in `?access_token=`, resuming after `after` when given.
    pub async fn connect(base: &str, credential: &str, after: Option<i64>) -> anyhow::Result<Self> {
        let mut url = url::Url::parse(base).context("the server URL")?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| anyhow::anyhow!("cannot make {base} a WebSocket URL"))?;
        url.set_path("/api/ws");
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("access_token", credential);
            if let Some(after) = after {
                query.append_pair("after", &after.to_string());
            }
        }
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .context("connecting to /api/ws")?;
        Ok(Self { socket })
    }

    /// Subscribes to `topics` and returns every answer up to and including `subscribed`
    /// (errors for refused topics come first).
    pub async fn subscribe(
        &mut self,
        topics: &[&str],
        after: Option<i64>,
        wait: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let mut message = json!({"type": "subscribe", "topics": topics});
        if let Some(after) = after {
            message["after"] = json!(after);
        }
        self.send(message).await?;
        self.answers_until("subscribed", wait).await
    }

    /// Unsubscribes from `topics`; the answers up to `unsubscribed`.
    pub async fn unsubscribe(
        &mut self,
        topics: &[&str],
        wait: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        self.send(json!({"type": "unsubscribe", "topics": topics}))
            .await?;
        self.answers_until("unsubscribed", wait).await
    }

    pub async fn send(&mut self, message: Value) -> anyhow::Result<()> {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .context("sending to /api/ws")
    }

    async fn answers_until(&mut self, kind: &str, wait: Duration) -> anyhow::Result<Vec<Value>> {
        let mut answers = Vec::new();
        loop {
            match self.next(wait).await? {
                Received::Message(message) => {
                    let done = message["type"] == kind;
                    answers.push(message);
                    if done {
                        return Ok(answers);
                    }
                }
                Received::Event { .. } => {}
                Received::Closed(close) => bail!("the server closed the socket: {close:?}"),
            }
        }
    }

    /// The next message, waiting at most `wait`; pings and pongs are skipped.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Received> {
        loop {
            let message = match tokio::time::timeout(wait, self.socket.next()).await {
                Err(_) => bail!("nothing from /api/ws within {wait:?}"),
                Ok(None) => return Ok(Received::Closed(None)),
                Ok(Some(message)) => message.context("receiving from /api/ws")?,
            };
            let received_at = Utc::now();
            match message {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(text.as_str())
                        .context("a message from /api/ws is not JSON")?;
                    if value["type"] == "event" {
                        return Ok(Received::Event {
                            topic: value["topic"].as_str().unwrap_or_default().to_owned(),
                            event: value["event"].clone(),
                            received_at,
                        });
                    }
                    return Ok(Received::Message(value));
                }
                Message::Close(frame) => {
                    return Ok(Received::Closed(frame.map(|frame| {
                        (u16::from(frame.code), frame.reason.as_str().to_owned())
                    })));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Binary(_) => bail!("/api/ws sent a binary frame"),
            }
        }
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self
            .socket
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// Commit → client delivery time of a received event, in milliseconds: from its
/// `recorded_at` (stamped by the database in the appending transaction) to its arrival.
pub fn delivery_ms(event: &Value, received_at: DateTime<Utc>) -> Option<f64> {
    let recorded_at = event["metadata"]["recorded_at"].as_str()?;
    let recorded_at = DateTime::parse_from_rfc3339(recorded_at).ok()?;
    let micros = (received_at - recorded_at.with_timezone(&Utc)).num_microseconds()?;
    Some(micros as f64 / 1000.0)
}
