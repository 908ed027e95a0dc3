//! `PATCH /api/tasks/{id}` — the lease holder's reports and the owner's changes — and
//! `POST /api/tasks/{id}/retry`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chronicle_aggregates::agent::Agent;
use chronicle_aggregates::task::{Task, TaskCommand, TaskError, TaskFailure};
use chronicle_commands::values::{Priority, Tags};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, IdPath, RequestMeta};
use super::tasks::{committed, task_response};
use super::views::TaskView;
use super::AppState;
use crate::actor::Actor;
use crate::authz::{Action, Resource};
use crate::bus::{CommandContext, CommandError, Committed};
use crate::process::dispatch::serves_every_user;
use crate::process::jitter;

/// What a lease holder reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportedStatus {
    Running,
    Succeeded,
    Failed,
}

/// Either a lease holder's report (`lease_id` with `status`, `output`, `error`,
/// `progress`) or the owner's change (`priority`, `tags`), never both.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    /// Report: `running` (started), `succeeded` (with `output`) or `failed` (with `error`).
    pub status: Option<ReportedStatus>,
    /// Report: the lease being reported on; required with a report.
    pub lease_id: Option<Uuid>,
    /// Report: the result, with `status: "succeeded"`.
    pub output: Option<Value>,
    /// Report: with `status: "failed"`, a message string or `{message, code?, details?}`.
    pub error: Option<Value>,
    /// Report: any JSON, with no status or `running`; renews the lease.
    pub progress: Option<Value>,
    /// Change: 0–9, 9 first.
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i64>,
    /// Change: replaces the tags.
    #[schema(schema_with = chronicle_commands::schema::optional_tags)]
    pub tags: Option<Vec<String>>,
}

/// The `PATCH` body as the document gives it: one of the shapes [`update`] accepts, each
/// exact (a field it does not use may only be absent or `null`, as serde reads `null` for
/// an absent optional field). A derived schema of [`PatchRequest`] would say every
/// combination of its optional fields is valid, which the server does not accept.
pub struct TaskPatch;

impl utoipa::PartialSchema for TaskPatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        // Written in the subset utoipa's schema model reads back: every schema object
        // names its `type`, a constant is a one-value `enum`.
        let absent = json!({"type": "null"});
        let any =
            json!({"type": ["object", "array", "string", "number", "integer", "boolean", "null"]});
        let status = |value: &str| json!({"type": "string", "enum": [value]});
        let uuid = json!({"type": "string", "format": "uuid"});
        let shape = |title: &str, required: &[&str], used: Value, others: &[&str]| {
            let mut properties: serde_json::Map<String, Value> = others
                .iter()
                .map(|name| ((*name).to_owned(), absent.clone()))
                .collect();
            if let Value::Object(used) = used {
                properties.extend(used);
            }
            json!({
                "title": title,
                "type": "object",
                "additionalProperties": false,
                "required": required,
                "properties": properties,
            })
        };
        let failure = json!({
            "description": "A message, or `{message, code?, details?}`",
            "anyOf": [
                {"type": "null"},
                {"type": "string"},
                {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string"},
                        "code": {"type": ["string", "null"]},
                        "details": any,
                    },
                },
            ],
        });
        let priority = json!({"type": "integer", "minimum": 0, "maximum": 9});
        let maybe_priority = json!({"type": ["integer", "null"], "minimum": 0, "maximum": 9});
        let tags = serde_json::to_value(chronicle_commands::schema::optional_tags())
            .unwrap_or(Value::Null);
        let mut some_tags = tags.clone();
        some_tags["type"] = json!("array");
        let report = ["output", "error", "priority", "tags"];
        let change = ["lease_id", "status", "progress", "output", "error"];
        let schema = json!({
            "description": "A lease holder's report (`lease_id` with `status` and/or `progress`, \
                `output` with `succeeded`, `error` with `failed`) or the owner's change \
                (`priority` and/or `tags`), never both.",
            "anyOf": [
                shape("Start", &["lease_id", "status"],
                    json!({"lease_id": uuid, "status": status("running"), "progress": any}),
                    &report),
                shape("Progress", &["lease_id", "progress"],
                    json!({
                        "lease_id": uuid,
                        "status": absent,
                        "progress": {"type": ["object", "array", "string", "number", "integer", "boolean"]},
                    }),
                    &report),
                shape("Succeeded", &["lease_id", "status"],
                    json!({"lease_id": uuid, "status": status("succeeded"), "output": any}),
                    &["progress", "error", "priority", "tags"]),
                shape("Failed", &["lease_id", "status"],
                    json!({"lease_id": uuid, "status": status("failed"), "error": failure}),
                    &["progress", "output", "priority", "tags"]),
                shape("Reprioritise", &["priority"],
                    json!({"priority": priority, "tags": tags}),
                    &change),
                shape("Retag", &["tags"],
                    json!({"priority": maybe_priority, "tags": some_tags}),
                    &change),
            ],
        });
        serde_json::from_value(schema).unwrap_or_else(|error| {
            tracing::error!(%error, "the TaskPatch schema does not parse");
            utoipa::openapi::RefOr::T(utoipa::openapi::Schema::default())
        })
    }
}

