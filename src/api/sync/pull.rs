//! `GET /api/sync/pull`: the current state of every resource the caller may read that
//! changed since a token, read off the global feed; long-polls when nothing did.
//!
//! The token is a feed cursor (on PostgreSQL `(transaction_id, position)`), so a pull
//! takes the events after it in feed order up to the safe horizon (see `process::live`):
//! gap-free and duplicate-free by the feed's positions. The events of one resource in the
//! window are one change: the resource as its `GET` answers it now. A `GET` that answers
//! an older version than the window's last event of that resource (its read model behind
//! the feed) is waited for briefly; if it stays behind, the page ends before that resource,
//! so the next pull brings it.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use chronicle_projections::ReadScope;

use super::{readable, Inner};
use crate::actor::Actor;
use crate::api::error::ApiError;
use crate::api::events::{await_scope, SCOPE_PATIENCE};
use crate::api::extract::ApiQuery;
use crate::api::{AppState, REQUEST_ID};
use crate::process::live::{look_again, read_scoped, Scope};
use crate::store::{AggregateFilter, FeedCursor, RecordedEvent};

/// Changes per answer when the client names no `limit`.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most changes one answer holds.
pub const MAX_LIMIT: u32 = 500;
/// The longest long-poll.
pub const MAX_WAIT_SECS: u32 = 30;
/// Events read per query.
const PAGE: u32 = 500;
/// Once some changes are found, a pull reads at most this many pages before answering.
const MAX_PAGES: usize = 20;
/// How long a pull waits for the feed and the owners projection to pass what was
/// committed before it began.
const CATCH_UP: Duration = Duration::from_secs(5);
/// How often a pull looks again at a resource whose read model is behind the feed.
const STALE_RECHECK: Duration = Duration::from_millis(20);
/// Every string of this pattern is a token (a position is below 2^63).
const TOKEN_PATTERN: &str = "^[0-9a-f]{16}[0-7][0-9a-f]{15}$";

/// `GET /api/sync/pull` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PullQuery {
    /// `next` of the previous pull; absent: from the beginning.
    #[param(pattern = "^[0-9a-f]{16}[0-7][0-9a-f]{15}$")]
    pub since: Option<String>,
    /// At most this many changes (50 when absent).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// When nothing changed, wait up to this many seconds for a change (0 when absent).
    #[param(minimum = 0, maximum = 30)]
    pub wait_secs: Option<u32>,
}

/// What a pull syncs: the extension's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = SyncKind)]
pub enum Kind {
    Task,
    WorkflowRun,
    Workflow,
    Agent,
}

impl Kind {
    fn of(aggregate_type: &str) -> Option<Self> {
        match aggregate_type {
            "task" => Some(Self::Task),
            "workflow_run" => Some(Self::WorkflowRun),
            "workflow" => Some(Self::Workflow),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }

    /// Where the resource is read, as the client would read it.
    fn path(self, id: &str) -> String {
        match self {
            Self::Task => format!("/api/tasks/{id}"),
            Self::WorkflowRun => format!("/api/workflow-runs/{id}"),
            Self::Workflow => format!("/api/workflows/{id}"),
            Self::Agent => format!("/api/agents/{id}"),
        }
    }
}

/// `GET /api/sync/pull` answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SyncPullResponse)]
pub struct PullResponse {
    /// In the feed order of each resource's first change since the token.
    pub changes: Vec<Change>,
    /// The token for the next pull.
    #[schema(pattern = "^[0-9a-f]{16}[0-7][0-9a-f]{15}$")]
    pub next: String,
}

/// One resource that changed.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SyncChange)]
pub struct Change {
    pub kind: Kind,
    #[schema(format = Uuid)]
    pub id: String,
    /// The resource is gone for the caller (its `GET` answers 404); `resource` is `null`.
    pub deleted: bool,
    /// The resource as its `GET` answers it now, by `kind`: a `Task`, `WorkflowRunBody`,
    /// `WorkflowBody` or `Agent`.
    #[schema(schema_with = resource_schema)]
    pub resource: Value,
}

fn resource_schema() -> utoipa::openapi::Schema {
    use crate::api::views::{AgentView, TaskView};
    use crate::api::workflows::{WorkflowBody, WorkflowRunBody};
    use utoipa::openapi::{Object, Ref, Type};
    use utoipa::ToSchema;
    utoipa::openapi::schema::AnyOfBuilder::new()
        .item(Ref::from_schema_name(TaskView::name()))
        .item(Ref::from_schema_name(WorkflowRunBody::name()))
        .item(Ref::from_schema_name(WorkflowBody::name()))
        .item(Ref::from_schema_name(AgentView::name()))
        .item(Object::with_type(Type::Null))
        .build()
        .into()
}

/// A token: the feed cursor, as 32 hex digits ([`TOKEN_PATTERN`]).
fn encode(cursor: FeedCursor) -> String {
    format!(
        "{:016x}{:016x}",
        cursor.transaction_id,
        u64::try_from(cursor.position).unwrap_or_default()
    )
}

fn decode(token: &str) -> Result<FeedCursor, ApiError> {
    let malformed = || {
        ApiError::validation(
            "since",
            format!("is not a token from this API ({TOKEN_PATTERN})"),
        )
    };
    if token.len() != 32
        || !token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(malformed());
    }
    let transaction_id = u64::from_str_radix(&token[..16], 16).map_err(|_| malformed())?;
    let position = u64::from_str_radix(&token[16..], 16).map_err(|_| malformed())?;
    Ok(FeedCursor {
        transaction_id,
        position: i64::try_from(position).map_err(|_| malformed())?,
    })
}

