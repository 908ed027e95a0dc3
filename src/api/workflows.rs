//! `/api/workflows` and `/api/workflow-runs`: definitions (versioned, archived; JSON or
//! YAML), runs started from them, read, signalled (approval steps), cancelled and their
//! history. The workflow driver (`process::workflows`) moves runs forward; handlers only
//! translate HTTP to commands. Answers carry the aggregate's version as `ETag`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chronicle_aggregates::task::TaskFailure;
use chronicle_aggregates::workflow::{Workflow, WorkflowCommand, WorkflowState};
use chronicle_aggregates::workflow_run::{
    ApprovalDecision, RunState, RunStatus, StepStatus, WorkflowRun, WorkflowRunCommand,
};
use chronicle_commands::workflow::{
    ParamSpec, StepRequest, WorkflowDefinition, WorkflowDefinitionRequest,
};
use chronicle_projections::workflow_run_view::WorkflowRunView;
use chronicle_projections::workflow_view::WorkflowView;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, ApiJsonOrYaml, ApiQuery, IdPath, RequestMeta};
use super::history::{owned_answer, HistoryQuery};
use super::paging::{Page, Paging};
use super::sharing::{self, team_to_share_with, ShareRequest};
use super::tasks::usable_agent;
use super::views::EventView;
use super::workflow_templates::{definition_request, CreateWorkflowRequest};
use super::AppState;
use crate::actor::Actor;
use crate::authz::{Action, Resource};
use crate::process::workflows::{advance, cancel_tasks, run_command};

/// A workflow at one version.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowBody {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// This body's version; `latest_version` is the newest.
    pub version: u32,
    pub latest_version: u32,
    pub params: BTreeMap<String, ParamSpec>,
    pub steps: Vec<StepRequest>,
    pub archived: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The team it is shared with: members read and run it, maintainers change it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
}

impl WorkflowBody {
    fn new(state: &WorkflowState, version: u32, definition: &WorkflowDefinition) -> Self {
        let request = definition.request();
        Self {
            id: state.id,
            owner_id: state.owner_id,
            name: definition.name().to_owned(),
            description: request.description.clone(),
            version,
            latest_version: state.version(),
            params: request.params.clone(),
            steps: request.steps.clone(),
            archived: state.archived,
            created_at: state.created_at,
            updated_at: state.updated_at,
            team_id: state.team_id,
        }
    }

    fn latest(state: &WorkflowState) -> Option<Self> {
        Some(Self::new(state, state.version(), state.latest()?))
    }
}

/// One step of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunStepBody {
    /// `pending`, `running`, `waiting_approval`, `succeeded`, `failed`, `skipped`, `cancelled`.
    pub status: String,
    pub task_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    pub error: Option<TaskFailure>,
    /// The attempt of the step's task that ended it; 0 before (1 for a decided approval).
    pub attempt: u32,
    /// For an approval step: what is asked and, while it waits, until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<RunApprovalBody>,
}

/// The approval of an approval step.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunApprovalBody {
    pub prompt: String,
    /// While the step waits: when it fails with `approval_timed_out` if no decision came.
    pub deadline: Option<DateTime<Utc>>,
}

/// Why a run failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunErrorBody {
    pub step_id: String,
    pub error: TaskFailure,
}

/// A run and its per-step map.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowRunBody {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub version: u32,
    /// `running`, `succeeded`, `failed`, `cancelled`.
    pub status: String,
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    pub steps: BTreeMap<String, RunStepBody>,
    pub error: Option<RunErrorBody>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The team of its workflow when it started: the run and its tasks are the team's too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
}

fn step_status(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::WaitingApproval => "waiting_approval",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
        StepStatus::Cancelled => "cancelled",
    }
}

impl From<&RunState> for WorkflowRunBody {
    fn from(run: &RunState) -> Self {
        Self {
            id: run.id,
            workflow_id: run.workflow_id,
            version: run.version,
            status: run.status.as_str().to_owned(),
            params: run.params.clone(),
            steps: run
                .steps
                .iter()
                .map(|(id, step)| {
                    (
                        id.clone(),
                        RunStepBody {
                            status: step_status(step.status).to_owned(),
                            task_id: step.task_id,
                            output: step.output.clone(),
                            error: step.error.clone(),
                            attempt: step.attempt,
                            approval: approval_body(run, id, step.deadline),
                        },
                    )
                })
                .collect(),
            error: run.error.as_ref().map(|e| RunErrorBody {
                step_id: e.step_id.clone(),
                error: e.error.clone(),
            }),
            started_at: run.started_at,
            finished_at: run.finished_at,
            team_id: run.team_id,
        }
    }
}

