//! `GET /api/events`: the global feed over HTTP, scoped to what the caller may read, as a
//! page of JSON or (`Accept: application/x-ndjson`) streamed whole.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chronicle_projections::ReadScope;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::ApiQuery;
use super::paging::{Page, Paging};
use super::views::EventView;
use super::AppState;
use crate::actor::Actor;
use crate::read_side::ReadSide;
use crate::store::{AggregateFilter, FeedCursor, RecordedEvent, Store, StoreError};

/// The media type of the streamed feed: one `Event` per line.
pub const NDJSON: &str = "application/x-ndjson";

/// How long a scoped read waits for the owners projection to pass what is readable now.
pub(crate) const SCOPE_PATIENCE: Duration = Duration::from_secs(1);

/// How long a stream waits for the horizon, or the owners projection, to pass everything
/// committed before it began; then it ends with what it could read.
const STREAM_PATIENCE: Duration = Duration::from_secs(10);

/// Events read per query while streaming.
const STREAM_PAGE: u32 = 1_000;

/// How often a waiting read looks again.
const RECHECK: Duration = Duration::from_millis(20);

/// `GET /api/events` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The `position` of the last event already received: the answer resumes right after
    /// it in feed order. Absent or 0: from the first event.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// `next_cursor` of the previous page; the same as `after`, not with it.
    pub cursor: Option<String>,
    /// 50 when absent; ignored when streaming.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// Only events of this aggregate type (`task`, `agent`, `user`, `api_key`, …).
    pub aggregate_type: Option<String>,
    /// Only events of this aggregate.
    pub aggregate_id: Option<String>,
}

/// The global event feed, gap-free, in feed order.
///
/// Users see the events of the aggregates they own (their tasks, agents, keys, sessions,
/// their own user) and of those that belong to one of their teams now (tasks, runs,
/// workflows and agents shared with it, and the team itself), whole histories included; a
/// removed member's next read leaves the team out. Auditors and admins see every event. The order is the feed's: on
/// PostgreSQL `(transaction_id, position)`, so `position` may step back from one
/// transaction to the next but never repeats, and nothing that commits late is passed
/// over. To resume, send the `position` of the last event received as `after`.
/// `next_cursor` is set when the page is full (more can be read at once) and `null` when
/// the caller has caught up; to follow the feed, poll with the last position received.
///
/// With `Accept: application/x-ndjson` the answer is every event after `after` (not one
/// page: `limit` is ignored), one `Event` per line, streamed as it is read, up to
/// everything committed before the request arrived.
#[utoipa::path(
    get,
    path = "/events",
    operation_id = "list_events",
    tag = "events",
    params(
        FeedQuery,
        ("Accept" = Option<String>, Header, description = "`application/x-ndjson` streams every event after `after`"),
    ),
    responses(
        (status = 200, description = "A page of events, or the whole feed after `after` as NDJSON", content(
            (Page<EventView> = "application/json"),
            (EventView = "application/x-ndjson"),
        )),
        (status = 422, description = "A bad query parameter, or no event has the position in `after`"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    actor: Actor,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<Response, ApiError> {
    let limit = Paging::parse(query.limit, None)?.limit;
    let after = match (query.after, query.cursor.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "cursor",
                "give after or cursor, not both",
            ))
        }
        (Some(after), None) => after,
        (None, Some(cursor)) => cursor
            .parse()
            .map_err(|_| ApiError::validation("cursor", "is not a cursor from this API"))?,
        (None, None) => 0,
    };
    if after < 0 {
        return Err(ApiError::validation("after", "must be at least 0"));
    }
    let cursor = state
        .store
        .cursor_after(after)
        .await?
        .ok_or_else(|| ApiError::validation("after", "no event has this position"))?;
    let readers = state.authz.readers(&actor);
    let filter = AggregateFilter {
        aggregate_type: query.aggregate_type,
        aggregate_id: query.aggregate_id,
    };
    if wants_ndjson(&headers) {
        return Ok(stream(state, cursor, filter, readers));
    }
    if readers != ReadScope::All {
        await_scope(&state.store, &state.read, SCOPE_PATIENCE).await?;
    }
    let mut events = state
        .store
        .feed_scoped(cursor, limit + 1, &filter, &readers)
        .await?;
    let has_more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let next_cursor = if has_more {
        events.last().map(|event| event.position.to_string())
    } else {
        None
    };
    let items = events.into_iter().map(EventView::from).collect();
    Ok(Json(Page { items, next_cursor }).into_response())
}

/// Does the client ask for NDJSON? Any `Accept` entry naming it wins.
fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.split(';').next())
        .any(|media| media.trim().eq_ignore_ascii_case(NDJSON))
}

