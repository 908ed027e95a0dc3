//! Work for agents: `POST /api/agents/{id}/lease` (long-poll) and
//! `POST /api/agents/{id}/execute` (a task pinned to one agent).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use chronicle_aggregates::agent::{AgentLifecycle, AgentState};
use chronicle_aggregates::task::{Task, TaskCommand, TaskFailure};
use chronicle_commands::task::NewTaskRequest;
use chronicle_commands::values::Capability;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

use super::agent_ws::DELIVERY_FAILED;
use super::agents::{agent_context, optional_body, record_heartbeat, registered_agent};
use super::error::ApiError;
use super::extract::{ApiJson, IdPath, RequestMeta};
use super::tasks::{committed, task_response};
use super::views::{LeasedTaskView, TaskView};
use super::AppState;
use crate::actor::Actor;
use crate::bus::{CommandContext, Committed};
use crate::process::dispatch::{lease_ready, DispatchError, Granted, MAX_TASKS_PER_LEASE};
use crate::process::release::fail_held;

/// Longest long-poll a client may ask for.
pub const MAX_WAIT_SECS: i64 = 30;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// 1 when absent.
    #[schema(minimum = 1, maximum = 100)]
    pub max_tasks: Option<i64>,
    /// How long to wait for a task when none is ready; 0 (answer at once) when absent.
    #[schema(minimum = 0, maximum = 30)]
    pub wait_secs: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseAnswer {
    pub tasks: Vec<LeasedTaskView>,
}

pub(crate) fn leased_view(grant: &Granted) -> Option<LeasedTaskView> {
    let state = grant.task.state()?;
    Some(LeasedTaskView {
        task: TaskView::new(state, grant.version),
        lease_id: grant.lease_id,
        lease_expires_at: state.lease_expires_at,
    })
}

/// Lease ready tasks for the agent, waiting for one if asked.
///
/// Leases up to `max_tasks` ready tasks; with `wait_secs`, waits that long for one to
/// arrive (woken at once when a matching task is created or requeued) and answers an empty
/// list on time-out. A lease call is a sign of life: it counts as a heartbeat. A draining
/// agent gets an empty list.
#[utoipa::path(
    post,
    path = "/agents/{id}/lease",
    operation_id = "lease_tasks",
    tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    request_body(content = Option<LeaseRequest>, description = "Optional; empty means one task, no wait"),
    responses(
        (status = 200, description = "The tasks leased, perhaps none", body = LeaseAnswer),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may read the agent but not act for it"),
        (status = 404, description = "No such agent, or not yours"),
        (status = 409, description = "The agent is deregistered"),
        (status = 413, description = "The body is over the limit"),
        (status = 422, description = "An invalid field"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id))]
pub async fn lease(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    body: Bytes,
) -> Result<Json<LeaseAnswer>, ApiError> {
    let request: LeaseRequest = optional_body(&body)?;
    let max_tasks = match request.max_tasks {
        None => 1,
        Some(n @ 1..=100) => n as u32,
        Some(_) => {
            return Err(ApiError::validation(
                "max_tasks",
                format!("must be from 1 to {MAX_TASKS_PER_LEASE}"),
            ))
        }
    };
    let wait = match request.wait_secs {
        None => 0,
        Some(n @ 0..=MAX_WAIT_SECS) => n as u64,
        Some(_) => {
            return Err(ApiError::validation(
                "wait_secs",
                format!("must be from 0 to {MAX_WAIT_SECS}"),
            ))
        }
    };
    let context = agent_context(&meta, &actor, id);
    // A lease call is a sign of life; it renews no lease of its own.
    let Committed {
        aggregate, version, ..
    } = record_heartbeat(&state, &actor, &context, id, Some(Vec::new())).await?;
    let agent = aggregate.state().ok_or(ApiError::NotFound)?;
    if agent.lifecycle != AgentLifecycle::Active {
        // A draining agent finishes what it has and takes nothing new.
        return Ok(Json(LeaseAnswer { tasks: Vec::new() }));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        // Registered before looking, so a task created between the look and the wait
        // still wakes this poll.
        let signal = state.read.queue_signal().notified();
        tokio::pin!(signal);
        signal.as_mut().enable();
        let granted = match lease_for_answer(&state, agent, version, max_tasks, &context).await {
            Ok(granted) => granted,
            // Drained or deregistered since the heartbeat: answered as if it had been
            // before, which the store makes true (no lease was appended after it).
            Err(DispatchError::AgentRetired) => return retired(&state, &actor, id).await,
            Err(error) => return Err(error.into()),
        };
        let now = Instant::now();
        if !granted.is_empty() || now >= deadline {
            let tasks = granted.iter().filter_map(leased_view).collect();
            return Ok(Json(LeaseAnswer { tasks }));
        }
        let recheck = (now + state.settings.dispatch.recheck()).min(deadline);
        tokio::select! {
            () = &mut signal => {}
            () = tokio::time::sleep_until(recheck) => {}
            () = state.shutdown.cancelled() => {
                return Ok(Json(LeaseAnswer { tasks: Vec::new() }));
            }
        }
    }
}

