//! `/api/agents`: register, list, read, heartbeat, deregister. Leasing and `execute` are in
//! [`super::lease`].

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chronicle_aggregates::agent::{Agent, AgentCommand, AgentLifecycle, AgentState, AgentStatus};
use chronicle_aggregates::task::{TaskCommand, TaskError};
use chronicle_commands::agent::RegisterAgentRequest;
use chronicle_projections::agent_view::{AgentFilter, AgentView as AgentViewModel};
use chronicle_projections::task_view::TaskView as TaskViewModel;
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{parse_body, ApiJson, ApiQuery, IdPath, RequestMeta};
use super::paging::{Page, Paging};
use super::sharing::{self, ShareRequest};
use super::views::AgentView;
use super::AppState;
use crate::actor::Actor;
use crate::authz::{Action, Authz, Resource};
use crate::bus::{CommandContext, CommandError, Committed};
use crate::process::dispatch::{serves_every_user, DispatchError};
use crate::process::release::release_agent_tasks;
use crate::process::{heartbeat_resolution, offline_after, try_task_command};

impl From<DispatchError> for ApiError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::Store(store) => Self::from(store),
            DispatchError::Read(read) => Self::Internal(Box::new(read)),
            DispatchError::AgentRetired => Self::Conflict {
                code: "agent.retired",
                detail: "the agent is draining or deregistered; it takes no new work".into(),
            },
        }
    }
}

/// The agent if the caller may change it: 404 when it may not even see it, 403 when it may
/// only look.
pub(crate) fn writable<'a>(
    authz: &Authz,
    actor: &Actor,
    agent: &'a Agent,
) -> Result<&'a AgentState, ApiError> {
    let state = agent.state().ok_or(ApiError::NotFound)?;
    authz.require(actor, Action::Write, &Resource::agent(state))?;
    Ok(state)
}

/// The agent if the caller may act as it — heartbeat, lease, open its socket: a remote
/// agent it may change. A built-in agent is run by the server alone, so an HTTP caller who
/// may see it (an admin) still gets 403: leasing its work would hand out lease ids for
/// results "the server fetched".
pub(crate) fn actable<'a>(
    authz: &Authz,
    actor: &Actor,
    agent: &'a Agent,
) -> Result<&'a AgentState, ApiError> {
    let state = writable(authz, actor, agent)?;
    if serves_every_user(state) {
        return Err(ApiError::Forbidden);
    }
    Ok(state)
}

/// Agent `id` as it stands, if the caller may act as it ([`actable`]) and it is not
/// deregistered (409).
pub(crate) async fn acting_agent(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<AgentState, ApiError> {
    let loaded = state
        .store
        .aggregate::<Agent>()
        .load(&id.to_string())
        .await?;
    registered(actable(&state.authz, actor, &loaded.aggregate)?)
}

fn registered(agent: &AgentState) -> Result<AgentState, ApiError> {
    if agent.lifecycle == AgentLifecycle::Deregistered {
        return Err(ApiError::Conflict {
            code: "agent.deregistered",
            detail: "the agent is deregistered".into(),
        });
    }
    Ok(agent.clone())
}

/// Agent `id` as it stands, if the caller may change it and it is not deregistered (409).
pub(crate) async fn registered_agent(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<AgentState, ApiError> {
    let loaded = state
        .store
        .aggregate::<Agent>()
        .load(&id.to_string())
        .await?;
    registered(writable(&state.authz, actor, &loaded.aggregate)?)
}

/// The events of an agent's own calls name the agent as their actor.
pub(crate) fn agent_context(meta: &RequestMeta, actor: &Actor, agent_id: Uuid) -> CommandContext {
    CommandContext {
        actor: format!("agent:{agent_id}"),
        ..meta.context(actor)
    }
}

/// An optional JSON body: nothing at all, or `null`, means the defaults.
pub(crate) fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_body::<Option<T>>(body).map(Option::unwrap_or_default)
    }
}

