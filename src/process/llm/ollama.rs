//! Ollama chat (`POST /api/chat`, `stream: true`): newline-delimited JSON, each line
//! `{message: {role, content}, done: false}`, the last `{done: true, prompt_eval_count,
//! eval_count}` (input and output tokens); `{error}` reports a failure. No API key.

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::provider::{
    codes, endpoint, transport_failure, ChatAnswer, ChatProvider, ChatRequest, LlmFailure,
    TokenSink, Transport, Usage,
};

pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:11434";
pub const DEFAULT_MODEL: &str = "llama3.2";

/// One line of NDJSON at most this long: a chunk is a few tokens, so a longer line is not
/// Ollama's format (and must not grow the buffer without end).
const MAX_LINE: usize = 1024 * 1024;

pub struct Ollama {
    pub transport: Transport,
    pub base_url: String,
    pub model: String,
}

#[async_trait]
impl ChatProvider for Ollama {
    fn name(&self) -> &'static str {
        "ollama"
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
        let mut options = json!({"num_predict": request.max_tokens});
        if let Some(temperature) = request.temperature {
            options["temperature"] = json!(temperature);
        }
        let body = json!({
            "model": request.model,
            "messages": messages,
            "stream": true,
            "options": options,
        });
        let url = endpoint(&self.base_url, "/api/chat");
        let response = self.transport.post(&url, HeaderMap::new(), &body).await?;
        let mut bytes = response.bytes_stream();
        let mut lines = Lines::default();
        let mut answer = Answer::default();
        while let Some(chunk) = bytes.next().await {
            let chunk =
                chunk.map_err(|error| transport_failure(&error, self.transport.timeout()))?;
            for line in lines.push(&chunk)? {
                if answer.take(&line, sink)? {
                    return Ok(answer.finish());
                }
            }
        }
        // A last line without its newline.
        if let Some(line) = lines.rest() {
            if answer.take(&line, sink)? {
                return Ok(answer.finish());
            }
        }
        Err(LlmFailure::incomplete())
    }
}

/// Splits a byte stream into lines (`\n`, a `\r` before it dropped), whatever the chunks'
/// boundaries; a line is decoded as UTF-8 only when whole.
#[derive(Default)]
pub(crate) struct Lines {
    buffer: Vec<u8>,
}

impl Lines {
    /// The lines `chunk` completes; blank ones skipped.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, LlmFailure> {
        self.buffer.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            if let Some(text) = decode(&line[..end])? {
                lines.push(text);
            }
        }
        if self.buffer.len() > MAX_LINE {
            return Err(LlmFailure::malformed("a line over 1 MiB"));
        }
        Ok(lines)
    }

    /// What is left after the last newline, if anything.
    pub(crate) fn rest(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.buffer);
        decode(&line).ok().flatten()
    }
}

fn decode(line: &[u8]) -> Result<Option<String>, LlmFailure> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(LlmFailure::malformed)?;
    Ok((!text.trim().is_empty()).then(|| text.to_owned()))
}

#[derive(Default)]
struct Answer {
    content: String,
    usage: Usage,
}

impl Answer {
    /// Takes one line; `true` at `done`.
    fn take(&mut self, line: &str, sink: &dyn TokenSink) -> Result<bool, LlmFailure> {
        let chunk: Value = serde_json::from_str(line).map_err(LlmFailure::malformed)?;
        if let Some(error) = chunk.get("error") {
            let message = error.as_str().unwrap_or("the provider reported an error");
            return Err(LlmFailure::retryable(codes::PROVIDER_ERROR, message));
        }
        let done = chunk
            .get("done")
            .and_then(Value::as_bool)
            .ok_or_else(|| LlmFailure::malformed("a line without `done`"))?;
        if let Some(text) = chunk.pointer("/message/content").and_then(Value::as_str) {
            if !text.is_empty() {
                self.content.push_str(text);
                sink.token(text);
            }
        }
        if done {
            let count = |field: &str| chunk.get(field).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Usage {
                input_tokens: count("prompt_eval_count"),
                output_tokens: count("eval_count"),
            };
        }
        Ok(done)
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
    fn lines_survive_any_chunking() {
        let text = "{\"a\":1}\r\n\n{\"b\":\"é\"}\n{\"c\":3}";
        let bytes = text.as_bytes();
        for split in 1..bytes.len() {
            let mut lines = Lines::default();
            let mut all = lines.push(&bytes[..split]).unwrap();
            all.extend(lines.push(&bytes[split..]).unwrap());
            all.extend(lines.rest());
            assert_eq!(all, ["{\"a\":1}", "{\"b\":\"é\"}", "{\"c\":3}"], "{split}");
        }
    }

    #[test]
    fn chunks_build_the_answer_and_usage() {
        let sink = Collected::default();
        let mut answer = Answer::default();
        let lines = [
            r#"{"model":"llama3","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Bon"},"done":false}"#,
            r#"{"model":"llama3","message":{"role":"assistant","content":"jour"},"done":false}"#,
        ];
        for line in lines {
            assert!(!answer.take(line, &sink).unwrap());
        }
        assert!(answer
            .take(
                r#"{"model":"llama3","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":4}"#,
                &sink
            )
            .unwrap());
        let answer = answer.finish();
        assert_eq!(answer.content, "Bonjour");
        assert_eq!(
            answer.usage,
            Usage {
                input_tokens: 26,
                output_tokens: 4
            }
        );
        assert_eq!(sink.tokens(), ["Bon", "jour"]);
        let failure = Answer::default().take("[1,", &sink).unwrap_err();
        assert_eq!(failure.code, codes::MALFORMED_RESPONSE);
        let failure = Answer::default()
            .take(r#"{"error":"model 'x' not found"}"#, &sink)
            .unwrap_err();
        assert_eq!(failure.code, codes::PROVIDER_ERROR);
    }
}
