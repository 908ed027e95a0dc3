//! Agent requests: the raw registration a client sends and the validated [`AgentSpec`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::values::Capability;
use crate::ValidationErrors;

/// How an agent runs: `remote` agents (the extension) pull work over HTTP/WebSocket;
/// `llm` and `http` agents are built in and run inside the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    Remote,
    Llm,
    Http,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Remote => "remote",
            Self::Llm => "llm",
            Self::Http => "http",
        }
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's display name: 1–100 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentName(String);

impl AgentName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let name = raw.trim();
        // The length as sent, as the document's `maxLength` counts it.
        if name.is_empty() || raw.chars().count() > Self::MAX_LEN {
            return Err("must be 1 to 100 characters");
        }
        // As sent: trimming would drop a trailing control character (NEL, tab) unseen.
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many tasks an agent runs at once, 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaxConcurrency(u32);

impl MaxConcurrency {
    pub const DEFAULT: Self = Self(1);
    pub const MAX: u32 = 1_000;

    pub fn new(raw: i64) -> Result<Self, &'static str> {
        u32::try_from(raw)
            .ok()
            .filter(|n| (1..=Self::MAX).contains(n))
            .map(Self)
            .ok_or("must be an integer from 1 to 1000")
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for MaxConcurrency {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `POST /api/agents/register` as the client sends it. Types are checked by serde; rules
/// by [`RegisterAgentRequest::validate`].
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "An agent to register; every invalid field is named in the 422 answer.")]
pub struct RegisterAgentRequest {
    /// Trimmed; no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    pub kind: AgentKind,
    /// Dot-separated lowercase segments, e.g. `browser.navigate`; duplicates are dropped.
    #[schema(schema_with = crate::schema::capabilities)]
    pub capabilities: Vec<String>,
    /// Tasks it may hold at once; 1 when absent.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrency: Option<i64>,
    /// A JSON object, shown back to clients.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// A JSON object of settings for a built-in agent; stored forever, so never a secret.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
}

/// An agent as it may be registered: every value within its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub name: AgentName,
    pub kind: AgentKind,
    /// At least one, no duplicates, in the order first given.
    pub capabilities: Vec<Capability>,
    pub max_concurrency: MaxConcurrency,
    /// Free-form, shown back to clients; empty when absent.
    pub metadata: Map<String, Value>,
    /// Settings for a built-in agent (model, provider, …). It is stored in the event log
    /// forever, so it must never carry a secret.
    pub config: Option<Map<String, Value>>,
}

impl RegisterAgentRequest {
    pub const MAX_CAPABILITIES: usize = 64;

    pub fn validate(self) -> Result<AgentSpec, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = errors.check("name", AgentName::parse(&self.name));
        let capabilities = capabilities(self.capabilities, &mut errors);
        let max_concurrency = match self.max_concurrency {
            Some(raw) => errors.check("max_concurrency", MaxConcurrency::new(raw)),
            None => Some(MaxConcurrency::DEFAULT),
        };
        let metadata = match self.metadata {
            None | Some(Value::Null) => Some(Map::new()),
            Some(value) => errors.check("metadata", object(value)),
        };
        let config = match self.config {
            None | Some(Value::Null) => Some(None),
            Some(value) => errors.check("config", object(value).map(Some)),
        };
        match (name, capabilities, max_concurrency, metadata, config) {
            (
                Some(name),
                Some(capabilities),
                Some(max_concurrency),
                Some(metadata),
                Some(config),
            ) if errors.is_empty() => Ok(AgentSpec {
                name,
                kind: self.kind,
                capabilities,
                max_concurrency,
                metadata,
                config,
            }),
            _ => Err(errors),
        }
    }
}

