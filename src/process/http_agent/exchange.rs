//! One HTTP exchange for an `http.request` task: the request the input describes, through
//! the guarded client, and the response as the task's output — or why there is none.
//!
//! Output: `{status, url, headers: {name: value}, body}` where `body` is the response text
//! when it is UTF-8, else `body_base64` replaces it; `url` is the final URL after
//! redirects and repeated headers are joined with `", "`. Any status is a success: the
//! exchange happened, and a workflow branches on `output.status`. A body over the size
//! cap is a failure (`response_too_large`), never a truncated output.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chronicle_commands::http_request::{HttpBody, HttpMethod, HttpRequestInput};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Method, Response, Url};
use serde_json::{json, Map, Value};

use super::guard::{
    redirect_policy, AddressPolicy, Blocked, BlockedRedirect, GuardedResolver, RedirectRefused,
};
use crate::config::{ConfigError, HttpAgentSettings};
use crate::process::builtin_agent::Failure;

/// The `error.code`s an `http.request` task fails with.
pub mod codes {
    /// The input is not a valid `http.request` input (permanent).
    pub const INVALID_INPUT: &str = "invalid_input";
    /// The URL, a name it resolves to, or a redirect leads to a refused address
    /// (permanent).
    pub const SSRF_BLOCKED: &str = "ssrf_blocked";
    /// The response body is over `max_response_bytes` (permanent).
    pub const RESPONSE_TOO_LARGE: &str = "response_too_large";
    /// A redirect to another scheme, or too many (permanent).
    pub const REDIRECT_REFUSED: &str = "redirect_refused";
    /// No complete response within the timeout (retried).
    pub const TIMEOUT: &str = "timeout";
    /// The name did not resolve or the connection failed (retried).
    pub const CONNECT_FAILED: &str = "connect_failed";
    /// The exchange broke off in another way (retried).
    pub const REQUEST_FAILED: &str = "request_failed";
    /// The node stopped before the exchange ended (retried).
    pub const AGENT_SHUTDOWN: &str = "agent_shutdown";
}

/// Why an exchange produced no output; `permanent` when another attempt cannot help.
pub type HttpFailure = Failure;

fn permanent(code: &'static str, message: String, details: Value) -> HttpFailure {
    Failure::permanent(code, message).with_details(details)
}

fn retryable(code: &'static str, message: String, details: Value) -> HttpFailure {
    Failure::retryable(code, message).with_details(details)
}

