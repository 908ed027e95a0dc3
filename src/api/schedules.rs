//! `/api/workflows/{id}/schedules`: cron schedules that start runs of a workflow. A
//! schedule belongs to its workflow: whoever may not read the workflow gets 404 for its
//! schedules too. The schedule process (`process::schedules`) fires them.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chronicle_aggregates::schedule::{Schedule, ScheduleCommand, ScheduleState};
use chronicle_commands::schedule::NewScheduleRequest;
use chronicle_projections::schedule_view::ScheduleView;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, IdPath, RequestMeta};
use super::paging::{Page, Paging};
use super::workflows::{readable, writable, ListQuery};
use super::AppState;
use crate::actor::Actor;

/// A schedule as answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleBody {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub cron: String,
    /// The IANA zone the expression is read in.
    pub timezone: String,
    /// The params each run is given (the workflow's defaults fill the rest).
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// When the next run starts; `null` when the expression fires no more.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The fire time of the last run started (or skipped), if any.
    pub last_fire_at: Option<DateTime<Utc>>,
    pub last_run_id: Option<Uuid>,
    /// How many times the schedule fired.
    pub fired: u64,
    pub created_at: DateTime<Utc>,
}

impl From<&ScheduleState> for ScheduleBody {
    fn from(schedule: &ScheduleState) -> Self {
        Self {
            id: schedule.id,
            workflow_id: schedule.workflow_id,
            cron: schedule.spec.cron.clone(),
            timezone: schedule.spec.timezone.clone(),
            params: schedule.spec.params.clone(),
            next_fire_at: schedule.next_fire_at(),
            last_fire_at: schedule.last_firing.as_ref().map(|l| l.fire_at),
            last_run_id: schedule.last_firing.as_ref().and_then(|l| l.run_id),
            fired: schedule.fired,
            created_at: schedule.created_at,
        }
    }
}

/// `{id}/schedules/{sid}`: two UUIDs; anything else does not exist (404).
pub struct ScheduleIds {
    workflow_id: Uuid,
    schedule_id: Uuid,
}

impl<S: Send + Sync> FromRequestParts<S> for ScheduleIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((workflow, schedule)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        match (Uuid::parse_str(&workflow), Uuid::parse_str(&schedule)) {
            (Ok(workflow_id), Ok(schedule_id)) => Ok(Self {
                workflow_id,
                schedule_id,
            }),
            _ => Err(ApiError::NotFound),
        }
    }
}

/// The schedule if it is one of `workflow_id`'s and not deleted; 404 otherwise (the
/// caller's right to the workflow is checked first).
async fn schedule_of(
    state: &AppState,
    workflow_id: Uuid,
    schedule_id: Uuid,
) -> Result<Schedule, ApiError> {
    let loaded = state
        .store
        .aggregate::<Schedule>()
        .load(&schedule_id.to_string())
        .await?;
    match loaded.aggregate.state() {
        Some(schedule) if schedule.workflow_id == workflow_id && !schedule.deleted => {
            Ok(loaded.aggregate)
        }
        _ => Err(ApiError::NotFound),
    }
}

fn schedule_answer(status: StatusCode, schedule: &Schedule) -> Result<Response, ApiError> {
    let body = schedule
        .state()
        .map(ScheduleBody::from)
        .ok_or(ApiError::NotFound)?;
    Ok((status, Json(body)).into_response())
}

/// Schedule runs of a workflow.
#[utoipa::path(
    post,
    path = "/workflows/{id}/schedules",
    operation_id = "create_schedule",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    request_body = NewScheduleRequest,
    responses(
        (status = 201, description = "The schedule, with its next fire time", body = ScheduleBody),
        (status = 400, description = "Malformed JSON"),
        (status = 415, description = "The body is not JSON"),
        (status = 403, description = "The caller may read the workflow but not change it"),
        (status = 404, description = "No such workflow, or not yours"),
        (status = 409, description = "The workflow is archived"),
        (status = 422, description = "A bad `cron` (or one that never fires), an unknown `timezone`, or `params.<name>` the workflow refuses"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id, schedule_id))]
