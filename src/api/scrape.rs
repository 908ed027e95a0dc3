//! `GET /api/metrics`: the Prometheus text of [`crate::meters`], with this server's gauges
//! read from its store at scrape time.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use chronicle_projections::agent_view::AgentView as AgentViewModel;
use chronicle_projections::task_view::TaskView as TaskViewModel;
use chronicle_projections::ReadDb;
use metrics::gauge;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::meters;
use crate::process::offline_after;

/// What a server remembers between scrapes.
#[derive(Default)]
pub struct ScrapeState {
    /// Capabilities that had a queue: one that empties is set to 0, not left at its last count.
    queued: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus metrics.
///
/// Open to anyone unless `CHRONICLE_METRICS__TOKEN` is set; then the scraper sends it as
/// `Authorization: Bearer <token>` (401 otherwise).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "system",
    security(()),
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String,
         content_type = "text/plain"),
    ),
)]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.settings.metrics.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Digests compared, so the time taken says nothing about the token.
        if Sha256::digest(given.as_bytes()) != Sha256::digest(token.expose_secret().as_bytes()) {
            return ApiError::Unauthorized("a valid metrics token is required").into_response();
        }
    }
    let handle = meters::handle();
    read_gauges(&state).await;
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    response
}

/// The gauges that describe this server's store; a failed read leaves the last value and
/// is logged (the scrape itself still answers).
async fn read_gauges(state: &AppState) {
    let up = match state.store.ping().await {
        Ok(_) => 1.0,
        Err(error) => {
            tracing::warn!(%error, "store ping failed");
            0.0
        }
    };
    gauge!(meters::STORE_UP).set(up);
    let db = &state.read.db;
    match TaskViewModel::queue_depth_by_capability(db).await {
        Ok(rows) => {
            let mut queued = state
                .scrape
                .queued
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for capability in queued.iter() {
                if !rows.iter().any(|(c, _)| c == capability) {
                    gauge!(meters::QUEUE_DEPTH, "capability" => capability.clone()).set(0.0);
                }
            }
            for (capability, count) in rows {
                gauge!(meters::QUEUE_DEPTH, "capability" => capability.clone()).set(count as f64);
                queued.insert(capability);
            }
        }
        Err(error) => tracing::warn!(%error, "queue depth unavailable"),
    }
    match AgentViewModel::count_online(db, chrono::Utc::now(), offline_after()).await {
        Ok(online) => gauge!(meters::AGENTS_ONLINE).set(online as f64),
        Err(error) => tracing::warn!(%error, "online agents unavailable"),
    }
    match state.read.status().await {
        Ok(projections) => {
            for p in projections.into_iter().filter(|p| p.status != "retired") {
                let name = p.name;
                gauge!(meters::PROJECTION_POSITION, "projection" => name.clone())
                    .set(p.position as f64);
                gauge!(meters::PROJECTION_LAG_EVENTS, "projection" => name.clone())
                    .set(p.lag_events as f64);
                gauge!(meters::PROJECTION_LAG_SECONDS, "projection" => name).set(p.lag_seconds);
            }
        }
        Err(error) => tracing::warn!(%error, "projection status unavailable"),
    }
    // Touched so the failure counter is a series from the start, not only after a failure.
    for name in state.read.projection_names() {
        metrics::counter!(meters::PROJECTION_FAILURES, "projection" => name).increment(0);
    }
    let pools = match db {
        ReadDb::Postgres(pool) => vec![("main", pool.size(), pool.num_idle())],
        ReadDb::Sqlite { writer, reader } => vec![
            ("writer", writer.size(), writer.num_idle()),
            ("reader", reader.size(), reader.num_idle()),
        ],
    };
    for (pool, size, idle) in pools {
        let idle = u32::try_from(idle).unwrap_or(size);
        let in_use = size.saturating_sub(idle);
        gauge!(meters::DB_POOL_CONNECTIONS, "pool" => pool, "state" => "in_use")
            .set(f64::from(in_use));
        gauge!(meters::DB_POOL_CONNECTIONS, "pool" => pool, "state" => "idle").set(f64::from(idle));
    }
}