impl utoipa::ToSchema for TaskPatch {}

impl PatchRequest {
    fn is_report(&self) -> bool {
        self.status.is_some()
            || self.lease_id.is_some()
            || self.output.is_some()
            || self.error.is_some()
            || self.progress.is_some()
    }
}

/// `error` as a client sends it: a bare string is the message.
fn failure(raw: Option<Value>) -> Result<TaskFailure, ApiError> {
    match raw {
        None => Ok(TaskFailure {
            message: "the agent reported a failure".into(),
            code: None,
            details: None,
        }),
        Some(Value::String(message)) => Ok(TaskFailure {
            message,
            code: None,
            details: None,
        }),
        Some(object @ Value::Object(_)) => serde_json::from_value(object).map_err(|e| {
            ApiError::validation(
                "error",
                format!("must be {{message, code?, details?}}: {e}"),
            )
        }),
        Some(_) => Err(ApiError::validation(
            "error",
            "must be a string or {message, code?, details?}",
        )),
    }
}

/// The commands a report stands for, in order; `at` is filled in when each is sent.
fn report_commands(request: PatchRequest) -> Result<Vec<ReportStep>, ApiError> {
    let lease_id = request
        .lease_id
        .ok_or_else(|| ApiError::validation("lease_id", "is required with a report"))?;
    let only_with_running = |field: &str, present: bool| {
        if present {
            Err(ApiError::validation(
                field,
                "goes only with status \"running\" or no status",
            ))
        } else {
            Ok(())
        }
    };
    let mut steps = Vec::new();
    match request.status {
        None | Some(ReportedStatus::Running) => {
            only_with_running("output", request.output.is_some())?;
            only_with_running("error", request.error.is_some())?;
            if request.status.is_some() {
                steps.push(ReportStep::Start { lease_id });
            }
            if let Some(progress) = request.progress {
                steps.push(ReportStep::Progress { lease_id, progress });
            }
            if steps.is_empty() {
                return Err(ApiError::validation(
                    "status",
                    "a report needs a status or progress",
                ));
            }
        }
        Some(ReportedStatus::Succeeded) => {
            if request.progress.is_some() || request.error.is_some() {
                return Err(ApiError::validation(
                    "status",
                    "\"succeeded\" takes output only",
                ));
            }
            steps.push(ReportStep::Complete {
                lease_id,
                output: request.output.unwrap_or(Value::Null),
            });
        }
        Some(ReportedStatus::Failed) => {
            if request.progress.is_some() || request.output.is_some() {
                return Err(ApiError::validation(
                    "status",
                    "\"failed\" takes error only",
                ));
            }
            steps.push(ReportStep::Fail {
                lease_id,
                error: failure(request.error)?,
            });
        }
    }
    Ok(steps)
}

/// One command of a report or change, before its time is known.
enum ReportStep {
    Start {
        lease_id: Uuid,
    },
    Progress {
        lease_id: Uuid,
        progress: Value,
    },
    Complete {
        lease_id: Uuid,
        output: Value,
    },
    Fail {
        lease_id: Uuid,
        error: TaskFailure,
    },
    Reprioritise {
        priority: Option<Priority>,
        tags: Option<Tags>,
    },
}

impl ReportStep {
    /// A lease holder's report, as opposed to an owner's change.
    fn is_report(&self) -> bool {
        !matches!(self, Self::Reprioritise { .. })
    }

