//! Fail fast while the database does not answer: a request that needs the store is
//! answered 503 (`Retry-After: 1`) at once while the link is down, and one in flight when
//! it goes down is answered 503 then, instead of waiting on a socket that may never answer
//! (see `store::link`). Its outcome is unknown to the client, as with any 503: a write
//! repeated with its `Idempotency-Key` has one effect.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::store::StoreError;

/// Routes that answer without the store, or say themselves that it is down.
const WITHOUT_STORE: [&str; 3] = ["/api/health", "/api/status", "/api/openapi.json"];

pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(link) = state.store.link().cloned() else {
        return next.run(request).await;
    };
    if WITHOUT_STORE.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    if !link.is_up() {
        return unavailable();
    }
    tokio::select! {
        response = next.run(request) => response,
        () = link.down() => unavailable(),
    }
}

fn unavailable() -> Response {
    ApiError::Unavailable(StoreError::Unavailable(
        "the database does not answer (link probe)".into(),
    ))
    .into_response()
}
