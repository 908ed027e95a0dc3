//! What every provider shares: the request, the answer, why there is none, the token sink,
//! and the HTTP client that retries 429 and 5xx answers with backoff honouring
//! `Retry-After` (only before the answer's body is read: once a token has been passed on, a
//! retry would repeat it).

use std::time::Duration;

use async_trait::async_trait;
use chronicle_commands::llm_chat::ChatMessage;
use chronicle_projections::backoff::Backoff;
use reqwest::header::HeaderMap;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

use crate::config::LlmSettings;
use crate::process::builtin_agent::Failure;

/// The `error.code`s an `llm.chat` task fails with.
pub mod codes {
    /// The input is not a valid `llm.chat` input (permanent).
    pub const INVALID_INPUT: &str = "invalid_input";
    /// The input names a provider this node is not configured with (permanent).
    pub const PROVIDER_MISMATCH: &str = "provider_mismatch";
    /// `use_context` was asked, and this node has no context source (permanent).
    pub const CONTEXT_UNAVAILABLE: &str = "context_unavailable";
    /// The provider kept answering 429 through every retry (retried per the task).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The provider kept answering 5xx through every retry (retried per the task).
    pub const PROVIDER_UNAVAILABLE: &str = "provider_unavailable";
    /// Another 4xx: a bad key, an unknown model, a request refused (permanent).
    pub const PROVIDER_REJECTED: &str = "provider_rejected";
    /// The provider reported an error inside its stream (retried per the task).
    pub const PROVIDER_ERROR: &str = "provider_error";
    /// A chunk that is not the provider's wire format (permanent).
    pub const MALFORMED_RESPONSE: &str = "malformed_response";
    /// The stream ended before the provider said it was done (retried per the task).
    pub const INCOMPLETE_RESPONSE: &str = "incomplete_response";
    /// No complete answer within `CHRONICLE_LLM__TIMEOUT_MS` (retried per the task).
    pub const TIMEOUT: &str = "timeout";
    /// The provider could not be reached (retried per the task).
    pub const CONNECT_FAILED: &str = "connect_failed";
    /// The exchange broke off in another way (retried per the task).
    pub const REQUEST_FAILED: &str = "request_failed";
    /// The node stopped before the answer ended (retried per the task).
    pub const AGENT_SHUTDOWN: &str = "agent_shutdown";
}

/// One request to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f64>,
    pub max_tokens: u32,
}

/// Tokens as the provider counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    pub content: String,
    pub usage: Usage,
}

/// Why a request produced no answer; `permanent` when another attempt cannot help.
pub type LlmFailure = Failure;

impl Failure {
    pub fn malformed(what: impl std::fmt::Display) -> Self {
        Self::permanent(
            codes::MALFORMED_RESPONSE,
            format!("the provider sent a chunk that is not its wire format: {what}"),
        )
    }

    pub fn incomplete() -> Self {
        Self::retryable(
            codes::INCOMPLETE_RESPONSE,
            "the provider's stream ended before the answer was complete",
        )
    }
}

/// Where streamed text goes as it arrives.
pub trait TokenSink: Send + Sync {
    fn token(&self, text: &str);
}

/// A chat model behind an HTTP API, streaming its answer.
#[async_trait]
pub trait ChatProvider: Send + Sync {
    /// `openai`, `anthropic` or `ollama`.
    fn name(&self) -> &'static str;

    /// The model asked when a request names none.
    fn default_model(&self) -> &str;

    /// Streams the answer to `request`, each piece of text to `sink` as it comes.
    async fn chat(
        &self,
        request: &ChatRequest,
        sink: &dyn TokenSink,
    ) -> Result<ChatAnswer, LlmFailure>;
}

/// The HTTP client every provider uses: timeouts, and retries of 429 and 5xx.
pub struct Transport {
    client: Client,
    timeout: Duration,
    max_retries: u32,
    backoff: Backoff,
}