    fn command(&self) -> TaskCommand {
        let at = Utc::now();
        match self {
            Self::Start { lease_id } => TaskCommand::StartTask {
                lease_id: *lease_id,
                at,
            },
            Self::Progress { lease_id, progress } => TaskCommand::ReportProgress {
                lease_id: *lease_id,
                progress: progress.clone(),
                at,
            },
            Self::Complete { lease_id, output } => TaskCommand::CompleteTask {
                lease_id: *lease_id,
                output: output.clone(),
                at,
            },
            Self::Fail { lease_id, error } => TaskCommand::FailTask {
                lease_id: *lease_id,
                error: error.clone(),
                // A remote agent's failure is retried per the task's policy.
                permanent: false,
                jitter: jitter(),
                at,
            },
            Self::Reprioritise { priority, tags } => TaskCommand::Reprioritise {
                priority: *priority,
                tags: tags.clone(),
                at,
            },
        }
    }
}

fn change_commands(request: PatchRequest) -> Result<Vec<ReportStep>, ApiError> {
    let mut errors = chronicle_commands::ValidationErrors::default();
    let priority = request
        .priority
        .map(|raw| errors.check("priority", Priority::new(raw)));
    let tags = request.tags.map(|raw| errors.check("tags", Tags::new(raw)));
    if !errors.is_empty() {
        return Err(errors.into());
    }
    if priority.is_none() && tags.is_none() {
        return Err(ApiError::validation(
            "",
            "send a report (lease_id, status, …) or a change (priority, tags)",
        ));
    }
    Ok(vec![ReportStep::Reprioritise {
        priority: priority.flatten(),
        tags: tags.flatten(),
    }])
}

/// Report on a leased task, or change a task's priority or tags.
///
/// A report by the lease holder (`lease_id` with `status`, `output`, `error`, `progress`)
/// or a change by the owner (`priority`, `tags`), never both. A stale lease or an illegal
/// transition is 409. A report is taken only from the lease holder: the owner of the
/// remote agent holding the lease. Anyone else — the task's owner when a built-in agent
/// holds it, an admin — gets 409 `task.stale_lease`, as for a wrong lease id. A change is
/// taken from whoever may change the task.
#[utoipa::path(
    patch,
    path = "/tasks/{id}",
    operation_id = "update_task",
    tag = "tasks",
    params(
        ("id" = Uuid, Path, description = "The task's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the task is still at this version (an `ETag`)"),
    ),
    request_body = TaskPatch,
    responses(
        (status = 200, description = "The task after the report or change", body = TaskView, headers(
            ("ETag" = String, description = "The task's new version"),
        )),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may read the task but not change it (auditor)"),
        (status = 404, description = "No such task, or not yours"),
        (status = 409, description = "A stale lease or an illegal transition"),
        (status = 412, description = "If-Match does not match the current version"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field, or a report mixed with a change"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn patch(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<PatchRequest>,
) -> Result<Response, ApiError> {
    let (aggregate, version) = update(
        &state,
        &actor,
        Reporter::Caller,
        &meta.context(&actor),
        id,
        request,
        meta.if_match,
    )
    .await?;
    task_response(StatusCode::OK, &aggregate, version)
}

/// Who sends a report on a lease.
///
/// A lease id is a bearer capability, so knowing it is not enough: the report must come
/// from the agent that holds the lease. Today an agent acts with its owner's credentials,
/// so over HTTP the caller holds a lease only through a remote agent it owns; built-in
/// agents (system-owned) report through the server's own command bus, never through here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reporter {
    /// The agent a socket speaks for (checked when the socket was opened).
    Agent(Uuid),
    /// An HTTP caller: the holder if the task's agent is a remote agent it owns.
    Caller,
}

