//! `/api/tasks`: create, read (with `ETag`), cancel, history.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chronicle_aggregates::task::{Task, TaskCommand};
use chronicle_commands::task::NewTaskRequest;
use chrono::Utc;
use cqrs_es::Aggregate;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, IdPath, RequestMeta};
use super::views::{EventView, TaskView};
use super::AppState;
use crate::actor::Actor;
use crate::bus::Committed;

/// A task answer with its version as `ETag`.
fn task_response(status: StatusCode, task: &Task, version: usize) -> Result<Response, ApiError> {
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

#[tracing::instrument(skip_all)]
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
    let task_id = Uuid::now_v7();
    tracing::Span::current().record("task_id", tracing::field::display(task_id));
    let owner_id = actor.id;
    let Committed {
        aggregate, version, ..
    } = state
        .bus
        .execute::<Task, ApiError>(&task_id.to_string(), &meta.context(&actor), None, |_| {
            Ok(TaskCommand::CreateTask {
                task_id,
                owner_id,
                spec: spec.clone(),
                workflow_run_id: None,
                at: Utc::now(),
            })
        })
        .await?;
    task_response(StatusCode::CREATED, &aggregate, version)
}

#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let loaded = state
        .store
        .aggregate::<Task>()
        .load(&id.to_string())
        .await?;
    match loaded.aggregate.state() {
        Some(task) if actor.can_read(task.owner_id) => {}
        _ => return Err(ApiError::NotFound),
    }
    task_response(StatusCode::OK, &loaded.aggregate, loaded.version)
}

/// Cancels the task; cancelling a cancelled task answers the task as it is.
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
            |task: &Task| match task.state() {
                Some(current) if actor.can_write(current.owner_id) => Ok(TaskCommand::CancelTask {
                    reason: None,
                    at: Utc::now(),
                }),
                // Auditors may see the task but not change it.
                Some(current) if actor.can_read(current.owner_id) => Err(ApiError::Forbidden),
                _ => Err(ApiError::NotFound),
            },
        )
        .await?;
    task_response(StatusCode::OK, &aggregate, version)
}

#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn events(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let loaded = state
        .store
        .aggregate::<Task>()
        .load(&id.to_string())
        .await?;
    match loaded.aggregate.state() {
        Some(task) if actor.can_read(task.owner_id) => {}
        _ => return Err(ApiError::NotFound),
    }
    let history = state.store.history(Task::TYPE, &id.to_string()).await?;
    Ok(Json(history.into_iter().map(EventView::from).collect()))
}
