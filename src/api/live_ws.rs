//! `GET /api/ws`: live subscriptions. The client subscribes to topics and the server pushes
//! each new event of them that the caller may read, in feed order.
//!
//! Messages from the client:
//! - `{"type":"subscribe", "topics": ["task:<id>", "run:<id>", "mine"], "after"?: <position>}`
//! - `{"type":"unsubscribe", "topics": [...]}`
//!
//! Messages from the server:
//! - `{"type":"subscribed", "topics": [every topic now subscribed], "after": <position>}`
//!   (`after`: the position delivery continues after), `{"type":"unsubscribed", "topics"}`;
//! - `{"type":"event", "topic", "event": Event}`, `topic` the one that asked for it;
//! - `{"type":"token", "topic", "task_id", "index", "text"}`: a piece of an `llm.chat`
//!   answer streaming on this node (not stored, no position: see
//!   [`crate::process::llm::tokens`]);
//! - `{"type":"error", "topic"?, "problem": <problem+json document>}`: a bad message, or a
//!   topic the caller may not read (unknown or foreign: both `not-found`), which receives
//!   nothing. A bad message never closes the socket.
//!
//! The connection has one cursor. `?after=<position>` on the upgrade, or `after` in a
//! `subscribe`, puts it right after the event at that position in feed order, so a client
//! that reconnects with the position of the last event it received misses nothing and gets
//! nothing twice. Without either, delivery starts with the first `subscribe`, at the feed's
//! head. `mine` is every aggregate the caller owns (tasks, agents, keys, their user).
//!
//! A client that reads slower than events come fills a bounded queue
//! (`CHRONICLE_LIVE__BUFFER` messages, default 256; the store is read no further than the
//! queue has room, so that is all a connection holds); when it stays full for 2 s the server
//! closes with 4008 and the reason `slow consumer: resume after <position>` (the last event
//! written before the close frame). On shutdown it closes with 1012.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{from_json_value, ApiQuery};
use super::views::EventView;
use super::AppState;
use crate::actor::Actor;
use crate::auth::revocation::{CloseReason, Grant};
use crate::authz::{Action, Resource};
use crate::process::live::{
    feed_head, look_again, may_follow_run, may_follow_task, read_scoped, run_type, task_type,
    Scope, MINE,
};
use crate::process::llm::tokens::TokenChunk;
use crate::store::{FeedCursor, RecordedEvent};

/// The close code of a consumer too slow for its queue (4000–4999: the application's own).
pub const SLOW_CONSUMER: u16 = 4008;

/// How long a full queue may stay full before the consumer counts as too slow.
const SLOW_GRACE: Duration = Duration::from_secs(2);

/// How long the close frame of a slow consumer waits for room on the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Events read from the store at once.
const PAGE: u32 = 200;

/// Keeps proxies from closing an idle connection.
const PING_EVERY: Duration = Duration::from_secs(20);

/// `GET /api/ws` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConnectQuery {
    /// Resume right after the event at this position (the last one received).
    pub after: Option<i64>,
    /// An access token or API key, for clients that cannot send headers (read by the
    /// authentication layer).
    pub access_token: Option<String>,
}

/// Open a live subscription socket.
///
/// Upgrades to a WebSocket. The client sends `{"type":"subscribe","topics":["task:<id>",
/// "run:<id>","mine"],"after"?:<position>}` and `{"type":"unsubscribe","topics":[…]}`; the
/// server answers `subscribed`/`unsubscribed`/`error` and pushes
/// `{"type":"event","topic","event":Event}` for each new event the caller may read, in feed
/// order. `after` (here or in `subscribe`) resumes right after the event at that position,
/// with no gap and no duplicate. A topic the caller may not read gets an `error` message
/// (`not-found`) and never data. A client too slow for its queue is closed with 4008
/// (`slow consumer: resume after <position>`); shutdown closes with 1012.
#[utoipa::path(
    get,
    path = "/ws",
    operation_id = "live_websocket",
    tag = "live",
    params(ConnectQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request"),
        (status = 422, description = "A bad query parameter, or no event at `after`"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn connect(
    State(state): State<AppState>,
    actor: Actor,
    grant: Grant,
    ApiQuery(query): ApiQuery<ConnectQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::BadRequest(format!("this route speaks WebSocket only: {rejection}"))
    })?;
    let cursor = match query.after {
        Some(after) => Some(resume_cursor(&state, after).await?),
        None => None,
    };
    let limit = state.settings.body_limit;
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let _open = crate::meters::ConnectionGauge::open("live_ws");
            let (sink, stream) = socket.split();
            let (out, queue) = mpsc::channel(state.settings.live.buffer);
            let (close, closing) = oneshot::channel();
            let writer = tokio::spawn(write(sink, queue, closing));
            let tokens = state.tokens.subscribe();
            let live = Live {
                state,
                actor,
                grant,
                scope: Scope::default(),
                followed: HashMap::new(),
                cursor,
                out,
                tokens,
            };
            let end = live.run(stream).await;
            let _ = close.send(end);
            let _ = writer.await;
        }))
}

