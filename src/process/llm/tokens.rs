//! The in-process channel that carries an `llm.chat` task's tokens to the node's live
//! followers (`/api/tasks/{id}/stream`, `/api/ws`). Tokens are not events: nothing is
//! stored, and they do not cross nodes — a follower connected to another node sees the
//! answer once, in the task's `TaskSucceeded`. A follower that falls more than the
//! channel's capacity behind loses the tokens it missed (the final content is the record).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::provider::TokenSink;

/// Tokens held for slow followers, across all tasks of the node.
const CAPACITY: usize = 4_096;

/// One piece of streamed text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenChunk {
    pub task_id: Uuid,
    /// Whose task it is: who may see it.
    #[serde(skip)]
    pub owner_id: Uuid,
    /// 0, 1, 2, … within the task's attempt.
    pub index: u64,
    pub text: String,
}

/// The node's token channel; cloning shares it.
#[derive(Clone)]
pub struct TokenHub {
    sender: broadcast::Sender<Arc<TokenChunk>>,
}

impl Default for TokenHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl TokenHub {
    /// A follower's receiver: every token published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TokenChunk>> {
        self.sender.subscribe()
    }

    /// A sink that publishes the tokens of one task.
    pub fn publisher(&self, task_id: Uuid, owner_id: Uuid) -> TaskTokens {
        TaskTokens {
            sender: self.sender.clone(),
            task_id,
            owner_id,
            next: AtomicU64::new(0),
        }
    }
}

/// Publishes one task's tokens, numbered.
pub struct TaskTokens {
    sender: broadcast::Sender<Arc<TokenChunk>>,
    task_id: Uuid,
    owner_id: Uuid,
    next: AtomicU64,
}

impl TokenSink for TaskTokens {
    fn token(&self, text: &str) {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        // No follower is no error: the tokens are only for whoever watches.
        let _ = self.sender.send(Arc::new(TokenChunk {
            task_id: self.task_id,
            owner_id: self.owner_id,
            index,
            text: text.to_owned(),
        }));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_numbered_tokens_of_every_task() {
        let hub = TokenHub::default();
        let mut follower = hub.subscribe();
        let task = Uuid::now_v7();
        let tokens = hub.publisher(task, Uuid::nil());
        tokens.token("a");
        tokens.token("b");
        let first = follower.recv().await.unwrap();
        let second = follower.recv().await.unwrap();
        assert_eq!((first.index, first.text.as_str()), (0, "a"));
        assert_eq!((second.index, second.task_id), (1, task));
    }
}
