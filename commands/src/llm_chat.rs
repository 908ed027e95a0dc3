//! The input of an `llm.chat` task: checked when the task is created (a bad one is a 422
//! naming `input.<field>`) and parsed again by the built-in LLM agent that runs it.
//!
//! `{messages: [{role: "system"|"user"|"assistant", content}], model?, provider?,
//! temperature?: 0..2, max_tokens?: 1..1000000, use_context?: bool, conversation_id?}`.
//! `conversation_id` (1–128 of `A-Z a-z 0-9 . _ : -`) groups the caller's tasks into one
//! conversation: the agent sends the earlier turns before `messages`.

use serde_json::Value;

use crate::ValidationErrors;

/// The capability the built-in LLM agent serves.
pub const CAPABILITY: &str = "llm.chat";

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        match raw {
            "system" => Ok(Self::System),
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            _ => Err("must be one of system, user, assistant"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// A valid `llm.chat` input.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmChatInput {
    pub messages: Vec<ChatMessage>,
    pub model: Option<String>,
    /// Must name the provider the node is configured with, when given.
    pub provider: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub use_context: bool,
    pub conversation_id: Option<String>,
}

impl LlmChatInput {
    pub const MAX_MESSAGES: usize = 1_000;
    pub const MAX_MAX_TOKENS: u64 = 1_000_000;
    pub const MAX_CONVERSATION_ID: usize = 128;
    pub const MAX_MODEL: usize = 200;
    pub const PROVIDERS: [&'static str; 3] = ["openai", "anthropic", "ollama"];

    /// Parses a task's `input`, naming every bad field as `input.<field>`.
    pub fn parse(input: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let Value::Object(fields) = input else {
            return Err(ValidationErrors::single(
                "input",
                "must be an object with at least `messages`",
            ));
        };
        for key in fields.keys() {
            if !matches!(
                key.as_str(),
                "messages"
                    | "model"
                    | "provider"
                    | "temperature"
                    | "max_tokens"
                    | "use_context"
                    | "conversation_id"
            ) {
                errors.push(format!("input.{key}"), "is not a field of llm.chat");
            }
        }
        let messages = match fields.get("messages") {
            None | Some(Value::Null) => {
                errors.push("input.messages", "is required");
                None
            }
            Some(Value::Array(raw)) if raw.is_empty() => {
                errors.push("input.messages", "must hold at least one message");
                None
            }
            Some(Value::Array(raw)) if raw.len() > Self::MAX_MESSAGES => {
                errors.push("input.messages", "at most 1000 messages");
                None
            }
            Some(Value::Array(raw)) => parse_messages(raw, &mut errors),
            Some(_) => {
                errors.push("input.messages", "must be an array of {role, content}");
                None
            }
        };
        let model = optional_string(fields.get("model"), "input.model", &mut errors, |model| {
            if model.is_empty() || model.chars().count() > Self::MAX_MODEL {
                Err("must be 1 to 200 characters")
            } else if model.chars().any(char::is_control) {
                Err("must not contain control characters")
            } else {
                Ok(())
            }
        });
        let provider = optional_string(
            fields.get("provider"),
            "input.provider",
            &mut errors,
            |provider| {
                if Self::PROVIDERS.contains(&provider) {
                    Ok(())
                } else {
                    Err("must be one of openai, anthropic, ollama")
                }
            },
        );
        let temperature = match fields.get("temperature") {
            None | Some(Value::Null) => Some(None),
            Some(raw) => errors
                .check(
                    "input.temperature",
                    raw.as_f64()
                        .filter(|t| (0.0..=2.0).contains(t))
                        .ok_or("must be a number from 0 to 2"),
                )
                .map(Some),
        };
        let max_tokens = match fields.get("max_tokens") {
            None | Some(Value::Null) => Some(None),
            Some(raw) => errors
                .check(
                    "input.max_tokens",
                    raw.as_u64()
                        .filter(|n| (1..=Self::MAX_MAX_TOKENS).contains(n))
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or("must be an integer from 1 to 1000000"),
                )
                .map(Some),
        };
        let use_context = match fields.get("use_context") {
            None | Some(Value::Null) => Some(false),
            Some(Value::Bool(flag)) => Some(*flag),
            Some(_) => {
                errors.push("input.use_context", "must be true or false");
                None
            }
        };
        let conversation_id = optional_string(
            fields.get("conversation_id"),
            "input.conversation_id",
            &mut errors,
            check_conversation_id,
        );
        match (messages, temperature, max_tokens, use_context) {
            (Some(messages), Some(temperature), Some(max_tokens), Some(use_context))
                if errors.is_empty() =>
            {
                Ok(Self {
                    messages,
                    model,
                    provider,
                    temperature,
                    max_tokens,
                    use_context,
                    conversation_id,
                })
            }
            _ => Err(errors),
        }
    }
}

/// The rule of a conversation id, also for `GET /api/conversations/{id}`.
pub fn check_conversation_id(id: &str) -> Result<(), &'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if id.is_empty() || id.len() > LlmChatInput::MAX_CONVERSATION_ID {
        Err("must be 1 to 128 characters")
    } else if !id.chars().all(allowed) {
        Err("may hold only letters, digits and . _ : -")
    } else {
        Ok(())
    }
}

