//! `POST /api/sync/push`: the writes an extension queued offline, applied in order, each
//! through its own route with an Idempotency-Key derived from the caller and its `op_id`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{problem, Answer, Inner};
use crate::actor::Actor;
use crate::api::error::{ApiError, PROBLEM_JSON};
use crate::api::extract::{parse_if_match, ApiJson};
use crate::api::{AppState, REQUEST_ID};

/// The most ops one push may carry.
pub const MAX_OPS: usize = 500;
/// The longest `op_id`.
pub const MAX_OP_ID: usize = 200;
const OP_ID_PATTERN: &str = "^[!-~]{1,200}$";

/// `POST /api/sync/push` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SyncPushRequest)]
pub struct PushRequest {
    /// The ops, in the order to apply them.
    #[schema(max_items = 500)]
    pub ops: Vec<PushOp>,
}

/// One queued write: the request it stands for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SyncOp)]
pub struct PushOp {
    /// The client's id for the op, unique per user: an op pushed again with the same id
    /// answers its first answer and has no second effect.
    #[schema(pattern = "^[!-~]{1,200}$", min_length = 1, max_length = 200)]
    pub op_id: String,
    /// `POST`, `PATCH` or `DELETE` (see the operation's description for the paths).
    pub method: String,
    /// The route's path, e.g. `/api/tasks/{id}`, without a query.
    pub path: String,
    /// The route's JSON body: an object, as every route a push takes reads one.
    #[schema(schema_with = object_or_null)]
    pub body: Option<Value>,
    /// An `ETag` of the resource (`"3"`): applied only while it is at that version.
    #[schema(pattern = r#"^(W/)?("[0-9]{1,19}"|[0-9]{1,19})$"#)]
    pub if_match: Option<String>,
}

/// `POST /api/sync/push` answer: one result per op, in the order given.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SyncPushResponse)]
pub struct PushResponse {
    pub results: Vec<OpResult>,
}

/// What one op answered.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SyncOpResult)]
pub struct OpResult {
    pub op_id: String,
    /// The status its route answered; 409 for a stale `if_match`, 422 for an op that is not
    /// one of the writes sync takes.
    pub status: u16,
    /// The resource (`Task` for task ops, `WorkflowRunBody` for workflow ops; the current
    /// resource on a stale `if_match`), or a problem document.
    #[schema(schema_with = result_body)]
    pub body: Value,
    /// `true` when this is the first answer of an earlier push of the same op.
    pub replayed: bool,
}

fn object_or_null() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .build()
}

fn result_body() -> utoipa::openapi::Schema {
    use crate::api::error::Problem;
    use crate::api::views::TaskView;
    use crate::api::workflows::WorkflowRunBody;
    use utoipa::openapi::Ref;
    use utoipa::ToSchema;
    utoipa::openapi::schema::AnyOfBuilder::new()
        .item(Ref::from_schema_name(TaskView::name()))
        .item(Ref::from_schema_name(WorkflowRunBody::name()))
        .item(Ref::from_schema_name(Problem::name()))
        .build()
        .into()
}

/// The writes the extension makes, the only ones a push takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    CreateTask,
    PatchTask(Uuid),
    CancelTask(Uuid),
    ExecuteWorkflow(Uuid),
    SignalRun(Uuid),
}

impl Write {
    fn parse(method: &str, path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.strip_prefix("/api/")?.split('/').collect();
        let id = |segment: &str| Uuid::try_parse(segment).ok();
        match (method, segments.as_slice()) {
            ("POST", ["tasks"]) => Some(Self::CreateTask),
            ("PATCH", ["tasks", task]) => id(task).map(Self::PatchTask),
            ("DELETE", ["tasks", task]) => id(task).map(Self::CancelTask),
            ("POST", ["workflows", workflow, "execute"]) => id(workflow).map(Self::ExecuteWorkflow),
            ("POST", ["workflow-runs", run, "signals"]) => id(run).map(Self::SignalRun),
            _ => None,
        }
    }

    fn method(self) -> Method {
        match self {
            Self::CreateTask | Self::ExecuteWorkflow(_) | Self::SignalRun(_) => Method::POST,
            Self::PatchTask(_) => Method::PATCH,
            Self::CancelTask(_) => Method::DELETE,
        }
    }

