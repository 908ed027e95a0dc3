//! The input of an `http.request` task: checked when the task is created (a bad one is a
//! 422 naming the field) and parsed again by the agent that runs it.
//!
//! `{method?: "GET", url, headers?: {name: value}, body?: string | JSON, timeout_ms?}`.
//! Whether the URL's address may be reached is not decided here: that depends on the
//! node's configuration and on DNS at the time of the request (the HTTP agent's guard).

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use url::Url;

use crate::ValidationErrors;

/// The capability the built-in HTTP agent serves.
pub const CAPABILITY: &str = "http.request";

/// The methods a task may use: the standard ones, nothing that tunnels (`CONNECT`) or
/// echoes (`TRACE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl HttpMethod {
    const ALL: [Self; 7] = [
        Self::Get,
        Self::Head,
        Self::Post,
        Self::Put,
        Self::Patch,
        Self::Delete,
        Self::Options,
    ];

    /// Case-insensitive: `get` is `GET`.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        Self::ALL
            .into_iter()
            .find(|method| method.as_str().eq_ignore_ascii_case(raw))
            .ok_or("must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
        }
    }
}

/// What is sent as the request body: a string as it is, any other JSON serialised (with
/// `Content-Type: application/json` unless the task sets one).
#[derive(Debug, Clone, PartialEq)]
pub enum HttpBody {
    Text(String),
    Json(Value),
}

/// A valid `http.request` input.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequestInput {
    pub method: HttpMethod,
    /// `http` or `https`, with a host.
    pub url: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<HttpBody>,
    /// The task's own limit; the agent caps it by its configured maximum.
    pub timeout_ms: Option<u64>,
}

impl HttpRequestInput {
    pub const MAX_URL_LEN: usize = 8_192;
    pub const MAX_HEADERS: usize = 100;
    /// One hour: a longer request is better split, and the agent caps it lower anyway.
    pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

    /// Headers the agent's HTTP client owns: a task setting them could smuggle a second
    /// request or misdirect a virtual host.
    const MANAGED_HEADERS: [&'static str; 9] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
    ];

    /// Parses a task's `input`, naming every bad field as `input.<field>`.
    pub fn parse(input: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let Value::Object(fields) = input else {
            return Err(ValidationErrors::single(
                "input",
                "must be an object with at least `url`",
            ));
        };
        for key in fields.keys() {
            if !matches!(
                key.as_str(),
                "method" | "url" | "headers" | "body" | "timeout_ms"
            ) {
                errors.push(format!("input.{key}"), "is not a field of http.request");
            }
        }
        let method = match fields.get("method") {
            None | Some(Value::Null) => Some(HttpMethod::Get),
            Some(Value::String(raw)) => errors.check("input.method", HttpMethod::parse(raw)),
            Some(_) => {
                errors.push("input.method", "must be a string");
                None
            }
        };
        let url = match fields.get("url") {
            None | Some(Value::Null) => {
                errors.push("input.url", "is required");
                None
            }
            Some(Value::String(raw)) => errors.check("input.url", parse_url(raw)),
            Some(_) => {
                errors.push("input.url", "must be a string");
                None
            }
        };
        let headers = match fields.get("headers") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Object(raw)) => parse_headers(raw, &mut errors),
            Some(_) => {
                errors.push("input.headers", "must be an object of name: value strings");
                None
            }
        };
        let body = match fields.get("body") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(HttpBody::Text(text.clone())),
            Some(json) => Some(HttpBody::Json(json.clone())),
        };
        let timeout_ms = match fields.get("timeout_ms") {
            None | Some(Value::Null) => Some(None),
            Some(raw) => errors
                .check(
                    "input.timeout_ms",
                    raw.as_u64()
                        .filter(|ms| (1..=Self::MAX_TIMEOUT_MS).contains(ms))
                        .ok_or("must be an integer from 1 to 3600000 milliseconds"),
                )
                .map(Some),
        };
        match (method, url, headers, timeout_ms) {
            (Some(method), Some(url), Some(headers), Some(timeout_ms)) if errors.is_empty() => {
                Ok(Self {
                    method,
                    url,
                    headers,
                    body,
                    timeout_ms,
                })
            }
            _ => Err(errors),
        }
    }
}

