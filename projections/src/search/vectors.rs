//! The vector index: HNSW (`hnsw_rs`) over the documents' embeddings, with each point's
//! owner, team and kind beside it so that a search is filtered inside the graph walk, and small
//! scopes (one user's few thousand documents) are searched exactly instead.
//!
//! A lexical embedder's vectors (the builtin one's hashed words and n-grams) are not
//! searched by a graph: a 1–3-word query is a handful of features against documents that are
//! dense sums of hundreds, and no walk over document-to-document edges leads to the few
//! documents that share the query's words (measured by `bench search --ef`: recall@10 0.28 at
//! ef 96, 0.51 at ef 1600 on 100k documents). Those indexes keep a column per dimension
//! instead and score every document exactly, touching only the query's non-zero dimensions.
//!
//! HNSW has no delete: a changed document gets a new point and its old one is marked dead
//! (filtered out of every search); the index is built afresh from the stored vectors at
//! each start, which drops the dead points.

use std::collections::{HashMap, HashSet};

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;

use super::document::DocKind;

/// A scope with at most this many documents is searched exactly.
const EXACT_MAX: usize = 4_096;

/// The graph's shape and how hard a search looks: degree, construction effort and the
/// candidates a search keeps. Measured with `bench search --ef … [--m … --ef-construction …]`
/// (README, Search): the defaults are the chosen point of that sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Neighbours per point on the upper layers (twice that on layer 0).
    pub max_connections: usize,
    /// Candidates kept while inserting.
    pub ef_construction: usize,
    /// Candidates kept while searching, at least (never fewer than twice `k`).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            max_connections: 16,
            ef_construction: 100,
            ef_search: 96,
        }
    }
}

const MAX_LAYERS: usize = 16;

/// Fixed point of the exact index's columns: a unit vector's components lie in [-1, 1], so
/// one step is 3·10⁻⁵ and a score's rounding at most √(non-zero dimensions) of that.
const COLUMN_SCALE: f32 = i16::MAX as f32;
/// The column scan keeps this many times `k` candidates, rescored exactly from the rows.
const RESCORED: usize = 4;

/// How the nearest documents are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorSearch {
    /// An HNSW graph: semantic embedders, whose vectors a graph walk navigates.
    Graph(HnswParams),
    /// Exact, from a column store: lexical embedders (see the module's documentation).
    Exact,
}

/// `1 - cosine` of unit vectors, never below 0 (rounding), as HNSW wants a distance.
#[derive(Debug, Clone, Copy, Default)]
pub struct CosineDistance;

impl Distance<f32> for CosineDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// The dot product, in eight lanes: a plain `zip().sum()` is one serial chain of float
/// additions the compiler may not reorder, this one vectorises (graph inserts and exact
/// scans are almost all dot products).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut lanes = [0.0f32; 8];
    for (x, y) in a8.zip(b8) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

struct Point {
    key: String,
    owner: String,
    team: Option<String>,
    kind: DocKind,
    vector: Box<[f32]>,
    live: bool,
}

/// Who may be found: everyone's documents, or one owner's and those of `teams`.
#[derive(Debug, Clone, Copy)]
pub struct VectorFilter<'a> {
    pub owner: Option<&'a str>,
    /// With an owner: the teams whose documents are found too.
    pub teams: &'a [String],
    pub kind: Option<DocKind>,
}

impl VectorFilter<'_> {
    fn admits(&self, point: &Point) -> bool {
        point.live
            && self.owner.is_none_or(|owner| {
                point.owner == owner
                    || point
                        .team
                        .as_ref()
                        .is_some_and(|team| self.teams.contains(team))
            })
            && self.kind.is_none_or(|kind| point.kind == kind)
    }
}

pub struct VectorIndex {
    search: VectorSearch,
    /// With [`VectorSearch::Graph`].
    hnsw: Option<Hnsw<'static, f32, CosineDistance>>,
    /// With [`VectorSearch::Exact`]: dimension `d` of every point, by point id, in fixed
    /// point (`round(v * COLUMN_SCALE)`): half the bytes a scan reads, which bound it.
    columns: Vec<Vec<i16>>,
    points: Vec<Point>,
    by_key: HashMap<String, usize>,
    by_owner: HashMap<String, HashSet<usize>>,
    by_team: HashMap<String, HashSet<usize>>,
}

/// One point to add: key, owner, team, kind, vector.
pub type NewPoint = (String, String, Option<String>, DocKind, Vec<f32>);