    /// The route's path, its id written the one way (so the Idempotency-Key's
    /// fingerprint does not depend on how the client spelt it).
    fn path(self) -> String {
        match self {
            Self::CreateTask => "/api/tasks".to_owned(),
            Self::PatchTask(id) | Self::CancelTask(id) => format!("/api/tasks/{id}"),
            Self::ExecuteWorkflow(id) => format!("/api/workflows/{id}/execute"),
            Self::SignalRun(id) => format!("/api/workflow-runs/{id}/signals"),
        }
    }

    /// Where the resource an `if_match` names is read.
    fn resource(self) -> Option<String> {
        match self {
            Self::CreateTask => None,
            Self::PatchTask(id) | Self::CancelTask(id) => Some(format!("/api/tasks/{id}")),
            Self::ExecuteWorkflow(id) => Some(format!("/api/workflows/{id}")),
            Self::SignalRun(id) => Some(format!("/api/workflow-runs/{id}")),
        }
    }
}

/// The Idempotency-Key an op runs under: from the caller and the op's id, so that no
/// other user's op, and no key a client sends on a direct call, can meet it.
fn op_key(owner: Uuid, op_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"chronicle:sync:op:");
    hasher.update(owner.as_bytes());
    hasher.update(op_id.as_bytes());
    format!("sync.{}", hex::encode(hasher.finalize()))
}

/// Apply a batch of writes queued offline.
///
/// The ops are applied one after another, in order, each as the request it names would be
/// (the same validation, authorisation, `If-Match` and answers), and each answered on its
/// own: a failing op does not stop the ones after it. A push takes exactly these writes:
/// `POST /api/tasks` (create), `PATCH /api/tasks/{id}`, `DELETE /api/tasks/{id}` (cancel),
/// `POST /api/workflows/{id}/execute` and `POST /api/workflow-runs/{id}/signals`; any other
/// method or path (a query included) is answered 422 for that op.
///
/// Each op runs under an Idempotency-Key derived from the caller and its `op_id`: an op
/// pushed again (the same `op_id` with the same request) has no second effect and answers
/// its first answer (`replayed: true`); the same `op_id` with another request is 422. A
/// stale `if_match` is answered 409 with the resource as it is now (not a problem
/// document): the client decides. At most 500 ops in one push; the body is bounded like
/// every request's (`CHRONICLE_BODY_LIMIT`). An op whose route fails with a 5xx ends the
/// push with that answer: the ops before it took effect, and pushing the batch again
/// answers them from their keys and carries on. The batch's shape (the ops' count, each
/// `op_id`, `if_match` and `body`) is checked before any op runs: a bad one is 422 for the
/// whole push, and nothing is applied.
#[utoipa::path(
    post,
    path = "/sync/push",
    operation_id = "sync_push",
    tag = "sync",
    request_body = PushRequest,
    responses(
        (status = 200, description = "One result per op, in order", body = PushResponse),
        (status = 400, description = "Malformed JSON"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "More than 500 ops, an `op_id` or `if_match` out of its pattern, or a field of the wrong type: nothing was applied"),
    ),
)]
#[tracing::instrument(skip_all, fields(ops))]
pub async fn push(
    State(state): State<AppState>,
    actor: Actor,
    headers: HeaderMap,
    ApiJson(request): ApiJson<PushRequest>,
) -> Result<Response, ApiError> {
    tracing::Span::current().record("ops", request.ops.len());
    check(&request)?;
    let inner = Inner::new(&state, &actor, headers.get(REQUEST_ID).cloned());
    let mut results = Vec::with_capacity(request.ops.len());
    for op in request.ops {
        let result = apply(&inner, &actor, &op).await?;
        if result.status >= 500 {
            return Ok(server_error(result));
        }
        results.push(result);
    }
    Ok(Json(PushResponse { results }).into_response())
}

/// The rules of the document's schema that serde does not hold: checked for the whole
/// batch before any op runs.
fn check(request: &PushRequest) -> Result<(), ApiError> {
    if request.ops.len() > MAX_OPS {
        return Err(ApiError::validation(
            "ops",
            format!("at most {MAX_OPS} ops in one push"),
        ));
    }
    for (index, op) in request.ops.iter().enumerate() {
        let op_id_ok = (1..=MAX_OP_ID).contains(&op.op_id.len())
            && op.op_id.bytes().all(|b| b.is_ascii_graphic());
        if !op_id_ok {
            return Err(ApiError::validation(
                &format!("ops[{index}].op_id"),
                format!("must be 1 to {MAX_OP_ID} visible ASCII characters ({OP_ID_PATTERN})"),
            ));
        }
        if op.body.as_ref().is_some_and(|body| !body.is_object()) {
            return Err(ApiError::validation(
                &format!("ops[{index}].body"),
                "must be a JSON object",
            ));
        }
        if op
            .if_match
            .as_deref()
            .is_some_and(|raw| parse_if_match(raw).is_none())
        {
            return Err(ApiError::validation(
                &format!("ops[{index}].if_match"),
                "must be an ETag given by this server, e.g. \"3\"",
            ));
        }
    }
    Ok(())
}