/// The cursor right after the event at `after`, or 422.
pub(crate) async fn resume_cursor(state: &AppState, after: i64) -> Result<FeedCursor, ApiError> {
    state
        .store
        .cursor_after(after)
        .await?
        .ok_or_else(|| ApiError::validation("after", "no event has this position"))
}

/// An event as HTTP shows it: the one conversion of `GET /api/tasks/{id}/events`.
pub(crate) fn http_event(event: RecordedEvent) -> EventView {
    EventView::from(event)
}

/// One message for the writer.
enum Outgoing {
    Text {
        text: String,
        /// The event's position, for a slow consumer's close reason.
        position: Option<i64>,
    },
    Ping,
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed or vanished.
    Gone,
    /// The queue stayed full.
    SlowConsumer,
    /// The server closes with this code and reason.
    Close(u16, &'static str),
}

struct Live {
    state: AppState,
    actor: Actor,
    /// What the credentials allowed at the upgrade: the socket closes when they end.
    grant: Grant,
    scope: Scope,
    /// The aggregates subscribed by topic, as authorisation sees them: asked again before
    /// each of their events is pushed.
    followed: HashMap<String, Resource>,
    /// Where delivery stands; `None` until `?after` or the first `subscribe` sets it.
    cursor: Option<FeedCursor>,
    out: mpsc::Sender<Outgoing>,
    /// This node's `llm.chat` tokens; those in scope are passed on.
    tokens: broadcast::Receiver<Arc<TokenChunk>>,
}

impl Live {
    async fn run(mut self, mut stream: SplitStream<WebSocket>) -> End {
        let read = self.state.read.clone();
        let shutdown = self.state.shutdown.clone();
        let revocations = self.state.auth.revocations.clone();
        // The safety net under the wake-ups (a commit that announces nothing, a lost
        // notification), shared with the waiting agents.
        let recheck_every = self.state.settings.dispatch.recheck();
        let mut held_for = 0;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let end = 'session: loop {
            // Interest registered before reading, so a commit between the read and the
            // wait still wakes this connection.
            let events = read.events_signal();
            let signal = events.notified();
            tokio::pin!(signal);
            signal.as_mut().enable();
            // Held back by the owners projection: its next batch is what lets more through.
            let projected = read.projected_signal();
            let progressed = projected.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            let held_back = match self.deliver().await {
                Ok(held_back) => held_back,
                Err(end) => break end,
            };
            let recheck = if held_back {
                held_for += 1;
                look_again(held_for)
            } else {
                held_for = 0;
                recheck_every
            };
            if let Some(reason) = revocations.ended_now(&self.grant) {
                break End::Close(CloseReason::CODE, reason.reason());
            }
            // Every reason to stop or act is one branch here.
            tokio::select! {
                reason = revocations.ended(&self.grant) => {
                    break End::Close(CloseReason::CODE, reason.reason());
                }
                received = self.tokens.recv() => match received {
                    Ok(chunk) => {
                        if let Some(topic) = self.scope.token_topic(chunk.task_id, chunk.owner_id) {
                            let message = json!({
                                "type": "token",
                                "topic": topic,
                                "task_id": chunk.task_id,
                                "index": chunk.index,
                                "text": chunk.text,
                            });
                            if let Err(end) = self.push(message, None).await {
                                break end;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "a slow live socket lost tokens");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        break End::Close(1012, "server restarting");
                    }
                },
                () = &mut signal => {}
                () = &mut progressed, if held_back => {}
                () = tokio::time::sleep(recheck) => {}
                () = shutdown.cancelled() => break End::Close(1012, "server restarting"),
                _ = ping.tick() => {
                    // A ping behind a full queue is not needed: data is flowing.
                    let _ = self.out.try_send(Outgoing::Ping);
                }
                received = stream.next() => match received {
                    Some(Ok(Message::Text(text))) => {
                        let answers = self.handle(text.as_str()).await;
                        for answer in answers {
                            if let Err(end) = self.push(answer, None).await {
                                break 'session end;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = ApiError::BadRequest("send messages as JSON text frames".into());
                        if let Err(end) = self.push(error_message(None, &error), None).await {
                            break end;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::Gone,
                },
            }
        };
        tracing::debug!(?end, "live WebSocket closed");
        end
    }

    /// Pushes every event in scope after the cursor; `Ok(true)` when some may be held back
    /// (see `live::Page::held_back`).
    async fn deliver(&mut self) -> Result<bool, End> {
        loop {
            let Some(cursor) = self.cursor else {
                return Ok(false);
            };
            if self.scope.is_empty() {
                return Ok(false);
            }
            if self.scope.has_mine() {
                // Teams as they are now: a member removed since the last read sees no more.
                self.scope
                    .set_mine(Some(self.state.authz.mine(&self.actor)));
            }
            if self.state.shutdown.is_cancelled() {
                return Err(End::Close(1012, "server restarting"));
            }
            // No more than the queue has room for (at least one, to learn that it stays
            // full): a connection holds at most its queue's worth of events.
            let limit = u32::try_from(self.out.capacity()).map_or(PAGE, |room| room.clamp(1, PAGE));
            let page = match read_scoped(
                &self.state.store,
                &self.state.read.db,
                &self.scope,
                cursor,
                limit,
            )
            .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the feed; retrying on the next wake-up");
                    return Ok(false);
                }
            };
            let more = page.events.len() >= limit as usize;
            for event in page.events {
                let topic = self.scope.topic_of(&event).to_owned();
                if !self.still_readable(&event, &topic).await? {
                    continue;
                }
                let position = event.position;
                let message = json!({"type": "event", "topic": topic, "event": http_event(event)});
                self.push(message, Some(position)).await?;
            }
            self.cursor = Some(page.next);
            if !more {
                return Ok(page.held_back);
            }
        }
    }

    /// Whether the caller may still read the aggregate of `event` it subscribed to by
    /// `topic`; when it no longer may (removed from the team), the topic ends with a
    /// `not-found` error and nothing more of it is pushed.
    async fn still_readable(&mut self, event: &RecordedEvent, topic: &str) -> Result<bool, End> {
        let key = format!("{}:{}", event.aggregate_type, event.aggregate_id);
        let Some(resource) = self.followed.get(&key) else {
            return Ok(true);
        };
        if self.state.authz.can(&self.actor, Action::Read, resource) {
            return Ok(true);
        }
        self.followed.remove(&key);
        self.scope
            .remove_aggregate(&event.aggregate_type, &event.aggregate_id);
        self.push(error_message(Some(topic), &ApiError::NotFound), None)
            .await?;
        Ok(false)
    }

    /// Queues a message; a queue that stays full for [`SLOW_GRACE`] ends the connection.
    async fn push(&self, message: Value, position: Option<i64>) -> Result<(), End> {
        let outgoing = Outgoing::Text {
            text: message.to_string(),
            position,
        };
        match self.out.send_timeout(outgoing, SLOW_GRACE).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(End::SlowConsumer),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(End::Gone),
        }
    }

    /// One message from the client, answered (a subscribe may answer several errors).
    async fn handle(&mut self, text: &str) -> Vec<Value> {
        match self.act(text).await {
            Ok(answers) => answers,
            Err(error) => vec![error_message(None, &error)],
        }
    }

    async fn act(&mut self, text: &str) -> Result<Vec<Value>, ApiError> {
        let mut fields = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Err(ApiError::BadRequest("a message is a JSON object".into())),
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "the message is not JSON: {e}"
                )))
            }
        };
        let kind = match fields.remove("type") {
            Some(Value::String(kind)) => kind,
            _ => {
                return Err(ApiError::validation(
                    "type",
                    "is required: subscribe or unsubscribe",
                ))
            }
        };
        match kind.as_str() {
            "subscribe" => {
                let message: SubscribeMessage = from_json_value(Value::Object(fields))?;
                self.subscribe(message).await
            }
            "unsubscribe" => {
                let message: UnsubscribeMessage = from_json_value(Value::Object(fields))?;
                Ok(vec![self.unsubscribe(message)])
            }
            other => Err(ApiError::validation(
                "type",
                format!("{other:?} is not one of subscribe, unsubscribe"),
            )),
        }
    }

    async fn subscribe(&mut self, message: SubscribeMessage) -> Result<Vec<Value>, ApiError> {
        let resume = match message.after {
            Some(after) => Some(resume_cursor(&self.state, after).await?),
            None => None,
        };
        let mut answers = Vec::new();
        for topic in &message.topics {
            match self.topic(topic).await {
                Ok(Topic::Mine) => self
                    .scope
                    .set_mine(Some(self.state.authz.mine(&self.actor))),
                Ok(Topic::Aggregate(aggregate_type, id, resource)) => {
                    self.scope
                        .add_aggregate(aggregate_type, &id.to_string(), topic);
                    self.followed
                        .insert(format!("{aggregate_type}:{id}"), resource);
                }
                Err(error) => answers.push(error_message(Some(topic), &error)),
            }
        }
        if let Some(resume) = resume {
            self.cursor = Some(resume);
        } else if self.cursor.is_none() {
            self.cursor = Some(feed_head(&self.state.store).await?);
        }
        let after = self.cursor.map_or(0, |cursor| cursor.position);
        answers.push(json!({"type": "subscribed", "topics": self.scope.topics(), "after": after}));
        Ok(answers)
    }

    fn unsubscribe(&mut self, message: UnsubscribeMessage) -> Value {
        for topic in &message.topics {
            if topic == MINE {
                self.scope.set_mine(None);
            } else if let Some(Ok(id)) = topic.strip_prefix("task:").map(Uuid::parse_str) {
                self.scope.remove_aggregate(task_type(), &id.to_string());
                self.followed.remove(&format!("{}:{id}", task_type()));
            } else if let Some(Ok(id)) = topic.strip_prefix("run:").map(Uuid::parse_str) {
                self.scope.remove_aggregate(run_type(), &id.to_string());
                self.followed.remove(&format!("{}:{id}", run_type()));
            }
        }
        json!({"type": "unsubscribed", "topics": self.scope.topics()})
    }

    /// What a topic names, if the caller may read it.
    async fn topic(&self, topic: &str) -> Result<Topic, ApiError> {
        if topic == MINE {
            return Ok(Topic::Mine);
        }
        let (kind, id) = topic.split_once(':').ok_or_else(|| {
            ApiError::validation(
                "topics",
                format!("{topic:?} is not task:<id>, run:<id> or mine"),
            )
        })?;
        let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
        match kind {
            "task" => {
                let state = &self.state;
                match may_follow_task(&state.store, &state.authz, &self.actor, id).await? {
                    Some(resource) => Ok(Topic::Aggregate(task_type(), id, resource)),
                    None => Err(ApiError::NotFound),
                }
            }
            "run" => {
                let state = &self.state;
                match may_follow_run(&state.store, &state.authz, &self.actor, id).await? {
                    Some(resource) => Ok(Topic::Aggregate(run_type(), id, resource)),
                    None => Err(ApiError::NotFound),
                }
            }
            _ => Err(ApiError::validation(
                "topics",
                format!("{topic:?} is not task:<id>, run:<id> or mine"),
            )),
        }
    }
}

