//! `/api/admin/projections`: where each read model stands, and rebuilding one without
//! downtime.
//!
//! Who may: admins both; auditors read the list (they read everything) but may not start
//! a rebuild — they can see the resource, so that is 403 ("authenticated but not
//! allowed"); anyone else gets 404 for both, as for anything they may not see.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use chronicle_projections::ProjectionStatus;

use super::error::ApiError;
use super::AppState;
use crate::actor::{Actor, Role};
use crate::read_side::RebuildError;

/// Every projection, live and retired versions, with its lag and state.
#[utoipa::path(
    get,
    path = "/admin/projections",
    operation_id = "list_projections",
    tag = "admin",
    responses(
        (status = 200, description = "Every projection version", body = [ProjectionStatus]),
        (status = 404, description = "Not an admin or auditor"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<Json<Vec<ProjectionStatus>>, ApiError> {
    if !actor.can_read_all() {
        return Err(ApiError::NotFound);
    }
    let statuses = state
        .read
        .status()
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Json(statuses))
}

/// The answer to a rebuild request: it runs in the background.
#[derive(Serialize, ToSchema)]
pub struct RebuildStarted {
    name: String,
    #[schema(value_type = String, example = "rebuilding")]
    status: &'static str,
}

/// Rebuilds a projection from the first event beside the live one, then switches.
///
/// Reads go on from the live tables meanwhile; `GET /api/admin/projections` shows
/// `rebuilding` until the switch, then `live`. A projection that had `failed` goes on
/// again once rebuilt.
#[utoipa::path(
    post,
    path = "/admin/projections/{name}/rebuild",
    operation_id = "rebuild_projection",
    tag = "admin",
    params(("name" = String, Path, description = "The projection, e.g. `task_view`")),
    responses(
        (status = 202, description = "The rebuild started", body = RebuildStarted),
        (status = 403, description = "An auditor: may read, not rebuild"),
        (status = 404, description = "No such projection, or not an admin or auditor"),
        (status = 409, description = "It is being rebuilt already"),
    ),
)]
#[tracing::instrument(skip_all, fields(projection = %name))]
pub async fn rebuild(
    State(state): State<AppState>,
    actor: Actor,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<RebuildStarted>), ApiError> {
    if !actor.has_role(Role::Admin) {
        return Err(if actor.can_read_all() {
            ApiError::Forbidden
        } else {
            ApiError::NotFound
        });
    }
    let claim = state.read.claim_rebuild(&name).map_err(rebuild_error)?;
    let read = state.read.clone();
    tokio::spawn(async move {
        let name = claim.name();
        if let Err(error) = read.rebuild_claimed(claim, &|_, _| {}).await {
            tracing::error!(projection = name, %error, "rebuild failed");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(RebuildStarted {
            name,
            status: "rebuilding",
        }),
    ))
}

fn rebuild_error(error: RebuildError) -> ApiError {
    match error {
        RebuildError::Unknown(_) => ApiError::NotFound,
        RebuildError::Running(name) => ApiError::Conflict {
            code: "rebuild_running",
            detail: format!("projection {name} is being rebuilt already"),
        },
        RebuildError::Projection(error) => ApiError::Internal(Box::new(error)),
    }
}