/// Pull what changed since a token.
///
/// The current state of every resource the caller may read — tasks, workflow runs,
/// workflows and agents; their own, everyone's for auditors and admins — that changed
/// since `since` (absent: from the beginning), each once, as its `GET` answers it. Pull
/// again with `next` until `changes` is empty: then the caller is up to date. Gap-free: a
/// change committed after a pull is in a later one; a resource that changes again after a
/// pull appears again. Two devices pulling from the start get the same states.
///
/// With `wait_secs`, a pull that finds nothing waits up to that long for a change and
/// answers as soon as one is readable (empty on time-out).
#[utoipa::path(
    get,
    path = "/sync/pull",
    operation_id = "sync_pull",
    tag = "sync",
    params(PullQuery),
    responses(
        (status = 200, description = "What changed, and the next token", body = PullResponse),
        (status = 422, description = "A bad query parameter, or a `since` that is not a token from this API"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn pull(
    State(state): State<AppState>,
    actor: Actor,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PullQuery>,
) -> Result<Json<PullResponse>, ApiError> {
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(limit @ 1..=MAX_LIMIT) => limit,
        Some(_) => {
            return Err(ApiError::validation(
                "limit",
                format!("must be from 1 to {MAX_LIMIT}"),
            ))
        }
    };
    let wait_secs = query.wait_secs.unwrap_or(0);
    if wait_secs > MAX_WAIT_SECS {
        return Err(ApiError::validation(
            "wait_secs",
            format!("must be from 0 to {MAX_WAIT_SECS}"),
        ));
    }
    let mut after = match query.since.as_deref() {
        Some(token) => decode(token)?,
        None => FeedCursor::default(),
    };
    catch_up(&state, &readable(&state, &actor)).await?;
    let inner = Inner::new(&state, &actor, headers.get(REQUEST_ID).cloned());
    let deadline = Instant::now() + Duration::from_secs(wait_secs.into());
    let recheck = state.settings.dispatch.recheck();
    let mut held_for = 0;
    loop {
        // Interest registered before reading, so a commit between the read and the wait
        // still wakes this pull.
        let events = state.read.events_signal();
        let committed = events.notified();
        tokio::pin!(committed);
        committed.as_mut().enable();
        let projected = state.read.projected_signal();
        let progressed = projected.notified();
        tokio::pin!(progressed);
        progressed.as_mut().enable();
        let window = window(&state, &readable(&state, &actor), after, limit).await?;
        let (changes, next) = resolve(&state, &inner, window.seen, window.next).await?;
        if !changes.is_empty() || Instant::now() >= deadline || state.shutdown.is_cancelled() {
            return Ok(Json(PullResponse {
                changes,
                next: encode(next),
            }));
        }
        after = next;
        let look = if window.held_back {
            held_for += 1;
            look_again(held_for)
        } else {
            held_for = 0;
            recheck
        };
        tokio::select! {
            () = &mut committed => {}
            () = &mut progressed => {}
            () = tokio::time::sleep(look) => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = state.shutdown.cancelled() => {}
        }
    }
}

/// Waits, at most [`CATCH_UP`], until a pull can see everything committed before it
/// began — the feed's horizon past it and, for an owner's pull, the owners projection —
/// so that an empty answer means up to date, the caller's latest writes included. After
/// that the pull answers what is safe: nothing is passed over, only held back.
async fn catch_up(state: &AppState, readable: &ReadScope) -> Result<(), ApiError> {
    let deadline = Instant::now() + CATCH_UP;
    let watermark = state.store.feed_watermark().await?;
    while !state.store.feed_reached(watermark).await? && Instant::now() < deadline {
        tokio::time::sleep(STALE_RECHECK).await;
    }
    if *readable != ReadScope::All {
        let patience = deadline.saturating_duration_since(Instant::now());
        await_scope(&state.store, &state.read, patience.max(SCOPE_PATIENCE)).await?;
    }
    Ok(())
}

/// A resource seen in the window: its last event's sequence, and the cursor just before
/// its first event (where the window is cut if its state cannot be read fresh).
struct Seen {
    kind: Kind,
    id: String,
    sequence: i64,
    before: FeedCursor,
}

struct Window {
    seen: Vec<Seen>,
    /// Where the next pull starts when every resource seen is answered.
    next: FeedCursor,
    held_back: bool,
}

/// One page of the feed in the caller's scope.
struct Read {
    events: Vec<RecordedEvent>,
    /// Where the next read starts once every event here is taken.
    next: FeedCursor,
    /// More may be readable at once.
    full: bool,
    held_back: bool,
}

async fn read(state: &AppState, readable: &ReadScope, after: FeedCursor) -> Result<Read, ApiError> {
    match readable {
        ReadScope::All => {
            let events = state
                .store
                .feed(after, PAGE, &AggregateFilter::default())
                .await?;
            let next = events.last().map_or(after, RecordedEvent::cursor);
            Ok(Read {
                full: events.len() >= PAGE as usize,
                events,
                next,
                held_back: false,
            })
        }
        ReadScope::Of { .. } => {
            let mut scope = Scope::default();
            scope.set_mine(Some(readable.clone()));
            let page = read_scoped(&state.store, &state.read.db, &scope, after, PAGE).await?;
            Ok(Read {
                full: page.events.len() >= PAGE as usize,
                events: page.events,
                next: page.next,
                held_back: page.held_back,
            })
        }
    }
}

/// The resources changed after `after`, at most `limit` of them, in the feed order of
/// their first change.
async fn window(
    state: &AppState,
    readable: &ReadScope,
    after: FeedCursor,
    limit: u32,
) -> Result<Window, ApiError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut seen: Vec<Seen> = Vec::new();
    let mut index: HashMap<(Kind, String), usize> = HashMap::new();
    let mut cursor = after;
    let mut pages = 0;
    loop {
        let page = read(state, readable, cursor).await?;
        pages += 1;
        for event in page.events {
            if let Some(kind) = Kind::of(&event.aggregate_type) {
                let key = (kind, event.aggregate_id.clone());
                match index.get(&key) {
                    Some(&at) => seen[at].sequence = event.sequence,
                    None if seen.len() >= limit => {
                        // The page is full: this resource starts the next one.
                        return Ok(Window {
                            seen,
                            next: cursor,
                            held_back: false,
                        });
                    }
                    None => {
                        index.insert(key, seen.len());
                        seen.push(Seen {
                            kind,
                            id: event.aggregate_id.clone(),
                            sequence: event.sequence,
                            before: cursor,
                        });
                    }
                }
            }
            cursor = event.cursor();
        }
        cursor = page.next;
        if !page.full || (!seen.is_empty() && pages >= MAX_PAGES) {
            return Ok(Window {
                seen,
                next: cursor,
                held_back: page.held_back,
            });
        }
    }
}

