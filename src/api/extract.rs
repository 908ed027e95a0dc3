//! Extractors that answer bad input in our problem+json format: the JSON (or YAML) body, UUID path
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
        if body_format(request.headers()) != Some(BodyFormat::Json) {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_body(&body_bytes(request, state).await?).map(ApiJson)
    }
}

/// A body in JSON or YAML (`application/yaml`, `application/x-yaml`, `text/yaml`): YAML is
/// read into the JSON it stands for, then held to the same rules as [`ApiJson`] (the same
/// 422 field paths); malformed YAML → 400, any other type → 415.
pub struct ApiJsonOrYaml<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJsonOrYaml<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let format = body_format(request.headers()).ok_or(ApiError::UnsupportedMediaType)?;
        let bytes = body_bytes(request, state).await?;
        match format {
            BodyFormat::Json => parse_body(&bytes).map(ApiJsonOrYaml),
            BodyFormat::Yaml => {
                let JsonLike(value) = serde_yaml::from_slice(&bytes)
                    .map_err(|e| ApiError::BadRequest(format!("malformed YAML: {e}")))?;
                object_body(value).map(ApiJsonOrYaml)
            }
        }
    }
}

/// A YAML document read as the JSON value serde_json would make of the same text: an
/// integer beyond 64 bits becomes a float (serde_json's `Value` refuses 128-bit ones, and
/// the same number in a JSON body is read as a float), a non-finite float becomes `null`.
struct JsonLike(Value);

impl<'de> serde::Deserialize<'de> for JsonLike {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonLikeVisitor).map(JsonLike)
    }
}

struct JsonLikeVisitor;

impl<'de> serde::de::Visitor<'de> for JsonLikeVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a YAML value that JSON can hold")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| float(v as f64), Value::from))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(u64::try_from(v).map_or_else(|_| float(v as f64), Value::from))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonLike(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some((key, JsonLike(value))) = map.next_entry::<String, JsonLike>()? {
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Json,
    Yaml,
}

/// The body's format by its `Content-Type`; `None` for one we do not read.
fn body_format(headers: &HeaderMap) -> Option<BodyFormat> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())?
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Some(BodyFormat::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Some(BodyFormat::Yaml),
        _ if mime.ends_with("+json") => Some(BodyFormat::Json),
        _ => None,
    }
}

/// The whole body, within the body limit (413 beyond it).
async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection: BytesRejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("the request body could not be read".into())
            }
        })
}

/// Parses `bytes` as JSON into `T` with our error rules.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    from_json_value(value)
}

/// A request body: [`parse_json`], and an object (or `null`, where `T` takes it). Every
/// body of this API is an object; serde alone would also read a struct from an array of
/// its fields in order (`[null, null]`), which no document says.
pub(crate) fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    object_body(value)
}

/// An object (or `null`) as `T`; see [`parse_body`].
fn object_body<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !matches!(value, Value::Object(_) | Value::Null) {
        return Err(ApiError::validation("", "must be a JSON object"));
    }
    from_json_value(value)
}

/// An already parsed JSON value as `T`: the same limits as a request body, and a wrong
/// or missing field is a 422 naming it.
///
/// A whole number written as a float (`5.0`) is an integer, as JSON Schema says: when `T`
/// refuses the value as sent, it is tried once more with such numbers made integers (only
/// then, so free-form JSON such as a task's `input` keeps what the client wrote).
pub fn from_json_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    check_value(&value, 0, "")?;
    let refused = match serde_path_to_error::deserialize::<_, T>(&value) {
        Ok(done) => return Ok(done),
        Err(error) => error,
    };
    let mut integral = value;
    if make_whole_floats_integers(&mut integral) {
        if let Ok(done) = serde_path_to_error::deserialize::<_, T>(&integral) {
            return Ok(done);
        }
    }
    let path = refused.path().to_string();
    let message = for_clients(&refused.inner().to_string());
    let field = match path.as_str() {
        // serde names a missing field only in its message: "missing field `x`".
        "." => message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .unwrap_or_default()
            .to_owned(),
        _ => path,
    };
    Err(ApiError::validation(&field, message))
}

