//! Offline sync for the extension (API.md, "Sync"): a batch of writes queued offline
//! ([`push`]) and the current state of what changed since a token ([`pull`]).
//!
//! Both run their requests through the API's own routes ([`Inner`]): the same handlers,
//! validation, authorisation and Idempotency-Key machinery as the direct calls, so a synced
//! write cannot behave otherwise than the call it stands for, and a pulled resource is what
//! its `GET` answers.
//!
//! Layout:
//! - [`push`]: `POST /api/sync/push`, the batch of ops;
//! - [`pull`]: `GET /api/sync/pull`, the changed resources and the token.

pub mod pull;
pub mod push;

use std::sync::LazyLock;

use axum::body::{to_bytes, Body};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chronicle_projections::ReadScope;
use serde_json::Value;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use super::error::ApiError;
use super::{replay, AppState, REQUEST_ID};
use crate::actor::Actor;
use crate::auth::Authentication;

/// Whose resources a pull includes: the caller's own and their teams' (as the teams are
/// at each read, so a removed member's next pull leaves the team out), or every user's for
/// auditors and admins — [`crate::authz::Authz::readers`], the decision behind the lists
/// and the feed too. What a push may touch the routes themselves decide.
pub(crate) fn readable(state: &AppState, actor: &Actor) -> ReadScope {
    state.authz.readers(actor)
}

/// The route table without the gates in front of it (the sync request itself passed
/// them: credentials, rate limit, store link). A table, not state: each [`Inner`] gives
/// it its server's state.
static ROUTES: LazyLock<Router<AppState>> = LazyLock::new(|| {
    Router::from(super::routes())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
});

/// The API's routes as one caller: every request sent here is that caller's, with the
/// request id of the sync request it belongs to.
pub(crate) struct Inner {
    router: Router,
    actor: Actor,
    request_id: Option<HeaderValue>,
}

/// What an inner request answered: its status, version (`ETag`), whether it was the
/// stored answer of an earlier request with its Idempotency-Key, and its JSON body (`null`
/// when it had none).
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub version: Option<u64>,
    pub replayed: bool,
    pub body: Value,
}

impl Inner {
    pub(crate) fn new(state: &AppState, actor: &Actor, request_id: Option<HeaderValue>) -> Self {
        let router = ROUTES
            .clone()
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                replay::layer,
            ))
            .with_state(state.clone())
            .layer(CatchPanicLayer::custom(super::panicked))
            .layer(DefaultBodyLimit::max(state.settings.body_limit));
        Self {
            router,
            actor: actor.clone(),
            request_id,
        }
    }

    /// Sends one request: `method path`, with a JSON body when one is given, and headers.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&'static str, HeaderValue)],
    ) -> Result<Answer, ApiError> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(request_id) = &self.request_id {
            builder = builder.header(REQUEST_ID, request_id.clone());
        }
        for (name, value) in headers {
            builder = builder.header(*name, value.clone());
        }
        let body = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(body).map_err(|e| ApiError::Internal(Box::new(e)))?)
            }
            None => Body::empty(),
        };
        let mut request = builder
            .body(body)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        request
            .extensions_mut()
            .insert(Authentication::Actor(self.actor.clone()));
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        answer(response).await
    }
}

async fn answer(response: Response) -> Result<Answer, ApiError> {
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(Box::new(e)))?
    };
    let version = parts
        .headers
        .get(header::ETAG)
        .and_then(|value| value.to_str().ok())
        .and_then(|etag| etag.trim_matches('"').parse().ok());
    Ok(Answer {
        status: parts.status,
        version,
        replayed: parts.headers.contains_key("idempotent-replayed"),
        body,
    })
}

/// `error` as the problem document its answer would carry.
pub(crate) async fn problem(error: ApiError) -> Value {
    let response = error.into_response();
    match to_bytes(response.into_body(), usize::MAX).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}
