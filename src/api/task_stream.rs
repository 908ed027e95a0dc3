//! `GET /api/tasks/{id}/stream`: a task's events as server-sent events — its history
//! (after `Last-Event-ID` when given), then live. `id:` is the event's position, so a
//! reconnecting `EventSource` resumes where it stopped; `event:` is the event type; a
//! comment every 15 s keeps the connection open. An `llm.chat` task's tokens come between
//! them as `event: token` with no `id:` (they are not stored: see
//! [`crate::process::llm::tokens`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chronicle_aggregates::task::Task;
use cqrs_es::Aggregate;
use tokio::sync::{broadcast, mpsc};

use super::error::ApiError;
use super::extract::IdPath;
use super::live_ws::{http_event, resume_cursor};
use super::AppState;
use crate::actor::Actor;
use crate::authz::{Action, Resource};
use crate::process::live::{look_again, may_follow_task, read_scoped, task_type, Scope};
use crate::process::llm::tokens::TokenChunk;
use crate::store::{FeedCursor, RecordedEvent};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Events read from the store at once.
const PAGE: u32 = 200;

/// One server-sent event of a task stream, as an `EventSource` parses it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseFrame {
    /// The event's position in the feed.
    #[schema(pattern = r"^[0-9]+$")]
    id: String,
    /// The event type, e.g. `TaskCreated`.
    event: String,
    /// The `Event` as JSON.
    data: String,
}

/// Stream a task's events.
///
/// `text/event-stream`: every event of the task (after the one at `Last-Event-ID`, when
/// given), then each new one as it is committed. `id:` is the event's position, `event:`
/// its type, `data:` the `Event` as JSON. A comment every 15 s keeps the connection open.
/// Tokens of an `llm.chat` task running on this node come as `event: token`, no `id:`,
/// `data: {"task_id", "index", "text"}`, as they stream: they are not stored, so a
/// reconnecting client does not get them again (the answer is in `TaskSucceeded`).
#[utoipa::path(
    get,
    path = "/tasks/{id}/stream",
    operation_id = "stream_task_events",
    tag = "tasks",
    params(
        ("id" = uuid::Uuid, Path, description = "The task's id"),
        ("Last-Event-ID" = Option<String>, Header, pattern = r"^[0-9]{1,19}$", description = "Resume right after the event at this position (the `id:` of the last event received)"),
    ),
    responses(
        (status = 200, description = "The task's events, then live ones", content_type = "text/event-stream", body = SseFrame),
        (status = 404, description = "No such task, or not yours"),
        (status = 422, description = "`Last-Event-ID` is not the position of an event"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn stream(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resource = may_follow_task(&state.store, &state.authz, &actor, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(value) => {
            let position = value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|text| {
                    (1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
                })
                .and_then(|text| text.parse::<i64>().ok())
                .ok_or_else(|| ApiError::validation("Last-Event-ID", "is not an event position"))?;
            Some(resume_cursor(&state, position).await?)
        }
    };
    let (out, mut events) = mpsc::channel(state.settings.live.buffer);
    // Subscribed before the answer starts, so no token published after it is missed.
    let tokens = state.tokens.subscribe();
    tokio::spawn(produce(
        state,
        Follower { actor, resource },
        id,
        resume,
        out,
        tokens,
    ));
    // Open while axum polls the stream: dropped when the client goes.
    let open = crate::meters::ConnectionGauge::open("task_sse");
    let stream = futures::stream::poll_fn(move |cx| {
        let _open = &open;
        events.poll_recv(cx)
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

/// Who follows the task, and the task as authorisation sees it.
struct Follower {
    actor: Actor,
    resource: Resource,
}

impl Follower {
    fn may_read(&self, state: &AppState) -> bool {
        state.authz.can(&self.actor, Action::Read, &self.resource)
    }
}

/// Feeds the stream until the client leaves, the server stops or the follower may no
/// longer read the task (a team member removed). A full channel waits for the client
/// (memory stays bounded by the channel).
async fn produce(
    state: AppState,
    follower: Follower,
    id: uuid::Uuid,
    resume: Option<FeedCursor>,
    out: mpsc::Sender<Result<SseEvent, Infallible>>,
    mut tokens: broadcast::Receiver<Arc<TokenChunk>>,
) {
    // History straight from the aggregate's own events; its last one is where live reading
    // starts (a later event of the task comes after it in feed order).
    let history = match state.store.history(Task::TYPE, &id.to_string()).await {
        Ok(history) => history,
        Err(error) => {
            tracing::warn!(%error, "cannot read the task's history");
            return;
        }
    };
    let mut cursor = resume.unwrap_or_default();
    for event in history {
        if event.cursor() <= cursor {
            continue;
        }
        cursor = event.cursor();
        if out.send(Ok(sse_event(event))).await.is_err() {
            return;
        }
    }
    let mut scope = Scope::default();
    scope.add_aggregate(task_type(), &id.to_string(), &format!("task:{id}"));
    let read = state.read.clone();
    let recheck_every = state.settings.dispatch.recheck();
    let mut held_for = 0;
    loop {
        let events = read.events_signal();
        let signal = events.notified();
        tokio::pin!(signal);
        signal.as_mut().enable();
        // Held back by the owners projection: its next batch is what lets more through.
        let projected = read.projected_signal();
        let progressed = projected.notified();
        tokio::pin!(progressed);
        progressed.as_mut().enable();
        let mut held_back = false;
        loop {
            // No more than the channel has room for: a stream holds at most that many.
            let limit = u32::try_from(out.capacity()).map_or(PAGE, |room| room.clamp(1, PAGE));
            let page = match read_scoped(&state.store, &read.db, &scope, cursor, limit).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the feed; retrying on the next wake-up");
                    break;
                }
            };
            let more = page.events.len() >= limit as usize;
            for event in page.events {
                if !follower.may_read(&state) {
                    return;
                }
                if out.send(Ok(sse_event(event))).await.is_err() {
                    return;
                }
            }
            cursor = page.next;
            if !more {
                held_back = page.held_back;
                break;
            }
        }
        let recheck = if held_back {
            held_for += 1;
            look_again(held_for)
        } else {
            held_for = 0;
            recheck_every
        };
        tokio::select! {
            received = tokens.recv() => match received {
                Ok(chunk) if chunk.task_id == id => {
                    if out.send(Ok(token_event(&chunk))).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "a slow task stream lost tokens");
                }
                // The hub lives as long as the server.
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = &mut signal => {}
            () = &mut progressed, if held_back => {}
            () = tokio::time::sleep(recheck) => {}
            () = out.closed() => return,
            () = state.shutdown.cancelled() => return,
        }
    }
}

fn token_event(chunk: &TokenChunk) -> SseEvent {
    match SseEvent::default().event("token").json_data(chunk) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, "cannot serialise a token");
            SseEvent::default().comment("unserialisable token")
        }
    }
}

fn sse_event(event: RecordedEvent) -> SseEvent {
    let id = event.position.to_string();
    let kind = event.event_type.clone();
    let view = http_event(event);
    let event = SseEvent::default().id(id).event(kind);
    match event.json_data(&view) {
        Ok(event) => event,
        // Serialising our own view cannot fail; should it, the client still learns the id.
        Err(error) => {
            tracing::warn!(%error, "cannot serialise an event");
            SseEvent::default().comment("unserialisable event")
        }
    }
}
