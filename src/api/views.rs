//! The JSON shapes of API.md: `Task`, `LeasedTask`, `Agent`, `Event`.

use chronicle_aggregates::agent::{AgentState, AgentStatus};
use chronicle_aggregates::task::{TaskFailure, TaskState, TaskStatus};
use chronicle_commands::agent::AgentKind;
use chronicle_commands::values::RetryPolicy;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::process::offline_after;
use crate::store::chain::{HASH, PREV_HASH};
use crate::store::RecordedEvent;

/// `Task` of API.md.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Task)]
pub struct TaskView {
    pub id: Uuid,
    pub capability: String,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<TaskFailure>,
    pub status: TaskStatus,
    /// 0–9, 9 first.
    #[schema(maximum = 9)]
    pub priority: u8,
    /// The current attempt, 0 before the first lease.
    pub attempt: u32,
    pub max_attempts: u32,
    /// How long a lease lasts without news; each heartbeat or progress report renews it.
    pub timeout_secs: u32,
    pub retry: RetryView,
    pub agent_id: Option<Uuid>,
    pub pinned_agent_id: Option<Uuid>,
    pub workflow_run_id: Option<Uuid>,
    pub tags: Vec<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub owner_id: Uuid,
    /// The team it belongs to besides its owner (a team workflow's step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The owner's concurrency group the task waits its turn in, if any.
    pub concurrency_key: Option<String>,
    /// How many tasks of `concurrency_key` may be leased or running at once; `null`
    /// without a key.
    #[schema(minimum = 1, maximum = 1000)]
    pub concurrency_limit: Option<u32>,
    /// The number of events of the task; its `ETag`.
    pub version: usize,
}

/// Backoff between attempts, doubling from `initial_backoff_ms` up to `max_backoff_ms`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RetryPolicy)]
pub struct RetryView {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl TaskView {
    pub fn new(state: &TaskState, version: usize) -> Self {
        let RetryPolicy {
            max_attempts,
            initial_backoff_ms,
            max_backoff_ms,
        } = state.retry;
        Self {
            id: state.id,
            capability: state.capability.to_string(),
            input: state.input.clone(),
            output: state.output.clone(),
            error: state.error.clone(),
            status: state.status,
            priority: state.priority.get(),
            attempt: state.attempt,
            max_attempts,
            timeout_secs: state.timeout_secs.get(),
            retry: RetryView {
                initial_backoff_ms,
                max_backoff_ms,
            },
            agent_id: state.agent_id,
            pinned_agent_id: state.pinned_agent_id,
            workflow_run_id: state.workflow_run_id,
            tags: state.tags.as_slice().to_vec(),
            not_before: state.not_before,
            owner_id: state.owner_id,
            team_id: state.team_id,
            created_at: state.created_at,
            updated_at: state.updated_at,
            started_at: state.started_at,
            finished_at: state.finished_at,
            concurrency_key: state.concurrency.as_ref().map(|c| c.key().to_owned()),
            concurrency_limit: state.concurrency.as_ref().map(|c| c.limit()),
            version,
        }
    }
}

/// `Event` of API.md: one recorded event with its metadata and hash-chain links.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Event)]
pub struct EventView {
    /// Its place in the global feed.
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Its place in its aggregate's history, from 1.
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: EventMetadataView,
    /// SHA-256 of this event chained to `prev_hash`, hex.
    pub hash: Option<String>,
    pub prev_hash: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventMetadata)]
pub struct EventMetadataView {
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub idempotency_key: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

impl From<RecordedEvent> for EventView {
    fn from(event: RecordedEvent) -> Self {
        let text = |key: &str| event.metadata_str(key).map(str::to_owned);
        let metadata = EventMetadataView {
            actor: text("actor"),
            correlation_id: text("correlation_id"),
            causation_id: text("causation_id"),
            request_id: text("request_id"),
            idempotency_key: text("idempotency_key"),
            recorded_at: event.recorded_at,
        };
        let hash = text(HASH);
        let prev_hash = text(PREV_HASH);
        Self {
            position: event.position,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: without_credentials(event.payload),
            metadata,
            hash,
            prev_hash,
        }
    }
}

/// Payload fields that hold credential material (a user's argon2 hash, an API key's
/// HMAC): never answered, not even to auditors, as the API-key list shows no hash.
const CREDENTIAL_FIELDS: [&str; 2] = ["password_hash", "secret_hash"];

/// `payload` with every [`CREDENTIAL_FIELDS`] entry replaced by `"[redacted]"` and every
/// lease id by its hash (see [`super::redact`]). The hash
/// chain covers the stored payload: `GET /api/audit/verify` checks it on the server.
fn without_credentials(mut payload: Value) -> Value {
    super::redact::redact_leases(&mut payload);
    if let Some(object) = payload.as_object_mut() {
        for field in CREDENTIAL_FIELDS {
            if let Some(value) = object.get_mut(field) {
                *value = Value::from("[redacted]");
            }
        }
    }
    payload
}

/// `Agent` of API.md. `status` is as of the answer; `running` counts the tasks it holds.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Agent)]
pub struct AgentView {
    pub id: Uuid,
    pub name: String,
    pub kind: AgentKind,
    pub capabilities: Vec<String>,
    pub max_concurrency: u32,
    pub status: AgentStatus,
    pub running: u32,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub owner_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub metadata: Map<String, Value>,
    /// The team it is shared with: it leases the team's tasks too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
}

impl AgentView {
    pub fn new(state: &AgentState, now: DateTime<Utc>, running: u32) -> Self {
        Self {
            id: state.id,
            name: state.name.as_str().to_owned(),
            kind: state.kind,
            capabilities: state
                .capabilities
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            max_concurrency: state.max_concurrency.get(),
            status: state.status_at(now, offline_after()),
            running,
            last_heartbeat_at: state.last_heartbeat_at,
            owner_id: state.owner_id,
            created_at: state.created_at,
            metadata: state.metadata.clone(),
            team_id: state.team_id,
        }
    }
}

/// `LeasedTask` of API.md: the task (its `attempt` included) and the lease to name.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LeasedTask)]
pub struct LeasedTaskView {
    #[serde(flatten)]
    pub task: TaskView,
    pub lease_id: Uuid,
    pub lease_expires_at: Option<DateTime<Utc>>,
}
