//! The HTTP API (API.md): routes, shared state and the middleware every request passes.

pub mod agents;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod lease;
pub mod system;
pub mod task_updates;
pub mod tasks;
pub mod views;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::bus::CommandBus;
use crate::config::Settings;
use crate::read_side::ReadSide;
use crate::store::Store;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub bus: CommandBus,
    pub read: ReadSide,
    pub settings: Arc<Settings>,
    pub started_at: Instant,
}

impl AppState {
    pub fn new(store: Store, read: ReadSide, settings: Settings) -> Self {
        Self {
            bus: CommandBus::new(store.clone()),
            store,
            read,
            settings: Arc::new(settings),
            started_at: Instant::now(),
        }
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route of the API, with its middleware; testable without a socket.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.body_limit;
    let api = Router::new()
        .route("/health", get(system::health))
        .route("/status", get(system::status))
        .route("/tasks", post(tasks::create).get(tasks::list))
        .route(
            "/tasks/{id}",
            get(tasks::get)
                .delete(tasks::cancel)
                .patch(task_updates::patch),
        )
        .route("/tasks/{id}/events", get(tasks::events))
        .route("/tasks/{id}/retry", post(task_updates::retry))
        .route("/agents", get(agents::list))
        .route("/agents/register", post(agents::register))
        .route("/agents/{id}", get(agents::get).delete(agents::deregister))
        .route("/agents/{id}/heartbeat", post(agents::heartbeat))
        .route("/agents/{id}/lease", post(lease::lease))
        .route("/agents/{id}/execute", post(lease::execute));
    Router::new()
        .nest("/api", api)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %request_id,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// How long in-flight requests get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
