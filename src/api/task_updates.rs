//! `PATCH /api/tasks/{id}` — the lease holder's reports and the owner's changes — and
//! `POST /api/tasks/{id}/retry`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chronicle_aggregates::task::{Task, TaskCommand, TaskFailure};
use chronicle_commands::values::{Priority, Tags};
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, IdPath, RequestMeta};
use super::tasks::{committed, task_response};
use super::AppState;
use crate::actor::Actor;
use crate::bus::{CommandContext, Committed};
use crate::process::jitter;

/// What a lease holder reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedStatus {
    Running,
    Succeeded,
    Failed,
}

/// Either a lease holder's report (`lease_id` with `status`, `output`, `error`,
/// `progress`) or the owner's change (`priority`, `tags`), never both.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    pub status: Option<ReportedStatus>,
    pub lease_id: Option<Uuid>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub progress: Option<Value>,
    pub priority: Option<i64>,
    pub tags: Option<Vec<String>>,
}

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

/// A report by the lease holder (stale lease → 409, illegal transition → 409) or a change
/// by the owner. Every command checks that the caller may change the task; the lease id
/// is what makes the caller its holder.
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
        &meta.context(&actor),
        id,
        request,
        meta.if_match,
    )
    .await?;
    task_response(StatusCode::OK, &aggregate, version)
}

/// Carries out a `PATCH` body on task `id` (see [`patch`]); the task and its version after.
pub(crate) async fn update(
    state: &AppState,
    actor: &Actor,
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
    let mut expected = if_match;
    let mut last = None;
    for step in &steps {
        let Committed {
            aggregate, version, ..
        } = state
            .bus
            .execute::<Task, ApiError>(&id.to_string(), context, expected.take(), |task| match task
                .state()
            {
                Some(current) if actor.can_write(current.owner_id) => Ok(step.command()),
                Some(current) if actor.can_read(current.owner_id) => Err(ApiError::Forbidden),
                _ => Err(ApiError::NotFound),
            })
            .await?;
        committed(state, &aggregate, version).await;
        last = Some((aggregate, version));
    }
    last.ok_or(ApiError::NotFound)
}

/// A failed or cancelled task back in the queue, attempts reset.
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
            |task: &Task| match task.state() {
                Some(current) if actor.can_write(current.owner_id) => {
                    Ok(TaskCommand::RetryTask { at: Utc::now() })
                }
                Some(current) if actor.can_read(current.owner_id) => Err(ApiError::Forbidden),
                _ => Err(ApiError::NotFound),
            },
        )
        .await?;
    committed(&state, &aggregate, version).await;
    task_response(StatusCode::OK, &aggregate, version)
}
