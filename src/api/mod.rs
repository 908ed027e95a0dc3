//! The HTTP API (API.md): routes, shared state and the middleware every request passes.

pub mod admin;
pub mod agent_ws;
pub mod agents;
pub mod analytics;
pub mod audit;
pub mod audit_checkpoint;
pub mod auth;
pub mod client_ip;
pub mod console;
pub mod conversations;
pub mod cors;
pub mod error;
pub mod events;
pub mod extract;
pub mod history;
pub mod idempotency;
pub mod lease;
pub mod limits;
pub mod live_ws;
pub mod openapi;
pub mod paging;
pub mod query_token;
pub(crate) mod redact;
pub mod replay;
pub mod request_meters;
pub mod request_span;
pub mod schedules;
pub mod scrape;
pub mod search;
pub mod security_headers;
pub(crate) mod sharing;
pub mod store_link;
pub mod sync;
pub mod system;
pub mod task_stream;
pub mod task_updates;
pub mod tasks;
pub mod teams;
pub mod users;
pub mod views;
pub mod workflow_templates;
pub mod workflows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::secret::ServerKeys;
use crate::auth::Authenticator;
use crate::authz::Authz;
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
    /// The Idempotency-Key claims this node is running.
    pub idempotency: Arc<replay::InFlight>,
    pub status_cache: Arc<system::StatusCache>,
    /// Whose `X-Forwarded-*` headers are believed.
    pub proxies: Arc<client_ip::TrustedProxies>,
    pub request_meters: Arc<request_meters::RequestMeters>,
    pub scrape: Arc<scrape::ScrapeState>,
    /// Who may do what; its team directory is kept current by `teams::TeamFeed`.
    pub authz: Authz,
    /// `llm.chat` tokens as they stream, for this node's live followers.
    pub tokens: crate::process::llm::tokens::TokenHub,
}

impl AppState {
    pub fn new(store: Store, read: ReadSide, settings: Settings, keys: ServerKeys) -> Self {
        // `Settings::load` has refused bad networks already; settings built in code that
        // name one trust nobody.
        // Before any handle is taken, so that every series reaches the recorder.
        crate::meters::handle();
        let proxies = settings.trusted_networks().unwrap_or_else(|error| {
            tracing::error!(%error, "trusting no proxy");
            Vec::new()
        });
        Self {
            bus: CommandBus::new(store.clone()).fail_after_commits(settings.fail_after_commit),
            store,
            read,
            auth: Arc::new(
                Authenticator::new(keys, settings.auth.access_ttl_secs).with_key_cache(
                    settings.auth.api_key_cache_entries,
                    Duration::from_secs(settings.auth.api_key_cache_secs),
                ),
            ),
            limits: Arc::new(RateLimits::new(&settings.rate_limit)),
            settings: Arc::new(settings),
            started_at: Instant::now(),
            shutdown: CancellationToken::new(),
            idempotency: Arc::default(),
            status_cache: Arc::default(),
            proxies: Arc::new(client_ip::TrustedProxies::new(proxies)),
            request_meters: Arc::default(),
            scrape: Arc::default(),
            authz: Authz::default(),
            tokens: crate::process::llm::tokens::TokenHub::default(),
        }
    }
}

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route of the API and, from the same registration, its OpenAPI document
/// ([`openapi::document`], served at `GET /api/openapi.json`).
///
/// To add a route:
/// 1. annotate its handler with `#[utoipa::path(method, path = "/…" /* under /api */,
///    operation_id = "…", tag = "…", params(…), request_body = …, responses(…))]`: its own
///    answers only, since [`openapi::document`] adds 401/429/500/503 and `X-Request-Id`;
///    `security(())` when it takes no credentials. Derive `utoipa::ToSchema` (bodies) or
///    `utoipa::IntoParams` (queries) on the types it reads and answers;
/// 2. register it below with `.routes(routes!(module::handler))`, one `routes!` per path,
///    listing every handler of that path (`routes!` mounts each handler on every path of
///    the call, so two paths in one call would cross their methods).
///
/// Never `.route(…)`, here or anywhere else: such a route is served but missing from the
/// document. `openapi::tests` fails on any `.route(` in `src/` and on any annotated handler
/// that is not registered; `tests/it/openapi.rs` checks the document against the running
/// server and API.md.
pub fn routes() -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .routes(routes!(system::health))
        .routes(routes!(system::status))
        .routes(routes!(openapi::serve))
        .routes(routes!(scrape::metrics))
        .routes(routes!(tasks::create, tasks::list))
        .routes(routes!(tasks::get, tasks::cancel, task_updates::patch))
        .routes(routes!(tasks::events))
        .routes(routes!(task_stream::stream))
        .routes(routes!(live_ws::connect))
        .routes(routes!(task_updates::retry))
        .routes(routes!(agents::list))
        .routes(routes!(agents::register))
        .routes(routes!(agents::get, agents::deregister))
        .routes(routes!(agents::heartbeat))
        .routes(routes!(history::agent_events))
        .routes(routes!(lease::lease))
        .routes(routes!(lease::execute))
        .routes(routes!(agent_ws::connect))
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(users::me))
        .routes(routes!(users::create_key, users::list_keys))
        .routes(routes!(users::revoke_key))
        .routes(routes!(users::rotate_key))
        .routes(routes!(analytics::usage))
        .routes(routes!(analytics::status))
        .routes(routes!(events::list))
        .routes(routes!(audit::verify))
        .routes(routes!(audit_checkpoint::latest))
        .routes(routes!(admin::list))
        .routes(routes!(admin::rebuild))
        .routes(routes!(workflows::create, workflows::list))
        .routes(routes!(
            workflows::get,
            workflows::update,
            workflows::archive
        ))
        .routes(routes!(workflows::execute))
        .routes(routes!(workflows::status))
        .routes(routes!(workflows::get_run, workflows::cancel_run))
        .routes(routes!(workflows::signal))
        .routes(routes!(workflows::run_events))
        .routes(routes!(workflow_templates::list))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(schedules::get, schedules::delete))
        .routes(routes!(teams::create, teams::list))
        .routes(routes!(teams::get, teams::delete))
        .routes(routes!(teams::invite))
        .routes(routes!(teams::accept))
        .routes(routes!(teams::change_role, teams::remove_member))
        .routes(routes!(workflows::share))
        .routes(routes!(workflows::unshare))
        .routes(routes!(agents::share))
        .routes(routes!(agents::unshare))
        .routes(routes!(tasks::share))
        .routes(routes!(tasks::unshare))
        .routes(routes!(conversations::get))
        .routes(routes!(sync::push::push))
        .routes(routes!(sync::pull::pull))
        .routes(routes!(search::search))
        .routes(routes!(search::rag_context));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).nest("/api", api)
}

