//! What turns text into vectors for the search projection: the [`Embedder`] trait, the
//! providers the configuration may name ([`EmbedderChoice`]) and [`open_embedder`].

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::remote::{RemoteEmbedder, RemoteError, RemoteSettings};
use crate::feed::BoxError;

/// Turns texts into vectors of [`Embedder::dimension`] floats, L2-normalised, in one call
/// per batch. [`Embedder::id`] names the provider, model and dimensions: the search index
/// records it with every commit, and an index built by another embedder is built again from
/// the first event (vectors of two models are never mixed).
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// `provider:model-dims`, e.g. `builtin:hashed-ngrams-v1-256`.
    fn id(&self) -> &str;

    fn dimension(&self) -> usize;

    /// Whether the vectors are lexical (hashed words and n-grams, like the builtin
    /// embedder's): the index then searches them exactly instead of by an HNSW graph, which
    /// cannot navigate them (see [`super::vectors`]).
    fn lexical(&self) -> bool {
        false
    }

    /// One vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, BoxError>;
}

/// The embedder a configuration names.
#[derive(Clone)]
pub enum EmbedderChoice {
    Builtin,
    /// A sentence-transformers model folder run in process (the `local-embeddings` build
    /// feature).
    Local {
        model_dir: PathBuf,
    },
    /// An OpenAI-compatible or Ollama server.
    Remote(RemoteSettings),
}

/// Why no embedder could be made from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum EmbedderChoiceError {
    #[error(
        "embeddings provider \"local\" is not in this build: build with \
         `--features local-embeddings`, or set CHRONICLE_EMBEDDINGS__PROVIDER to builtin, \
         openai or ollama"
    )]
    LocalNotBuilt,
    #[cfg(feature = "local-embeddings")]
    #[error("cannot load the local embeddings model: {0}")]
    Local(#[from] super::local::LocalModelError),
    #[error("cannot start the remote embedder: {0}")]
    Remote(#[from] RemoteError),
}

/// The embedder `choice` names, ready to embed: a local model is loaded, a remote server
/// whose dimensions are not configured is asked for one vector.
pub async fn open_embedder(
    choice: EmbedderChoice,
) -> Result<Arc<dyn Embedder>, EmbedderChoiceError> {
    match choice {
        EmbedderChoice::Builtin => Ok(Arc::new(super::builtin::BuiltinEmbedder)),
        EmbedderChoice::Local { model_dir } => open_local(model_dir).await,
        EmbedderChoice::Remote(settings) => Ok(Arc::new(RemoteEmbedder::connect(settings).await?)),
    }
}

#[cfg(feature = "local-embeddings")]
async fn open_local(dir: PathBuf) -> Result<Arc<dyn Embedder>, EmbedderChoiceError> {
    let loaded = tokio::task::spawn_blocking(move || super::local::LocalEmbedder::load(&dir))
        .await
        .map_err(|e| super::local::LocalModelError::Invalid {
            path: PathBuf::new(),
            message: e.to_string(),
        })??;
    Ok(Arc::new(loaded))
}

#[cfg(not(feature = "local-embeddings"))]
async fn open_local(_dir: PathBuf) -> Result<Arc<dyn Embedder>, EmbedderChoiceError> {
    Err(EmbedderChoiceError::LocalNotBuilt)
}