impl Transport {
    pub fn new(settings: &LlmSettings) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .user_agent(concat!("chronicle/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            timeout: Duration::from_millis(settings.timeout_ms),
            max_retries: settings.max_retries,
            backoff: Backoff {
                initial: Duration::from_millis(settings.initial_backoff_ms),
                max: Duration::from_millis(settings.max_backoff_ms),
            },
        })
    }

    /// The limit of a whole exchange.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` as JSON to `url` until an answer is not 429 or 5xx or the retries are
    /// spent; a success status's response, its body unread.
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: &Value,
    ) -> Result<Response, LlmFailure> {
        let mut retry = 0;
        loop {
            let sent = self
                .client
                .post(url)
                .timeout(self.timeout)
                .headers(headers.clone())
                .json(body)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(error) => return Err(transport_failure(&error, self.timeout)),
            };
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let again = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if again && retry < self.max_retries {
                let delay = self
                    .backoff
                    .delay(retry, response.headers(), crate::process::jitter());
                tracing::info!(
                    status = status.as_u16(),
                    retry = retry + 1,
                    delay_ms = delay.as_millis() as u64,
                    "the LLM provider asked to wait; retrying"
                );
                // The body is dropped: the connection is not reused for a half-read answer.
                drop(response);
                tokio::time::sleep(delay).await;
                retry += 1;
                continue;
            }
            return Err(status_failure(status, response, retry).await);
        }
    }
}

/// The failure of a final non-success answer, with what the provider said (a short piece).
async fn status_failure(status: StatusCode, response: Response, retries: u32) -> LlmFailure {
    const SHOWN: usize = 500;
    let text = response.text().await.unwrap_or_default();
    let said: String = text.chars().take(SHOWN).collect();
    let details = json!({"status": status.as_u16(), "body": said, "retries": retries});
    let failure = if status == StatusCode::TOO_MANY_REQUESTS {
        LlmFailure::retryable(
            codes::RATE_LIMITED,
            format!("the provider kept answering 429 after {retries} retries"),
        )
    } else if status.is_server_error() {
        LlmFailure::retryable(
            codes::PROVIDER_UNAVAILABLE,
            format!(
                "the provider answered {} after {retries} retries",
                status.as_u16()
            ),
        )
    } else {
        LlmFailure::permanent(
            codes::PROVIDER_REJECTED,
            format!("the provider refused the request with {}", status.as_u16()),
        )
    };
    failure.with_details(details)
}

/// `error` and its causes, `": "`-separated (never a header: reqwest errors name only the
/// URL, which is operator configuration).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        current = cause.source();
    }
    text
}

/// A reqwest error, sending or while the body streams.
pub fn transport_failure(error: &reqwest::Error, timeout: Duration) -> LlmFailure {
    let details = json!({"cause": chain(error)});
    if error.is_timeout() {
        return LlmFailure::retryable(
            codes::TIMEOUT,
            format!("no complete answer within {} ms", timeout.as_millis()),
        )
        .with_details(details);
    }
    if error.is_connect() {
        return LlmFailure::retryable(codes::CONNECT_FAILED, "could not reach the provider")
            .with_details(details);
    }
    LlmFailure::retryable(
        codes::REQUEST_FAILED,
        "the exchange with the provider broke off",
    )
    .with_details(details)
}

/// `base` (trailing `/` ignored) with `path` appended, unless `base` already ends with
/// `path`'s first segment (`https://host/v1` + `/v1/messages`).
pub fn endpoint(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    match base.rsplit_once('/') {
        Some((root, last)) if last == first && !first.is_empty() && root.contains("//") => {
            format!("{root}{path}")
        }
        _ => format!("{base}{path}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_join_without_doubling_the_version() {
        assert_eq!(
            endpoint("https://api.openai.com", "/v1/chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            endpoint("https://api.openai.com/v1/", "/v1/chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:11434", "/api/chat"),
            "http://127.0.0.1:11434/api/chat"
        );
        assert_eq!(
            endpoint("http://proxy/llm", "/v1/messages"),
            "http://proxy/llm/v1/messages"
        );
    }

    #[test]
    fn the_backoff_comes_from_the_settings() {
        let settings = LlmSettings {
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            ..LlmSettings::default()
        };
        let transport = Transport::new(&settings).unwrap();
        assert_eq!(transport.backoff.initial, Duration::from_millis(100));
        assert_eq!(transport.backoff.max, Duration::from_millis(1_000));
    }
}
