//! What turns text into vectors for the search projection: the [`Embedder`] trait and the
//! provider names the configuration accepts.

use async_trait::async_trait;

use crate::feed::BoxError;

/// Turns texts into vectors of [`Embedder::dimension`] floats, L2-normalised, in one call
/// per batch. [`Embedder::id`] names the provider and model: the search index records it
/// with every commit, and an index built by another embedder is built again from the
/// first event (vectors of two models are never mixed).
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// `provider:model`, e.g. `builtin:hashed-ngrams-v1-256`.
    fn id(&self) -> &str;

    fn dimension(&self) -> usize;

    /// One vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, BoxError>;
}

/// Why no embedder could be made from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum EmbedderChoiceError {
    #[error(
        "embeddings provider {0:?} is not available in this version; \
         set CHRONICLE_EMBEDDINGS__PROVIDER=builtin"
    )]
    NotYet(String),
    #[error(
        "unknown embeddings provider {0:?}: expected builtin, local, openai or ollama \
         (CHRONICLE_EMBEDDINGS__PROVIDER)"
    )]
    Unknown(String),
}

/// The embedder named by `CHRONICLE_EMBEDDINGS__PROVIDER`.
pub fn embedder_for(provider: &str) -> Result<std::sync::Arc<dyn Embedder>, EmbedderChoiceError> {
    match provider {
        "builtin" => Ok(std::sync::Arc::new(super::builtin::BuiltinEmbedder)),
        "local" | "openai" | "ollama" => Err(EmbedderChoiceError::NotYet(provider.to_owned())),
        other => Err(EmbedderChoiceError::Unknown(other.to_owned())),
    }
}