/// An agent answer with its version as `ETag`.
pub(crate) async fn agent_response(
    state: &AppState,
    status: StatusCode,
    agent: &Agent,
    version: usize,
) -> Result<Response, ApiError> {
    let agent_state = agent.state().ok_or(ApiError::NotFound)?;
    let running = TaskViewModel::held_by(&state.read.db, agent_state.id)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .len();
    let body = AgentView::new(
        agent_state,
        Utc::now(),
        u32::try_from(running).unwrap_or(u32::MAX),
    );
    let mut response = (status, Json(body)).into_response();
    let etag = HeaderValue::from_str(&format!("\"{version}\""))
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    response.headers_mut().insert(header::ETAG, etag);
    if status == StatusCode::CREATED {
        let location = HeaderValue::from_str(&format!("/api/agents/{}", agent_state.id))
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Register an agent owned by the caller.
#[utoipa::path(
    post,
    path = "/agents/register",
    operation_id = "register_agent",
    tag = "agents",
    request_body = RegisterAgentRequest,
    responses(
        (status = 201, description = "Registered", body = AgentView, headers(
            ("ETag" = String, description = "The agent's version, e.g. `\"1\"`"),
            ("Location" = String, description = "`/api/agents/{id}`"),
        )),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may not write (auditor)"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id))]
pub async fn register(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    ApiJson(request): ApiJson<RegisterAgentRequest>,
) -> Result<Response, ApiError> {
    if !actor.can_write(actor.id) {
        return Err(ApiError::Forbidden);
    }
    let spec = request.validate()?;
    let agent_id = Uuid::now_v7();
    tracing::Span::current().record("agent_id", tracing::field::display(agent_id));
    let owner_id = actor.id;
    let Committed {
        aggregate, version, ..
    } = state
        .bus
        .execute::<Agent, ApiError>(
            &agent_id.to_string(),
            &agent_context(&meta, &actor, agent_id),
            None,
            |_| {
                Ok(AgentCommand::RegisterAgent {
                    agent_id,
                    owner_id,
                    spec: spec.clone(),
                    at: Utc::now(),
                })
            },
        )
        .await?;
    state.read.agent_committed(&aggregate, version).await;
    agent_response(&state, StatusCode::CREATED, &aggregate, version).await
}

/// `GET /api/agents` query: filters, `limit` (default 50, max 500) and an opaque `cursor`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Agents serving this capability.
    pub capability: Option<String>,
    pub status: Option<AgentStatus>,
    /// Only the agents shared with this team (one the caller belongs to; any other
    /// answers none).
    pub team_id: Option<Uuid>,
    /// 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

/// Agents the caller may read, newest first: their own and those shared with their teams.
#[utoipa::path(
    get,
    path = "/agents",
    operation_id = "list_agents",
    tag = "agents",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of agents", body = Page<AgentView>),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<AgentView>>, ApiError> {
    let paging = Paging::parse(query.limit, query.cursor.as_deref())?;
    let filter = AgentFilter {
        readers: state.authz.readers(&actor),
        team_id: query.team_id,
        capability: query.capability,
        status: query.status,
        before_id: paging.before_id,
    };
    let now = Utc::now();
    let internal = |e| ApiError::Internal(Box::new(e));
    let rows = AgentViewModel::list(
        &state.read.db,
        &filter,
        now,
        offline_after(),
        paging.fetch(),
    )
    .await
    .map_err(internal)?;
    let held = TaskViewModel::held_counts(&state.read.db)
        .await
        .map_err(internal)?;
    Ok(Json(paging.page(
        rows,
        |row| {
            let agent = row.state()?;
            let running = held.get(&agent.id).copied().unwrap_or_default();
            Some(AgentView::new(agent, now, running))
        },
        |agent| agent.id,
    )))
}

/// Read an agent.
#[utoipa::path(
    get,
    path = "/agents/{id}",
    operation_id = "get_agent",
    tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The agent", body = AgentView, headers(
            ("ETag" = String, description = "The agent's version"),
        )),
        (status = 404, description = "No such agent, or not yours"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let loaded = state
        .store
        .aggregate::<Agent>()
        .load(&id.to_string())
        .await?;
    match loaded.aggregate.state() {
        Some(agent)
            if state
                .authz
                .can(&actor, Action::Read, &Resource::agent(agent)) => {}
        _ => return Err(ApiError::NotFound),
    }
    agent_response(&state, StatusCode::OK, &loaded.aggregate, loaded.version).await
}

/// `POST /api/agents/{id}/heartbeat` body; without `running_task_ids` every lease the agent
/// holds is renewed.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The tasks whose leases to renew; tasks the agent does not hold are skipped.
    #[schema(max_items = 1000)]
    pub running_task_ids: Option<Vec<Uuid>>,
}

/// Most task ids one heartbeat may name.
const MAX_HEARTBEAT_TASKS: usize = 1_000;

/// Say the agent is alive and renew its leases.
///
/// Records the heartbeat (at most one event per resolution) and renews the agent's leases.
/// The body is optional; an empty one renews every lease the agent holds.
#[utoipa::path(
    post,
    path = "/agents/{id}/heartbeat",
    operation_id = "agent_heartbeat",
    tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    request_body(content = Option<HeartbeatRequest>, description = "Optional; empty means every lease the agent holds"),
    responses(
        (status = 200, description = "The agent", body = AgentView, headers(
            ("ETag" = String, description = "The agent's version"),
        )),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may read the agent but not act for it"),
        (status = 404, description = "No such agent, or not yours"),
        (status = 409, description = "The agent is deregistered"),
        (status = 413, description = "The body is over the limit"),
        (status = 422, description = "An invalid field"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id))]
pub async fn heartbeat(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: HeartbeatRequest = optional_body(&body)?;
    if request
        .running_task_ids
        .as_ref()
        .is_some_and(|ids| ids.len() > MAX_HEARTBEAT_TASKS)
    {
        return Err(ApiError::validation(
            "running_task_ids",
            "must name at most 1000 tasks",
        ));
    }
    let context = agent_context(&meta, &actor, id);
    let Committed {
        aggregate, version, ..
    } = record_heartbeat(&state, &actor, &context, id, request.running_task_ids).await?;
    agent_response(&state, StatusCode::OK, &aggregate, version).await
}

