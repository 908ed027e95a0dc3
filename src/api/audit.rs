//! `GET /api/audit/verify`: the hash chains recomputed over HTTP, as `chronicle audit
//! verify` does, over what the caller may read.

use axum::extract::State;
use axum::Json;
use chronicle_projections::aggregate_owners::owner_in_first_event;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::events::{await_scope, SCOPE_PATIENCE};
use super::extract::ApiQuery;
use super::AppState;
use crate::actor::Actor;
use crate::store::{AggregateFilter, VerifyReport};

/// `GET /api/audit/verify` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// Only aggregates of this type (`task`, `agent`, …).
    pub aggregate_type: Option<String>,
    /// Only this aggregate; 404 when it has no events (or is not yours).
    pub aggregate_id: Option<String>,
}

/// The report's shape, for the document: the store's `VerifyReport` is answered as it is
/// (fields it gains appear in the answer).
#[derive(Serialize, ToSchema)]
#[schema(as = VerifyReport)]
#[allow(dead_code)] // documents `store::VerifyReport`; never built
struct VerifyReportSchema {
    /// Events checked.
    checked: u64,
    /// No broken link.
    ok: bool,
    /// The first broken link of each broken aggregate.
    broken: Vec<BrokenLinkSchema>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = BrokenLink)]
#[allow(dead_code)] // documents `store::BrokenLink`; never built
struct BrokenLinkSchema {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    /// `hash mismatch`, `prev_hash mismatch` or `sequence gap`.
    reason: String,
}

/// Recompute hash chains and name the first broken link of each aggregate.
///
/// Users verify the aggregates they own (all of them, those of one type, or one);
/// auditors and admins any or all. Another user's aggregate is 404, as is one without
/// events.
#[utoipa::path(
    get,
    path = "/audit/verify",
    operation_id = "audit_verify",
    tag = "audit",
    params(VerifyQuery),
    responses(
        (status = 200, description = "The verification report", body = VerifyReportSchema),
        (status = 404, description = "`aggregate_id` names no aggregate of yours"),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn verify(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<VerifyQuery>,
) -> Result<Json<VerifyReport>, ApiError> {
    let filter = AggregateFilter {
        aggregate_type: query.aggregate_type,
        aggregate_id: query.aggregate_id,
    };
    let report = if actor.can_read_all() {
        state.store.verify(&filter).await?
    } else if let (Some(aggregate_type), Some(aggregate_id)) =
        (&filter.aggregate_type, &filter.aggregate_id)
    {
        // One aggregate: its first event names its owner, by the owners projection's own
        // rule, without waiting for the projection (nor for the feed's horizon).
        let first = state
            .store
            .history_page(aggregate_type, aggregate_id, 0, Some(1))
            .await?;
        let owner = first
            .first()
            .and_then(|event| owner_in_first_event(&event.payload));
        if owner != Some(actor.id) {
            return Err(ApiError::NotFound);
        }
        state.store.verify(&filter).await?
    } else {
        // Ownership comes from the owners projection: let it reach the caller's latest
        // aggregates first.
        await_scope(&state.store, &state.read, SCOPE_PATIENCE).await?;
        state.store.verify_owned(&filter, actor.id).await?
    };
    if filter.aggregate_id.is_some() && report.checked == 0 {
        return Err(ApiError::NotFound);
    }
    Ok(Json(report))
}