/// Leases in a task of its own, so that leases granted to a poll whose client went away
/// meanwhile (the connection closed and the handler was dropped) are returned at once
/// (`delivery_failed`, retried like any failed attempt) instead of waiting for the lease to
/// run out, as the agent socket does with a push it cannot deliver.
async fn lease_for_answer(
    state: &AppState,
    agent: &AgentState,
    version: usize,
    max_tasks: u32,
    context: &CommandContext,
) -> Result<Vec<Granted>, DispatchError> {
    let (answer, answered) = oneshot::channel();
    let (state, agent, context) = (state.clone(), agent.clone(), context.clone());
    tokio::spawn(async move {
        let leased = lease_ready(
            &state.bus,
            &state.read,
            &agent,
            version,
            max_tasks,
            &context,
        );
        if let Err(Ok(granted)) = answer.send(leased.await) {
            for grant in granted {
                let Some(task_id) = grant.task.state().map(|task| task.id) else {
                    continue;
                };
                let failure = TaskFailure {
                    message: "the lease answer could not be delivered to the agent".into(),
                    code: Some(DELIVERY_FAILED.into()),
                    details: None,
                };
                let returned = fail_held(
                    &state.bus,
                    &state.read,
                    agent.id,
                    task_id,
                    failure,
                    &context,
                );
                if let Err(error) = returned.await {
                    tracing::warn!(%task_id, %error, "cannot return an undelivered lease; it will expire");
                }
            }
        }
    });
    // A leasing task that panicked granted nothing it could answer.
    answered.await.unwrap_or_else(|_| Ok(Vec::new()))
}

/// The answer to a lease by an agent that retired while it leased: 409 when it is
/// deregistered, an empty list when it is draining.
async fn retired(state: &AppState, actor: &Actor, id: Uuid) -> Result<Json<LeaseAnswer>, ApiError> {
    registered_agent(state, actor, id).await?;
    Ok(Json(LeaseAnswer { tasks: Vec::new() }))
}

/// `POST /api/agents/{id}/execute` body: a task for exactly this agent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Any JSON; `null` when absent.
    #[serde(default)]
    pub input: Value,
    /// One of the agent's capabilities; its first when absent.
    #[schema(max_length = 128, pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$")]
    pub capability: Option<String>,
    /// 0–9, 9 first; 5 when absent.
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i64>,
    /// 300 when absent.
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_secs: Option<i64>,
    /// 3 when absent.
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i64>,
}

/// Create a task pinned to this agent.
///
/// Answers 202: the agent picks the task up on its next lease. The task belongs to the
/// agent's owner.
#[utoipa::path(
    post,
    path = "/agents/{id}/execute",
    operation_id = "execute_on_agent",
    tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    request_body = ExecuteRequest,
    responses(
        (status = 202, description = "The task, queued for this agent", body = TaskView, headers(
            ("ETag" = String, description = "The task's version, e.g. `\"1\"`"),
        )),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may read the agent but not act for it"),
        (status = 404, description = "No such agent, or not yours"),
        (status = 409, description = "The agent is deregistered"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field, or a capability the agent does not serve"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id, task_id))]
pub async fn execute(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let agent = registered_agent(&state, &actor, id).await?;
    let capability = match &request.capability {
        None => agent
            .capabilities
            .first()
            .map(|c| c.as_str().to_owned())
            .ok_or(ApiError::NotFound)?,
        Some(raw) => {
            let parsed =
                Capability::parse(raw).map_err(|m| ApiError::validation("capability", m))?;
            if !agent.serves(&parsed) {
                return Err(ApiError::validation(
                    "capability",
                    "is not one of the agent's capabilities",
                ));
            }
            parsed.as_str().to_owned()
        }
    };
    let spec = NewTaskRequest {
        capability,
        input: request.input,
        priority: request.priority,
        timeout_secs: request.timeout_secs,
        max_attempts: request.max_attempts,
        retry: None,
        agent_id: Some(id),
        tags: None,
        not_before: None,
        concurrency_key: None,
        concurrency_limit: None,
        team_id: None,
    }
    .validate()?;
    let task_id = Uuid::now_v7();
    tracing::Span::current().record("task_id", tracing::field::display(task_id));
    // The agent leases only its owner's tasks, so the task is its owner's (the same as
    // the caller's unless an admin asks).
    let owner_id = agent.owner_id;
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
    committed(&state, &aggregate, version).await;
    task_response(StatusCode::ACCEPTED, &aggregate, version)
}