fn parse_url(raw: &str) -> Result<Url, String> {
    if raw.len() > HttpRequestInput::MAX_URL_LEN {
        return Err("must be at most 8192 characters".into());
    }
    let url = Url::parse(raw).map_err(|e| format!("is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if url.host().is_none() {
        return Err("must name a host".into());
    }
    Ok(url)
}

fn parse_headers(
    raw: &Map<String, Value>,
    errors: &mut ValidationErrors,
) -> Option<Vec<(HeaderName, HeaderValue)>> {
    if raw.len() > HttpRequestInput::MAX_HEADERS {
        errors.push("input.headers", "at most 100 headers");
        return None;
    }
    let mut headers = Vec::with_capacity(raw.len());
    let mut valid = true;
    for (name, value) in raw {
        let field = format!("input.headers.{name}");
        let parsed_name = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(parsed) if HttpRequestInput::MANAGED_HEADERS.contains(&parsed.as_str()) => {
                errors.push(&field, "is set by the HTTP client and may not be given");
                None
            }
            Ok(parsed) => Some(parsed),
            Err(_) => {
                errors.push(&field, "is not a valid header name");
                None
            }
        };
        let parsed_value = match value {
            Value::String(text) => match HeaderValue::from_str(text) {
                Ok(parsed) => Some(parsed),
                Err(_) => {
                    errors.push(&field, "must not contain control characters or non-ASCII");
                    None
                }
            },
            _ => {
                errors.push(&field, "must be a string");
                None
            }
        };
        match (parsed_name, parsed_value) {
            (Some(name), Some(value)) => headers.push((name, value)),
            _ => valid = false,
        }
    }
    valid.then_some(headers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn fields(errors: &ValidationErrors) -> Vec<&str> {
        errors.0.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_full_input_parses() {
        let input = HttpRequestInput::parse(&json!({
            "method": "post",
            "url": "https://example.com/a?b=c",
            "headers": {"X-Trace": "1", "content-type": "text/plain"},
            "body": "hello",
            "timeout_ms": 2500,
        }))
        .unwrap();
        assert_eq!(input.method, HttpMethod::Post);
        assert_eq!(input.url.as_str(), "https://example.com/a?b=c");
        assert_eq!(input.headers.len(), 2);
        assert_eq!(input.headers[0].0.as_str(), "x-trace");
        assert_eq!(input.body, Some(HttpBody::Text("hello".into())));
        assert_eq!(input.timeout_ms, Some(2500));
    }

    #[test]
    fn defaults_are_get_without_body() {
        let input = HttpRequestInput::parse(&json!({"url": "http://example.com"})).unwrap();
        assert_eq!(input.method, HttpMethod::Get);
        assert!(input.headers.is_empty());
        assert_eq!(input.body, None);
        assert_eq!(input.timeout_ms, None);
    }

    #[test]
    fn a_json_body_is_kept_as_json() {
        let input =
            HttpRequestInput::parse(&json!({"url": "http://example.com", "body": {"a": [1]}}))
                .unwrap();
        assert_eq!(input.body, Some(HttpBody::Json(json!({"a": [1]}))));
    }

    #[rstest]
    #[case::not_an_object(json!("http://example.com"), &["input"])]
    #[case::no_url(json!({}), &["input.url"])]
    #[case::url_not_a_string(json!({"url": 7}), &["input.url"])]
    #[case::not_a_url(json!({"url": "example.com/x"}), &["input.url"])]
    #[case::ftp(json!({"url": "ftp://example.com/x"}), &["input.url"])]
    #[case::file(json!({"url": "file:///etc/passwd"}), &["input.url"])]
    #[case::unknown_method(json!({"url": "http://a.example", "method": "BREW"}), &["input.method"])]
    #[case::connect(json!({"url": "http://a.example", "method": "CONNECT"}), &["input.method"])]
    #[case::bad_header_name(json!({"url": "http://a.example", "headers": {"a b": "x"}}), &["input.headers.a b"])]
    #[case::header_injection(json!({"url": "http://a.example", "headers": {"x": "a\r\nb: c"}}), &["input.headers.x"])]
    #[case::managed_header(json!({"url": "http://a.example", "headers": {"Host": "internal"}}), &["input.headers.Host"])]
    #[case::header_not_a_string(json!({"url": "http://a.example", "headers": {"x": 1}}), &["input.headers.x"])]
    #[case::headers_not_an_object(json!({"url": "http://a.example", "headers": ["x"]}), &["input.headers"])]
    #[case::timeout_zero(json!({"url": "http://a.example", "timeout_ms": 0}), &["input.timeout_ms"])]
    #[case::timeout_too_long(json!({"url": "http://a.example", "timeout_ms": 3_600_001}), &["input.timeout_ms"])]
    #[case::unknown_field(json!({"url": "http://a.example", "verb": "GET"}), &["input.verb"])]
    #[case::all_at_once(json!({"method": 1, "timeout_ms": "x"}), &["input.method", "input.url", "input.timeout_ms"])]
    fn bad_inputs_name_the_field(#[case] input: Value, #[case] expected: &[&str]) {
        let errors = HttpRequestInput::parse(&input).unwrap_err();
        assert_eq!(fields(&errors), expected, "{errors:?}");
    }

    #[test]
    fn an_overlong_url_is_refused() {
        let url = format!("http://example.com/{}", "a".repeat(8_192));
        let errors = HttpRequestInput::parse(&json!({ "url": url })).unwrap_err();
        assert_eq!(fields(&errors), ["input.url"]);
    }
}