/// Parses every capability, naming each bad one by its index, and drops duplicates.
fn capabilities(raw: Vec<String>, errors: &mut ValidationErrors) -> Option<Vec<Capability>> {
    if raw.is_empty() || raw.len() > RegisterAgentRequest::MAX_CAPABILITIES {
        errors.push("capabilities", "must list 1 to 64 capabilities");
        return None;
    }
    let mut parsed: Vec<Capability> = Vec::with_capacity(raw.len());
    let mut valid = true;
    for (index, item) in raw.iter().enumerate() {
        match Capability::parse(item) {
            Ok(capability) if !parsed.contains(&capability) => parsed.push(capability),
            Ok(_) => {}
            Err(message) => {
                errors.push(format!("capabilities[{index}]"), message);
                valid = false;
            }
        }
    }
    valid.then_some(parsed)
}

fn object(value: Value) -> Result<Map<String, Value>, &'static str> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err("must be a JSON object"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn request(body: Value) -> RegisterAgentRequest {
        serde_json::from_value(body).unwrap()
    }

    fn fields(errors: &ValidationErrors) -> Vec<&str> {
        errors.0.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn defaults_apply_and_duplicates_go() {
        let spec = request(json!({
            "name": "  Chrome on laptop ",
            "kind": "remote",
            "capabilities": ["browser.navigate", "browser.click", "browser.navigate"],
        }))
        .validate()
        .unwrap();
        assert_eq!(spec.name.as_str(), "Chrome on laptop");
        assert_eq!(spec.kind, AgentKind::Remote);
        let caps: Vec<&str> = spec.capabilities.iter().map(Capability::as_str).collect();
        assert_eq!(caps, ["browser.navigate", "browser.click"]);
        assert_eq!(spec.max_concurrency, MaxConcurrency::DEFAULT);
        assert!(spec.metadata.is_empty());
        assert_eq!(spec.config, None);
    }

    #[test]
    fn metadata_and_config_are_kept() {
        let spec = request(json!({
            "name": "llm",
            "kind": "llm",
            "capabilities": ["llm.chat"],
            "max_concurrency": 8,
            "metadata": {"version": "1.2"},
            "config": {"model": "small"},
        }))
        .validate()
        .unwrap();
        assert_eq!(spec.max_concurrency.get(), 8);
        assert_eq!(spec.metadata.get("version"), Some(&json!("1.2")));
        assert_eq!(spec.config.unwrap().get("model"), Some(&json!("small")));
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = request(json!({
            "name": " ",
            "kind": "http",
            "capabilities": ["http.request", "NOPE", "x"],
            "max_concurrency": 0,
            "metadata": [1],
            "config": "x",
        }))
        .validate()
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "name",
                "capabilities[1]",
                "capabilities[2]",
                "max_concurrency",
                "metadata",
                "config"
            ]
        );
    }

    #[rstest]
    #[case(json!([]))]
    #[case(json!((0..65).map(|i| format!("cap.c{i}")).collect::<Vec<_>>()))]
    fn capability_count_is_bounded(#[case] capabilities: Value) {
        let errors = request(json!({"name": "a", "kind": "remote", "capabilities": capabilities}))
            .validate()
            .unwrap_err();
        assert_eq!(fields(&errors), ["capabilities"]);
    }

    #[rstest]
    #[case(1, true)]
    #[case(1_000, true)]
    #[case(1_001, false)]
    #[case(-3, false)]
    fn max_concurrency_range(#[case] raw: i64, #[case] ok: bool) {
        assert_eq!(MaxConcurrency::new(raw).is_ok(), ok);
    }

    #[test]
    fn name_length_counts_characters() {
        assert!(AgentName::parse(&"é".repeat(100)).is_ok());
        assert!(AgentName::parse(&"é".repeat(101)).is_err());
        assert!(AgentName::parse("tab\there").is_err());
    }

    #[rstest]
    #[case(json!({"name": "a", "kind": "robot", "capabilities": ["a.b"]}))]
    #[case(json!({"name": "a", "kind": "remote", "capabilities": ["a.b"], "colour": "red"}))]
    fn bad_shapes_are_refused_by_serde(#[case] body: Value) {
        assert!(serde_json::from_value::<RegisterAgentRequest>(body).is_err());
    }
}