pub async fn create(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<NewScheduleRequest>,
) -> Result<Response, ApiError> {
    let (workflow, _) = readable(&state, &actor, id).await?;
    writable(&state, &actor, &workflow)?;
    let workflow = workflow.state().ok_or(ApiError::NotFound)?;
    if workflow.archived {
        return Err(ApiError::Conflict {
            code: "workflow.archived",
            detail: "the workflow is archived".into(),
        });
    }
    let spec = request.validate()?;
    workflow
        .latest()
        .ok_or(ApiError::NotFound)?
        .bind_params(spec.params.clone())?;
    let schedule_id = Uuid::now_v7();
    tracing::Span::current().record("schedule_id", tracing::field::display(schedule_id));
    let owner_id = workflow.owner_id;
    let committed = state
        .bus
        .create::<Schedule, ApiError>(&schedule_id.to_string(), &meta.context(&actor), |_| {
            Ok(ScheduleCommand::CreateSchedule {
                schedule_id,
                workflow_id: id,
                owner_id,
                spec: spec.clone(),
                at: Utc::now(),
            })
        })
        .await?;
    state
        .read
        .schedule_committed(&committed.aggregate, committed.version)
        .await;
    schedule_answer(StatusCode::CREATED, &committed.aggregate)
}

/// The workflow's schedules, newest first.
#[utoipa::path(
    get,
    path = "/workflows/{id}/schedules",
    operation_id = "list_schedules",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The workflow's id"), ListQuery),
    responses(
        (status = 200, description = "A page of schedules", body = Page<ScheduleBody>),
        (status = 404, description = "No such workflow, or not yours"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn list(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<ScheduleBody>>, ApiError> {
    readable(&state, &actor, id).await?;
    let paging = Paging::parse(query.limit, query.cursor.as_deref())?;
    let rows = ScheduleView::of_workflow(&state.read.db, id, paging.before_id, paging.fetch())
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Json(paging.page(
        rows,
        |row| row.state().map(ScheduleBody::from),
        |schedule| schedule.id,
    )))
}

/// Read one schedule.
#[utoipa::path(
    get,
    path = "/workflows/{id}/schedules/{sid}",
    operation_id = "get_schedule",
    tag = "workflows",
    params(
        ("id" = Uuid, Path, description = "The workflow's id"),
        ("sid" = Uuid, Path, description = "The schedule's id"),
    ),
    responses(
        (status = 200, description = "The schedule", body = ScheduleBody),
        (status = 404, description = "No such workflow or schedule (or deleted), or not yours"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %ids.workflow_id, schedule_id = %ids.schedule_id))]
pub async fn get(
    State(state): State<AppState>,
    actor: Actor,
    ids: ScheduleIds,
) -> Result<Response, ApiError> {
    readable(&state, &actor, ids.workflow_id).await?;
    let schedule = schedule_of(&state, ids.workflow_id, ids.schedule_id).await?;
    schedule_answer(StatusCode::OK, &schedule)
}

/// Delete a schedule: it starts no more runs; runs already started go on.
#[utoipa::path(
    delete,
    path = "/workflows/{id}/schedules/{sid}",
    operation_id = "delete_schedule",
    tag = "workflows",
    params(
        ("id" = Uuid, Path, description = "The workflow's id"),
        ("sid" = Uuid, Path, description = "The schedule's id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller may read the workflow but not change it"),
        (status = 404, description = "No such workflow or schedule (or already deleted), or not yours"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %ids.workflow_id, schedule_id = %ids.schedule_id))]
pub async fn delete(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    ids: ScheduleIds,
) -> Result<Response, ApiError> {
    let (workflow, _) = readable(&state, &actor, ids.workflow_id).await?;
    writable(&state, &actor, &workflow)?;
    schedule_of(&state, ids.workflow_id, ids.schedule_id).await?;
    let committed = state
        .bus
        .execute::<Schedule, ApiError>(
            &ids.schedule_id.to_string(),
            &meta.context(&actor),
            meta.if_match,
            |_| Ok(ScheduleCommand::DeleteSchedule { at: Utc::now() }),
        )
        .await?;
    state
        .read
        .schedule_committed(&committed.aggregate, committed.version)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