/// Every route of the API, with its middleware; testable without a socket.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.body_limit;
    let cors = cors::layer(&state.settings.cors.origins);
    let settings = state.settings.clone();
    let request_meters = state.request_meters.clone();
    let router = Router::from(routes())
        // Outside `/api`: the web console's files; anything else is a 404 problem.
        .fallback(console::serve)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Inside the gate: a replay is for an authenticated caller.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            replay::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security_headers::https_only,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_ip::layer,
        ))
        // Outside the gate: authenticating needs the store too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            store_link::guard,
        ))
        .with_state(state)
        // A panicking handler answers 500 like any internal error; the panic hook has
        // logged it (and told Sentry) by then.
        .layer(CatchPanicLayer::custom(panicked))
        .layer(DefaultBodyLimit::max(body_limit))
        // Outside every gate, so a 401, 413 or 429 is counted too; inside the routing, so
        // the route's template is known.
        .layer(axum::middleware::from_fn_with_state(
            request_meters,
            request_meters::layer,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span::make))
        .layer(cors);
    // Inside the request id, so that every Sentry report names it.
    let router = if crate::error_tracking::enabled() {
        router.layer(axum::middleware::from_fn(
            crate::error_tracking::per_request,
        ))
    } else {
        router
    };
    let router = router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));
    security_headers::apply(router, &settings)
}

/// The answer to a request whose handler panicked: a 500 `problem+json`, logged once (by the
/// panic hook, not here).
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    error::internal_response()
}

/// How long in-flight requests get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_a_500_problem() {
        let app = Router::new()
            .fallback(|| async {
                if Instant::now().elapsed() < Duration::from_secs(3600) {
                    panic!("a bug");
                }
            })
            .layer(CatchPanicLayer::custom(panicked));
        let response = app
            .oneshot(Request::get("/api/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            error::PROBLEM_JSON
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["type"], "urn:chronicle:problem:internal");
        assert!(!problem["detail"].as_str().unwrap().contains("a bug"));
    }
}
