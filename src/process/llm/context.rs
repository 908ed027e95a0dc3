//! Where `use_context` gets its context: a [`ContextSource`] retrieves text from the task
//! owner's own history. This module defines the seam only; the search index provides the
//! implementation (hybrid search, as `POST /api/rag/context` does). A node without one
//! fails `use_context` tasks with `context_unavailable` rather than answering without the
//! context that was asked for.

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

/// A document the context was taken from, as the task's output lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    /// `task` or `workflow_run`.
    pub kind: String,
    pub id: String,
    pub score: f64,
}

/// Context assembled for a query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retrieved {
    /// At most `max_chars` characters.
    pub context: String,
    pub sources: Vec<Source>,
}

#[async_trait]
pub trait ContextSource: Send + Sync {
    /// Context for `query` from what `owner_id` may read of their own history: at most
    /// `limit` documents and `max_chars` characters.
    async fn context(
        &self,
        owner_id: Uuid,
        query: &str,
        limit: u32,
        max_chars: u32,
    ) -> Result<Retrieved, String>;
}

/// The node's search index as the context source: hybrid search over the owner's own tasks
/// and workflow runs, as `POST /api/rag/context` answers it.
pub struct SearchContext(pub chronicle_projections::search::SearchIndex);

#[async_trait]
impl ContextSource for SearchContext {
    async fn context(
        &self,
        owner_id: Uuid,
        query: &str,
        limit: u32,
        max_chars: u32,
    ) -> Result<Retrieved, String> {
        let (context, sources) = self
            .0
            .context(
                chronicle_projections::ReadScope::owner(owner_id),
                query,
                limit as usize,
                max_chars as usize,
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(Retrieved {
            context,
            sources: sources
                .into_iter()
                .map(|source| Source {
                    kind: source.kind.as_str().to_owned(),
                    id: source.id,
                    score: source.score,
                })
                .collect(),
        })
    }
}