enum Topic {
    Mine,
    Aggregate(&'static str, Uuid, Resource),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeMessage {
    topics: Vec<String>,
    after: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeMessage {
    topics: Vec<String>,
}

fn error_message(topic: Option<&str>, error: &ApiError) -> Value {
    let mut message = Map::new();
    message.insert("type".into(), json!("error"));
    if let Some(topic) = topic {
        message.insert("topic".into(), json!(topic));
    }
    message.insert("problem".into(), error.problem());
    Value::Object(message)
}

/// Writes queued messages to the socket until the connection ends, then the close frame.
/// A send blocked on a client that does not read still yields to the close.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Outgoing>,
    mut closing: oneshot::Receiver<End>,
) {
    // The last event written: every frame before the close frame arrives before it, so a
    // client that reads the close has received this one.
    let mut last: i64 = 0;
    let end = loop {
        let outgoing = tokio::select! {
            biased;
            end = &mut closing => break end.unwrap_or(End::Gone),
            outgoing = queue.recv() => match outgoing {
                Some(outgoing) => outgoing,
                None => break End::Gone,
            },
        };
        let (message, position) = match outgoing {
            Outgoing::Text { text, position } => (Message::Text(text.into()), position),
            Outgoing::Ping => (Message::Ping(Vec::new().into()), None),
        };
        let send = sink.send(message);
        tokio::pin!(send);
        tokio::select! {
            biased;
            end = &mut closing => {
                // The frame under way is finished first, so the close reason is exact.
                match tokio::time::timeout(CLOSE_WAIT, &mut send).await {
                    Ok(Ok(())) => last = position.unwrap_or(last),
                    _ => return,
                }
                break end.unwrap_or(End::Gone);
            }
            sent = &mut send => match sent {
                Ok(()) => last = position.unwrap_or(last),
                Err(_) => break End::Gone,
            },
        }
    };
    let (code, reason) = match end {
        End::Gone => return,
        End::SlowConsumer => (SLOW_CONSUMER, format!("slow consumer: resume after {last}")),
        End::Close(code, reason) => (code, reason.to_owned()),
    };
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await;
}