/// Turns every float with no fraction (within `i64`) into an integer; whether any was.
fn make_whole_floats_integers(value: &mut Value) -> bool {
    match value {
        Value::Number(number) if number.is_f64() => match number.as_f64() {
            // Bounds exclusive of 2^63 itself, which an i64 cannot hold.
            Some(float) if float.fract() == 0.0 && float.abs() < 9.223_372_036_854_776e18 => {
                // The check above makes the cast exact.
                #[allow(clippy::cast_possible_truncation)]
                let whole = float as i64;
                *value = Value::from(whole);
                true
            }
            _ => false,
        },
        // Every item is visited (no short cut at the first change).
        Value::Array(items) => {
            items
                .iter_mut()
                .map(make_whole_floats_integers)
                .filter(|changed| *changed)
                .count()
                > 0
        }
        Value::Object(map) => {
            map.values_mut()
                .map(make_whole_floats_integers)
                .filter(|changed| *changed)
                .count()
                > 0
        }
        _ => false,
    }
}

/// serde's message in a client's words: JSON types, not the Rust types behind them
/// ("expected struct HeartbeatRequest" → "expected an object", "expected i64" → "expected
/// an integer").
pub(crate) fn for_clients(message: &str) -> String {
    static RUST_TYPES: std::sync::LazyLock<[(regex::Regex, &'static str); 6]> =
        std::sync::LazyLock::new(|| {
            let rule =
                |pattern: &str, words| (regex::Regex::new(pattern).expect("static regex"), words);
            [
                rule(
                    r"expected (struct|map) `?\w+`?( with \d+ elements?)?|expected a map",
                    "expected an object",
                ),
                rule(
                    r"expected enum `?\w+`?",
                    "expected one of the documented values",
                ),
                rule(
                    r"expected [iu](8|16|32|64|128|size)\b",
                    "expected an integer in range",
                ),
                rule(r"expected f(32|64)\b", "expected a number"),
                rule(
                    r"expected (a sequence|tuple struct `?\w+`?|a tuple of size \d+)",
                    "expected an array",
                ),
                rule(r"(untagged )?enum `?\w+`?", "the documented shapes"),
            ]
        });
    RUST_TYPES
        .iter()
        .fold(message.to_owned(), |text, (pattern, words)| {
            pattern.replace_all(&text, *words).into_owned()
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
                ApiError::validation(&field, for_clients(&error.inner().to_string()))
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

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The rule for an `Idempotency-Key`, as the document's pattern says it.
pub(crate) const IDEMPOTENCY_KEY_RULE: &str =
    "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces)";
/// [`IDEMPOTENCY_KEY_RULE`] as a JSON Schema pattern.
pub(crate) const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";

pub(crate) fn idempotency_key_is_valid(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// An `If-Match` this server can have given, as a JSON Schema pattern: `"3"` (its `ETag`),
/// also weak (`W/"3"`) or bare (`3`).
pub(crate) const IF_MATCH_PATTERN: &str = r#"^(W/)?("[0-9]{1,19}"|[0-9]{1,19})$"#;

/// The version an `If-Match` of [`IF_MATCH_PATTERN`] names; `None` for anything else (a
/// malformed header is a 400, a version that is not the current one a 412).
pub(crate) fn parse_if_match(raw: &str) -> Option<usize> {
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    let digits = match raw.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => raw,
    };
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
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
            Some(value) => Some(
                parse_if_match(value.to_str().unwrap_or_default()).ok_or_else(|| {
                    ApiError::BadRequest(
                        "If-Match must be an ETag given by this server, e.g. \"3\"".into(),
                    )
                })?,
            ),
        };
        let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(value) => match value.to_str() {
                Ok(key) if idempotency_key_is_valid(key) => Some(key.to_owned()),
                _ => return Err(ApiError::BadRequest(IDEMPOTENCY_KEY_RULE.into())),
            },
        };
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
    fn yaml_numbers_beyond_64_bits_read_as_json_would() {
        let JsonLike(value) =
            serde_yaml::from_str("b: [9456146813668397416448, -9456146813668397416448, 7, .nan]")
                .unwrap();
        let json: Value = serde_json::from_str(
            r#"{"b": [9456146813668397416448, -9456146813668397416448, 7, null]}"#,
        )
        .unwrap();
        assert_eq!(value, json);
    }

    #[test]
    fn json_and_yaml_are_told_by_their_content_type() {
        let format = |mime: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, mime.parse().unwrap());
            body_format(&headers)
        };
        assert_eq!(format("application/json"), Some(BodyFormat::Json));
        assert_eq!(format("application/problem+json"), Some(BodyFormat::Json));
        for yaml in [
            "application/yaml",
            "Application/X-YAML",
            "text/yaml; charset=utf-8",
        ] {
            assert_eq!(format(yaml), Some(BodyFormat::Yaml), "{yaml}");
        }
        for other in ["text/plain", "application/xml", "yaml"] {
            assert_eq!(format(other), None, "{other}");
        }
        assert_eq!(body_format(&HeaderMap::new()), None);
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
    fn a_body_is_an_object_not_the_fields_in_a_row() {
        assert!(
            parse_json::<Body>(br#"["x", 1]"#).is_ok(),
            "serde's own reading"
        );
        match parse_body::<Body>(br#"["x", 1]"#).unwrap_err() {
            ApiError::Validation(errors) => assert_eq!(errors[0].message, "must be a JSON object"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_body::<Body>(br#"{"name": "x", "count": 1}"#).is_ok());
    }

    #[test]
    fn whole_floats_are_integers_where_integers_are_wanted() {
        let body = parse_json::<Body>(br#"{"name": "x", "count": 5.0}"#).unwrap();
        assert_eq!(body.count, 5);
        assert!(parse_json::<Body>(br#"{"name": "x", "count": 5.5}"#).is_err());
        // Free-form JSON keeps what the client wrote.
        let free = parse_json::<Value>(br#"{"count": 5.0}"#).unwrap();
        assert_eq!(free["count"].as_f64(), Some(5.0));
        assert!(free["count"].is_f64());
    }

    #[test]
    fn errors_name_json_types_not_rust_ones() {
        for body in [
            &b"null"[..],
            br#"{"name": "x", "count": "many"}"#,
            br#"[1]"#,
        ] {
            match parse_json::<Body>(body).unwrap_err() {
                ApiError::Validation(errors) => {
                    let message = &errors[0].message;
                    assert!(
                        !message.contains("struct") && !message.contains("u8"),
                        "{message}"
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            for_clients("invalid type: null, expected struct HeartbeatRequest"),
            "invalid type: null, expected an object"
        );
        assert_eq!(
            for_clients("invalid type: string \"x\", expected i64"),
            "invalid type: string \"x\", expected an integer in range"
        );
    }

    #[test]
    fn if_match_is_an_etag_or_a_bad_request() {
        assert_eq!(parse_if_match("\"3\""), Some(3));
        assert_eq!(parse_if_match("W/\"3\""), Some(3));
        assert_eq!(parse_if_match("3"), Some(3));
        for bad in [
            "",
            "null",
            "\"\"",
            "\"3",
            "\"\"3\"\"",
            "-1",
            "*",
            "99999999999999999999",
        ] {
            assert_eq!(parse_if_match(bad), None, "{bad}");
        }
        let regex = regex::Regex::new(IF_MATCH_PATTERN).unwrap();
        for good in ["\"3\"", "W/\"3\"", "3"] {
            assert!(regex.is_match(good), "{good}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, "null".parse().unwrap());
        let error = RequestMeta::from_headers(&headers).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn idempotency_keys_follow_the_documented_pattern() {
        let regex = regex::Regex::new(IDEMPOTENCY_KEY_PATTERN).unwrap();
        for key in [
            "a",
            "order-42",
            &"k".repeat(255),
            "",
            " ",
            "a b",
            &"k".repeat(256),
            "é",
        ] {
            assert_eq!(
                idempotency_key_is_valid(key),
                regex.is_match(key),
                "{key:?}"
            );
        }
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