impl VectorIndex {
    /// A graph index of the default shape.
    pub fn new(capacity: usize) -> Self {
        Self::with_search(capacity, VectorSearch::Graph(HnswParams::default()))
    }

    pub fn with_search(capacity: usize, search: VectorSearch) -> Self {
        let hnsw = match search {
            VectorSearch::Graph(params) => Some(Hnsw::new(
                params.max_connections,
                capacity.max(1_000),
                MAX_LAYERS,
                params.ef_construction,
                CosineDistance,
            )),
            VectorSearch::Exact => None,
        };
        Self {
            search,
            hnsw,
            columns: Vec::new(),
            points: Vec::with_capacity(capacity),
            by_key: HashMap::with_capacity(capacity),
            by_owner: HashMap::new(),
            by_team: HashMap::new(),
        }
    }

    /// How this index searches.
    pub fn search_kind(&self) -> VectorSearch {
        self.search
    }

    /// Live documents.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Adds or replaces documents; the graph insertions run in parallel.
    pub fn upsert_all(&mut self, items: Vec<NewPoint>) {
        let mut inserted = Vec::with_capacity(items.len());
        for (key, owner, team, kind, vector) in items {
            if let Some(&old) = self.by_key.get(&key) {
                let point = &self.points[old];
                if *point.vector == vector[..] && point.owner == owner && point.team == team {
                    self.points[old].kind = kind;
                    continue;
                }
                self.remove(&key);
            }
            let id = self.points.len();
            self.by_key.insert(key.clone(), id);
            self.by_owner.entry(owner.clone()).or_default().insert(id);
            if let Some(team) = &team {
                self.by_team.entry(team.clone()).or_default().insert(id);
            }
            self.points.push(Point {
                key,
                owner,
                team,
                kind,
                vector: vector.into_boxed_slice(),
                live: true,
            });
            inserted.push(id);
        }
        let Some(hnsw) = &self.hnsw else {
            for &id in &inserted {
                let vector = &self.points[id].vector;
                if self.columns.is_empty() {
                    self.columns = vec![Vec::new(); vector.len()];
                }
                for (d, column) in self.columns.iter_mut().enumerate() {
                    column.resize(id, 0);
                    let value = vector.get(d).copied().unwrap_or(0.0).clamp(-1.0, 1.0);
                    column.push((value * COLUMN_SCALE).round() as i16);
                }
            }
            return;
        };
        let batch: Vec<(&[f32], usize)> = inserted
            .iter()
            .map(|&id| (&*self.points[id].vector, id))
            .collect();
        if batch.len() > 64 {
            hnsw.parallel_insert_slice(&batch);
        } else {
            for item in batch {
                hnsw.insert_slice(item);
            }
        }
    }

    /// The live documents' keys and vectors (the bench compares other indexes on them).
    pub fn live(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.points
            .iter()
            .filter(|p| p.live)
            .map(|p| (p.key.as_str(), &*p.vector))
    }

    /// The live documents in a new graph of `params` (the bench compares graph shapes).
    pub fn rebuilt(&self, params: HnswParams) -> Self {
        let mut index = Self::with_search(self.len(), VectorSearch::Graph(params));
        index.upsert_all(
            self.points
                .iter()
                .filter(|p| p.live)
                .map(|p| {
                    (
                        p.key.clone(),
                        p.owner.clone(),
                        p.team.clone(),
                        p.kind,
                        p.vector.to_vec(),
                    )
                })
                .collect(),
        );
        index
    }

    pub fn remove(&mut self, key: &str) {
        if let Some(id) = self.by_key.remove(key) {
            let point = &mut self.points[id];
            point.live = false;
            if let Some(ids) = self.by_owner.get_mut(&point.owner) {
                ids.remove(&id);
            }
            if let Some(ids) = point.team.as_ref().and_then(|t| self.by_team.get_mut(t)) {
                ids.remove(&id);
            }
        }
    }

    /// The `k` nearest documents `filter` admits, nearest first, with their cosine.
    pub fn search(&self, query: &[f32], k: usize, filter: VectorFilter<'_>) -> Vec<(&str, f32)> {
        let ef = match self.search {
            VectorSearch::Graph(params) => params.ef_search,
            VectorSearch::Exact => 0,
        };
        self.search_ef(query, k, filter, ef)
    }

