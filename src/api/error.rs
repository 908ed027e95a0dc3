//! The one error type at the HTTP edge, answered as `application/problem+json` (RFC 9457).
//! Internal causes are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chronicle_aggregates::{DomainError, RefusalKind};
use chronicle_commands::{FieldError, ValidationErrors};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::error::AuthError;
use crate::bus::CommandError;
use crate::store::StoreError;

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// No or bad credentials; the detail says which, never why a password was wrong.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("unprocessable: {detail}")]
    Unprocessable { code: &'static str, detail: String },
    #[error("store unavailable")]
    Unavailable(#[source] StoreError),
    /// A service the answer needs besides the store (the embeddings provider) did not answer.
    #[error("{what} unavailable")]
    DependencyUnavailable {
        what: &'static str,
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// An error, as `application/problem+json` (RFC 9457).
#[derive(Serialize, ToSchema)]
#[schema(as = ProblemDetails)]
pub struct Problem<'a> {
    /// `urn:chronicle:problem:<kind>`, e.g. `urn:chronicle:problem:validation`.
    #[serde(rename = "type")]
    #[schema(example = "urn:chronicle:problem:not-found")]
    kind: String,
    /// The status code's reason phrase.
    #[schema(value_type = String, example = "Not Found")]
    title: &'a str,
    status: u16,
    /// What went wrong, for people; never a stack trace, SQL or a secret.
    detail: String,
    /// A stable machine-readable reason on 409 and some 422 answers, e.g. `task.stale_lease`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    code: Option<&'a str>,
    /// Every invalid field, on validation failures (422).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<FieldError>)]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(ValidationErrors::single(field, message).0)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) | Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::DependencyUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::Validation(_) => "validation",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict { .. } => "conflict",
            Self::PreconditionFailed(_) => "precondition-failed",
            Self::PayloadTooLarge => "payload-too-large",
            Self::TooManyRequests { .. } => "too-many-requests",
            Self::Unprocessable { .. } => "unprocessable",
            Self::Unavailable(_) | Self::DependencyUnavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::BadRequest(detail)
            | Self::Conflict { detail, .. }
            | Self::Unprocessable { detail, .. }
            | Self::PreconditionFailed(detail) => detail.clone(),
            Self::Validation(errors) => match errors.as_slice() {
                [one] if one.field.is_empty() => format!("the body: {}", one.message),
                [one] => format!("`{}` {}", one.field, one.message),
                many => format!("{} fields are invalid", many.len()),
            },
            Self::UnsupportedMediaType => {
                "send the body as application/json (a workflow definition: or application/yaml)"
                    .into()
            }
            Self::Unauthorized(detail) => (*detail).into(),
            Self::Forbidden => "your role does not allow this".into(),
            Self::NotFound => "no such resource".into(),
            Self::MethodNotAllowed => "this route does not accept that method".into(),
            Self::PayloadTooLarge => "the request body is over the limit".into(),
            Self::TooManyRequests { retry_after_secs } => {
                format!("rate limit reached; retry in {retry_after_secs} s")
            }
            Self::Unavailable(_) => "the event store is unavailable; try again shortly".into(),
            Self::DependencyUnavailable { what, .. } => {
                format!("{what} is unavailable; try again shortly")
            }
            Self::Internal(_) => "an internal error occurred; it has been logged".into(),
        }
    }

    /// The RFC 9457 problem document of this error (logging the causes of 5xx ones): the
    /// body of an HTTP answer, and the `problem` of a WebSocket `error` message.
    pub fn problem(&self) -> serde_json::Value {
        match self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause, source = ?cause.source(), "internal error")
            }
            Self::Unavailable(cause) => tracing::warn!(error = %cause, "store unavailable"),
            Self::DependencyUnavailable { what, cause } => {
                tracing::warn!(error = %cause, what, "dependency unavailable")
            }
            _ => {}
        }
        self.document()
    }

    /// The problem document alone, logging nothing.
    fn document(&self) -> serde_json::Value {
        let status = self.status();
        let code = match self {
            Self::Conflict { code, .. } | Self::Unprocessable { code, .. } => Some(*code),
            _ => None,
        };
        let errors = match self {
            Self::Validation(errors) => Some(errors.as_slice()),
            _ => None,
        };
        let problem = Problem {
            kind: format!("urn:chronicle:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            code,
            errors,
        };
        serde_json::to_value(&problem).unwrap_or(serde_json::Value::Null)
    }
}

impl ApiError {
    /// An internal error whose cause is an unreachable database is a 503, wherever it was
    /// wrapped (a read model's error, a middleware's query).
    fn reclassified(self) -> Self {
        match self {
            Self::Internal(cause) if StoreError::caused_unavailable(cause.as_ref()) => {
                Self::Unavailable(StoreError::Unavailable(cause))
            }
            other => other,
        }
    }
}

/// A 500 answer for a cause already reported (a panic, logged by the panic hook).
pub(crate) fn internal_response() -> Response {
    let error = ApiError::Internal("a request handler panicked".into());
    let body = serde_json::to_vec(&error.document()).unwrap_or_default();
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = self.reclassified();
        let status = this.status();
        let body = serde_json::to_vec(&this.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        let headers = response.headers_mut();
        match &this {
            Self::Unavailable(_) | Self::DependencyUnavailable { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::TooManyRequests { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        Self::Validation(errors.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => Self::Conflict {
                code: "store.conflict",
                detail: "the resource was changed concurrently; retry".into(),
            },
            error if error.is_unavailable() => Self::Unavailable(error),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl ApiError {
    /// An aggregate's refusal, by its kind.
    fn refused(kind: RefusalKind, code: &'static str, detail: String) -> Self {
        match kind {
            RefusalKind::NotFound => Self::NotFound,
            RefusalKind::Forbidden => Self::Forbidden,
            RefusalKind::Conflict => Self::Conflict { code, detail },
            RefusalKind::Invalid => Self::Unprocessable { code, detail },
        }
    }

    pub(crate) fn kept_changing() -> Self {
        Self::Conflict {
            code: "store.conflict",
            detail: "the resource kept changing concurrently; retry".into(),
        }
    }
}

impl<E: DomainError + Send + Sync + 'static> From<CommandError<E>> for ApiError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Refused(refusal) => {
                Self::refused(refusal.kind(), refusal.code(), refusal.to_string())
            }
            CommandError::Conflict => Self::kept_changing(),
            CommandError::PreconditionFailed { current, .. } => Self::PreconditionFailed(format!(
                "If-Match does not match the current version \"{current}\""
            )),
            CommandError::Store(store) => Self::from(store),
        }
    }
}

/// The one place where credentials meet HTTP.
impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::EmailTaken => Self::Conflict {
                code: "email_claim.taken",
                detail: error.to_string(),
            },
            AuthError::InvalidRefreshToken => Self::Unauthorized("the refresh token is not valid"),
            AuthError::RefreshTokenReused => Self::Unauthorized(
                "the refresh token was already used; the session has been revoked",
            ),
            AuthError::Refused { kind, code, detail } => Self::refused(kind, code, detail),
            AuthError::Conflict => Self::kept_changing(),
            AuthError::Store(store) => Self::from(store),
            AuthError::Password(_) | AuthError::Token(_) | AuthError::Inconsistent(_) => {
                Self::Internal(Box::new(error))
            }
        }
    }
}

impl From<crate::authz::Denied> for ApiError {
    fn from(denied: crate::authz::Denied) -> Self {
        match denied {
            crate::authz::Denied::Hidden => Self::NotFound,
            crate::authz::Denied::Forbidden => Self::Forbidden,
        }
    }
}
