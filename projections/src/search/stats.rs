//! BM25 statistics over the live documents only.
//!
//! A changed document is deleted and added again; tantivy keeps the deleted copy in its
//! segment until a merge drops it, and its own statistics (documents, tokens, document
//! frequency) go on counting it. The live index and one rebuilt from the events would then
//! score the same documents differently. [`AliveStatistics`] counts what a search can
//! find and nothing else, so both score alike:
//! - documents: the segments' alive documents;
//! - tokens of a field: the sum of the alive documents' field norms (what BM25 compares
//!   each document's length with), kept per segment and deletion count;
//! - document frequency: the term's postings in a segment without deletions, else the
//!   alive documents among them, kept per searcher generation.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tantivy::index::SegmentId;
use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Searcher, Term};

/// Document frequencies kept for one searcher generation, at most.
const DOC_FREQ_CACHE: usize = 65_536;

/// What [`AliveStatistics`] keeps between searches.
#[derive(Default)]
pub struct StatisticsCache {
    /// (segment, its deleted documents, field) → tokens of its alive documents.
    tokens: Mutex<HashMap<(SegmentId, u32, Field), u64>>,
    /// Searcher generation and the document frequencies counted for it.
    doc_freq: Mutex<(u64, HashMap<Term, u64>)>,
}

/// [`Bm25StatisticsProvider`] of one searcher that counts alive documents only.
pub struct AliveStatistics<'a> {
    searcher: &'a Searcher,
    cache: &'a StatisticsCache,
}

impl<'a> AliveStatistics<'a> {
    pub fn new(searcher: &'a Searcher, cache: &'a StatisticsCache) -> Self {
        Self { searcher, cache }
    }

    fn segment_tokens(
        &self,
        segment: &tantivy::SegmentReader,
        field: Field,
    ) -> tantivy::Result<u64> {
        let key = (segment.segment_id(), segment.num_deleted_docs(), field);
        if let Some(tokens) = self
            .cache
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(*tokens);
        }
        let norms = segment.get_fieldnorms_reader(field)?;
        let alive = |doc: DocId| segment.alive_bitset().is_none_or(|a| a.is_alive(doc));
        let tokens = (0..segment.max_doc())
            .filter(|&doc| alive(doc))
            .map(|doc| u64::from(norms.fieldnorm(doc)))
            .sum();
        let mut cached = self
            .cache
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Segments merged away or with more deletions since are of no further use.
        let current: Vec<(SegmentId, u32)> = self
            .searcher
            .segment_readers()
            .iter()
            .map(|s| (s.segment_id(), s.num_deleted_docs()))
            .collect();
        cached.retain(|(id, deleted, _), _| current.contains(&(*id, *deleted)));
        cached.insert(key, tokens);
        Ok(tokens)
    }

    fn count_doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let mut total = 0u64;
        for segment in self.searcher.segment_readers() {
            let inverted = segment.inverted_index(term.field())?;
            total += match segment.alive_bitset() {
                Some(alive) if segment.num_deleted_docs() > 0 => inverted
                    .read_postings(term, IndexRecordOption::Basic)?
                    .map_or(0, |postings| {
                        u64::from(postings.doc_freq_given_deletes(alive))
                    }),
                _ => u64::from(inverted.doc_freq(term)?),
            };
        }
        Ok(total)
    }
}

impl Bm25StatisticsProvider for AliveStatistics<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        let mut total = 0;
        for segment in self.searcher.segment_readers() {
            total += self.segment_tokens(segment, field)?;
        }
        Ok(total)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.searcher.num_docs())
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let generation = self.searcher.generation().generation_id();
        {
            let cached = self
                .cache
                .doc_freq
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if cached.0 == generation {
                if let Some(freq) = cached.1.get(term) {
                    return Ok(*freq);
                }
            }
        }
        let freq = self.count_doc_freq(term)?;
        let mut cached = self
            .cache
            .doc_freq
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cached.0 != generation || cached.1.len() >= DOC_FREQ_CACHE {
            *cached = (generation, HashMap::new());
        }
        cached.1.insert(term.clone(), freq);
        Ok(freq)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::builtin::BuiltinEmbedder;
    use super::super::{DocKind, Mode, Scope, SearchDoc, SearchIndex};

    fn doc(n: usize, body: &str) -> SearchDoc {
        SearchDoc {
            kind: DocKind::Task,
            id: format!("doc-{n:02}"),
            owner: "00000000-0000-4000-8000-000000000001".into(),
            team: None,
            status: "succeeded".into(),
            time_ms: 0,
            title: "note".into(),
            body: body.into(),
        }
    }

    fn open(dir: &std::path::Path) -> SearchIndex {
        SearchIndex::open_with(dir, Arc::new(BuiltinEmbedder), 1, 15_000_000).unwrap()
    }

    async fn bm25(index: &SearchIndex, q: &str) -> Vec<String> {
        index
            .query(Scope::All, q, Mode::Bm25, 10, None)
            .await
            .unwrap()
            .into_iter()
            .map(|hit| hit.id)
            .collect()
    }

    /// Two documents alike but for one word each: "amber" in 2 live documents (and in 8
    /// replaced copies), "basalt" in 4. Counting the replaced copies, amber would look the
    /// commoner word and rank its document second; counting live documents only, it is
    /// the rarer one and ranks first, as in an index built from the final documents.
    #[tokio::test]
    async fn replaced_documents_do_not_count_in_bm25() {
        let (live_dir, fresh_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let live = open(live_dir.path());
        let mut first = vec![doc(0, "amber quartz mica"), doc(1, "amber slate chalk")];
        first.extend((2..6).map(|n| doc(n, "basalt slate chalk")));
        first[2] = doc(2, "basalt quartz mica");
        first.extend((10..18).map(|n| doc(n, "amber flint chalk")));
        live.index_docs(first.clone()).await.unwrap();
        let replaced: Vec<SearchDoc> = (10..18).map(|n| doc(n, "zircon flint chalk")).collect();
        live.index_docs(replaced.clone()).await.unwrap();

        let fresh = open(fresh_dir.path());
        let mut last: Vec<SearchDoc> = first
            .into_iter()
            .filter(|d| d.id.as_str() < "doc-10")
            .collect();
        last.extend(replaced);
        fresh.index_docs(last).await.unwrap();

        assert_eq!(live.len(), fresh.len());
        let query = "amber basalt quartz";
        assert_eq!(bm25(&live, query).await[..2], ["doc-00", "doc-02"]);
        for q in [query, "amber", "basalt chalk", "zircon flint", "slate"] {
            assert_eq!(bm25(&live, q).await, bm25(&fresh, q).await, "{q}");
        }
    }
}
