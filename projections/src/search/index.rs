//! The search index on local disk: tantivy for words, [`VectorIndex`] for embeddings,
//! folded from the event feed. Each tantivy commit carries the feed position it covers
//! (the commit payload), so index and checkpoint are one atomic write: after a crash the
//! index resumes from its own last commit, re-applying (delete by key, add) whatever came
//! after it. The vector index is not persisted: it is built from the vectors stored in
//! tantivy at start, so it can never disagree with the committed documents.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chronicle_aggregates::task::Task;
use chronicle_aggregates::workflow_run::WorkflowRun;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{AllQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

use super::document::{key_of, DocKind, SearchDoc};
use super::embedder::Embedder;
use super::schema::Fields;
use super::stats::StatisticsCache;
use super::vectors::{HnswParams, NewPoint, VectorIndex, VectorSearch};
use super::{NAME, VERSION};
use crate::feed::{EventSource, FeedCursor, RecordedEvent};
use crate::runner::{fold_next, ProjectionError, ProjectionFailure};

/// Events per live commit.
const BATCH: u32 = 500;
/// Events per read while rebuilding (one commit at the end).
const REBUILD_BATCH: u32 = 5_000;
/// The writer's memory before it flushes a segment (per indexing thread).
const WRITER_MEMORY: usize = 32_000_000;

/// What each commit records beside the documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    version: i64,
    embedder: String,
    transaction_id: u64,
    position: i64,
}

/// Why the index could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another server on this data dir holds the index's writer lock.
    #[error("the search index in {0} is in use by another process")]
    Busy(PathBuf),
    #[error(transparent)]
    Index(#[from] ProjectionError),
}

fn tantivy_error(error: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Rebuild(format!("search index: {error}"))
}

/// A handle on this node's search index; cheap to clone.
#[derive(Clone)]
pub struct SearchIndex {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) dir: PathBuf,
    pub(super) index: Index,
    pub(super) fields: Fields,
    pub(super) reader: IndexReader,
    writer: tokio::sync::Mutex<WriterState>,
    pub(super) vectors: RwLock<VectorIndex>,
    pub(super) embedder: Arc<dyn Embedder>,
    /// BM25 statistics of the alive documents, kept between searches.
    pub(super) statistics: StatisticsCache,
    committed: Mutex<FeedCursor>,
    failure: Mutex<Option<ProjectionFailure>>,
    /// Why the last catch-up stopped short (an embedder or feed error), until one succeeds.
    retrying: Mutex<Option<String>>,
    rebuilding: AtomicBool,
}

struct WriterState {
    writer: Arc<Mutex<IndexWriter>>,
    /// States written since the last commit (the searcher does not see them yet).
    pending: HashMap<String, (String, i64)>,
    /// Vector changes to apply once the documents they belong to are committed.
    staged: Vec<VectorChange>,
    /// Rebuilding: every document was deleted, the committed ones are not to be folded on.
    fresh: bool,
}

enum VectorChange {
    Upsert(NewPoint),
}

/// One document ready for the writer.
pub struct Prepared {
    pub doc: SearchDoc,
    pub state: String,
    pub version: i64,
}

impl SearchIndex {
    /// Opens (or creates) the index in `dir` and builds its vector index from the stored
    /// vectors. An index made by another projection version or embedder is emptied: it is
    /// built again from the first event.
    pub fn open(dir: &Path, embedder: Arc<dyn Embedder>) -> Result<Self, OpenError> {
        Self::open_with(dir, embedder, 1, WRITER_MEMORY)
    }

