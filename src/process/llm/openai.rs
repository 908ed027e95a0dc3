//! OpenAI-compatible chat completions (`POST /v1/chat/completions`, `stream: true`): server-
//! sent events whose `data:` is a chunk `{choices: [{delta: {content}}], usage}`, ended by
//! `data: [DONE]`. `stream_options.include_usage` asks for a last chunk with `usage`
//! (`prompt_tokens`, `completion_tokens`); servers that ignore it report no tokens.

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::provider::{
    codes, endpoint, ChatAnswer, ChatProvider, ChatRequest, LlmFailure, TokenSink, Transport, Usage,
};
use super::sse_failure;

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com";
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

pub struct OpenAi {
    pub transport: Transport,
    pub base_url: String,
    pub api_key: Option<SecretString>,
    pub model: String,
}

#[async_trait]
impl ChatProvider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn default_model(&self) -> &str {
        &self.model
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        sink: &dyn TokenSink,
    ) -> Result<ChatAnswer, LlmFailure> {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": request.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": request.max_tokens,
        });
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
                .map_err(|_| {
                    LlmFailure::permanent(
                        codes::PROVIDER_REJECTED,
                        "CHRONICLE_LLM__API_KEY is not a valid header value",
                    )
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let url = endpoint(&self.base_url, "/v1/chat/completions");
        let response = self.transport.post(&url, headers, &body).await?;
        let mut events = response.bytes_stream().eventsource();
        let mut answer = Answer::default();
        while let Some(event) = events.next().await {
            let event = event.map_err(|error| sse_failure(error, &self.transport))?;
            if answer.take(&event.data, sink)? {
                return Ok(answer.finish());
            }
        }
        Err(LlmFailure::incomplete())
    }
}

/// The answer as its chunks build it.
#[derive(Default)]
struct Answer {
    content: String,
    usage: Usage,
}

impl Answer {
    /// Takes one event's data; `true` at `[DONE]`.
    fn take(&mut self, data: &str, sink: &dyn TokenSink) -> Result<bool, LlmFailure> {
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        let chunk: Value = serde_json::from_str(data).map_err(LlmFailure::malformed)?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the provider reported an error");
            return Err(LlmFailure::retryable(codes::PROVIDER_ERROR, message)
                .with_details(json!({"error": error})));
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return Err(LlmFailure::malformed("a chunk without `choices`"));
        };
        for choice in choices {
            if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str) {
                if !text.is_empty() {
                    self.content.push_str(text);
                    sink.token(text);
                }
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Usage {
                input_tokens: count("prompt_tokens"),
                output_tokens: count("completion_tokens"),
            };
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
    fn chunks_build_the_answer_and_usage() {
        let sink = Collected::default();
        let mut answer = Answer::default();
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
        ];
        for chunk in chunks {
            assert!(!answer.take(chunk, &sink).unwrap());
        }
        assert!(answer.take("[DONE]", &sink).unwrap());
        let answer = answer.finish();
        assert_eq!(answer.content, "Hello");
        assert_eq!(
            answer.usage,
            Usage {
                input_tokens: 9,
                output_tokens: 2
            }
        );
        assert_eq!(sink.tokens(), ["Hel", "lo"]);
    }

    #[test]
    fn a_malformed_chunk_is_a_permanent_failure() {
        let sink = Collected::default();
        let failure = Answer::default().take("{not json", &sink).unwrap_err();
        assert_eq!(failure.code, codes::MALFORMED_RESPONSE);
        assert!(failure.permanent);
        let failure = Answer::default().take(r#"{"id":"x"}"#, &sink).unwrap_err();
        assert_eq!(failure.code, codes::MALFORMED_RESPONSE);
    }
}
