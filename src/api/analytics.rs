//! `/api/analytics`: usage by day, agent, capability or user, and tasks by status — the
//! caller's own and their teams' (`authz::Authz::readers`), or everyone's for auditors and
//! admins.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use chronicle_aggregates::task::TaskStatus;
use chronicle_projections::task_view::TaskView as TaskViewModel;
use chronicle_projections::usage::{GroupBy, UsageQuery, UsageRow, UsageView};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::ApiQuery;
use super::AppState;
use crate::actor::Actor;

/// The longest window one report may cover.
const MAX_WINDOW_DAYS: i64 = 366;

/// How rows are grouped.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroupBy {
    /// The UTC day, `YYYY-MM-DD`.
    #[default]
    Day,
    Agent,
    Capability,
    User,
}

impl From<UsageGroupBy> for GroupBy {
    fn from(group_by: UsageGroupBy) -> Self {
        match group_by {
            UsageGroupBy::Day => Self::Day,
            UsageGroupBy::Agent => Self::Agent,
            UsageGroupBy::Capability => Self::Capability,
            UsageGroupBy::User => Self::User,
        }
    }
}

/// `GET /api/analytics/usage` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start of the window, inclusive (RFC 3339); 30 days before `to` when absent.
    pub from: Option<DateTime<Utc>>,
    /// End of the window, exclusive (RFC 3339); now when absent. At most 366 days after
    /// `from`.
    pub to: Option<DateTime<Utc>>,
    /// `day` when absent.
    #[param(inline)]
    pub group_by: Option<UsageGroupBy>,
    /// Only the tasks of this team (one the caller belongs to; any other counts none).
    pub team_id: Option<Uuid>,
}

/// One bucket. Each count is of events inside the window: tasks created, attempts retried,
/// tasks that succeeded, failed for good or were cancelled then. Durations are of the tasks
/// that ended (succeeded or failed) in the bucket, from their first lease to their end;
/// `p95_duration_ms` is the exact 95th percentile (nearest rank). Tokens are those the
/// succeeded tasks' outputs report in `usage` (LLM tasks).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBucket {
    /// The day (`YYYY-MM-DD`), agent id, capability or user id; `null` for events with no
    /// agent (a task created, or cancelled before any agent held it).
    pub bucket: Option<String>,
    pub created: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub retries: i64,
    pub avg_duration_ms: Option<f64>,
    pub p95_duration_ms: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

impl From<UsageRow> for UsageBucket {
    fn from(row: UsageRow) -> Self {
        Self {
            bucket: row.bucket,
            created: row.created,
            succeeded: row.succeeded,
            failed: row.failed,
            cancelled: row.cancelled,
            retries: row.retries,
            avg_duration_ms: row.avg_duration_ms,
            p95_duration_ms: row.p95_duration_ms,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub rows: Vec<UsageBucket>,
}

/// Usage over a window, grouped.
///
/// The tasks the caller may read: their own and their teams' (a task counts for a team
/// while it belongs to it), every user's for auditors and admins; `team_id` narrows it to
/// one team's. Built from the event feed, so a task shows here shortly after its events
/// are recorded.
#[utoipa::path(
    get,
    path = "/analytics/usage",
    operation_id = "analytics_usage",
    tag = "analytics",
    params(UsageParams),
    responses(
        (status = 200, description = "One row per bucket, in bucket order", body = UsageReport),
        (status = 422, description = "A bad parameter, `from` not before `to`, or a window over 366 days"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn usage(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let to = params.to.unwrap_or_else(Utc::now);
    let from = params.from.unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(ApiError::validation("from", "must be before `to`"));
    }
    if to - from > Duration::days(MAX_WINDOW_DAYS) {
        return Err(ApiError::validation(
            "to",
            "the window may cover at most 366 days",
        ));
    }
    let query = UsageQuery {
        from,
        to,
        readers: state.authz.readers(&actor),
        team_id: params.team_id,
        group_by: params.group_by.unwrap_or_default().into(),
    };
    let rows = UsageView::report(&state.read.db, &query)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Json(UsageReport {
        from,
        to,
        rows: rows.into_iter().map(UsageBucket::from).collect(),
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusParams {
    /// Only the tasks of this team (one the caller belongs to; any other counts none).
    pub team_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusCounts {
    /// Every task status with its count, zeros included.
    #[schema(value_type = BTreeMap<String, i64>, example = json!({"queued": 2, "retry_scheduled": 0, "leased": 1, "running": 0, "succeeded": 10, "failed": 1, "cancelled": 0}))]
    pub counts: BTreeMap<&'static str, i64>,
    pub total: i64,
}

/// Tasks by status, now.
///
/// The tasks the caller may read, as in `/analytics/usage`: their own and their teams',
/// every user's for auditors and admins; `team_id` narrows it to one team's.
#[utoipa::path(
    get,
    path = "/analytics/status",
    operation_id = "analytics_status",
    tag = "analytics",
    params(StatusParams),
    responses(
        (status = 200, description = "Counts by status", body = StatusCounts),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn status(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(params): ApiQuery<StatusParams>,
) -> Result<Json<StatusCounts>, ApiError> {
    let readers = state.authz.readers(&actor);
    let rows = TaskViewModel::count_by_status(&state.read.db, &readers, params.team_id)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let statuses = [
        TaskStatus::Queued,
        TaskStatus::RetryScheduled,
        TaskStatus::Leased,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];
    let counts: BTreeMap<&'static str, i64> = statuses
        .iter()
        .map(|status| {
            let count = rows
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, count)| *count);
            (status.as_str(), count)
        })
        .collect();
    Ok(Json(StatusCounts {
        total: counts.values().sum(),
        counts,
    }))
}
