//! Conversations of `llm.chat` tasks: a query over the task view, not a read model of its
//! own. A conversation is the owner's `llm.chat` tasks whose input names the same
//! `conversation_id`, oldest first (task ids are UUIDv7: they sort by creation). The SQL
//! narrows by owner and capability (indexed) and by a `LIKE` on the stored state that can
//! only over-match; the exact `input.conversation_id` is compared here.

use uuid::Uuid;

use crate::db::ReadDb;
use crate::on_reader;
use crate::runner::ProjectionError;
use crate::task_view::TaskRow;

/// The capability whose tasks form conversations.
const CAPABILITY: &str = "llm.chat";

/// At most this many turns are read for one conversation: the oldest beyond it are not
/// shown (and would not fit any token budget anyway).
pub const MAX_TURNS: i64 = 1_000;

/// The turns of `owner_id`'s conversation `conversation_id`, oldest first; with `before`,
/// only tasks created before that one.
pub async fn turns(
    db: &ReadDb,
    owner_id: Uuid,
    conversation_id: &str,
    before: Option<Uuid>,
) -> Result<Vec<TaskRow>, ProjectionError> {
    let quoted = serde_json::Value::String(conversation_id.to_owned()).to_string();
    let pattern = format!("%\"conversation_id\":{quoted}%");
    let rows: Vec<(String, i64)> = on_reader!(db, |pool| {
        sqlx::query_as(
            "SELECT state, version FROM (
                 SELECT id, state, version FROM task_view_v4
                  WHERE owner_id = $1 AND capability = $2 AND state LIKE $3
                    AND ($4 IS NULL OR id < $4)
                  ORDER BY id DESC LIMIT $5
             ) AS newest ORDER BY id",
        )
        .bind(owner_id.to_string())
        .bind(CAPABILITY)
        .bind(&pattern)
        .bind(before.map(|id| id.to_string()))
        .bind(MAX_TURNS)
        .fetch_all(pool)
        .await
    })?;
    let mut turns = Vec::with_capacity(rows.len());
    for (state, version) in rows {
        let row = crate::task_view::decode_row(&state, version)?;
        let same = row.state().is_some_and(|task| {
            task.input.get("conversation_id").and_then(|id| id.as_str()) == Some(conversation_id)
        });
        if same {
            turns.push(row);
        }
    }
    Ok(turns)
}