/// Each resource seen as its `GET` answers it now, and where the next pull starts.
async fn resolve(
    state: &AppState,
    inner: &Inner,
    seen: Vec<Seen>,
    next: FeedCursor,
) -> Result<(Vec<Change>, FeedCursor), ApiError> {
    let deadline = Instant::now() + SCOPE_PATIENCE;
    let mut changes = Vec::with_capacity(seen.len());
    for resource in seen {
        let path = resource.kind.path(&resource.id);
        let answer = loop {
            let answer = inner.send(Method::GET, &path, None, &[]).await?;
            let behind = answer.version.is_some_and(|version| {
                i64::try_from(version).unwrap_or(i64::MAX) < resource.sequence
            });
            if !behind {
                break Some(answer);
            }
            if Instant::now() >= deadline {
                break None;
            }
            state.read.notify();
            tokio::time::sleep(STALE_RECHECK).await;
        };
        let Some(answer) = answer else {
            tracing::debug!(kind = ?resource.kind, id = %resource.id, "read model behind the feed; the page ends before it");
            return Ok((changes, resource.before));
        };
        let (deleted, body) = match answer.status {
            StatusCode::OK => (false, answer.body),
            StatusCode::NOT_FOUND => (true, Value::Null),
            status => {
                return Err(ApiError::Internal(
                    format!("reading a pulled {:?} answered {status}", resource.kind).into(),
                ))
            }
        };
        changes.push(Change {
            kind: resource.kind,
            id: resource.id,
            deleted,
            resource: body,
        });
    }
    Ok((changes, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_nothing_else_is_one() {
        for cursor in [
            FeedCursor::default(),
            FeedCursor {
                transaction_id: 7_345,
                position: 12,
            },
            FeedCursor {
                transaction_id: u64::MAX,
                position: i64::MAX,
            },
        ] {
            let token = encode(cursor);
            assert_eq!(token.len(), 32, "{token}");
            assert_eq!(decode(&token).unwrap(), cursor);
        }
        for bad in [
            "",
            "0",
            "000000000000000g0000000000000000",
            "00000000000000000000000000000000 ",
            "0000000000000000FFFFFFFFFFFFFFFF",
            "0000000000000000ffffffffffffffff",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
