//! `GET /api/conversations/{id}`: the turns of one of the caller's `llm.chat`
//! conversations (see [`chronicle_projections::conversations`]). Conversation ids are the
//! caller's own names: another user's conversation of the same id is theirs, and never
//! shown here.

use axum::extract::{Path, State};
use axum::Json;
use chronicle_aggregates::task::TaskState;
use chronicle_commands::llm_chat::check_conversation_id;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::actor::Actor;

/// A conversation, oldest turn first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationBody {
    pub id: String,
    pub turns: Vec<TurnBody>,
}

/// One `llm.chat` task of the conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnBody {
    pub task_id: Uuid,
    /// The task's status: a turn that has not succeeded has no answer and is not sent as
    /// history.
    pub status: String,
    /// The messages the task was created with, `[{role, content}]`.
    #[schema(value_type = Vec<Object>)]
    pub messages: Value,
    /// The answer, once the task succeeded.
    pub content: Option<String>,
    /// `{input_tokens, output_tokens}`, once the task succeeded.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<&TaskState> for TurnBody {
    fn from(task: &TaskState) -> Self {
        let output = task.output.as_ref();
        Self {
            task_id: task.id,
            status: task.status.as_str().to_owned(),
            messages: task.input.get("messages").cloned().unwrap_or(Value::Null),
            content: output
                .and_then(|o| o.get("content"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            usage: output.and_then(|o| o.get("usage")).cloned(),
            created_at: task.created_at,
            finished_at: task.finished_at,
        }
    }
}

/// Read one of your conversations.
///
/// The `llm.chat` tasks you created with this `input.conversation_id`, oldest first (at
/// most the newest 1000). The built-in LLM agent sends a conversation's succeeded turns
/// before a new task's messages, within `CHRONICLE_LLM__CONVERSATION_BUDGET_TOKENS`.
#[utoipa::path(
    get,
    path = "/conversations/{id}",
    operation_id = "get_conversation",
    tag = "llm",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$", description = "The conversation id the tasks name")),
    responses(
        (status = 200, description = "The conversation's turns", body = ConversationBody),
        (status = 404, description = "You have no task in a conversation of this id"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn get(
    State(state): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<ConversationBody>, ApiError> {
    if check_conversation_id(&id).is_err() {
        return Err(ApiError::NotFound);
    }
    let rows = chronicle_projections::conversations::turns(&state.read.db, actor.id, &id, None)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let turns: Vec<TurnBody> = rows
        .iter()
        .filter_map(|row| row.state().map(TurnBody::from))
        .collect();
    if turns.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(Json(ConversationBody { id, turns }))
}
