//! Searching the index: BM25 over the words, nearest neighbours over the embeddings, and
//! both fused by reciprocal rank fusion (RRF, k = 60: `score = Σ 1 / (60 + rank)` over the
//! legs that found the document). The owner-and-teams filter is inside both legs — a
//! tantivy term clause and the vector index's own filter — so nobody else's document (no
//! other team's) reaches a rank, a score or a snippet.

use std::collections::HashMap;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{TantivyDocument, Term};
use uuid::Uuid;

use super::document::DocKind;
use super::index::SearchIndex;
use super::stats::AliveStatistics;
use super::vectors::VectorFilter;
use crate::runner::ProjectionError;
use crate::scope::ReadScope;

/// The RRF constant.
pub const RRF_K: f64 = 60.0;
/// Candidates each leg brings to the fusion, at least.
const FUSION_DEPTH: usize = 50;
/// Longest snippet, in characters.
const SNIPPET_CHARS: usize = 200;

/// Whose documents a query may see: everyone's (auditors and admins), or one user's and
/// their teams' (`ReadScope::Of`).
pub type Scope = ReadScope;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Hybrid,
    Bm25,
    Vector,
}

/// One answer of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub kind: DocKind,
    pub id: String,
    pub title: String,
    /// HTML: the matched words in `<b>`, everything else escaped.
    pub snippet: String,
    /// The whole text, for RAG context.
    pub body: String,
    pub score: f64,
    /// 1-based rank in each leg that found it.
    pub bm25_rank: Option<u32>,
    pub vector_rank: Option<u32>,
}

/// A source of RAG context.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub kind: DocKind,
    pub id: String,
    pub score: f64,
}