/// Waits, at most `patience`, until the owners projection has passed every event readable
/// now, so that a scoped read ([`Store::feed_scoped`] of a user) includes the caller's
/// latest writes. After `patience` the read answers what is safe: events the projection
/// has not reached are held back, never passed over.
pub(crate) async fn await_scope(
    store: &Store,
    read: &ReadSide,
    patience: Duration,
) -> Result<(), StoreError> {
    let tail = store.feed_tail().await?;
    let deadline = Instant::now() + patience;
    let mut nudged = false;
    while store.scope_bound().await? < tail {
        if Instant::now() >= deadline {
            tracing::debug!("the owners projection is behind; answering what it covers");
            break;
        }
        if !nudged {
            read.notify();
            nudged = true;
        }
        tokio::time::sleep(RECHECK).await;
    }
    Ok(())
}

/// The feed after `cursor` as NDJSON, read page by page as the client takes it: memory
/// holds one page, whatever the length of the feed.
fn stream(
    state: AppState,
    cursor: FeedCursor,
    filter: AggregateFilter,
    readers: ReadScope,
) -> Response {
    let feed = FeedStream {
        state,
        cursor,
        filter,
        readers,
        tail: None,
        last_read: false,
        done: false,
        short_since: None,
    };
    let body = futures::stream::try_unfold(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await;
        if let Err(error) = &chunk {
            tracing::warn!(%error, "the event stream ends early");
        }
        Ok::<_, StoreError>(chunk?.map(|bytes| (bytes, feed)))
    });
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
        Body::from_stream(body),
    )
        .into_response()
}

/// Where a streamed answer stands.
struct FeedStream {
    state: AppState,
    cursor: FeedCursor,
    filter: AggregateFilter,
    /// Whose events, fixed when the stream began (an export, not a subscription).
    readers: ReadScope,
    /// The last event readable when the stream began, once the horizon passed everything
    /// committed before it; `None` until then.
    tail: Option<FeedCursor>,
    /// The next page shorter than a full one ends the stream: everything the stream owes
    /// was readable before that read began.
    last_read: bool,
    done: bool,
    /// Since when reads have come back short while the owners projection lags.
    short_since: Option<Instant>,
}

impl FeedStream {
    /// Like `chronicle events export`: what was committed before the answer began is in
    /// it, even when an older transaction elsewhere holds the horizon back for a moment.
    async fn begin(&mut self) -> Result<FeedCursor, StoreError> {
        let store = &self.state.store;
        let watermark = store.feed_watermark().await?;
        let deadline = Instant::now() + STREAM_PATIENCE;
        while !store.feed_reached(watermark).await? && Instant::now() < deadline {
            tokio::time::sleep(RECHECK).await;
        }
        // The whole feed is readable up to the horizon; a scoped one up to the owners
        // projection's checkpoint, which has to pass the tail first.
        self.last_read = self.readers == ReadScope::All;
        if self.readers != ReadScope::All {
            self.state.read.notify();
        }
        store.feed_tail().await
    }

    /// The next page as NDJSON; `None` once the stream is complete.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        let tail = match self.tail {
            Some(tail) => tail,
            None => {
                let tail = self.begin().await?;
                self.tail = Some(tail);
                tail
            }
        };
        loop {
            if self.done || self.state.shutdown.is_cancelled() {
                return Ok(None);
            }
            let page = self
                .state
                .store
                .feed_scoped(self.cursor, STREAM_PAGE, &self.filter, &self.readers)
                .await?;
            let short = page.len() < STREAM_PAGE as usize;
            if short && self.last_read {
                self.done = true;
            } else if short {
                self.await_owners(tail, page.is_empty()).await?;
            }
            if let Some(last) = page.last() {
                self.cursor = last.cursor();
                return encode(page).map(Some);
            }
        }
    }

    /// After a short scoped read: once the owners projection has passed `tail`, the next
    /// read is the last one; until then wait (when nothing was read) and read again.
    async fn await_owners(&mut self, tail: FeedCursor, idle: bool) -> Result<(), StoreError> {
        if self.state.store.scope_bound().await? >= tail {
            self.last_read = true;
            return Ok(());
        }
        let since = *self.short_since.get_or_insert_with(Instant::now);
        if since.elapsed() > STREAM_PATIENCE {
            tracing::warn!("the owners projection is stuck; the event stream ends early");
            self.done = true;
        } else if idle {
            tokio::time::sleep(RECHECK).await;
        }
        Ok(())
    }
}

/// One line of JSON per event, each in its `Event` shape.
fn encode(events: Vec<RecordedEvent>) -> Result<Bytes, StoreError> {
    let mut buffer = Vec::with_capacity(events.len() * 512);
    for event in events {
        serde_json::to_writer(&mut buffer, &EventView::from(event))?;
        buffer.push(b'\n');
    }
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_is_asked_for_by_any_accept_entry() {
        let mut headers = HeaderMap::new();
        assert!(!wants_ndjson(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_ndjson(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;q=0.5, Application/X-NDJSON;q=1"),
        );
        assert!(wants_ndjson(&headers));
    }
}