    /// [`VectorIndex::search`] keeping `ef` candidates (the bench's sweep).
    pub fn search_ef(
        &self,
        query: &[f32],
        k: usize,
        filter: VectorFilter<'_>,
        ef: usize,
    ) -> Vec<(&str, f32)> {
        if k == 0 {
            return Vec::new();
        }
        let Some(hnsw) = &self.hnsw else {
            // Exact: a scope of few documents (one owner's among many) by its rows, a large
            // one (everyone's, or the one user of a single-user node) by the columns.
            return match self.scope_size(filter) {
                Some(size) if size * 8 < self.points.len() => {
                    self.exact_among(query, k, filter, self.scope_ids(filter).into_iter())
                }
                _ => self.scan_columns(query, k, filter),
            };
        };
        if filter.owner.is_none() && self.by_key.len() <= EXACT_MAX {
            return self.exact(query, k, filter);
        }
        if self
            .scope_size(filter)
            .is_some_and(|size| size <= EXACT_MAX)
        {
            return self.exact_among(query, k, filter, self.scope_ids(filter).into_iter());
        }
        let admit = |id: &usize| self.points.get(*id).is_some_and(|p| filter.admits(p));
        hnsw.search_filter(query, k, ef.max(2 * k), Some(&admit))
            .into_iter()
            .filter_map(|n| {
                let point = self.points.get(n.d_id)?;
                filter
                    .admits(point)
                    .then_some((point.key.as_str(), 1.0 - n.distance))
            })
            .collect()
    }

