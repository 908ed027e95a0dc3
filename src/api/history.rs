//! Per-aggregate history, served from the events: `GET /api/tasks/{id}/events` (its
//! handler is in [`super::tasks`]), `GET /api/agents/{id}/events` and
//! `GET /api/workflow-runs/{id}/events` (in [`super::workflows`]).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chronicle_aggregates::agent::Agent;
use cqrs_es::Aggregate;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiQuery, IdPath};
use super::paging::MAX_LIMIT;
use super::views::EventView;
use super::AppState;
use crate::actor::Actor;
use crate::authz::{Action, Resource};

/// `…/events` query: a page of an aggregate's history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only events after this `sequence` (that of the last event already received).
    /// Absent or 0: from the first event.
    pub after_sequence: Option<u64>,
    /// At most this many events (1–500). Absent: the whole rest of the history.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// The events of aggregate `aggregate_type`/`id` that `query` asks for, oldest first, as a
/// bare array; when `limit` cut the page short of the end, a `Link: <…>; rel="next"`
/// header names the next page (`path` is the route, e.g. `/api/tasks/{id}/events`).
pub(crate) async fn answer(
    state: &AppState,
    aggregate_type: &str,
    id: Uuid,
    path: &str,
    query: &HistoryQuery,
) -> Result<Response, ApiError> {
    if query
        .limit
        .is_some_and(|limit| limit == 0 || limit > MAX_LIMIT)
    {
        return Err(ApiError::validation(
            "limit",
            format!("must be from 1 to {MAX_LIMIT}"),
        ));
    }
    let after = i64::try_from(query.after_sequence.unwrap_or(0))
        .map_err(|_| ApiError::validation("after_sequence", "is too large"))?;
    let mut events = state
        .store
        .history_page(
            aggregate_type,
            &id.to_string(),
            after,
            query.limit.map(|l| l + 1),
        )
        .await?;
    let next = match query.limit {
        Some(limit) if events.len() > limit as usize => {
            events.truncate(limit as usize);
            events.last().map(|last| (last.sequence, limit))
        }
        _ => None,
    };
    let body: Vec<EventView> = events.into_iter().map(EventView::from).collect();
    let mut response = Json(body).into_response();
    if let Some((sequence, limit)) = next {
        let link = format!("<{path}?after_sequence={sequence}&limit={limit}>; rel=\"next\"");
        let link = HeaderValue::from_str(&link).map_err(|e| ApiError::Internal(Box::new(e)))?;
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// An agent's history, oldest first.
///
/// A bare array of `Event`, like the task history. With `limit`, at most that many events
/// after `after_sequence`, and a `Link: <…>; rel="next"` header while more follow.
#[utoipa::path(
    get,
    path = "/agents/{id}/events",
    operation_id = "list_agent_events",
    tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id"), HistoryQuery),
    responses(
        (status = 200, description = "The agent's events after `after_sequence`", body = Vec<EventView>, headers(
            ("Link" = String, description = "`<…?after_sequence=N&limit=L>; rel=\"next\"` when `limit` cut the page short"),
        )),
        (status = 404, description = "No such agent, or not yours"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id))]
pub async fn agent_events(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let path = format!("/api/agents/{id}/events");
    owned_answer::<Agent>(&state, &actor, id, &path, &query, |agent| {
        agent.state().map(Resource::agent)
    })
    .await
}

/// [`answer`] for aggregate `A`, after checking that `actor` may read it (`resource`
/// describes it; `None`: it does not exist). One not theirs or a missing one is 404 alike.
pub(crate) async fn owned_answer<A: Aggregate>(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
    path: &str,
    query: &HistoryQuery,
    resource: fn(&A) -> Option<Resource>,
) -> Result<Response, ApiError> {
    let loaded = state.store.aggregate::<A>().load(&id.to_string()).await?;
    match resource(&loaded.aggregate) {
        Some(resource) if state.authz.can(actor, Action::Read, &resource) => {
            answer(state, A::TYPE, id, path, query).await
        }
        _ => Err(ApiError::NotFound),
    }
}
