//! The HTTP API (API.md): routes, shared state and the middleware every request passes.

pub mod agent_ws;
pub mod agents;
pub mod auth;
pub mod cors;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod lease;
pub mod limits;
pub mod paging;
pub mod system;
pub mod task_updates;
pub mod tasks;
pub mod users;
pub mod views;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{delete, get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::secret::ServerKeys;
use crate::auth::Authenticator;
use crate::bus::CommandBus;
use crate::config::Settings;
use crate::read_side::ReadSide;
use crate::store::Store;
use error::ApiError;
use limits::RateLimits;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub bus: CommandBus,
    pub read: ReadSide,
    pub settings: Arc<Settings>,
    pub started_at: Instant,
    pub auth: Arc<Authenticator>,
    pub limits: Arc<RateLimits>,
    /// Cancelled when the server begins to shut down: long-lived answers (long-polls,
    /// WebSockets) end early instead of holding the shutdown up.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(store: Store, read: ReadSide, settings: Settings, keys: ServerKeys) -> Self {
        Self {
            bus: CommandBus::new(store.clone()),
            store,
            read,
            auth: Arc::new(Authenticator::new(keys)),
            limits: Arc::new(RateLimits::new(&settings.rate_limit)),
            settings: Arc::new(settings),
            started_at: Instant::now(),
            shutdown: CancellationToken::new(),
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
        .route("/agents/{id}/execute", post(lease::execute))
        .route("/agents/{id}/ws", get(agent_ws::connect))
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/users/me", get(users::me))
        .route(
            "/users/me/api-keys",
            post(users::create_key).get(users::list_keys),
        )
        .route("/users/me/api-keys/{id}", delete(users::revoke_key))
        .route("/users/me/api-keys/{id}/rotate", post(users::rotate_key));
    let cors = cors::layer(&state.settings.cors.origins);
    Router::new()
        .nest("/api", api)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::gate,
        ))
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
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// How long in-flight requests get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
