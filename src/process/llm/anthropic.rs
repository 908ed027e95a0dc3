//! Anthropic messages (`POST /v1/messages`, `stream: true`, `x-api-key`,
//! `anthropic-version`): server-sent events `message_start` (input tokens),
//! `content_block_delta` (`text_delta` text), `message_delta` (output tokens so far),
//! `message_stop`; `ping` and the block start/stop events carry nothing we need; `error`
//! ends the stream with the provider's error. System messages go in the top-level
//! `system` field, joined by blank lines.

use async_trait::async_trait;
use chronicle_commands::llm_chat::Role;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::provider::{
    codes, endpoint, ChatAnswer, ChatProvider, ChatRequest, LlmFailure, TokenSink, Transport, Usage,
};
use super::sse_failure;

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_MODEL: &str = "claude-3-5-haiku-latest";
/// The API version this client speaks.
pub const API_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    pub transport: Transport,
    pub base_url: String,
    pub api_key: Option<SecretString>,
    pub model: String,
}

#[async_trait]
impl ChatProvider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn default_model(&self) -> &str {
        &self.model
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        sink: &dyn TokenSink,
    ) -> Result<ChatAnswer, LlmFailure> {
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let messages: Vec<Value> = request
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "stream": true,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(key.expose_secret()).map_err(|_| {
                LlmFailure::permanent(
                    codes::PROVIDER_REJECTED,
                    "CHRONICLE_LLM__API_KEY is not a valid header value",
                )
            })?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        let url = endpoint(&self.base_url, "/v1/messages");
        let response = self.transport.post(&url, headers, &body).await?;
        let mut events = response.bytes_stream().eventsource();
        let mut answer = Answer::default();
        while let Some(event) = events.next().await {
            let event = event.map_err(|error| sse_failure(error, &self.transport))?;
            if answer.take(&event.event, &event.data, sink)? {
                return Ok(answer.finish());
            }
        }
        Err(LlmFailure::incomplete())
    }
}

#[derive(Default)]
struct Answer {
    content: String,
    usage: Usage,
}

impl Answer {
    /// Takes one event; `true` at `message_stop`. The type is the data's `type` (the
    /// `event:` line says the same, and some proxies drop it).
    fn take(&mut self, event: &str, data: &str, sink: &dyn TokenSink) -> Result<bool, LlmFailure> {
        if data.trim().is_empty() && event == "ping" {
            return Ok(false);
        }
        let value: Value = serde_json::from_str(data).map_err(LlmFailure::malformed)?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| LlmFailure::malformed("an event without `type`"))?;
        let count = |usage: Option<&Value>, field: &str| {
            usage.and_then(|u| u.get(field)).and_then(Value::as_u64)
        };
        match kind {
            "message_start" => {
                let usage = value.pointer("/message/usage");
                self.usage.input_tokens = count(usage, "input_tokens").unwrap_or(0);
                self.usage.output_tokens = count(usage, "output_tokens").unwrap_or(0);
            }
            "content_block_delta" => {
                let delta = value.get("delta").ok_or_else(|| {
                    LlmFailure::malformed("a content_block_delta without `delta`")
                })?;
                if delta.get("type").and_then(Value::as_str) == Some("text_delta") {
                    let text = delta
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| LlmFailure::malformed("a text_delta without `text`"))?;
                    if !text.is_empty() {
                        self.content.push_str(text);
                        sink.token(text);
                    }
                }
            }
            "message_delta" => {
                // Cumulative: the last one counts.
                if let Some(output) = count(value.get("usage"), "output_tokens") {
                    self.usage.output_tokens = output;
                }
                if let Some(input) = count(value.get("usage"), "input_tokens") {
                    self.usage.input_tokens = input;
                }
            }
            "message_stop" => return Ok(true),
            "error" => {
                let message = value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error");
                return Err(LlmFailure::retryable(codes::PROVIDER_ERROR, message)
                    .with_details(json!({"error": value.get("error")})));
            }
            _ => {}
        }
        Ok(false)
    }

    fn finish(self) -> ChatAnswer {
        ChatAnswer {
            content: self.content,
            usage: self.usage,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::process::llm::tests::Collected;

    #[test]
    fn events_build_the_answer_and_usage() {
        let sink = Collected::default();
        let mut answer = Answer::default();
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":25,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            ),
        ];
        for (event, data) in events {
            assert!(!answer.take(event, data, &sink).unwrap());
        }
        assert!(answer
            .take("message_stop", r#"{"type":"message_stop"}"#, &sink)
            .unwrap());
        let answer = answer.finish();
        assert_eq!(answer.content, "Hi there");
        assert_eq!(
            answer.usage,
            Usage {
                input_tokens: 25,
                output_tokens: 15
            }
        );
        assert_eq!(sink.tokens(), ["Hi", " there"]);
    }

    #[test]
    fn an_error_event_and_a_malformed_one_fail() {
        let sink = Collected::default();
        let failure = Answer::default()
            .take(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                &sink,
            )
            .unwrap_err();
        assert_eq!(failure.code, codes::PROVIDER_ERROR);
        assert_eq!(failure.message, "Overloaded");
        let failure = Answer::default()
            .take("content_block_delta", "{\"type\":", &sink)
            .unwrap_err();
        assert_eq!(failure.code, codes::MALFORMED_RESPONSE);
    }
}
