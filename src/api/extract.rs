//! Extractors that answer bad input in our problem+json format: the JSON body, UUID path
//! segments, the caller, and the request's conditional and tracing headers.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use crate::actor::Actor;
use crate::auth::revocation::Grant;
use crate::auth::Authentication;
use crate::bus::{CommandContext, CommitLog};
use crate::store::StoreError;

/// Deepest JSON nesting accepted; serde_json stops at 128 on its own, this is our contract.
pub const MAX_JSON_DEPTH: usize = 64;

/// A JSON body: malformed → 400, wrong shape → 422 naming the field, too deep → 400.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::PayloadTooLarge
                    } else {
                        ApiError::BadRequest("the request body could not be read".into())
                    }
                })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as JSON into `T` with our error rules.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    from_json_value(value)
}

/// An already parsed JSON value as `T`: the same limits as a request body, and a wrong
/// or missing field is a 422 naming it.
pub fn from_json_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    check_value(&value, 0, "")?;
    serde_path_to_error::deserialize::<_, T>(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.inner().to_string();
        let field = match path.as_str() {
            // serde names a missing field only in its message: "missing field `x`".
            "." => message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .unwrap_or_default()
                .to_owned(),
            _ => path,
        };
        ApiError::validation(&field, message)
    })
}

/// Refuses what some backends cannot store or what would only hurt: nesting deeper than
/// [`MAX_JSON_DEPTH`] and NUL characters (PostgreSQL's JSON types reject `\u0000`).
fn check_value(value: &Value, depth: usize, path: &str) -> Result<(), ApiError> {
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::BadRequest(format!(
            "JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    let nul = |at: &str| ApiError::validation(at, "must not contain NUL (\\u0000) characters");
    match value {
        Value::String(text) if text.contains('\0') => Err(nul(path)),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(index, item)| {
            check_value(item, depth + 1, &format!("{path}[{index}]"))
        }),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if key.contains('\0') {
                return Err(nul(&at));
            }
            check_value(item, depth + 1, &at)
        }),
        _ => Ok(()),
    }
}

/// A query string: unknown or malformed parameters → 422 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|error| {
                let field = error.path().to_string();
                ApiError::validation(&field, error.inner().to_string())
            })
    }
}

/// A UUID path segment; anything else is a resource that does not exist (404).
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        Uuid::parse_str(&raw)
            .map(IdPath)
            .map_err(|_| ApiError::NotFound)
    }
}

/// The authenticated caller; no or bad credentials → 401. The gate middleware
/// ([`super::limits::gate`]) has already checked the credentials.
impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match MaybeActor::from_request_parts(parts, state).await? {
            MaybeActor(Some(actor)) => Ok(actor),
            MaybeActor(None) => Err(ApiError::Unauthorized(
                "send Authorization: Bearer <access token or API key>, or X-API-Key",
            )),
        }
    }
}

/// The caller if credentials were sent, `None` if none were; bad credentials are still 401.
pub struct MaybeActor(pub Option<Actor>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeActor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Authentication>() {
            Some(Authentication::Actor(actor)) => Ok(Self(Some(actor.clone()))),
            Some(Authentication::Invalid) => Err(ApiError::Unauthorized(
                "the credentials are not valid or have expired",
            )),
            Some(Authentication::Unavailable) => Err(ApiError::Unavailable(
                StoreError::Unavailable("the credentials could not be checked".into()),
            )),
            Some(Authentication::Anonymous) | None => Ok(Self(None)),
        }
    }
}

/// What the caller's credentials granted, for a socket to watch until they end
/// ([`crate::auth::revocation::Revocations::ended`]); no or bad credentials → 401.
impl<S: Send + Sync> FromRequestParts<S> for Grant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // The caller's rejection (401, 503) first, so both extractors answer alike.
        Actor::from_request_parts(parts, state).await?;
        parts
            .extensions
            .get::<Grant>()
            .cloned()
            .ok_or(ApiError::Unauthorized(
                "send Authorization: Bearer <access token or API key>, or X-API-Key",
            ))
    }
}

/// What a request says about itself: its id, idempotency key and `If-Match` version.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub if_match: Option<usize>,
    /// Set by the Idempotency-Key middleware ([`super::replay`]) on a keyed write.
    pub commit_log: Option<CommitLog>,
}

impl RequestMeta {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let if_match = match headers.get(header::IF_MATCH) {
            None => None,
            Some(value) => {
                let raw = value.to_str().unwrap_or_default().trim();
                let raw = raw.strip_prefix("W/").unwrap_or(raw).trim_matches('"');
                Some(raw.parse::<usize>().map_err(|_| {
                    ApiError::PreconditionFailed(
                        "If-Match must be an ETag given by this server, e.g. \"3\"".into(),
                    )
                })?)
            }
        };
        let idempotency_key = text("idempotency-key");
        if let Some(key) = &idempotency_key {
            if key.is_empty() || key.len() > 255 {
                return Err(ApiError::BadRequest(
                    "Idempotency-Key must be 1 to 255 characters".into(),
                ));
            }
        }
        Ok(Self {
            request_id: text("x-request-id"),
            idempotency_key,
            if_match,
            commit_log: None,
        })
    }

    /// The metadata of the events that this request's command appends.
    pub fn context(&self, actor: &Actor) -> CommandContext {
        let correlation_id = self
            .request_id
            .clone()
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        CommandContext {
            actor: actor.to_string(),
            correlation_id,
            causation_id: None,
            request_id: self.request_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            commit_log: self.commit_log.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut meta = Self::from_headers(&parts.headers)?;
        meta.commit_log = parts.extensions.get::<CommitLog>().cloned();
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: u8,
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let error = parse_json::<Body>(b"{\"name\": ").unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn wrong_types_name_the_field() {
        match parse_json::<Body>(br#"{"name": "x", "count": "many"}"#).unwrap_err() {
            ApiError::Validation(errors) => assert_eq!(errors[0].field, "count"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let error = parse_json::<Value>(deep.as_bytes()).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let nested = "[".repeat(100) + &"]".repeat(100);
        let error = parse_json::<Value>(nested.as_bytes()).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn nul_characters_are_refused() {
        let error = parse_json::<Value>(br#"{"a": {"b": ["x\u0000"]}}"#).unwrap_err();
        match error {
            ApiError::Validation(errors) => assert_eq!(errors[0].field, "a.b[0]"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