/// The agent holding (or last holding) task `id`'s lease, if the caller acts as it.
///
/// The task as this node last wrote it is tried first: a holder found there is only a
/// candidate, since the report is decided on the task as stored and must name that same
/// agent. A guess that names no agent the caller owns proves nothing, so then the task is
/// loaded.
async fn holding_agent(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> Result<Option<Uuid>, ApiError> {
    let tasks = state.store.aggregate::<Task>();
    if let Some(recent) = tasks.recent(&id.to_string()) {
        if let Some(agent_id) = agent_acted_as(state, actor, &recent.aggregate).await? {
            return Ok(Some(agent_id));
        }
    }
    let task = tasks.load(&id.to_string()).await?;
    agent_acted_as(state, actor, &task.aggregate).await
}

/// `task`'s agent if it is a remote agent the caller owns. An agent's owner and kind never
/// change, so this node's latest knowledge of it is as good as a load.
async fn agent_acted_as(
    state: &AppState,
    actor: &Actor,
    task: &Task,
) -> Result<Option<Uuid>, ApiError> {
    let Some(agent_id) = task.state().and_then(|task| task.agent_id) else {
        return Ok(None);
    };
    let agents = state.store.aggregate::<Agent>();
    let agent = match agents.recent(&agent_id.to_string()) {
        Some(agent) => agent,
        None => {
            let loaded = agents.load(&agent_id.to_string()).await?;
            agents.remember(&loaded);
            loaded
        }
    };
    Ok(agent
        .aggregate
        .state()
        .filter(|agent| agent.owner_id == actor.id && !serves_every_user(agent))
        .map(|agent| agent.id))
}

/// Carries out a `PATCH` body on task `id` (see [`patch`]); the task and its version after.
pub(crate) async fn update(
    state: &AppState,
    actor: &Actor,
    reporter: Reporter,
    context: &CommandContext,
    id: Uuid,
    request: PatchRequest,
    if_match: Option<usize>,
) -> Result<(Task, usize), ApiError> {
    let steps = if request.is_report() {
        if request.priority.is_some() || request.tags.is_some() {
            return Err(ApiError::validation(
                "priority",
                "an owner's change cannot ride on a lease holder's report",
            ));
        }
        report_commands(request)?
    } else {
        change_commands(request)?
    };
    let holder = match reporter {
        Reporter::Agent(agent_id) => Some(agent_id),
        Reporter::Caller if steps.iter().any(ReportStep::is_report) => {
            holding_agent(state, actor, id).await?
        }
        Reporter::Caller => None,
    };
    let mut expected = if_match;
    let mut last = None;
    for step in &steps {
        let Committed {
            aggregate, version, ..
        } = state
            .bus
            .execute::<Task, ApiError>(&id.to_string(), context, expected.take(), |task| {
                let Some(current) = task.state() else {
                    return Err(ApiError::NotFound);
                };
                let resource = Resource::task(current);
                let may_change = state.authz.can(actor, Action::Write, &resource);
                if step.is_report() {
                    if holder.is_some() && current.agent_id == holder {
                        return Ok(step.command());
                    }
                    if may_change {
                        // The owner (or an admin) does not hold the lease: the same answer
                        // as a wrong lease id, whether or not the id it sent was right.
                        return Err(CommandError::Refused(TaskError::StaleLease).into());
                    }
                } else if may_change {
                    return Ok(step.command());
                }
                if state.authz.can(actor, Action::Read, &resource) {
                    Err(ApiError::Forbidden)
                } else {
                    Err(ApiError::NotFound)
                }
            })
            .await?;
        committed(state, &aggregate, version).await;
        last = Some((aggregate, version));
    }
    last.ok_or(ApiError::NotFound)
}

/// Queue a failed or cancelled task again, attempts reset.
#[utoipa::path(
    post,
    path = "/tasks/{id}/retry",
    operation_id = "retry_task",
    tag = "tasks",
    params(
        ("id" = Uuid, Path, description = "The task's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the task is still at this version (an `ETag`)"),
    ),
    responses(
        (status = 200, description = "The task, queued again", body = TaskView, headers(
            ("ETag" = String, description = "The task's new version"),
        )),
        (status = 403, description = "The caller may read the task but not change it (auditor)"),
        (status = 404, description = "No such task, or not yours"),
        (status = 409, description = "The task is neither failed nor cancelled"),
        (status = 412, description = "If-Match does not match the current version"),
    ),
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn retry(
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
                state
                    .authz
                    .require(&actor, Action::Write, &Resource::task(current))?;
                Ok(TaskCommand::RetryTask { at: Utc::now() })
            },
        )
        .await?;
    committed(&state, &aggregate, version).await;
    task_response(StatusCode::OK, &aggregate, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_schema_parses_and_lists_every_shape() {
        let schema = serde_json::to_value(<TaskPatch as utoipa::PartialSchema>::schema())
            .unwrap_or_default();
        let titles: Vec<&str> = schema["anyOf"]
            .as_array()
            .map(|all| all.iter().filter_map(|s| s["title"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            titles,
            [
                "Start",
                "Progress",
                "Succeeded",
                "Failed",
                "Reprioritise",
                "Retag"
            ]
        );
        // What the served document says, not a default that hides a parse failure.
        assert_eq!(
            schema["anyOf"][0]["properties"]["status"]["enum"],
            json!(["running"])
        );
    }
}