impl SearchIndex {
    /// The `limit` best documents for `text` that `scope` may read, of `kind` if given.
    pub async fn query(
        &self,
        scope: Scope,
        text: &str,
        mode: Mode,
        limit: usize,
        kind: Option<DocKind>,
    ) -> Result<Vec<Hit>, ProjectionError> {
        if limit == 0 || text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let depth = limit.max(FUSION_DEPTH);
        let vector = match mode {
            Mode::Bm25 => None,
            Mode::Hybrid | Mode::Vector => Some(
                self.inner
                    .embedder
                    .embed(&[text.to_owned()])
                    .await
                    .map_err(ProjectionError::Source)?
                    .pop()
                    .unwrap_or_default(),
            ),
        };
        let searcher = self.inner.reader.searcher();
        let owner = scope.owner_param();
        let teams: Vec<String> = match &scope {
            Scope::All => Vec::new(),
            Scope::Of { team_ids, .. } => team_ids.iter().map(Uuid::to_string).collect(),
        };
        let words = self.words_query(text);
        let bm25 = match mode {
            Mode::Vector => Vec::new(),
            Mode::Bm25 | Mode::Hybrid => {
                let filtered = self.filtered(words.box_clone(), owner.as_deref(), &teams, kind);
                // Statistics of the alive documents: a rebuilt index scores alike.
                let statistics = AliveStatistics::new(&searcher, &self.inner.statistics);
                let mut scored = searcher
                    .search_with_statistics_provider(
                        &*filtered,
                        &TopDocs::with_limit(depth).order_by_score(),
                        &statistics,
                    )
                    .map_err(search_error)?
                    .into_iter()
                    .map(|(score, address)| {
                        searcher
                            .doc::<TantivyDocument>(address)
                            .map(|doc| (score, doc))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(search_error)?;
                // Equal scores in key order, not in the order documents sit in the index
                // (which a rebuild changes).
                let key = self.inner.fields.key;
                scored.sort_by(|(a_score, a), (b_score, b)| {
                    b_score
                        .total_cmp(a_score)
                        .then_with(|| text_of(a, key).cmp(&text_of(b, key)))
                });
                scored.into_iter().map(|(_, doc)| doc).collect()
            }
        };
        let nearest: Vec<String> = match &vector {
            None => Vec::new(),
            Some(vector) => self.with_vectors(|index| {
                index
                    .search(
                        vector,
                        depth,
                        VectorFilter {
                            owner: owner.as_deref(),
                            teams: &teams,
                            kind,
                        },
                    )
                    .into_iter()
                    .map(|(key, _)| key.to_owned())
                    .collect()
            }),
        };
        // Fuse by key; a document keeps its first-seen stored copy.
        let fields = self.inner.fields;
        let key_of = |doc: &TantivyDocument| text_of(doc, fields.key);
        let mut fused: HashMap<String, (f64, Option<u32>, Option<u32>, TantivyDocument)> =
            HashMap::new();
        for (rank, doc) in bm25.into_iter().enumerate() {
            let rank = rank as u32 + 1;
            let entry = fused.entry(key_of(&doc)).or_insert((0.0, None, None, doc));
            entry.0 += 1.0 / (RRF_K + f64::from(rank));
            entry.1 = Some(rank);
        }
        for (rank, key) in nearest.into_iter().enumerate() {
            let rank = rank as u32 + 1;
            if !fused.contains_key(&key) {
                // The committed copy, held to the same scope once more.
                let Some(doc) = self.find(&searcher, &key)? else {
                    continue;
                };
                let readable = owner.as_deref().is_none_or(|o| {
                    text_of(&doc, fields.owner) == o || teams.contains(&text_of(&doc, fields.team))
                });
                if !readable {
                    continue;
                }
                fused.insert(key.clone(), (0.0, None, None, doc));
            }
            if let Some(entry) = fused.get_mut(&key) {
                entry.0 += 1.0 / (RRF_K + f64::from(rank));
                entry.2 = Some(rank);
            }
        }
        let mut ranked: Vec<_> = fused.into_iter().collect();
        ranked.sort_by(|a, b| {
            b.1 .0
                .total_cmp(&a.1 .0)
                .then_with(|| rank_or_max(a.1 .1).cmp(&rank_or_max(b.1 .1)))
                .then_with(|| a.0.cmp(&b.0))
        });
        ranked.truncate(limit);
        let snippets = SnippetGenerator::create(&searcher, &*words, fields.body)
            .map(|mut generator| {
                generator.set_max_num_chars(SNIPPET_CHARS);
                generator
            })
            .ok();
        Ok(ranked
            .into_iter()
            .filter_map(|(_, (score, bm25_rank, vector_rank, doc))| {
                let kind = DocKind::parse(&text_of(&doc, fields.kind))?;
                let body = text_of(&doc, fields.body);
                let snippet = snippets
                    .as_ref()
                    .map(|g| g.snippet_from_doc(&doc))
                    .filter(|s| !s.is_empty())
                    .map(|s| s.to_html())
                    .unwrap_or_else(|| escape(&prefix(&body, SNIPPET_CHARS)));
                Some(Hit {
                    kind,
                    id: text_of(&doc, fields.id),
                    title: text_of(&doc, fields.title),
                    snippet,
                    body,
                    score,
                    bm25_rank,
                    vector_rank,
                })
            })
            .collect())
    }

    /// Context for a language model from the hybrid search: each hit's title and text,
    /// best first, whole hits only while they fit in `max_chars` (the first one cut to
    /// fit when even it does not).
    pub async fn context(
        &self,
        scope: Scope,
        text: &str,
        limit: usize,
        max_chars: usize,
    ) -> Result<(String, Vec<Source>), ProjectionError> {
        let hits = self.query(scope, text, Mode::Hybrid, limit, None).await?;
        let mut context = String::new();
        let mut sources = Vec::new();
        for hit in hits {
            let block = format!(
                "[{} {}] {}\n{}\n\n",
                hit.kind.as_str(),
                hit.id,
                hit.title,
                hit.body
            );
            let used = context.chars().count();
            let size = block.chars().count();
            if used + size > max_chars {
                if sources.is_empty() && max_chars > 0 {
                    context = prefix(&block, max_chars);
                    sources.push(Source {
                        kind: hit.kind,
                        id: hit.id,
                        score: hit.score,
                    });
                }
                break;
            }
            context.push_str(&block);
            sources.push(Source {
                kind: hit.kind,
                id: hit.id,
                score: hit.score,
            });
        }
        Ok((context.trim_end().to_owned(), sources))
    }

    /// The user's words as a tantivy query over title and body; a query the parser
    /// rejects (`"unbalanced`, `AND OR`, `field:`) is read as its plain words instead.
    fn words_query(&self, text: &str) -> Box<dyn Query> {
        let fields = self.inner.fields;
        let parser = QueryParser::for_index(&self.inner.index, vec![fields.title, fields.body]);
        match parser.parse_query(text) {
            Ok(query) if !references_other_fields(text) => query,
            _ => {
                // Lower case: `AND`, `OR` and `NOT` are words here, not operators.
                let plain: Vec<String> = text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_lowercase)
                    .collect();
                parser
                    .parse_query(&plain.join(" "))
                    .unwrap_or_else(|_| Box::new(BooleanQuery::new(Vec::new())))
            }
        }
    }

    /// `words`, held to the owner (or one of `teams`) and kind by clauses that do not
    /// change the score.
    fn filtered(
        &self,
        words: Box<dyn Query>,
        owner: Option<&str>,
        teams: &[String],
        kind: Option<DocKind>,
    ) -> Box<dyn Query> {
        let fields = self.inner.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, words)];
        let exact = |field, value: &str| -> Box<dyn Query> {
            Box::new(ConstScoreQuery::new(
                Box::new(TermQuery::new(
                    Term::from_field_text(field, value),
                    IndexRecordOption::Basic,
                )),
                0.0,
            ))
        };
        if let Some(owner) = owner {
            let readers: Vec<(Occur, Box<dyn Query>)> = std::iter::once(exact(fields.owner, owner))
                .chain(teams.iter().map(|team| exact(fields.team, team)))
                .map(|clause| (Occur::Should, clause))
                .collect();
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(readers))));
        }
        if let Some(kind) = kind {
            clauses.push((Occur::Must, exact(fields.kind, kind.as_str())));
        }
        Box::new(BooleanQuery::new(clauses))
    }
}

/// Does the query name a field (`owner:…`, `state:…`)? Such a query is read as plain
/// words: the user's query addresses the text only.
fn references_other_fields(text: &str) -> bool {
    text.contains(':')
}

fn rank_or_max(rank: Option<u32>) -> u32 {
    rank.unwrap_or(u32::MAX)
}

fn text_of(doc: &TantivyDocument, field: tantivy::schema::Field) -> String {
    doc.get_first(field)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn prefix(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn search_error(error: tantivy::TantivyError) -> ProjectionError {
    ProjectionError::Rebuild(format!("search: {error}"))
}