    /// [`SearchIndex::open`] with `threads` indexing threads of `memory` bytes each.
    pub fn open_with(
        dir: &Path,
        embedder: Arc<dyn Embedder>,
        threads: usize,
        memory: usize,
    ) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(tantivy_error)?;
        let (schema, fields) = Fields::schema();
        let directory = MmapDirectory::open(dir).map_err(tantivy_error)?;
        let index = match Index::open_or_create(directory, schema.clone()) {
            Ok(index) => index,
            // Another schema: an older version of this projection.
            Err(error) => {
                tracing::warn!(%error, "the search index is of another version; building it again");
                std::fs::remove_dir_all(dir).map_err(tantivy_error)?;
                std::fs::create_dir_all(dir).map_err(tantivy_error)?;
                Index::create_in_dir(dir, schema).map_err(tantivy_error)?
            }
        };
        let payload: Option<Payload> = index
            .load_metas()
            .map_err(tantivy_error)?
            .payload
            .and_then(|p| serde_json::from_str(&p).ok());
        let mut writer: IndexWriter = match index.writer_with_num_threads(threads.max(1), memory) {
            Ok(writer) => writer,
            Err(tantivy::TantivyError::LockFailure(..)) => {
                return Err(OpenError::Busy(dir.to_owned()))
            }
            Err(error) => return Err(tantivy_error(error).into()),
        };
        let cursor = match payload {
            Some(p) if p.version == VERSION && p.embedder == embedder.id() => FeedCursor {
                transaction_id: p.transaction_id,
                position: p.position,
            },
            other => {
                if other.is_some() {
                    tracing::info!(
                        embedder = embedder.id(),
                        "the search index was built by another version or embedder; building it again"
                    );
                }
                writer.delete_all_documents().map_err(tantivy_error)?;
                let mut prepared = writer.prepare_commit().map_err(tantivy_error)?;
                prepared.set_payload(&payload_of(embedder.id(), FeedCursor::default()));
                prepared.commit().map_err(tantivy_error)?;
                FeedCursor::default()
            }
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_error)?;
        let search = Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                index,
                fields,
                reader,
                writer: tokio::sync::Mutex::new(WriterState {
                    writer: Arc::new(Mutex::new(writer)),
                    pending: HashMap::new(),
                    staged: Vec::new(),
                    fresh: false,
                }),
                vectors: RwLock::new(VectorIndex::with_search(
                    0,
                    vector_search(embedder.as_ref()),
                )),
                embedder,
                statistics: StatisticsCache::default(),
                committed: Mutex::new(cursor),
                failure: Mutex::new(None),
                retrying: Mutex::new(None),
                rebuilding: AtomicBool::new(false),
            }),
        };
        let vectors = search.vectors_from_store()?;
        *search
            .inner
            .vectors
            .write()
            .unwrap_or_else(PoisonError::into_inner) = vectors;
        Ok(search)
    }

    /// The folder the index lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.inner.embedder
    }

    /// The feed position the last commit covers.
    pub fn committed(&self) -> FeedCursor {
        *self
            .inner
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn failure(&self) -> Option<ProjectionFailure> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why the last catch-up wrote nothing, while the next one has not succeeded: an
    /// embedder that cannot be reached or answers wrongly stops the index at the first
    /// batch it could not embed (nothing of it is written, nothing after it is skipped),
    /// and every catch-up tries that batch again.
    pub fn retrying(&self) -> Option<String> {
        self.inner
            .retrying
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_retrying(&self, why: Option<String>) {
        *self
            .inner
            .retrying
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = why;
    }

    pub fn is_rebuilding(&self) -> bool {
        self.inner.rebuilding.load(Ordering::Relaxed)
    }

    /// Documents in the committed index.
    pub fn len(&self) -> u64 {
        self.inner.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the index takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.inner.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or_default()
    }

    fn vector_search(&self) -> VectorSearch {
        vector_search(self.inner.embedder.as_ref())
    }

    /// The vector index built from the committed documents' stored vectors.
    fn vectors_from_store(&self) -> Result<VectorIndex, ProjectionError> {
        let searcher = self.inner.reader.searcher();
        let addresses = searcher
            .search(&AllQuery, &DocSetCollector)
            .map_err(tantivy_error)?;
        let fields = self.inner.fields;
        let mut points = Vec::with_capacity(addresses.len());
        for address in addresses {
            let doc: TantivyDocument = searcher.doc(address).map_err(tantivy_error)?;
            let text = |field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let Some(kind) = DocKind::parse(&text(fields.kind)) else {
                continue;
            };
            let vector = doc
                .get_first(fields.vector)
                .and_then(|v| v.as_bytes())
                .map(vector_of_bytes)
                .unwrap_or_default();
            let team = Some(text(fields.team)).filter(|team| !team.is_empty());
            points.push((text(fields.key), text(fields.owner), team, kind, vector));
        }
        let mut vectors = VectorIndex::with_search(points.len(), self.vector_search());
        vectors.upsert_all(points);
        Ok(vectors)
    }

    /// Applies everything the feed has after the index's own committed position, one
    /// commit per batch; returns how many events were read.
    pub async fn catch_up<S: EventSource>(&self, source: &S) -> Result<u64, ProjectionError> {
        let mut total = 0;
        loop {
            let applied = match self.step(source).await {
                Ok(applied) => {
                    self.set_retrying(None);
                    applied
                }
                Err(error) => {
                    if !matches!(error, ProjectionError::Failed { .. }) {
                        self.set_retrying(Some(error.to_string()));
                    }
                    return Err(error);
                }
            };
            total += applied;
            if applied < u64::from(BATCH) {
                return Ok(total);
            }
        }
    }

    async fn step<S: EventSource>(&self, source: &S) -> Result<u64, ProjectionError> {
        if let Some(failure) = self.failure() {
            return Err(ProjectionError::Failed {
                position: failure.position,
                message: failure.message,
            });
        }
        let mut state = self.inner.writer.lock().await;
        let cursor = self.committed();
        let events = source
            .events_after(cursor, BATCH)
            .await
            .map_err(ProjectionError::Source)?;
        let Some(last) = events.last().map(RecordedEvent::cursor) else {
            return Ok(0);
        };
        let applied = match self.apply(&mut state, &events).await {
            Ok(()) => self.commit(&mut state, last).await,
            Err(error) => Err(error),
        };
        if let Err(error) = applied {
            self.discard(&mut state).await;
            return Err(error);
        }
        Ok(events.len() as u64)
    }

    /// Builds the index again from the first event. Searches go on against the last
    /// commit meanwhile and live updates wait; the new documents and vectors appear at
    /// once, in one commit, when it has caught up. A crash meanwhile leaves the old index.
    /// `progress` gets (events applied, `total`).
    pub async fn rebuild<S: EventSource>(
        &self,
        source: &S,
        total: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64, ProjectionError> {
        let mut state = self.inner.writer.lock().await;
        self.inner.rebuilding.store(true, Ordering::Relaxed);
        let rebuilt = self
            .rebuild_locked(&mut state, source, total, progress)
            .await;
        if rebuilt.is_err() {
            self.discard(&mut state).await;
        } else {
            *self
                .inner
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        state.fresh = false;
        self.inner.rebuilding.store(false, Ordering::Relaxed);
        rebuilt
    }

    async fn rebuild_locked<S: EventSource>(
        &self,
        state: &mut WriterState,
        source: &S,
        total: u64,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64, ProjectionError> {
        state
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delete_all_documents()
            .map_err(tantivy_error)?;
        state.pending.clear();
        state.staged.clear();
        state.fresh = true;
        let mut cursor = FeedCursor::default();
        let mut applied = 0u64;
        loop {
            let events = source
                .events_after(cursor, REBUILD_BATCH)
                .await
                .map_err(ProjectionError::Source)?;
            let Some(last) = events.last().map(RecordedEvent::cursor) else {
                break;
            };
            self.apply(state, &events).await?;
            cursor = last;
            applied += events.len() as u64;
            progress(applied, total.max(applied));
        }
        self.commit(state, cursor).await?;
        Ok(applied)
    }

    /// Throws away what was written since the last commit.
    async fn discard(&self, state: &mut WriterState) {
        let writer = state.writer.clone();
        let rolled_back = tokio::task::spawn_blocking(move || {
            writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .rollback()
                .map(|_| ())
        })
        .await;
        if !matches!(rolled_back, Ok(Ok(()))) {
            tracing::error!("the search index writer could not roll back");
        }
        state.pending.clear();
        state.staged.clear();
    }

    /// Folds `events` onto the documents they belong to and writes the changed documents.
    async fn apply(
        &self,
        state: &mut WriterState,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let searcher = self.inner.reader.searcher();
        let mut changed: Vec<Prepared> = Vec::new();
        let mut slot: HashMap<String, usize> = HashMap::new();
        for event in events {
            let kind = match event.aggregate_type.as_str() {
                Task::TYPE => DocKind::Task,
                WorkflowRun::TYPE => DocKind::WorkflowRun,
                _ => continue,
            };
            let key = key_of(kind, &event.aggregate_id);
            let current = match state.pending.get(&key) {
                Some(current) => Some(current.clone()),
                None if state.fresh => None,
                None => self.stored_state(&searcher, &key)?,
            };
            let folded = match kind {
                DocKind::Task => fold_next::<Task>(current, event)
                    .map(|t| t.map(|t| (SearchDoc::of_task(&t), serde_json::to_string(&t)))),
                DocKind::WorkflowRun => fold_next::<WorkflowRun>(current, event)
                    .map(|r| r.map(|r| (SearchDoc::of_run(&r), serde_json::to_string(&r)))),
            };
            let folded = match folded {
                Ok(folded) => folded,
                Err(error) => {
                    self.fail(event, &error);
                    return Err(error);
                }
            };
            let Some((doc, json)) = folded else { continue };
            let json = json.map_err(|e| ProjectionError::event(event, e.to_string()))?;
            state
                .pending
                .insert(key.clone(), (json.clone(), event.sequence));
            let Some(doc) = doc else { continue };
            let prepared = Prepared {
                doc,
                state: json,
                version: event.sequence,
            };
            match slot.get(&key) {
                Some(&i) => changed[i] = prepared,
                None => {
                    slot.insert(key, changed.len());
                    changed.push(prepared);
                }
            }
        }
        self.write(state, changed).await
    }

    fn fail(&self, event: &RecordedEvent, error: &ProjectionError) {
        metrics::counter!("chronicle_projection_failures_total", "projection" => NAME).increment(1);
        tracing::error!(position = event.position, %error, "search projection stopped at an event");
        *self
            .inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(ProjectionFailure {
            position: event.position,
            message: error.to_string(),
        });
    }

    /// The stored state and version of a committed document.
    fn stored_state(
        &self,
        searcher: &Searcher,
        key: &str,
    ) -> Result<Option<(String, i64)>, ProjectionError> {
        let Some(doc) = self.find(searcher, key)? else {
            return Ok(None);
        };
        let fields = self.inner.fields;
        let state = doc
            .get_first(fields.state)
            .and_then(|v| v.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned());
        let version = doc.get_first(fields.version).and_then(|v| v.as_i64());
        Ok(state.zip(version))
    }

    /// The committed document with `key`.
    pub(super) fn find(
        &self,
        searcher: &Searcher,
        key: &str,
    ) -> Result<Option<TantivyDocument>, ProjectionError> {
        let term = Term::from_field_text(self.inner.fields.key, key);
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let top = searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())
            .map_err(tantivy_error)?;
        match top.first() {
            Some((_, address)) => Ok(Some(searcher.doc(*address).map_err(tantivy_error)?)),
            None => Ok(None),
        }
    }

    /// Embeds and writes (delete by key, add) `docs`, uncommitted.
    async fn write(
        &self,
        state: &mut WriterState,
        docs: Vec<Prepared>,
    ) -> Result<(), ProjectionError> {
        if docs.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = docs.iter().map(|p| p.doc.text()).collect();
        let embedder = &self.inner.embedder;
        let embedding_error = |message: String| {
            ProjectionError::Source(format!("embedder {}: {message}", embedder.id()).into())
        };
        let vectors = embedder
            .embed(&texts)
            .await
            .map_err(|e| embedding_error(e.to_string()))?;
        if vectors.len() != docs.len() {
            return Err(embedding_error(format!(
                "{} vectors for {} texts",
                vectors.len(),
                docs.len()
            )));
        }
        if let Some(wrong) = vectors.iter().find(|v| v.len() != embedder.dimension()) {
            return Err(embedding_error(format!(
                "a vector of {} dimensions, {} expected",
                wrong.len(),
                embedder.dimension()
            )));
        }
        let fields = self.inner.fields;
        let writer = state.writer.clone();
        let mut points = Vec::with_capacity(docs.len());
        let mut documents = Vec::with_capacity(docs.len());
        for (prepared, vector) in docs.into_iter().zip(vectors) {
            let doc = &prepared.doc;
            let mut document = TantivyDocument::default();
            document.add_text(fields.key, doc.key());
            document.add_text(fields.kind, doc.kind.as_str());
            document.add_text(fields.id, &doc.id);
            document.add_text(fields.owner, &doc.owner);
            if let Some(team) = &doc.team {
                document.add_text(fields.team, team);
            }
            document.add_text(fields.status, &doc.status);
            document.add_i64(fields.time, doc.time_ms);
            document.add_text(fields.title, &doc.title);
            document.add_text(fields.body, &doc.body);
            document.add_bytes(fields.state, prepared.state.as_bytes());
            document.add_i64(fields.version, prepared.version);
            document.add_bytes(fields.vector, &bytes_of_vector(&vector));
            documents.push((doc.key(), document));
            points.push((
                doc.key(),
                doc.owner.clone(),
                doc.team.clone(),
                doc.kind,
                vector,
            ));
        }
        let key_field = fields.key;
        tokio::task::spawn_blocking(move || {
            let writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, document) in documents {
                writer.delete_term(Term::from_field_text(key_field, &key));
                writer.add_document(document)?;
            }
            Ok::<_, tantivy::TantivyError>(())
        })
        .await
        .map_err(tantivy_error)?
        .map_err(tantivy_error)?;
        state
            .staged
            .extend(points.into_iter().map(VectorChange::Upsert));
        Ok(())
    }

    /// Commits what was written with `cursor` as the position it covers, then shows it
    /// to searches: the documents, then their vectors.
    async fn commit(
        &self,
        state: &mut WriterState,
        cursor: FeedCursor,
    ) -> Result<(), ProjectionError> {
        let writer = state.writer.clone();
        let payload = payload_of(self.inner.embedder.id(), cursor);
        tokio::task::spawn_blocking(move || {
            let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&payload);
            prepared.commit().map(|_| ())
        })
        .await
        .map_err(tantivy_error)?
        .map_err(tantivy_error)?;
        self.inner.reader.reload().map_err(tantivy_error)?;
        let staged = std::mem::take(&mut state.staged);
        let points: Vec<NewPoint> = staged
            .into_iter()
            .map(|VectorChange::Upsert(point)| point)
            .collect();
        if state.fresh {
            let mut fresh = VectorIndex::with_search(points.len(), self.vector_search());
            fresh.upsert_all(points);
            *self
                .inner
                .vectors
                .write()
                .unwrap_or_else(PoisonError::into_inner) = fresh;
        } else if !points.is_empty() {
            self.inner
                .vectors
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .upsert_all(points);
        }
        state.pending.clear();
        *self
            .inner
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = cursor;
        Ok(())
    }

    /// Writes documents that come from nowhere in the feed (the bench), committed with the
    /// position the index already had.
    pub async fn index_docs(&self, docs: Vec<SearchDoc>) -> Result<(), ProjectionError> {
        let mut state = self.inner.writer.lock().await;
        let prepared = docs
            .into_iter()
            .map(|doc| Prepared {
                doc,
                state: String::new(),
                version: 0,
            })
            .collect();
        let cursor = self.committed();
        let written = match self.write(&mut state, prepared).await {
            Ok(()) => self.commit(&mut state, cursor).await,
            Err(error) => Err(error),
        };
        if written.is_err() {
            self.discard(&mut state).await;
        }
        written
    }

    /// The vector index as committed, for the bench's recall.
    pub fn with_vectors<T>(&self, read: impl FnOnce(&VectorIndex) -> T) -> T {
        read(
            &self
                .inner
                .vectors
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Builds the vector index again from the stored vectors (what every start does), for
    /// the bench: the old one is dropped first (searches meanwhile find no vectors), so the
    /// two are never in memory together.
    pub fn reload_vectors(&self) -> Result<(), ProjectionError> {
        *self
            .inner
            .vectors
            .write()
            .unwrap_or_else(PoisonError::into_inner) =
            VectorIndex::with_search(0, self.vector_search());
        let vectors = self.vectors_from_store()?;
        *self
            .inner
            .vectors
            .write()
            .unwrap_or_else(PoisonError::into_inner) = vectors;
        Ok(())
    }
}

/// How the vectors of `embedder` are searched: exactly for a lexical embedder, by an HNSW
/// graph otherwise.
fn vector_search(embedder: &dyn Embedder) -> VectorSearch {
    if embedder.lexical() {
        VectorSearch::Exact
    } else {
        VectorSearch::Graph(HnswParams::default())
    }
}

fn payload_of(embedder: &str, cursor: FeedCursor) -> String {
    serde_json::to_string(&Payload {
        version: VERSION,
        embedder: embedder.to_owned(),
        transaction_id: cursor.transaction_id,
        position: cursor.position,
    })
    .unwrap_or_default()
}

fn bytes_of_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn vector_of_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