/// Records a heartbeat of agent `id` (at most one event per resolution) and renews its
/// leases: those on `running_task_ids`, or all it holds when `None`.
pub(crate) async fn record_heartbeat(
    state: &AppState,
    actor: &Actor,
    context: &CommandContext,
    id: Uuid,
    running_task_ids: Option<Vec<Uuid>>,
) -> Result<Committed<Agent>, ApiError> {
    let committed = state
        .bus
        .execute::<Agent, ApiError>(&id.to_string(), context, None, |agent| {
            actable(&state.authz, actor, agent)?;
            Ok(AgentCommand::RecordHeartbeat {
                at: Utc::now(),
                resolution: heartbeat_resolution(),
            })
        })
        .await?;
    // Most heartbeats come sooner than the resolution and record nothing: then the agent
    // view has nothing new to write.
    if !committed.events.is_empty() {
        state
            .read
            .agent_committed(&committed.aggregate, committed.version)
            .await;
    }
    let tasks = match running_task_ids {
        Some(ids) => ids,
        None => TaskViewModel::held_by(&state.read.db, id)
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?,
    };
    for task_id in tasks {
        extend_lease(state, context, id, task_id).await?;
    }
    Ok(committed)
}

/// Renews the agent's lease on one task; a task it does not hold is skipped.
async fn extend_lease(
    state: &AppState,
    context: &CommandContext,
    agent_id: Uuid,
    task_id: Uuid,
) -> Result<(), ApiError> {
    try_task_command(&state.bus, &state.read, task_id, context, |task| {
        match task.state() {
            Some(held) if held.agent_id == Some(agent_id) && held.status.is_held() => {
                Ok(TaskCommand::ExtendLease {
                    lease_id: held
                        .lease_id
                        .ok_or(CommandError::Refused(TaskError::StaleLease))?,
                    at: Utc::now(),
                })
            }
            // A task the agent does not hold (any more): nothing to renew.
            _ => Err(CommandError::Refused(TaskError::StaleLease)),
        }
    })
    .await?;
    Ok(())
}

/// Deregister an agent; its leased tasks go back to the queue.
///
/// Idempotent: deleting a deregistered agent releases anything left and answers 204 again.
#[utoipa::path(
    delete,
    path = "/agents/{id}",
    operation_id = "deregister_agent",
    tag = "agents",
    params(
        ("id" = Uuid, Path, description = "The agent's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the agent is still at this version (an `ETag`)"),
    ),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 403, description = "The caller may read the agent but not change it"),
        (status = 404, description = "No such agent, or not yours"),
        (status = 412, description = "If-Match does not match the current version"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id))]
pub async fn deregister(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let context = agent_context(&meta, &actor, id);
    let loaded = state
        .store
        .aggregate::<Agent>()
        .load(&id.to_string())
        .await?;
    let already_gone = writable(&state.authz, &actor, &loaded.aggregate)?.lifecycle
        == AgentLifecycle::Deregistered;
    if !already_gone {
        let Committed {
            aggregate, version, ..
        } = state
            .bus
            .execute::<Agent, ApiError>(&id.to_string(), &context, meta.if_match, |agent| {
                writable(&state.authz, &actor, agent)?;
                Ok(AgentCommand::DeregisterAgent { at: Utc::now() })
            })
            .await?;
        state.read.agent_committed(&aggregate, version).await;
    }
    let released = release_agent_tasks(&state.bus, &state.read, id, &context).await?;
    tracing::info!(released, "agent deregistered");
    state.read.dispatch().forget_agent(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Share an agent with a team: it then leases the team's tasks (a team workflow's steps)
/// as well as its owner's, and the team's members read it. Sharing with another team
/// moves it there.
#[utoipa::path(
    post,
    path = "/agents/{id}/share",
    operation_id = "share_agent",
    tag = "teams",
    params(("id" = Uuid, Path, description = "The agent's id")),
    request_body = ShareRequest,
    responses(
        (status = 200, description = "The agent, shared", body = AgentView),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may read the agent but not change it, or is in the team below maintainer"),
        (status = 404, description = "No such agent, or not yours"),
        (status = 409, description = "The agent is deregistered"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "`team_id` is not a team the caller belongs to"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id))]
pub async fn share(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<ShareRequest>,
) -> Result<Response, ApiError> {
    registered_agent(&state, &actor, id).await?;
    shared_answer(&state, &actor, &meta, id, Some(request.team_id)).await
}

/// Take an agent back from its team: it leases its owner's tasks alone again.
#[utoipa::path(
    post,
    path = "/agents/{id}/unshare",
    operation_id = "unshare_agent",
    tag = "teams",
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The agent, no team's", body = AgentView),
        (status = 403, description = "The caller may read the agent but not change it"),
        (status = 404, description = "No such agent, or not yours"),
        (status = 409, description = "The agent is deregistered"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id))]
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
    } = sharing::share::<Agent>(state, actor, meta, id, team_id).await?;
    state.read.agent_committed(&aggregate, version).await;
    agent_response(state, StatusCode::OK, &aggregate, version).await
}
