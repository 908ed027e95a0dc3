//! `/api/health` and `/api/status`.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Mutex;
use utoipa::ToSchema;

use chronicle_projections::agent_view::AgentView as AgentViewModel;
use chronicle_projections::task_view::TaskView as TaskViewModel;
use chronicle_projections::ProjectionStatus;

use super::AppState;
use crate::process::offline_after;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// Liveness.
///
/// 200 while the process serves; it does not look at the store.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "system",
    security(()),
    responses((status = 200, description = "The process serves", body = Health)),
)]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct StoreStatus {
    /// `postgres` or `sqlite`.
    #[schema(value_type = String, example = "sqlite")]
    backend: &'static str,
    ok: bool,
    /// How long a ping took; `null` when it failed.
    latency_ms: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(value_type = String)]
    version: &'static str,
    uptime_secs: u64,
    store: StoreStatus,
    projections: Vec<ProjectionStatus>,
    /// Agents whose last heartbeat is recent enough.
    agents_online: u64,
    /// Tasks waiting to be leased.
    queue_depth: u64,
}

/// The last `/api/status` answer: anyone may ask, and each answer costs a ping and a count
/// per projection, so within `status_cache_ms` every caller gets the same one. Callers
/// that arrive while it is being computed wait for it instead of computing their own.
#[derive(Default)]
pub struct StatusCache(Mutex<Option<(Instant, StatusCode, Bytes)>>);

fn status_answer(code: StatusCode, body: Bytes) -> Response {
    let mut response = (code, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Readiness: the store, the projections and the queue.
///
/// 200 while the store answers, 503 when it does not. Answers are reused for up to a
/// second (`CHRONICLE_STATUS_CACHE_MS`).
#[utoipa::path(
    get,
    path = "/status",
    operation_id = "status",
    tag = "system",
    security(()),
    responses(
        (status = 200, description = "The store answers", body = Status),
        (status = 503, description = "The store does not answer", body = Status),
    ),
)]
pub async fn status(State(state): State<AppState>) -> Response {
    let ttl = Duration::from_millis(state.settings.status_cache_ms);
    let mut cached = state.status_cache.0.lock().await;
    if let Some((at, code, body)) = cached.as_ref() {
        if at.elapsed() < ttl {
            return status_answer(*code, body.clone());
        }
    }
    let (code, body) = current_status(&state).await;
    let body = match serde_json::to_vec(&body) {
        Ok(body) => Bytes::from(body),
        Err(error) => return super::error::ApiError::Internal(Box::new(error)).into_response(),
    };
    *cached = Some((Instant::now(), code, body.clone()));
    status_answer(code, body)
}

async fn current_status(state: &AppState) -> (StatusCode, Status) {
    let ping = state.store.ping().await;
    let ok = ping.is_ok();
    if let Err(error) = &ping {
        tracing::warn!(%error, "store ping failed");
    }
    let (projections, queue_depth, agents_online) = if ok {
        let projections = state.read.status().await.unwrap_or_else(|error| {
            tracing::warn!(%error, "projection status unavailable");
            Vec::new()
        });
        let queue_depth = TaskViewModel::queue_depth(&state.read.db)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "queue depth unavailable");
                0
            });
        let agents_online =
            AgentViewModel::count_online(&state.read.db, chrono::Utc::now(), offline_after())
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "online agents unavailable");
                    0
                });
        (projections, queue_depth, agents_online)
    } else {
        (Vec::new(), 0, 0)
    };
    let body = Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started_at.elapsed().as_secs(),
        store: StoreStatus {
            backend: state.store.backend_name(),
            ok,
            latency_ms: ping.ok().map(|d| d.as_secs_f64() * 1000.0),
        },
        projections,
        agents_online,
        queue_depth,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}
