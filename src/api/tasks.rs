//! `/api/tasks`: create, read (with `ETag`, or as of a version or time), cancel, history.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chronicle_aggregates::agent::Agent;
use chronicle_aggregates::codec;
use chronicle_aggregates::task::{Task, TaskCommand, TaskStatus};
use chronicle_commands::task::NewTaskRequest;
use chronicle_projections::task_view::{TaskFilter, TaskView as TaskViewModel};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, IdPath, RequestMeta};
use super::history::{self, HistoryQuery};
use super::idempotency::{keyed_task_id, same_request};
use super::paging::{Page, Paging};
use super::sharing::{self, team_to_share_with, ShareRequest, Shareable};
use super::views::{EventView, TaskView};
use super::AppState;
use crate::actor::Actor;
use crate::authz::{Action, Resource};
use crate::bus::Committed;
use crate::process::dispatch::serves_every_user;

/// Brings the read side up to a just-committed task (see `ReadSide::task_committed`).
pub(crate) async fn committed(state: &AppState, task: &Task, version: usize) {
    state.read.task_committed(task, version).await;
}

/// A task answer with its version as `ETag`.
pub(crate) fn task_response(
    status: StatusCode,
    task: &Task,
    version: usize,
) -> Result<Response, ApiError> {
    let state = task.state().ok_or(ApiError::NotFound)?;
    let mut response = (status, Json(TaskView::new(state, version))).into_response();
    let etag = HeaderValue::from_str(&format!("\"{version}\""))
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    response.headers_mut().insert(header::ETAG, etag);
    if status == StatusCode::CREATED {
        let location = HeaderValue::from_str(&format!("/api/tasks/{}", state.id))
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Create a task.
///
/// With `Idempotency-Key`, the same key and request from the same caller again answer the
/// first answer and have no second effect; the same key with another request is 422.
#[utoipa::path(
    post,
    path = "/tasks",
    operation_id = "create_task",
    tag = "tasks",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; names the task, so a repeated request creates nothing new"),
    ),
    request_body = NewTaskRequest,
    responses(
        (status = 201, description = "Created (or, with a repeated Idempotency-Key, the first answer)", body = TaskView, headers(
            ("ETag" = String, description = "The task's version, e.g. `\"1\"`"),
            ("Location" = String, description = "`/api/tasks/{id}`"),
        )),
        (status = 400, description = "Malformed JSON or Idempotency-Key"),
        (status = 403, description = "The caller may not create tasks (auditor), or is a viewer of `team_id`"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field, an `agent_id` that is not an agent that can run the task (the caller's, the team's or a built-in one; whether or not it exists), a `team_id` that is not a team the caller belongs to, or an Idempotency-Key reused for another request"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id))]
pub async fn create(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    ApiJson(request): ApiJson<NewTaskRequest>,
) -> Result<Response, ApiError> {
    if !actor.can_create() {
        return Err(ApiError::Forbidden);
    }
    let spec = request.validate()?;
    if let Some(team_id) = spec.team_id {
        team_to_share_with(&state, &actor, Task::IN_TEAM, team_id)?;
    }
    if let Some(agent_id) = spec.pinned_agent_id {
        usable_agent(&state, &actor, agent_id, spec.team_id).await?;
    }
    let task_id = match &meta.idempotency_key {
        Some(key) => keyed_task_id(actor.id, key),
        None => Uuid::now_v7(),
    };
    tracing::Span::current().record("task_id", tracing::field::display(task_id));
    let owner_id = actor.id;
    let result = state
        .bus
        .create::<Task, ApiError>(&task_id.to_string(), &meta.context(&actor), |_| {
            Ok(TaskCommand::CreateTask {
                task_id,
                owner_id,
                spec: spec.clone(),
                workflow_run_id: None,
                at: Utc::now(),
            })
        })
        .await;
    match result {
        Ok(Committed {
            aggregate, version, ..
        }) => {
            committed(&state, &aggregate, version).await;
            task_response(StatusCode::CREATED, &aggregate, version)
        }
        Err(ApiError::Conflict {
            code: "task.already_exists",
            ..
        }) if meta.idempotency_key.is_some() => {
            let (first, version) = replay(&state, task_id, None, Some(1)).await?;
            match first.state() {
                Some(created) if created.owner_id == owner_id && same_request(created, &spec) => {
                    task_response(StatusCode::CREATED, &first, version)
                }
                _ => Err(ApiError::Unprocessable {
                    code: "idempotency_key.reused",
                    detail: "this Idempotency-Key was used for another request".into(),
                }),
            }
        }
        Err(error) => Err(error),
    }
}

/// Refuses a pin to an agent that would not serve the caller's task: one of another user's
/// (an agent leases only its owner's tasks, and its team's) or none at all. Both get the
/// same 422, so a pin does not tell whether someone else's agent exists.
pub(crate) async fn usable_agent(
    state: &AppState,
    actor: &Actor,
    agent_id: Uuid,
    team_id: Option<Uuid>,
) -> Result<(), ApiError> {
    let loaded = state
        .store
        .aggregate::<Agent>()
        .load(&agent_id.to_string())
        .await?;
    match loaded.aggregate.state() {
        Some(agent)
            if agent.owner_id == actor.id
                || serves_every_user(agent)
                || (team_id.is_some() && agent.team_id == team_id) =>
        {
            Ok(())
        }
        _ => Err(ApiError::validation(
            "agent_id",
            "is not an agent that can run your tasks",
        )),
    }
}

/// `GET /api/tasks/{id}` query: the task as it stood at a version or a time.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// The task as it stood at this time (RFC 3339).
    pub as_of: Option<DateTime<Utc>>,
    /// The task as it stood after this many events; with `as_of` too, after the last event
    /// within both.
    #[param(minimum = 1)]
    pub as_of_version: Option<u64>,
}

/// Read a task, now or as it stood at a version or a time.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    operation_id = "get_task",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id"), GetQuery),
    responses(
        (status = 200, description = "The task", body = TaskView, headers(
            ("ETag" = String, description = "The version answered, e.g. `\"3\"`"),
        )),
        (status = 404, description = "No such task (or not yours), or it did not exist yet then"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<Response, ApiError> {
    let (task, version) = current(&state, id).await?;
    match task.state() {
        Some(task) if state.authz.can(&actor, Action::Read, &Resource::task(task)) => {}
        _ => return Err(ApiError::NotFound),
    }
    match (query.as_of, query.as_of_version) {
        (None, None) => task_response(StatusCode::OK, &task, version),
        (_, Some(0)) => Err(ApiError::validation("as_of_version", "must be at least 1")),
        (as_of, as_of_version) => {
            let (task, version) = replay(&state, id, as_of, as_of_version).await?;
            task_response(StatusCode::OK, &task, version)
        }
    }
}

/// The task as it stands, with its version: from the task view, which every command on a
/// task writes inline before it answers (so a caller reads its own write), one indexed read
/// instead of loading the aggregate. When the view has no row — the task does not exist, or
/// the inline write of its creation failed and the catch-up has not repaired it yet — the
/// event store answers.
async fn current(state: &AppState, id: Uuid) -> Result<(Task, usize), ApiError> {
    let row = TaskViewModel::get(&state.read.db, id)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    if let Some(row) = row {
        return Ok((row.task, row.version));
    }
    let loaded = state
        .store
        .aggregate::<Task>()
        .load(&id.to_string())
        .await?;
    Ok((loaded.aggregate, loaded.version))
}

/// The task rebuilt from its history up to a version or a time; 404 when it did not exist
/// yet (or has no such version).
async fn replay(
    state: &AppState,
    id: Uuid,
    as_of: Option<DateTime<Utc>>,
    as_of_version: Option<u64>,
) -> Result<(Task, usize), ApiError> {
    let history = state.store.history(Task::TYPE, &id.to_string()).await?;
    let current = history.last().map_or(0, |event| event.sequence);
    if as_of_version.is_some_and(|wanted| i64::try_from(wanted).map_or(true, |w| w > current)) {
        return Err(ApiError::NotFound);
    }
    let mut task = Task::default();
    let mut version = 0;
    for event in history {
        let too_late = as_of_version
            .is_some_and(|wanted| i64::try_from(wanted).is_ok_and(|w| event.sequence > w))
            || as_of.is_some_and(|at| event.recorded_at > at);
        if too_late {
            break;
        }
        let event = state.store.upcast(event);
        version = usize::try_from(event.sequence).unwrap_or_default();
        let decoded = codec::decode::<Task>(&event.event_type, event.payload)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        task.apply(decoded);
    }
    if version == 0 {
        return Err(ApiError::NotFound);
    }
    Ok((task, version))
}

/// Cancel a task.
///
/// Idempotent: cancelling a cancelled task answers the task as it is.
#[utoipa::path(
    delete,
    path = "/tasks/{id}",
    operation_id = "cancel_task",
    tag = "tasks",
    params(
        ("id" = Uuid, Path, description = "The task's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the task is still at this version (an `ETag`)"),
    ),
    responses(
        (status = 200, description = "The cancelled task", body = TaskView, headers(
            ("ETag" = String, description = "The task's new version"),
        )),
        (status = 403, description = "The caller may read the task but not change it (auditor)"),
        (status = 404, description = "No such task, or not yours"),
        (status = 409, description = "The task is finished and cannot be cancelled"),
        (status = 412, description = "If-Match does not match the current version"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let Committed {
        aggregate, version, ..
    } = state
        .bus
        .execute::<Task, ApiError>(
            &id.to_string(),
            &meta.context(&actor),
            meta.if_match,
            |task: &Task| {
                let current = task.state().ok_or(ApiError::NotFound)?;
                // Auditors and a team's members below maintainer see the task, no more.
                state
                    .authz
                    .require(&actor, Action::Write, &Resource::task(current))?;
                Ok(TaskCommand::CancelTask {
                    reason: None,
                    at: Utc::now(),
                })
            },
        )
        .await?;
    committed(&state, &aggregate, version).await;
    task_response(StatusCode::OK, &aggregate, version)
}

/// A task's history, oldest first.
///
/// A bare array of `Event` (without parameters, the full history). With `limit`, at most
/// that many events after `after_sequence`, and a `Link: <…>; rel="next"` header while
/// more follow.
#[utoipa::path(
    get,
    path = "/tasks/{id}/events",
    operation_id = "list_task_events",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id"), HistoryQuery),
    responses(
        (status = 200, description = "The task's events after `after_sequence`; lease ids appear only as `lease_id_sha256` (they are bearer capabilities)", body = Vec<EventView>, headers(
            ("Link" = String, description = "`<…?after_sequence=N&limit=L>; rel=\"next\"` when `limit` cut the page short"),
        )),
        (status = 404, description = "No such task, or not yours"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn events(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let path = format!("/api/tasks/{id}/events");
    history::owned_answer::<Task>(&state, &actor, id, &path, &query, |task| {
        task.state().map(Resource::task)
    })
    .await
}

/// `GET /api/tasks` query: filters, `limit` (default 50, max 500) and an opaque `cursor`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub status: Option<TaskStatus>,
    pub capability: Option<String>,
    /// Tasks held by this agent.
    pub agent_id: Option<Uuid>,
    /// Tasks carrying this tag.
    pub tag: Option<String>,
    pub workflow_run_id: Option<Uuid>,
    /// Only the tasks of this team (one the caller belongs to; any other answers none).
    pub team_id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

/// Tasks the caller may read, newest first: their own and their teams'.
#[utoipa::path(
    get,
    path = "/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks", body = Page<TaskView>),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<TaskView>>, ApiError> {
    let paging = Paging::parse(query.limit, query.cursor.as_deref())?;
    let filter = TaskFilter {
        readers: state.authz.readers(&actor),
        team_id: query.team_id,
        status: query.status.map(|s| s.as_str().to_owned()),
        capability: query.capability,
        agent_id: query.agent_id,
        tag: query.tag,
        workflow_run_id: query.workflow_run_id,
        created_after: query.created_after,
        created_before: query.created_before,
        before_id: paging.before_id,
    };
    let rows = TaskViewModel::list(&state.read.db, &filter, paging.fetch())
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Json(paging.page(
        rows,
        |row| row.state().map(|task| TaskView::new(task, row.version)),
        |task| task.id,
    )))
}

/// Share a task with a team: its members read it (its history and stream too), its
/// maintainers and owners change and cancel it, its viewers only read, and the team's
/// agents lease it. Sharing with another team moves it there.
#[utoipa::path(
    post,
    path = "/tasks/{id}/share",
    operation_id = "share_task",
    tag = "teams",
    params(
        ("id" = Uuid, Path, description = "The task's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the task is still at this version (an `ETag`)"),
    ),
    request_body = ShareRequest,
    responses(
        (status = 200, description = "The task, shared", body = TaskView, headers(
            ("ETag" = String, description = "The task's new version"),
        )),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may read the task but not change it, or is a viewer of `team_id`"),
        (status = 404, description = "No such task, or not one the caller may read"),
        (status = 412, description = "If-Match does not match the current version"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "`team_id` is not a team the caller belongs to"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn share(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<ShareRequest>,
) -> Result<Response, ApiError> {
    shared_answer(&state, &actor, &meta, id, Some(request.team_id)).await
}

/// Take a task back from its team: only its owner reads it again.
#[utoipa::path(
    post,
    path = "/tasks/{id}/unshare",
    operation_id = "unshare_task",
    tag = "teams",
    params(
        ("id" = Uuid, Path, description = "The task's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the task is still at this version (an `ETag`)"),
    ),
    responses(
        (status = 200, description = "The task, no team's", body = TaskView, headers(
            ("ETag" = String, description = "The task's new version"),
        )),
        (status = 403, description = "The caller may read the task but not change it"),
        (status = 404, description = "No such task, or not one the caller may read"),
        (status = 412, description = "If-Match does not match the current version"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn unshare(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    shared_answer(&state, &actor, &meta, id, None).await
}

async fn shared_answer(
    state: &AppState,
    actor: &Actor,
    meta: &RequestMeta,
    id: Uuid,
    team_id: Option<Uuid>,
) -> Result<Response, ApiError> {
    let Committed {
        aggregate, version, ..
    } = sharing::share::<Task>(state, actor, meta, id, team_id).await?;
    committed(state, &aggregate, version).await;
    task_response(StatusCode::OK, &aggregate, version)
}