async fn apply(inner: &Inner, actor: &Actor, op: &PushOp) -> Result<OpResult, ApiError> {
    let result = |status: StatusCode, body: Value, replayed: bool| OpResult {
        op_id: op.op_id.clone(),
        status: status.as_u16(),
        body,
        replayed,
    };
    let Some(write) = Write::parse(&op.method, &op.path) else {
        let error = ApiError::Unprocessable {
            code: "sync.unsupported_op",
            detail: "a push takes POST /api/tasks, PATCH or DELETE /api/tasks/{id}, \
                     POST /api/workflows/{id}/execute and POST /api/workflow-runs/{id}/signals"
                .into(),
        };
        return Ok(result(error.status(), problem(error).await, false));
    };
    let key = HeaderValue::from_str(&op_key(actor.id, &op.op_id))
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let mut headers = vec![("idempotency-key", key)];
    if let Some(if_match) = &op.if_match {
        let value = HeaderValue::from_str(if_match).map_err(|e| ApiError::Internal(Box::new(e)))?;
        headers.push(("if-match", value));
    }
    let answer = inner
        .send(write.method(), &write.path(), op.body.as_ref(), &headers)
        .await?;
    if answer.status != StatusCode::PRECONDITION_FAILED {
        return Ok(result(answer.status, answer.body, answer.replayed));
    }
    // A stale `if_match`: the resource as it is now, for the client to resolve.
    let Some(resource) = write.resource() else {
        return Ok(result(answer.status, answer.body, answer.replayed));
    };
    let current: Answer = inner.send(Method::GET, &resource, None, &[]).await?;
    if current.status == StatusCode::OK {
        Ok(result(StatusCode::CONFLICT, current.body, answer.replayed))
    } else {
        Ok(result(current.status, current.body, answer.replayed))
    }
}

/// An op's 5xx as the push's own answer.
fn server_error(result: OpResult) -> Response {
    let status = StatusCode::from_u16(result.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(result.body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_extensions_writes_are_ops() {
        let id = Uuid::now_v7();
        assert_eq!(Write::parse("POST", "/api/tasks"), Some(Write::CreateTask));
        assert_eq!(
            Write::parse("PATCH", &format!("/api/tasks/{id}")),
            Some(Write::PatchTask(id))
        );
        assert_eq!(
            Write::parse("DELETE", &format!("/api/tasks/{}", id.simple())),
            Some(Write::CancelTask(id))
        );
        assert_eq!(
            Write::parse("POST", &format!("/api/workflows/{id}/execute")),
            Some(Write::ExecuteWorkflow(id))
        );
        assert_eq!(
            Write::parse("POST", &format!("/api/workflow-runs/{id}/signals")),
            Some(Write::SignalRun(id))
        );
        for (method, path) in [
            ("GET", "/api/tasks".to_owned()),
            ("post", "/api/tasks".to_owned()),
            ("POST", "/api/tasks?x=1".to_owned()),
            ("POST", "/api/tasks/".to_owned()),
            ("POST", "api/tasks".to_owned()),
            ("DELETE", "/api/tasks/not-an-id".to_owned()),
            ("POST", format!("/api/tasks/{id}/retry")),
            ("DELETE", format!("/api/workflows/{id}")),
            ("POST", "/api/sync/push".to_owned()),
            ("POST", "/api/auth/login".to_owned()),
        ] {
            assert_eq!(Write::parse(method, &path), None, "{method} {path}");
        }
    }

    #[test]
    fn op_keys_are_the_callers_own_and_valid_keys() {
        let me = Uuid::now_v7();
        let you = Uuid::now_v7();
        assert_eq!(op_key(me, "a"), op_key(me, "a"));
        assert_ne!(op_key(me, "a"), op_key(me, "b"));
        assert_ne!(op_key(me, "a"), op_key(you, "a"));
        assert!(crate::api::extract::idempotency_key_is_valid(&op_key(
            me,
            &"x".repeat(MAX_OP_ID)
        )));
    }
}