fn optional_string(
    raw: Option<&Value>,
    field: &str,
    errors: &mut ValidationErrors,
    rule: impl FnOnce(&str) -> Result<(), &'static str>,
) -> Option<String> {
    match raw {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => errors.check(field, rule(text)).map(|()| text.clone()),
        Some(_) => {
            errors.push(field, "must be a string");
            None
        }
    }
}

fn parse_messages(raw: &[Value], errors: &mut ValidationErrors) -> Option<Vec<ChatMessage>> {
    let mut messages = Vec::with_capacity(raw.len());
    let mut valid = true;
    for (index, message) in raw.iter().enumerate() {
        let at = format!("input.messages[{index}]");
        let Value::Object(fields) = message else {
            errors.push(at, "must be an object {role, content}");
            valid = false;
            continue;
        };
        for key in fields.keys() {
            if !matches!(key.as_str(), "role" | "content") {
                errors.push(format!("{at}.{key}"), "is not a field of a message");
                valid = false;
            }
        }
        let role = match fields.get("role") {
            Some(Value::String(role)) => errors.check(&format!("{at}.role"), Role::parse(role)),
            _ => {
                errors.push(
                    format!("{at}.role"),
                    "is required: system, user or assistant",
                );
                None
            }
        };
        let content = match fields.get("content") {
            Some(Value::String(content)) => Some(content.clone()),
            _ => {
                errors.push(format!("{at}.content"), "is required and must be a string");
                None
            }
        };
        match (role, content) {
            (Some(role), Some(content)) => messages.push(ChatMessage { role, content }),
            _ => valid = false,
        }
    }
    valid.then_some(messages)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(input: Value) -> Vec<String> {
        LlmChatInput::parse(&input)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_full_input_parses() {
        let input = LlmChatInput::parse(&json!({
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "model": "llama3", "provider": "ollama", "temperature": 0.2, "max_tokens": 64,
            "use_context": true, "conversation_id": "chat-1",
        }))
        .unwrap();
        assert_eq!(input.messages.len(), 2);
        assert_eq!(input.messages[1].role, Role::User);
        assert_eq!(input.max_tokens, Some(64));
        assert!(input.use_context);
        assert_eq!(input.conversation_id.as_deref(), Some("chat-1"));
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(fields(json!("hi")), ["input"]);
        assert_eq!(fields(json!({})), ["input.messages"]);
        assert_eq!(fields(json!({"messages": []})), ["input.messages"]);
        assert_eq!(
            fields(json!({
                "messages": [{"role": "robot", "content": 3}, "x", {"role": "user", "content": "", "name": "n"}],
                "temperature": 3, "max_tokens": 0, "use_context": "yes",
                "conversation_id": "a b", "provider": "azure", "model": "", "colour": 1,
            })),
            [
                "input.colour",
                "input.messages[0].role",
                "input.messages[0].content",
                "input.messages[1]",
                "input.messages[2].name",
                "input.model",
                "input.provider",
                "input.temperature",
                "input.max_tokens",
                "input.use_context",
                "input.conversation_id",
            ]
        );
    }
}