fn approval_body(
    run: &RunState,
    step_id: &str,
    deadline: Option<DateTime<Utc>>,
) -> Option<RunApprovalBody> {
    let step = run.definition.steps().iter().find(|s| s.id == step_id)?;
    step.approval.as_ref().map(|approval| RunApprovalBody {
        prompt: approval.prompt.clone(),
        deadline,
    })
}

/// `response` with `version` as its `ETag`.
fn with_etag(mut response: Response, version: usize) -> Result<Response, ApiError> {
    let etag = HeaderValue::from_str(&format!("\"{version}\""))
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}

/// The definition, validated, with every pinned agent one that may run the caller's tasks.
async fn checked(
    state: &AppState,
    actor: &Actor,
    request: WorkflowDefinitionRequest,
) -> Result<WorkflowDefinition, ApiError> {
    let definition = request.validate()?;
    for (index, step) in definition.steps().iter().enumerate() {
        if let Some(agent_id) = step.agent_id {
            usable_agent(state, actor, agent_id, None)
                .await
                .map_err(|_| {
                    ApiError::validation(
                        &format!("steps[{index}].agent_id"),
                        "is not an agent that can run your tasks",
                    )
                })?;
        }
    }
    Ok(definition)
}

/// The workflow and its version if the caller may read it; 404 otherwise.
pub(crate) async fn readable(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<(Workflow, usize), ApiError> {
    let loaded = state
        .store
        .aggregate::<Workflow>()
        .load(&id.to_string())
        .await?;
    match loaded.aggregate.state() {
        Some(workflow)
            if state
                .authz
                .can(actor, Action::Read, &Resource::workflow(workflow)) =>
        {
            Ok((loaded.aggregate, loaded.version))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Whether the caller may do `action` to the workflow: 404 when it may not see it, 403
/// when it may only look.
pub(crate) fn allowed(
    state: &AppState,
    actor: &Actor,
    action: Action,
    workflow: &Workflow,
) -> Result<(), ApiError> {
    let workflow = workflow.state().ok_or(ApiError::NotFound)?;
    Ok(state
        .authz
        .require(actor, action, &Resource::workflow(workflow))?)
}

/// Whether the caller may change the workflow ([`allowed`] to write).
pub(crate) fn writable(
    state: &AppState,
    actor: &Actor,
    workflow: &Workflow,
) -> Result<(), ApiError> {
    allowed(state, actor, Action::Write, workflow)
}

fn workflow_answer(
    status: StatusCode,
    workflow: &Workflow,
    version: usize,
) -> Result<Response, ApiError> {
    let body = workflow
        .state()
        .and_then(WorkflowBody::latest)
        .ok_or(ApiError::NotFound)?;
    with_etag((status, Json(body)).into_response(), version)
}

/// Create a workflow (version 1).
#[utoipa::path(
    post,
    path = "/workflows",
    operation_id = "create_workflow",
    tag = "workflows",
    request_body(description = "The definition (or `{template, params}`) as JSON, or the same document as YAML", content(
        (CreateWorkflowRequest = "application/json"),
        (CreateWorkflowRequest = "application/yaml"),
    )),
    responses(
        (status = 201, description = "Created", body = WorkflowBody, headers(
            ("ETag" = String, description = "The workflow's version as an aggregate, e.g. `\"1\"`"),
        )),
        (status = 400, description = "Malformed JSON or YAML"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is neither JSON nor YAML"),
        (status = 403, description = "The caller may not create (auditor)"),
        (status = 422, description = "An invalid definition: a cycle (named), a dangling `depends_on`, a duplicate id, an unknown template reference, a bad condition; an unknown `template` or `params.<name>` it refuses; a `schedule` (not supported here)"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id))]
pub async fn create(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    ApiJsonOrYaml(body): ApiJsonOrYaml<Value>,
) -> Result<Response, ApiError> {
    if !actor.can_create() {
        return Err(ApiError::Forbidden);
    }
    let (body, team_id) = take_team_id(body)?;
    let team_id = team_id
        .map(|team_id| team_to_share_with(&state, &actor, Action::Write, team_id))
        .transpose()?;
    let request = definition_request(body)?;
    let definition = checked(&state, &actor, request).await?;
    let workflow_id = Uuid::now_v7();
    tracing::Span::current().record("workflow_id", tracing::field::display(workflow_id));
    let owner_id = actor.id;
    let committed = state
        .bus
        .create::<Workflow, ApiError>(&workflow_id.to_string(), &meta.context(&actor), |_| {
            Ok(WorkflowCommand::CreateWorkflow {
                workflow_id,
                owner_id,
                definition: definition.clone(),
                team_id,
                at: Utc::now(),
            })
        })
        .await?;
    state
        .read
        .workflow_committed(&committed.aggregate, committed.version)
        .await;
    workflow_answer(StatusCode::CREATED, &committed.aggregate, committed.version)
}

/// `GET /api/workflows` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

/// The caller's workflows that are not archived, newest first.
#[utoipa::path(
    get,
    path = "/workflows",
    operation_id = "list_workflows",
    tag = "workflows",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of workflows, latest versions", body = Page<WorkflowBody>),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<WorkflowBody>>, ApiError> {
    let paging = Paging::parse(query.limit, query.cursor.as_deref())?;
    let teams = state.authz.readable_teams(&actor);
    let rows = WorkflowView::list(
        &state.read.db,
        actor.id,
        &teams,
        paging.before_id,
        paging.fetch(),
    )
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Json(paging.page(
        rows,
        |row| row.state().and_then(WorkflowBody::latest),
        |workflow| workflow.id,
    )))
}

/// `GET /api/workflows/{id}` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// An older version; the latest when absent.
    #[param(minimum = 1)]
    pub version: Option<u32>,
}

/// Read a workflow, at its latest version or an older one.
#[utoipa::path(
    get,
    path = "/workflows/{id}",
    operation_id = "get_workflow",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The workflow's id"), GetQuery),
    responses(
        (status = 200, description = "The workflow", body = WorkflowBody, headers(
            ("ETag" = String, description = "The workflow's version as an aggregate (not `version`)"),
        )),
        (status = 404, description = "No such workflow or version, or not yours"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<Response, ApiError> {
    let (workflow, etag) = readable(&state, &actor, id).await?;
    let workflow = workflow.state().ok_or(ApiError::NotFound)?;
    let version = query.version.unwrap_or_else(|| workflow.version());
    let definition = workflow.at_version(version).ok_or(ApiError::NotFound)?;
    with_etag(
        Json(WorkflowBody::new(workflow, version, definition)).into_response(),
        etag,
    )
}

/// A new version of a workflow; running runs keep theirs.
#[utoipa::path(
    put,
    path = "/workflows/{id}",
    operation_id = "update_workflow",
    tag = "workflows",
    params(
        ("id" = Uuid, Path, description = "The workflow's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the workflow is still at this version (an `ETag`)"),
    ),
    request_body(description = "The definition as JSON, or the same document as YAML", content(
        (WorkflowDefinitionRequest = "application/json"),
        (WorkflowDefinitionRequest = "application/yaml"),
    )),
    responses(
        (status = 200, description = "The workflow at its new version", body = WorkflowBody, headers(
            ("ETag" = String, description = "The workflow's new version"),
        )),
        (status = 400, description = "Malformed JSON or YAML, or a malformed If-Match"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is neither JSON nor YAML"),
        (status = 403, description = "The caller may read the workflow but not change it"),
        (status = 404, description = "No such workflow, or not yours"),
        (status = 409, description = "The workflow is archived"),
        (status = 412, description = "If-Match does not match the current version"),
        (status = 422, description = "An invalid definition"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJsonOrYaml(request): ApiJsonOrYaml<WorkflowDefinitionRequest>,
) -> Result<Response, ApiError> {
    writable(&state, &actor, &readable(&state, &actor, id).await?.0)?;
    let definition = checked(&state, &actor, request).await?;
    let committed = state
        .bus
        .execute::<Workflow, ApiError>(&id.to_string(), &meta.context(&actor), meta.if_match, |w| {
            writable(&state, &actor, w)?;
            Ok(WorkflowCommand::UpdateWorkflow {
                definition: definition.clone(),
                at: Utc::now(),
            })
        })
        .await?;
    state
        .read
        .workflow_committed(&committed.aggregate, committed.version)
        .await;
    workflow_answer(StatusCode::OK, &committed.aggregate, committed.version)
}

/// Archive a workflow: no longer listed nor executable; its runs stay readable.
#[utoipa::path(
    delete,
    path = "/workflows/{id}",
    operation_id = "archive_workflow",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    responses(
        (status = 204, description = "Archived"),
        (status = 403, description = "The caller may read the workflow but not change it"),
        (status = 404, description = "No such workflow, or not yours"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn archive(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let committed = state
        .bus
        .execute::<Workflow, ApiError>(&id.to_string(), &meta.context(&actor), meta.if_match, |w| {
            writable(&state, &actor, w)?;
            Ok(WorkflowCommand::ArchiveWorkflow { at: Utc::now() })
        })
        .await?;
    state
        .read
        .workflow_committed(&committed.aggregate, committed.version)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/workflows/{id}/execute` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Checked against the declared param types; defaults fill the rest.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
}

/// Start a run of the workflow's latest version.
#[utoipa::path(
    post,
    path = "/workflows/{id}/execute",
    operation_id = "execute_workflow",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    request_body = ExecuteRequest,
    responses(
        (status = 202, description = "The run, started", body = WorkflowRunBody, headers(
            ("ETag" = String, description = "The run's version"),
        )),
        (status = 400, description = "Malformed JSON"),
        (status = 415, description = "The body is not JSON"),
        (status = 403, description = "The caller may not run workflows (auditor)"),
        (status = 404, description = "No such workflow, or not yours"),
        (status = 409, description = "The workflow is archived"),
        (status = 422, description = "A param missing, unknown or of the wrong type (`params.<name>`)"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id, run_id))]
pub async fn execute(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let (workflow, _) = readable(&state, &actor, id).await?;
    // A team's members run its workflows; viewers only look.
    allowed(&state, &actor, Action::Run, &workflow)?;
    let workflow = workflow.state().ok_or(ApiError::NotFound)?;
    if workflow.archived {
        return Err(ApiError::Conflict {
            code: "workflow.archived",
            detail: "the workflow is archived".into(),
        });
    }
    let definition = workflow.latest().ok_or(ApiError::NotFound)?.clone();
    let params = definition.bind_params(request.params)?;
    let run_id = Uuid::now_v7();
    tracing::Span::current().record("run_id", tracing::field::display(run_id));
    let (version, owner_id, team_id) = (workflow.version(), workflow.owner_id, workflow.team_id);
    let committed = state
        .bus
        .create::<WorkflowRun, ApiError>(&run_id.to_string(), &meta.context(&actor), |_| {
            Ok(WorkflowRunCommand::StartRun {
                run_id,
                workflow_id: id,
                owner_id,
                version,
                definition: definition.clone(),
                params: params.clone(),
                team_id,
                at: Utc::now(),
            })
        })
        .await?;
    state
        .read
        .workflow_run_committed(&committed.aggregate, committed.version)
        .await;
    let body = committed
        .aggregate
        .state()
        .map(WorkflowRunBody::from)
        .ok_or(ApiError::NotFound)?;
    // The first steps start now rather than at the driver's next look.
    advance_soon(&state, run_id);
    with_etag(
        (StatusCode::ACCEPTED, Json(body)).into_response(),
        committed.version,
    )
}

/// Moves the run forward now rather than at the driver's next look.
fn advance_soon(state: &AppState, run_id: Uuid) {
    let (bus, read) = (state.bus.clone(), state.read.clone());
    tokio::spawn(async move {
        if let Err(error) = advance(&bus, &read, run_id).await {
            tracing::warn!(%run_id, %error, "could not advance the run");
        }
    });
}

/// `{workflow_id, runs}` of `GET /api/workflows/{id}/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowStatusBody {
    pub workflow_id: Uuid,
    /// Newest first.
    pub runs: Vec<WorkflowRunBody>,
    pub next_cursor: Option<String>,
}

/// The workflow's runs, newest first.
#[utoipa::path(
    get,
    path = "/workflows/{id}/status",
    operation_id = "workflow_status",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The workflow's id"), ListQuery),
    responses(
        (status = 200, description = "The runs, newest first", body = WorkflowStatusBody),
        (status = 404, description = "No such workflow, or not yours"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn status(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<WorkflowStatusBody>, ApiError> {
    readable(&state, &actor, id).await?;
    let paging = Paging::parse(query.limit, query.cursor.as_deref())?;
    let rows = WorkflowRunView::of_workflow(&state.read.db, id, paging.before_id, paging.fetch())
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let page = paging.page(
        rows,
        |row| row.state().map(WorkflowRunBody::from),
        |run| run.id,
    );
    Ok(Json(WorkflowStatusBody {
        workflow_id: id,
        runs: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// The run and its version if the caller may read it; 404 otherwise.
async fn readable_run(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<(WorkflowRun, usize), ApiError> {
    let loaded = state
        .store
        .aggregate::<WorkflowRun>()
        .load(&id.to_string())
        .await?;
    match loaded.aggregate.state() {
        Some(run) if state.authz.can(actor, Action::Read, &Resource::run(run)) => {
            Ok((loaded.aggregate, loaded.version))
        }
        _ => Err(ApiError::NotFound),
    }
}

fn run_answer(run: &WorkflowRun, version: usize) -> Result<Response, ApiError> {
    let body = run
        .state()
        .map(WorkflowRunBody::from)
        .ok_or(ApiError::NotFound)?;
    with_etag(Json(body).into_response(), version)
}

/// Read a run with its per-step map.
#[utoipa::path(
    get,
    path = "/workflow-runs/{id}",
    operation_id = "get_workflow_run",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = WorkflowRunBody, headers(
            ("ETag" = String, description = "The run's version"),
        )),
        (status = 404, description = "No such run, or not yours"),
    ),
)]
#[tracing::instrument(skip_all, fields(run_id = %id))]
pub async fn get_run(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let (run, version) = readable_run(&state, &actor, id).await?;
    run_answer(&run, version)
}

/// Cancel a run and its open tasks; a leased task's agent learns it at its next report.
#[utoipa::path(
    delete,
    path = "/workflow-runs/{id}",
    operation_id = "cancel_workflow_run",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run, cancelled", body = WorkflowRunBody, headers(
            ("ETag" = String, description = "The run's version"),
        )),
        (status = 403, description = "The caller may read the run but not change it"),
        (status = 404, description = "No such run, or not yours"),
        (status = 409, description = "The run had already succeeded or failed"),
    ),
)]
#[tracing::instrument(skip_all, fields(run_id = %id))]
pub async fn cancel_run(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let (run, _) = readable_run(&state, &actor, id).await?;
    let current = run.state().ok_or(ApiError::NotFound)?;
    state
        .authz
        .require(&actor, Action::Write, &Resource::run(current))?;
    let context = meta.context(&actor);
    if current.status == RunStatus::Running {
        run_command(
            &state.bus,
            &state.read,
            id,
            &context,
            WorkflowRunCommand::CancelRun { at: Utc::now() },
        )
        .await?;
    }
    let (aggregate, version) = readable_run(&state, &actor, id).await?;
    let run = aggregate.state().ok_or(ApiError::NotFound)?;
    match run.status {
        RunStatus::Cancelled => {}
        RunStatus::Running => return Err(ApiError::kept_changing()),
        RunStatus::Succeeded | RunStatus::Failed => {
            return Err(ApiError::Conflict {
                code: "workflow_run.finished",
                detail: format!("the run has already {}", run.status.as_str()),
            })
        }
    }
    // Every task a step of the run ever started: those still open are cancelled, the
    // others refuse (already finished), so a repeated DELETE repairs a partial one.
    let tasks: Vec<Uuid> = run.steps.values().filter_map(|s| s.task_id).collect();
    cancel_tasks(&state.bus, &state.read, &tasks, &context).await?;
    run_answer(&aggregate, version)
}

/// `POST /api/workflow-runs/{id}/signals` body: a decision on a waiting approval step.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// The approval step decided on.
    pub step_id: String,
    pub decision: SignalDecision,
    /// With `approve`: the step's output, which later steps template from
    /// (`{{steps.<id>.output...}}`); with `reject`: kept as the error's `details`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalDecision {
    Approve,
    Reject,
}

/// Decide on an approval step that waits (`waiting_approval`): approve completes it with
/// `data` as its output, reject fails it (and so the run). The decision, who made it and
/// when, is an event of the run (`WorkflowApprovalDecided`, see `/events`).
#[utoipa::path(
    post,
    path = "/workflow-runs/{id}/signals",
    operation_id = "signal_workflow_run",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id")),
    request_body = SignalRequest,
    responses(
        (status = 200, description = "The run after the decision", body = WorkflowRunBody, headers(
            ("ETag" = String, description = "The run's version"),
        )),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may read the run but not decide (auditor)"),
        (status = 404, description = "No such run, or not yours"),
        (status = 409, description = "The run is finished (`workflow_run.finished`), the step is not waiting for a decision (`workflow_run.step_not_waiting`: not reached yet, or decided or timed out already), or its deadline has passed (`workflow_run.approval_expired`)"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "A bad field, a step the run does not have (`workflow_run.unknown_step`), or one that is not an approval step (`workflow_run.not_an_approval`)"),
    ),
)]
#[tracing::instrument(skip_all, fields(run_id = %id))]
pub async fn signal(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<SignalRequest>,
) -> Result<Response, ApiError> {
    let decision = match request.decision {
        SignalDecision::Approve => ApprovalDecision::Approve,
        SignalDecision::Reject => ApprovalDecision::Reject,
    };
    let data = request.data.unwrap_or(Value::Null);
    let decided_by = actor.id;
    let committed = state
        .bus
        .execute::<WorkflowRun, ApiError>(&id.to_string(), &meta.context(&actor), None, |run| {
            // Whoever may run the workflow decides its approvals.
            let current = run.state().ok_or(ApiError::NotFound)?;
            state
                .authz
                .require(&actor, Action::Run, &Resource::run(current))?;
            Ok(WorkflowRunCommand::DecideApproval {
                step_id: request.step_id.clone(),
                decision,
                data: data.clone(),
                decided_by,
                at: Utc::now(),
            })
        })
        .await?;
    state
        .read
        .workflow_run_committed(&committed.aggregate, committed.version)
        .await;
    advance_soon(&state, id);
    run_answer(&committed.aggregate, committed.version)
}

/// A run's history, oldest first: started, each step's start and end, every approval
/// decision (who and when), the run's end.
///
/// A bare array of `Event`, like the task history. With `limit`, at most that many events
/// after `after_sequence`, and a `Link: <…>; rel="next"` header while more follow.
#[utoipa::path(
    get,
    path = "/workflow-runs/{id}/events",
    operation_id = "list_workflow_run_events",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id"), HistoryQuery),
    responses(
        (status = 200, description = "The run's events after `after_sequence`", body = Vec<EventView>, headers(
            ("Link" = String, description = "`<…?after_sequence=N&limit=L>; rel=\"next\"` when `limit` cut the page short"),
        )),
        (status = 404, description = "No such run, or not yours"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all, fields(run_id = %id))]
pub async fn run_events(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let path = format!("/api/workflow-runs/{id}/events");
    owned_answer::<WorkflowRun>(&state, &actor, id, &path, &query, |run| {
        run.state().map(Resource::run)
    })
    .await
}

/// `team_id` taken out of a create body (JSON or YAML, as a value), and the rest.
fn take_team_id(mut body: Value) -> Result<(Value, Option<Uuid>), ApiError> {
    let Some(fields) = body.as_object_mut() else {
        return Ok((body, None));
    };
    let team_id = match fields.remove("team_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(
            Uuid::parse_str(&raw).map_err(|_| ApiError::validation("team_id", "is not a UUID"))?,
        ),
        Some(_) => return Err(ApiError::validation("team_id", "is not a UUID")),
    };
    Ok((body, team_id))
}

/// Share a workflow with a team: its members read and run it, its maintainers and owners
/// change it, its viewers read it. Sharing with another team moves it there. The run
/// started from it, and their tasks, belong to the team too.
#[utoipa::path(
    post,
    path = "/workflows/{id}/share",
    operation_id = "share_workflow",
    tag = "teams",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    request_body = ShareRequest,
    responses(
        (status = 200, description = "The workflow, shared", body = WorkflowBody, headers(
            ("ETag" = String, description = "The workflow's version as an aggregate"),
        )),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may read the workflow but not change it, or is in the team below maintainer"),
        (status = 404, description = "No such workflow, or not yours"),
        (status = 409, description = "The workflow is archived"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "`team_id` is not a team the caller belongs to"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn share(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<ShareRequest>,
) -> Result<Response, ApiError> {
    shared_answer(&state, &actor, &meta, id, Some(request.team_id)).await
}

/// Take a workflow back from its team: only its owner reads it again. Runs already started
/// stay the team's.
#[utoipa::path(
    post,
    path = "/workflows/{id}/unshare",
    operation_id = "unshare_workflow",
    tag = "teams",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    responses(
        (status = 200, description = "The workflow, no team's", body = WorkflowBody, headers(
            ("ETag" = String, description = "The workflow's version as an aggregate"),
        )),
        (status = 403, description = "The caller may read the workflow but not change it"),
        (status = 404, description = "No such workflow, or not yours"),
        (status = 409, description = "The workflow is archived"),
    ),
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
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
    let committed = sharing::share::<Workflow>(state, actor, meta, id, team_id).await?;
    state
        .read
        .workflow_committed(&committed.aggregate, committed.version)
        .await;
    workflow_answer(StatusCode::OK, &committed.aggregate, committed.version)
}
