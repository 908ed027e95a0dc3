//! Task requests: the raw shape a client sends and the validated [`TaskSpec`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http_request::{self, HttpRequestInput};
use crate::llm_chat::{self, LlmChatInput};
use crate::values::{Capability, Concurrency, Priority, RetryPolicy, Tags, TimeoutSecs};
use crate::ValidationErrors;

/// `POST /api/tasks` as the client sends it. Types are checked by serde; rules by
/// [`NewTaskRequest::validate`].
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "A task to create; every invalid field is named in the 422 answer.")]
pub struct NewTaskRequest {
    /// Dot-separated lowercase segments, e.g. `browser.navigate`.
    #[schema(
        max_length = 128,
        pattern = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$",
        example = "browser.navigate"
    )]
    pub capability: String,
    /// Any JSON; `null` when absent.
    #[serde(default)]
    pub input: serde_json::Value,
    /// 0–9, 9 first; 5 when absent.
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i64>,
    /// How long a lease lasts without news; 300 when absent.
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_secs: Option<i64>,
    /// 3 when absent.
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i64>,
    pub retry: Option<RetryRequest>,
    /// Pins the task to this agent.
    pub agent_id: Option<Uuid>,
    /// At most 32, each 1–64 characters without control characters.
    #[schema(schema_with = crate::schema::optional_tags)]
    pub tags: Option<Vec<String>>,
    /// Not leased before this time.
    pub not_before: Option<DateTime<Utc>>,
    /// Groups the task with the owner's other tasks of this key: at most
    /// `concurrency_limit` of them are leased or running at once, across every node.
    /// 1–200 characters without control characters.
    #[schema(min_length = 1, max_length = 200, example = "example.com")]
    pub concurrency_key: Option<String>,
    /// How many tasks of the key may be held at once; 1 when absent. Needs a
    /// `concurrency_key`.
    #[schema(minimum = 1, maximum = 1000)]
    pub concurrency_limit: Option<i64>,
    /// The team the task belongs to besides its caller: one they may run work in (member,
    /// maintainer or owner). Its members then read it, maintainers and owners change it,
    /// and the team's agents lease it.
    pub team_id: Option<Uuid>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// 1000 by default.
    #[schema(minimum = 0, maximum = 86_400_000)]
    pub initial_backoff_ms: i64,
    /// 60000 by default; caps every delay (below `initial_backoff_ms`, every delay is this).
    #[schema(minimum = 0, maximum = 86_400_000)]
    pub max_backoff_ms: i64,
}

/// A task as it may be created: every value within its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub capability: Capability,
    pub input: serde_json::Value,
    pub priority: Priority,
    pub timeout_secs: TimeoutSecs,
    pub retry: RetryPolicy,
    pub pinned_agent_id: Option<Uuid>,
    pub tags: Tags,
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// The team the task belongs to besides its owner: the request's `team_id` (checked
    /// by the API), or a team workflow's.
    #[serde(default)]
    pub team_id: Option<Uuid>,
}

impl NewTaskRequest {
    pub fn validate(self) -> Result<TaskSpec, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let capability = errors.check("capability", Capability::parse(&self.capability));
        if let Some(capability) = &capability {
            check_input(capability, &self.input, &mut errors);
        }
        let priority = match self.priority {
            Some(raw) => errors.check("priority", Priority::new(raw)),
            None => Some(Priority::DEFAULT),
        };
        let timeout_secs = match self.timeout_secs {
            Some(raw) => errors.check("timeout_secs", TimeoutSecs::new(raw)),
            None => Some(TimeoutSecs::DEFAULT),
        };
        let default_retry = RetryPolicy::default();
        let retry = RetryPolicy::new(
            self.max_attempts
                .unwrap_or(i64::from(default_retry.max_attempts)),
            self.retry
                .as_ref()
                .map_or(default_retry.initial_backoff_ms as i64, |r| {
                    r.initial_backoff_ms
                }),
            self.retry
                .as_ref()
                .map_or(default_retry.max_backoff_ms as i64, |r| r.max_backoff_ms),
        );
        let retry = match retry {
            Ok(retry) => Some(retry),
            Err(problems) => {
                for (field, message) in problems {
                    errors.push(field, message);
                }
                None
            }
        };
        let tags = errors.check("tags", Tags::new(self.tags.unwrap_or_default()));
        let concurrency = match Concurrency::new(self.concurrency_key, self.concurrency_limit) {
            Ok(concurrency) => concurrency,
            Err(problems) => {
                for (field, message) in problems {
                    errors.push(field, message);
                }
                None
            }
        };
        let input = self.input;
        let pinned_agent_id = self.agent_id;
        let not_before = self.not_before;
        match (capability, priority, timeout_secs, retry, tags) {
            (Some(capability), Some(priority), Some(timeout_secs), Some(retry), Some(tags))
                if errors.is_empty() =>
            {
                Ok(TaskSpec {
                    capability,
                    input,
                    priority,
                    timeout_secs,
                    retry,
                    pinned_agent_id,
                    tags,
                    not_before,
                    concurrency,
                    team_id: self.team_id,
                })
            }
            _ => Err(errors),
        }
    }
}

/// The rules of a capability whose input Chronicle itself understands (a built-in agent
/// runs it); any other capability's input is its agent's business.
fn check_input(capability: &Capability, input: &serde_json::Value, errors: &mut ValidationErrors) {
    if capability.as_str() == http_request::CAPABILITY {
        if let Err(problems) = HttpRequestInput::parse(input) {
            errors.append(problems);
        }
    }
    if capability.as_str() == llm_chat::CAPABILITY {
        if let Err(problems) = LlmChatInput::parse(input) {
            errors.append(problems);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: serde_json::Value) -> NewTaskRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn defaults_apply() {
        let spec = request(json!({"capability": "browser.navigate", "input": {"url": "x"}}))
            .validate()
            .unwrap();
        assert_eq!(spec.priority, Priority::DEFAULT);
        assert_eq!(spec.timeout_secs, TimeoutSecs::DEFAULT);
        assert_eq!(spec.retry, RetryPolicy::default());
        assert!(spec.tags.as_slice().is_empty());
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = request(json!({
            "capability": "NOPE",
            "priority": 12,
            "timeout_secs": -1,
            "max_attempts": 0,
            "tags": [""],
        }))
        .validate()
        .unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "capability",
                "priority",
                "timeout_secs",
                "max_attempts",
                "tags"
            ]
        );
    }

    #[test]
    fn http_request_inputs_are_checked() {
        let errors = request(json!({
            "capability": "http.request",
            "input": {"method": "BREW", "url": "ftp://example.com"},
            "priority": 12,
        }))
        .validate()
        .unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["input.method", "input.url", "priority"]);
        let spec = request(json!({
            "capability": "http.request",
            "input": {"url": "https://example.com"},
        }))
        .validate()
        .unwrap();
        assert_eq!(spec.input, json!({"url": "https://example.com"}));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let parsed: Result<NewTaskRequest, _> =
            serde_json::from_value(json!({"capability": "a.b", "colour": "red"}));
        assert!(parsed.is_err());
    }
}
