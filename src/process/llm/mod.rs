//! Language models: the providers behind one trait, and the built-in agent that runs
//! `llm.chat` tasks with them.
//!
//! **Providers** ([`provider::ChatProvider`]): OpenAI-compatible chat completions,
//! Anthropic messages and Ollama chat, each streaming (SSE or NDJSON), with a connect and a
//! total timeout and retries of 429/5xx that honour `Retry-After`. Which one runs is
//! `CHRONICLE_LLM__PROVIDER`; with none set, no agent registers and `llm.chat` tasks wait
//! for a remote agent that serves the capability. The base URL is operator configuration:
//! the HTTP agent's address guard does not apply to it (a local Ollama is the common case).
//!
//! **Tokens** stream to the node's followers through [`tokens::TokenHub`], in process only;
//! the answer is stored once, in the task's `TaskSucceeded`:
//! `{content, usage: {input_tokens, output_tokens}, sources, model, provider,
//! conversation?: {id, history_messages, dropped_turns}}`.
//!
//! Layout:
//! - [`provider`]: the trait, the request and answer, failure codes, the retrying client.
//! - [`openai`], [`anthropic`], [`ollama`]: one wire format each.
//! - [`tokens`]: the in-process token channel.
//! - [`conversation`]: earlier turns within a token budget.
//! - [`context`]: the seam `use_context` retrieves through.
//! - [`agent`]: the built-in agent's registration and work loop.

pub mod agent;
pub mod anthropic;
pub mod context;
pub mod conversation;
pub mod ollama;
pub mod openai;
pub mod provider;
pub mod tokens;

use std::sync::Arc;

use eventsource_stream::EventStreamError;

use crate::config::LlmSettings;
use provider::{transport_failure, ChatProvider, LlmFailure, Transport};

/// The provider the settings name; `None` when they name none.
pub fn configured_provider(
    settings: &LlmSettings,
) -> Result<Option<Arc<dyn ChatProvider>>, reqwest::Error> {
    let Some(name) = settings.provider.as_deref() else {
        return Ok(None);
    };
    let transport = Transport::new(settings)?;
    let base = |default: &str| {
        settings
            .base_url
            .clone()
            .unwrap_or_else(|| default.to_owned())
    };
    let model = |default: &str| settings.model.clone().unwrap_or_else(|| default.to_owned());
    let provider: Arc<dyn ChatProvider> = match name {
        "openai" => Arc::new(openai::OpenAi {
            transport,
            base_url: base(openai::DEFAULT_BASE_URL),
            api_key: settings.api_key.clone(),
            model: model(openai::DEFAULT_MODEL),
        }),
        "anthropic" => Arc::new(anthropic::Anthropic {
            transport,
            base_url: base(anthropic::DEFAULT_BASE_URL),
            api_key: settings.api_key.clone(),
            model: model(anthropic::DEFAULT_MODEL),
        }),
        "ollama" => Arc::new(ollama::Ollama {
            transport,
            base_url: base(ollama::DEFAULT_BASE_URL),
            model: model(ollama::DEFAULT_MODEL),
        }),
        // `Settings::load` refuses any other name; settings built in code get no agent.
        other => {
            tracing::error!(provider = other, "unknown LLM provider; no LLM agent runs");
            return Ok(None);
        }
    };
    Ok(Some(provider))
}

/// A server-sent events stream that broke: bad bytes are the provider's format, a
/// transport error is the exchange's.
fn sse_failure(error: EventStreamError<reqwest::Error>, transport: &Transport) -> LlmFailure {
    match error {
        EventStreamError::Utf8(error) => LlmFailure::malformed(error),
        EventStreamError::Parser(error) => LlmFailure::malformed(error),
        EventStreamError::Transport(error) => transport_failure(&error, transport.timeout()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::provider::TokenSink;

    /// Every token it was given.
    #[derive(Default)]
    pub(crate) struct Collected(Mutex<Vec<String>>);

    impl Collected {
        pub(crate) fn tokens(&self) -> Vec<String> {
            self.0.lock().map(|t| t.clone()).unwrap_or_default()
        }
    }

    impl TokenSink for Collected {
        fn token(&self, text: &str) {
            if let Ok(mut tokens) = self.0.lock() {
                tokens.push(text.to_owned());
            }
        }
    }
}
