//! `/api/search` and `/api/rag/context`: hybrid search over the tasks and workflow runs the
//! caller may read (their own and their teams'; everyone's for auditors and admins), and
//! the context a language model is given from it.

use axum::extract::State;
use axum::Json;
use chronicle_projections::search::{DocKind, Hit, Mode, SearchIndex, Source};
use chronicle_projections::ProjectionError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::AppState;
use crate::actor::Actor;

/// The longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 2_000;
pub const MAX_LIMIT: u32 = 100;
pub const MAX_CONTEXT_CHARS: u32 = 100_000;

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Both legs, fused by reciprocal rank fusion (k = 60).
    #[default]
    Hybrid,
    /// Words only (BM25, English stemming).
    Bm25,
    /// Embeddings only (nearest neighbours).
    Vector,
}

impl From<SearchMode> for Mode {
    fn from(mode: SearchMode) -> Self {
        match mode {
            SearchMode::Hybrid => Self::Hybrid,
            SearchMode::Bm25 => Self::Bm25,
            SearchMode::Vector => Self::Vector,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchKind {
    Task,
    WorkflowRun,
}

impl From<SearchKind> for DocKind {
    fn from(kind: SearchKind) -> Self {
        match kind {
            SearchKind::Task => Self::Task,
            SearchKind::WorkflowRun => Self::WorkflowRun,
        }
    }
}

impl From<DocKind> for SearchKind {
    fn from(kind: DocKind) -> Self {
        match kind {
            DocKind::Task => Self::Task,
            DocKind::WorkflowRun => Self::WorkflowRun,
        }
    }
}

/// `GET /api/search` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// The words to look for, 1 to 2000 characters. Query syntax (`"a phrase"`, `+must`,
    /// `-not`, `AND`/`OR`) is honoured; a query the parser rejects, or one naming a field
    /// (`x:y`), is read as its plain words.
    #[param(min_length = 1, max_length = 2000, pattern = r"\S")]
    pub q: String,
    /// `hybrid` when absent.
    #[param(inline)]
    pub mode: Option<SearchMode>,
    /// 1 to 100; 10 when absent.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Only this kind of document.
    #[param(inline)]
    pub kind: Option<SearchKind>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchItem {
    pub kind: SearchKind,
    pub id: String,
    pub title: String,
    /// HTML: the matched words in `<b>…</b>`, everything else escaped.
    pub snippet: String,
    /// The fused score: `Σ 1/(60 + rank)` over the legs that found it.
    pub score: f64,
    /// 1-based rank in the BM25 leg; `null` when it did not find it.
    pub bm25_rank: Option<u32>,
    /// 1-based rank in the vector leg; `null` when it did not find it.
    pub vector_rank: Option<u32>,
}

impl From<Hit> for SearchItem {
    fn from(hit: Hit) -> Self {
        Self {
            kind: hit.kind.into(),
            id: hit.id,
            title: hit.title,
            snippet: hit.snippet,
            score: hit.score,
            bm25_rank: hit.bm25_rank,
            vector_rank: hit.vector_rank,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// Best first.
    pub items: Vec<SearchItem>,
}

fn index(state: &AppState) -> Result<&SearchIndex, ApiError> {
    state
        .read
        .search()
        .ok_or_else(|| ApiError::Internal("this server runs without a search index".into()))
}

/// A query's failure: the embedder's (the only source a query calls) is a 503.
fn query_error(error: ProjectionError) -> ApiError {
    match error {
        ProjectionError::Source(cause) => ApiError::DependencyUnavailable {
            what: "the embeddings provider",
            cause,
        },
        other => ApiError::Internal(Box::new(other)),
    }
}

fn check_query(field: &str, text: &str) -> Result<(), ApiError> {
    let chars = text.chars().count();
    if text.trim().is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if chars > MAX_QUERY_CHARS {
        return Err(ApiError::validation(
            field,
            format!("may have at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Search tasks and workflow runs.
///
/// Words (BM25 with English stemming) and embeddings (nearest neighbours), fused by
/// reciprocal rank fusion with k = 60. Only what the caller may read takes part in either
/// leg: their own documents and their teams' (a task or run of a team, while it belongs to
/// it; never another team's), or everyone's for auditors and admins. The index follows the
/// event feed, so a change shows here shortly after it is recorded.
#[utoipa::path(
    get,
    path = "/search",
    operation_id = "search",
    tag = "search",
    params(SearchParams),
    responses(
        (status = 200, description = "The best matches, best first", body = SearchResults),
        (status = 422, description = "An empty or too long `q`, or a bad `mode`, `limit` or `kind`"),
        (status = 503, description = "The embeddings provider did not answer (vector and hybrid modes); retry"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn search(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<SearchResults>, ApiError> {
    check_query("q", &params.q)?;
    let limit = params.limit.unwrap_or(10);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 100"));
    }
    let hits = index(&state)?
        .query(
            state.authz.readers(&actor),
            &params.q,
            params.mode.unwrap_or_default().into(),
            limit as usize,
            params.kind.map(DocKind::from),
        )
        .await
        .map_err(query_error)?;
    Ok(Json(SearchResults {
        items: hits.into_iter().map(SearchItem::from).collect(),
    }))
}

/// `POST /api/rag/context` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextRequest {
    /// What the context is for, 1 to 2000 characters.
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
    pub query: String,
    /// Documents to draw on, 1 to 100; 5 when absent.
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The longest context, in characters, 1 to 100000; 4000 when absent.
    #[schema(minimum = 1, maximum = 100000)]
    pub max_chars: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContextSource {
    pub kind: SearchKind,
    pub id: String,
    pub score: f64,
}

impl From<Source> for ContextSource {
    fn from(source: Source) -> Self {
        Self {
            kind: source.kind.into(),
            id: source.id,
            score: source.score,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RagContext {
    /// The documents' titles and texts, best first, `[kind id] title` before each; at most
    /// `max_chars` characters.
    pub context: String,
    /// The documents the context was made from, in its order.
    pub sources: Vec<ContextSource>,
}

/// Context for a language model.
///
/// Built from a hybrid search over what the caller may read (their own history and their
/// teams'; everyone's for auditors and admins): whole documents while they fit in `max_chars`.
#[utoipa::path(
    post,
    path = "/rag/context",
    operation_id = "rag_context",
    tag = "search",
    request_body = ContextRequest,
    responses(
        (status = 200, description = "The context and its sources", body = RagContext),
        (status = 400, description = "Malformed JSON"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An empty or too long `query`, or a bad `limit` or `max_chars`"),
        (status = 503, description = "The embeddings provider did not answer; retry"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn rag_context(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(request): ApiJson<ContextRequest>,
) -> Result<Json<RagContext>, ApiError> {
    check_query("query", &request.query)?;
    let limit = request.limit.unwrap_or(5);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 100"));
    }
    let max_chars = request.max_chars.unwrap_or(4_000);
    if !(1..=MAX_CONTEXT_CHARS).contains(&max_chars) {
        return Err(ApiError::validation(
            "max_chars",
            "must be between 1 and 100000",
        ));
    }
    let (context, sources) = index(&state)?
        .context(
            state.authz.readers(&actor),
            &request.query,
            limit as usize,
            max_chars as usize,
        )
        .await
        .map_err(query_error)?;
    Ok(Json(RagContext {
        context,
        sources: sources.into_iter().map(ContextSource::from).collect(),
    }))
}
