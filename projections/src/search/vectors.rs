//! The vector index: HNSW (`hnsw_rs`) over the documents' embeddings, with each point's
//! owner, team and kind beside it so that a search is filtered inside the graph walk, and small
//! scopes (one user's few thousand documents) are searched exactly instead.
//!
//! HNSW has no delete: a changed document gets a new point and its old one is marked dead
//! (filtered out of every search); the index is built afresh from the stored vectors at
//! each start, which drops the dead points.

use std::collections::{HashMap, HashSet};

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;

use super::document::DocKind;

/// Graph degree and construction effort. With the builtin embedder's vectors of the bench's
/// synthetic documents these give a recall@10 of 0.28 at 100k documents (`bench search`):
/// far from the 0.95 goal.
const MAX_CONNECTIONS: usize = 16;
const MAX_LAYERS: usize = 16;
const EF_CONSTRUCTION: usize = 100;
/// Candidates kept while searching, at least.
const EF_SEARCH: usize = 96;
/// A scope with at most this many documents is searched exactly.
const EXACT_MAX: usize = 4_096;

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
    hnsw: Hnsw<'static, f32, CosineDistance>,
    points: Vec<Point>,
    by_key: HashMap<String, usize>,
    by_owner: HashMap<String, HashSet<usize>>,
    by_team: HashMap<String, HashSet<usize>>,
}

/// One point to add: key, owner, team, kind, vector.
pub type NewPoint = (String, String, Option<String>, DocKind, Vec<f32>);

impl VectorIndex {
    pub fn new(capacity: usize) -> Self {
        Self {
            hnsw: Hnsw::new(
                MAX_CONNECTIONS,
                capacity.max(1_000),
                MAX_LAYERS,
                EF_CONSTRUCTION,
                CosineDistance,
            ),
            points: Vec::with_capacity(capacity),
            by_key: HashMap::with_capacity(capacity),
            by_owner: HashMap::new(),
            by_team: HashMap::new(),
        }
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
        let batch: Vec<(&[f32], usize)> = inserted
            .iter()
            .map(|&id| (&*self.points[id].vector, id))
            .collect();
        if batch.len() > 64 {
            self.hnsw.parallel_insert_slice(&batch);
        } else {
            for item in batch {
                self.hnsw.insert_slice(item);
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
        if k == 0 {
            return Vec::new();
        }
        if filter.owner.is_none() && self.by_key.len() <= EXACT_MAX {
            return self.exact(query, k, filter);
        }
        if let Some(owner) = filter.owner {
            let sets: Vec<&HashSet<usize>> = std::iter::once(self.by_owner.get(owner))
                .chain(filter.teams.iter().map(|team| self.by_team.get(team)))
                .flatten()
                .collect();
            if sets.iter().map(|ids| ids.len()).sum::<usize>() <= EXACT_MAX {
                let mut ids: Vec<usize> = sets.into_iter().flatten().copied().collect();
                ids.sort_unstable();
                ids.dedup();
                return self.exact_among(query, k, filter, ids.into_iter());
            }
        }
        let admit = |id: &usize| self.points.get(*id).is_some_and(|p| filter.admits(p));
        self.hnsw
            .search_filter(query, k, EF_SEARCH.max(2 * k), Some(&admit))
            .into_iter()
            .filter_map(|n| {
                let point = self.points.get(n.d_id)?;
                filter
                    .admits(point)
                    .then_some((point.key.as_str(), 1.0 - n.distance))
            })
            .collect()
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
        let mut scored: Vec<(usize, f32)> = ids
            .filter(|&id| self.points.get(id).is_some_and(|p| filter.admits(p)))
            .map(|id| (id, dot(query, &self.points[id].vector)))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        // Equal scores in key order, not in insertion order (which a rebuild changes).
        let order = |a: &(usize, f32), b: &(usize, f32)| {
            b.1.total_cmp(&a.1)
                .then_with(|| self.points[a.0].key.cmp(&self.points[b.0].key))
        };
        scored.select_nth_unstable_by(k - 1, order);
        scored.truncate(k);
        scored.sort_by(order);
        scored
            .into_iter()
            .map(|(id, score)| (self.points[id].key.as_str(), score))
            .collect()
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

    #[test]
    fn a_replaced_or_removed_document_is_never_found() {
        let mut index = VectorIndex::new(10);
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

    #[test]
    fn an_owner_filter_admits_only_that_owners_documents() {
        let mut index = VectorIndex::new(100);
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
    #[test]
    fn a_team_filter_admits_the_team_s_documents_and_no_other_team_s() {
        let mut index = VectorIndex::new(100);
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
}
