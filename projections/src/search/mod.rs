//! The search projection: every task and workflow run in a tantivy index (BM25, English
//! stemming) and an HNSW vector index over their embeddings, on this node's disk, kept
//! from the event feed with the feed position inside each commit. Each node keeps its own.
//!
//! Layout:
//! - [`embedder`]: the `Embedder` trait and the provider the configuration names.
//! - [`builtin`]: the offline, lexical `builtin` embedder.
//! - `local` (build feature `local-embeddings`): a sentence-transformers model run in
//!   process with candle.
//! - [`remote`]: the `openai` and `ollama` embedders.
//! - [`document`]: what a task or a run becomes in the index.
//! - [`schema`]: the tantivy fields.
//! - [`stats`]: BM25 statistics that count alive documents only.
//! - [`vectors`]: the HNSW index with owner, team and kind filters.
//! - [`index`]: opening, folding events in, committing with the position, rebuilding.
//! - [`query`]: BM25, vector and hybrid (RRF) search, snippets, RAG context.

pub mod builtin;
pub mod document;
pub mod embedder;
pub mod index;
#[cfg(feature = "local-embeddings")]
pub mod local;
pub mod query;
pub mod remote;
pub mod schema;
pub mod stats;
pub mod vectors;

pub use document::{DocKind, SearchDoc};
pub use embedder::{open_embedder, Embedder, EmbedderChoice, EmbedderChoiceError};
pub use index::{OpenError, SearchIndex};
pub use query::{Hit, Mode, Scope, Source, RRF_K};

/// The projection's name in `/api/admin/projections` and `chronicle projections rebuild`.
pub const NAME: &str = "search";
/// A new version (or another embedder, recorded beside it) builds the index again.
/// 2: the team a document belongs to (`team`), for the team's members.
pub const VERSION: i64 = 2;