/// Runs exchanges with one guarded client (its connection pool is shared).
pub struct Exchanger {
    client: Client,
    policy: Arc<AddressPolicy>,
    default_timeout: Duration,
    max_timeout: Duration,
    max_response_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Exchanger {
    pub fn new(settings: &HttpAgentSettings) -> Result<Self, ExchangerError> {
        let policy = Arc::new(AddressPolicy {
            allow_private: settings.allow_private,
            allowed_networks: settings.allowed_networks()?,
        });
        let client = Client::builder()
            // A proxy would resolve names where the guard cannot see them.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .redirect(redirect_policy(policy.clone(), settings.max_redirects))
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            // The next hop need not learn where the task came from.
            .referer(false)
            .user_agent(concat!("chronicle/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            policy,
            default_timeout: Duration::from_millis(settings.default_timeout_ms),
            max_timeout: Duration::from_millis(settings.max_timeout_ms),
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// Runs the exchange a task's `input` describes.
    pub async fn run(&self, input: &Value) -> Result<Value, HttpFailure> {
        let input = HttpRequestInput::parse(input).map_err(|errors| {
            permanent(
                codes::INVALID_INPUT,
                "the input is not a valid http.request input".into(),
                json!({ "errors": errors.0 }),
            )
        })?;
        if let Err(blocked) = self.policy.check_url(&input.url) {
            return Err(blocked_failure(&blocked, &input.url, &input.url));
        }
        let timeout = input
            .timeout_ms
            .map_or(self.default_timeout, Duration::from_millis)
            .min(self.max_timeout);
        let response = self
            .request(&input, timeout)
            .send()
            .await
            .map_err(|error| transport_failure(&error, &input.url, timeout))?;
        self.output(response, &input.url, timeout).await
    }

    fn request(&self, input: &HttpRequestInput, timeout: Duration) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .request(method(input.method), input.url.clone())
            .timeout(timeout);
        for (name, value) in &input.headers {
            request = request.header(name, value);
        }
        match &input.body {
            None => {}
            Some(HttpBody::Text(text)) => request = request.body(text.clone()),
            Some(HttpBody::Json(value)) => {
                let typed = input.headers.iter().any(|(name, _)| name == CONTENT_TYPE);
                if !typed {
                    request = request.header(CONTENT_TYPE, "application/json");
                }
                request = request.body(value.to_string());
            }
        }
        request
    }

    /// Reads the body up to the cap and shapes the output.
    async fn output(
        &self,
        mut response: Response,
        requested: &Url,
        timeout: Duration,
    ) -> Result<Value, HttpFailure> {
        let too_large = |length: Option<u64>| {
            permanent(
                codes::RESPONSE_TOO_LARGE,
                format!(
                    "the response body is over the limit of {} bytes",
                    self.max_response_bytes
                ),
                json!({
                    "url": requested.as_str(),
                    "max_response_bytes": self.max_response_bytes,
                    "content_length": length,
                }),
            )
        };
        if let Some(length) = response
            .content_length()
            .filter(|length| *length > self.max_response_bytes)
        {
            return Err(too_large(Some(length)));
        }
        let status = response.status().as_u16();
        let url = response.url().to_string();
        let headers = headers_json(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| transport_failure(&error, requested, timeout))?
        {
            let length = (body.len() + chunk.len()) as u64;
            if length > self.max_response_bytes {
                // Dropping the response closes the connection: nothing more is read.
                return Err(too_large(None));
            }
            body.extend_from_slice(&chunk);
        }
        let mut output = json!({ "status": status, "url": url, "headers": headers });
        match String::from_utf8(body) {
            Ok(text) => output["body"] = Value::String(text),
            Err(binary) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(binary.as_bytes());
                output["body_base64"] = Value::String(encoded);
            }
        }
        Ok(output)
    }
}

fn method(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
    }
}

/// Response headers as `{name: value}`, repeated ones joined with `", "`.
fn headers_json(headers: &reqwest::header::HeaderMap) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    Value::Object(map)
}

/// `refused` is the URL that led to the address: the task's own or a redirect's.
fn blocked_failure(blocked: &Blocked, requested: &Url, refused: &Url) -> HttpFailure {
    permanent(
        codes::SSRF_BLOCKED,
        blocked.to_string(),
        json!({
            "url": requested.as_str(),
            "refused_url": refused.as_str(),
            "address": blocked.address.to_string(),
            "kind": blocked.kind.as_str(),
        }),
    )
}

/// The first error of type `T` in `error`'s source chain.
fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// `error` and its causes, `": "`-separated.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        current = cause.source();
    }
    text
}

fn transport_failure(error: &reqwest::Error, url: &Url, timeout: Duration) -> HttpFailure {
    if let Some(redirect) = find::<BlockedRedirect>(error) {
        return blocked_failure(&redirect.blocked, url, &redirect.to);
    }
    // Refused by the resolver: the URL being fetched then, the task's or a redirect's.
    if let Some(blocked) = find::<Blocked>(error) {
        return blocked_failure(blocked, url, error.url().unwrap_or(url));
    }
    let details = json!({ "url": url.as_str(), "cause": chain(error) });
    if let Some(refused) = find::<RedirectRefused>(error) {
        return permanent(codes::REDIRECT_REFUSED, refused.to_string(), details);
    }
    if error.is_timeout() {
        let message = format!("no complete response within {} ms", timeout.as_millis());
        return retryable(codes::TIMEOUT, message, details);
    }
    if error.is_connect() {
        let host = url.host_str().unwrap_or_default();
        let message = format!("could not connect to {host}");
        return retryable(codes::CONNECT_FAILED, message, details);
    }
    retryable(
        codes::REQUEST_FAILED,
        "the exchange broke off".into(),
        details,
    )
}