    /// The id sets of an owner's documents and their teams'; none for a filter without an
    /// owner (everyone's).
    fn scope_sets<'a>(
        &'a self,
        filter: VectorFilter<'a>,
    ) -> impl Iterator<Item = &'a HashSet<usize>> + 'a {
        filter.owner.into_iter().flat_map(move |owner| {
            std::iter::once(self.by_owner.get(owner))
                .chain(filter.teams.iter().map(|team| self.by_team.get(team)))
                .flatten()
        })
    }

    /// How many documents a scope holds at most (a team document of the owner counts
    /// twice), counted without collecting them; `None` for everyone's.
    fn scope_size(&self, filter: VectorFilter<'_>) -> Option<usize> {
        filter.owner?;
        Some(self.scope_sets(filter).map(HashSet::len).sum())
    }

    /// The ids of an owner's documents and their teams', in id order.
    fn scope_ids(&self, filter: VectorFilter<'_>) -> Vec<usize> {
        let mut ids: Vec<usize> = self.scope_sets(filter).flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every document scored from the columns of the query's non-zero dimensions, a block
    /// of documents at a time (the block's scores stay in the L1 cache while each column
    /// adds to them), keeping the best `RESCORED × k` admitted so far (a score below the
    /// current last is dropped without looking at its document); those are scored again
    /// exactly from their rows, and the best `k` of them answer.
    fn scan_columns(&self, query: &[f32], k: usize, filter: VectorFilter<'_>) -> Vec<(&str, f32)> {
        const BLOCK: usize = 2_048;
        let weights: Vec<(&[i16], f32)> = self
            .columns
            .iter()
            .zip(query)
            .filter(|(_, w)| **w != 0.0)
            .map(|(column, w)| (column.as_slice(), *w / COLUMN_SCALE))
            .collect();
        let kept = RESCORED * k;
        let n = self.points.len();
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(2 * kept + 1);
        let mut floor = f32::NEG_INFINITY;
        let mut block = [0.0f32; BLOCK];
        let mut start = 0;
        while start < n {
            let len = BLOCK.min(n - start);
            let scores = &mut block[..len];
            scores.fill(0.0);
            for &(column, weight) in &weights {
                let Some(values) = column.get(start..start + len) else {
                    continue;
                };
                for (score, value) in scores.iter_mut().zip(values) {
                    *score += weight * f32::from(*value);
                }
            }
            for (offset, &score) in scores.iter().enumerate() {
                if score < floor {
                    continue;
                }
                let id = start + offset;
                if !self.points.get(id).is_some_and(|p| filter.admits(p)) {
                    continue;
                }
                best.push((id, score));
                if best.len() > 2 * kept {
                    best = self.top_ids(best, kept);
                    floor = best.last().map_or(f32::NEG_INFINITY, |b| b.1);
                }
            }
            start += len;
        }
        let ids = best.into_iter().map(|(id, _)| id);
        self.exact_among(query, k, filter, ids)
    }

    /// The exact `k` nearest (brute force): small scopes, and the bench's ground truth.
    pub fn exact(&self, query: &[f32], k: usize, filter: VectorFilter<'_>) -> Vec<(&str, f32)> {
        self.exact_among(query, k, filter, 0..self.points.len())
    }

    fn exact_among(
        &self,
        query: &[f32],
        k: usize,
        filter: VectorFilter<'_>,
        ids: impl Iterator<Item = usize>,
    ) -> Vec<(&str, f32)> {
        // A sparse query (a lexical embedder's few features) reads only its non-zero
        // dimensions of each row.
        let sparse: Vec<(usize, f32)> = query
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0.0)
            .map(|(d, w)| (d, *w))
            .collect();
        let score = |row: &[f32]| -> f32 {
            if sparse.len() * 4 <= query.len() {
                sparse
                    .iter()
                    .map(|&(d, w)| w * row.get(d).copied().unwrap_or(0.0))
                    .sum()
            } else {
                dot(query, row)
            }
        };
        let scored = ids
            .filter(|&id| self.points.get(id).is_some_and(|p| filter.admits(p)))
            .map(|id| (id, score(&self.points[id].vector)))
            .collect();
        self.top(scored, k)
    }

    /// The `k` best of `scored`, best first; equal scores in key order, not in insertion
    /// order (which a rebuild changes).
    fn top(&self, scored: Vec<(usize, f32)>, k: usize) -> Vec<(&str, f32)> {
        self.top_ids(scored, k)
            .into_iter()
            .map(|(id, score)| (self.points[id].key.as_str(), score))
            .collect()
    }

    fn top_ids(&self, mut scored: Vec<(usize, f32)>, k: usize) -> Vec<(usize, f32)> {
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        let order = |a: &(usize, f32), b: &(usize, f32)| {
            b.1.total_cmp(&a.1)
                .then_with(|| self.points[a.0].key.cmp(&self.points[b.0].key))
        };
        scored.select_nth_unstable_by(k - 1, order);
        scored.truncate(k);
        scored.sort_by(order);
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2_000) as f32 / 1_000.0 - 1.0
            })
            .collect();
        crate::search::builtin::normalise(&mut v);
        v
    }

    #[test]
    fn the_laned_dot_product_is_the_dot_product() {
        for dim in [1, 7, 8, 13, 256] {
            let (a, b) = (unit(5, dim), unit(6, dim));
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-5, "{dim}");
        }
    }

    const BOTH: [VectorSearch; 2] = [
        VectorSearch::Graph(HnswParams {
            max_connections: 16,
            ef_construction: 100,
            ef_search: 96,
        }),
        VectorSearch::Exact,
    ];

    #[rstest::rstest]
    fn a_replaced_or_removed_document_is_never_found(
        #[values(BOTH[0], BOTH[1])] search: VectorSearch,
    ) {
        let mut index = VectorIndex::with_search(10, search);
        let all = VectorFilter {
            owner: None,
            teams: &[],
            kind: None,
        };
        index.upsert_all(vec![
            (
                "task:a".into(),
                "u1".into(),
                None,
                DocKind::Task,
                unit(1, 16),
            ),
            (
                "task:b".into(),
                "u2".into(),
                None,
                DocKind::Task,
                unit(2, 16),
            ),
        ]);
        index.upsert_all(vec![(
            "task:a".into(),
            "u1".into(),
            None,
            DocKind::Task,
            unit(3, 16),
        )]);
        let hits = index.search(&unit(1, 16), 10, all);
        assert_eq!(hits.iter().filter(|(k, _)| *k == "task:a").count(), 1);
        index.remove("task:b");
        assert!(index
            .search(&unit(2, 16), 10, all)
            .iter()
            .all(|(k, _)| *k != "task:b"));
        assert_eq!(index.len(), 1);
    }

    #[rstest::rstest]
    fn an_owner_filter_admits_only_that_owners_documents(
        #[values(BOTH[0], BOTH[1])] search: VectorSearch,
    ) {
        let mut index = VectorIndex::with_search(100, search);
        let points = (0..200)
            .map(|i| {
                (
                    format!("task:{i}"),
                    format!("u{}", i % 2),
                    None,
                    DocKind::Task,
                    unit(i, 16),
                )
            })
            .collect();
        index.upsert_all(points);
        let filter = VectorFilter {
            owner: Some("u1"),
            teams: &[],
            kind: None,
        };
        let hits = index.search(&unit(4, 16), 20, filter);
        assert_eq!(hits.len(), 20);
        assert!(hits
            .iter()
            .all(|(k, _)| k.trim_start_matches("task:").parse::<u64>().unwrap() % 2 == 1));
    }

    /// With teams, a scope admits its owner's documents and its teams', and a document
    /// taken from a team (upserted without it) leaves the team's searches at once.
    #[rstest::rstest]
    fn a_team_filter_admits_the_team_s_documents_and_no_other_team_s(
        #[values(BOTH[0], BOTH[1])] search: VectorSearch,
    ) {
        let mut index = VectorIndex::with_search(100, search);
        let team = |i: u64| match i % 3 {
            0 => Some("t1".to_owned()),
            1 => Some("t2".to_owned()),
            _ => None,
        };
        let points = (0..300)
            .map(|i| {
                (
                    format!("task:{i}"),
                    format!("u{}", i % 5),
                    team(i),
                    DocKind::Task,
                    unit(i, 16),
                )
            })
            .collect();
        index.upsert_all(points);
        let teams = vec!["t1".to_owned()];
        let filter = VectorFilter {
            owner: Some("u9"),
            teams: &teams,
            kind: None,
        };
        let hits = index.search(&unit(7, 16), 1000, filter);
        assert_eq!(hits.len(), 100, "every document of t1, none other");
        assert!(hits
            .iter()
            .all(|(k, _)| k.trim_start_matches("task:").parse::<u64>().unwrap() % 3 == 0));
        index.upsert_all(vec![(
            "task:0".into(),
            "u0".into(),
            None,
            DocKind::Task,
            unit(0, 16),
        )]);
        let hits = index.search(&unit(0, 16), 1000, filter);
        assert_eq!(hits.len(), 99);
        assert!(hits.iter().all(|(k, _)| *k != "task:0"));
    }

    /// The exact index's column scan (everyone's documents) and its id scan (one owner's)
    /// find what brute force over the rows finds, with sparse and dense queries, after
    /// documents were replaced and removed (their old column entries stay, dead).
    #[test]
    fn the_exact_index_answers_what_brute_force_answers() {
        let mut index = VectorIndex::with_search(0, VectorSearch::Exact);
        let sparse = |seed: u64| {
            let mut v = vec![0.0f32; 64];
            for d in 0..4 {
                v[((seed * 7 + d * 13) % 64) as usize] = 1.0 + d as f32;
            }
            crate::search::builtin::normalise(&mut v);
            v
        };
        // u7 owns a scope small enough to be scored by its rows, u0..u2 large ones.
        let owner_of = |i: u64| {
            if i % 50 == 1 {
                "u7".to_owned()
            } else {
                format!("u{}", i % 3)
            }
        };
        let points = (0..6_000u64)
            .map(|i| {
                (
                    format!("task:{i}"),
                    owner_of(i),
                    None,
                    if i % 4 == 0 {
                        DocKind::WorkflowRun
                    } else {
                        DocKind::Task
                    },
                    unit(i, 64),
                )
            })
            .collect();
        index.upsert_all(points);
        index.upsert_all(
            (0..500u64)
                .map(|i| {
                    (
                        format!("task:{i}"),
                        owner_of(i),
                        None,
                        DocKind::Task,
                        unit(i + 90_000, 64),
                    )
                })
                .collect(),
        );
        for i in 500..700u64 {
            index.remove(&format!("task:{i}"));
        }
        assert_eq!(index.len(), 5_800);
        let (owner, rare) = ("u1".to_owned(), "u7".to_owned());
        for filter in [
            VectorFilter {
                owner: Some(&rare),
                teams: &[],
                kind: None,
            },
            VectorFilter {
                owner: None,
                teams: &[],
                kind: None,
            },
            VectorFilter {
                owner: None,
                teams: &[],
                kind: Some(DocKind::WorkflowRun),
            },
            VectorFilter {
                owner: Some(&owner),
                teams: &[],
                kind: None,
            },
        ] {
            for query in [sparse(3), sparse(11), unit(42, 64), unit(7, 64)] {
                let found = index.search(&query, 10, filter);
                let truth = index.exact(&query, 10, filter);
                assert_eq!(found.len(), 10);
                let keys =
                    |hits: &[(&str, f32)]| hits.iter().map(|h| h.0.to_owned()).collect::<Vec<_>>();
                assert_eq!(keys(&found), keys(&truth), "{filter:?}");
                for ((_, a), (_, b)) in found.iter().zip(&truth) {
                    assert!((a - b).abs() < 1e-5);
                }
            }
        }
    }
}
