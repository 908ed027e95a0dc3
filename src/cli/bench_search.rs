//! `chronicle bench search --docs N [--embedder builtin|local]`: the search index at scale,
//! in process, in a temporary folder.
//!
//! Indexes `N` synthetic task documents (words drawn from a Zipf-like vocabulary, 100
//! owners) through the index's own write path — embed, tantivy, HNSW, a commit per chunk —
//! then times 300 queries in each mode over everyone's documents, and measures the vector
//! leg's recall@10 against exact brute force over the same vectors (200 of the queries).
//! Recall counts a returned document as a true neighbour when it is at least as close as
//! the exact tenth (documents at the same distance are interchangeable). Ends with one line:
//! `search: index=<docs>/s bm25_p99=<ms> vector_p99=<ms> hybrid_p99=<ms> recall@10=<r> rss_mb=<n> index_mb=<n>`.
//!
//!     cargo run --release -- bench search --docs 100000
//!
//! `--ef 96,400,…` also measures recall@10 and the vector leg's p50/p99 at each HNSW search
//! depth (everyone's documents and one owner's), on the index's graph or, for an exact
//! index or another `--m`/`--ef-construction`, on a graph built for the sweep.
//!
//! Built with `--features bench-hora` and run with `--hora`, it also builds a `hora` HNSW index over the same
//! vectors (same graph degree and search depth) and prints its recall and query p99 on
//! stderr: the comparison behind the choice of `hnsw_rs`.

use std::time::{Duration, Instant};

use chronicle_projections::search::vectors::{HnswParams, VectorFilter, VectorIndex, VectorSearch};
use chronicle_projections::search::{DocKind, Mode, Scope, SearchDoc, SearchIndex};
use clap::Args;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Settings;

#[derive(Args)]
pub struct SearchArgs {
    /// Documents to index.
    #[arg(long, default_value_t = 100_000)]
    docs: usize,
    /// The embedder: `builtin`, or `local`, `openai`, `ollama` configured by
    /// CHRONICLE_EMBEDDINGS__* (`local` needs the `local-embeddings` build feature).
    #[arg(long, default_value = "builtin")]
    embedder: String,
    /// Queries per mode.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Also time building the vector index again from the stored vectors, as a start does.
    #[arg(long)]
    restart: bool,
    /// Also measure the vector leg's recall@10 and p99 keeping each of these many
    /// candidates (e.g. `--ef 96,256,512`), over everyone's documents and over one owner's;
    /// printed on stderr, one line each.
    #[arg(long, value_delimiter = ',')]
    ef: Vec<usize>,
    /// With `--ef`: sweep over a graph built again with this degree…
    #[arg(long)]
    m: Option<usize>,
    /// …and this construction effort (defaults: the index's own).
    #[arg(long)]
    ef_construction: Option<usize>,
    /// Also build `hora`'s HNSW over the same vectors and print its recall and p99.
    #[cfg(feature = "bench-hora")]
    #[arg(long)]
    hora: bool,
}

/// Queries the recall is measured on, at most.
const RECALL_QUERIES: usize = 200;
/// The `k` of recall@k.
const K: usize = 10;
/// Cosine rounding: a hit this close to the exact tenth's score counts as a tie.
const TIE: f32 = 1e-5;

/// Documents per commit while indexing.
const CHUNK: usize = 10_000;
const VOCABULARY: usize = 20_000;
const OWNERS: usize = 100;

pub async fn run(args: SearchArgs, settings: Settings) -> anyhow::Result<()> {
    let mut chosen = settings.embeddings.clone();
    chosen.provider = args.embedder.clone();
    let embedder = crate::app::embedder_from_settings(&chosen).await?;
    let dir = tempfile::tempdir()?;
    let index = SearchIndex::open_with(&dir.path().join("search"), embedder, 2, 200_000_000)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let words = vocabulary(VOCABULARY);
    let mut rng = StdRng::seed_from_u64(7);
    let started = Instant::now();
    let mut made = 0;
    while made < args.docs {
        let chunk = CHUNK.min(args.docs - made);
        let docs = (made..made + chunk)
            .map(|i| synthetic_doc(i, &words, &mut rng))
            .collect();
        index
            .index_docs(docs)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        made += chunk;
        eprintln!("indexed {made} documents");
    }
    let index_rate = args.docs as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "indexed at {index_rate:.0} documents/s ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    if args.restart {
        let reload = Instant::now();
        index.reload_vectors().map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!(
            "vector index rebuilt from the stored vectors in {:.2}s ({} points)",
            reload.elapsed().as_secs_f64(),
            index.with_vectors(|v| v.len())
        );
    }
    let queries: Vec<String> = (0..args.queries)
        .map(|_| {
            let n = rng.random_range(1..=3);
            (0..n)
                .map(|_| zipf_word(&words, &mut rng))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut p99 = Vec::new();
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for query in &queries {
            let sent = Instant::now();
            index
                .query(Scope::All, query, mode, 10, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            latencies.record(micros(sent.elapsed()))?;
        }
        p99.push(latencies.value_at_quantile(0.99) as f64 / 1000.0);
    }
    let embedder = index.embedder().clone();
    let sample = &queries[..queries.len().min(RECALL_QUERIES)];
    let vectors = embedder
        .embed(sample)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let all = VectorFilter {
        owner: None,
        teams: &[],
        kind: None,
    };
    let measured = Instant::now();
    let (exact, recall, key_recall) = index.with_vectors(|v| {
        let owned = |hits: Vec<(&str, f32)>| -> Vec<(String, f32)> {
            hits.into_iter().map(|(k, s)| (k.to_owned(), s)).collect()
        };
        let exact: Vec<_> = vectors.iter().map(|q| owned(v.exact(q, K, all))).collect();
        let mut took = Vec::with_capacity(vectors.len());
        let approximate: Vec<_> = vectors
            .iter()
            .map(|q| {
                let sent = Instant::now();
                let hits = owned(v.search(q, K, all));
                took.push(sent.elapsed());
                hits
            })
            .collect();
        took.sort();
        eprintln!(
            "vector index alone: p50={:.2}ms p99={:.2}ms (k={K})",
            took.get(took.len() / 2)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3),
            took.get(took.len() * 99 / 100)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        );
        let (recall, key_recall) = recall_of(&exact, &approximate);
        (exact, recall, key_recall)
    });
    eprintln!(
        "vector leg ({}): recall@{K}={recall:.3} (same keys as brute force: {key_recall:.3}) over {} queries; brute force took {:.1}s",
        index.with_vectors(|v| match v.search_kind() {
            VectorSearch::Graph(_) => "hnsw_rs graph",
            VectorSearch::Exact => "exact, by columns",
        }),
        vectors.len(),
        measured.elapsed().as_secs_f64()
    );
    if !args.ef.is_empty() {
        index.with_vectors(|v| sweep(v, &args, &vectors))?;
    }
    #[cfg(feature = "bench-hora")]
    if args.hora {
        index.with_vectors(|v| hora_compare(v, &vectors, &exact))?;
    }
    #[cfg(not(feature = "bench-hora"))]
    let _ = exact;
    println!(
        "search: index={index_rate:.0}/s bm25_p99={:.2} vector_p99={:.2} hybrid_p99={:.2} recall@10={recall:.3} rss_mb={} index_mb={}",
        p99[0],
        p99[1],
        p99[2],
        rss_mb(),
        index.disk_bytes() / 1_000_000
    );
    Ok(())
}

/// Recall@K and p99 of the vector leg at each `--ef`, over everyone's documents and over
/// one owner's (the scope a user's own search has), on a graph of `--m`/`--ef-construction`
/// when given.
fn sweep(v: &VectorIndex, args: &SearchArgs, queries: &[Vec<f32>]) -> anyhow::Result<()> {
    let defaults = HnswParams::default();
    let params = HnswParams {
        max_connections: args.m.unwrap_or(defaults.max_connections),
        ef_construction: args.ef_construction.unwrap_or(defaults.ef_construction),
        ..defaults
    };
    let rebuilt;
    let graph = if v.search_kind() == VectorSearch::Graph(params) {
        v
    } else {
        let built = Instant::now();
        rebuilt = v.rebuilt(params);
        eprintln!(
            "graph m={} ef_construction={} built in {:.1}s",
            params.max_connections,
            params.ef_construction,
            built.elapsed().as_secs_f64()
        );
        &rebuilt
    };
    let owner = format!("00000000-0000-4000-8000-{:012}", 0);
    let scopes = [
        (
            "all",
            VectorFilter {
                owner: None,
                teams: &[],
                kind: None,
            },
        ),
        (
            "owner",
            VectorFilter {
                owner: Some(&owner),
                teams: &[],
                kind: None,
            },
        ),
    ];
    let owned = |hits: Vec<(&str, f32)>| -> Vec<(String, f32)> {
        hits.into_iter().map(|(k, s)| (k.to_owned(), s)).collect()
    };
    for (name, filter) in scopes {
        let exact: Vec<_> = queries
            .iter()
            .map(|q| owned(graph.exact(q, K, filter)))
            .collect();
        for &ef in &args.ef {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut approximate = Vec::with_capacity(queries.len());
            for query in queries {
                let sent = Instant::now();
                let hits = owned(graph.search_ef(query, K, filter, ef));
                latencies.record(micros(sent.elapsed()))?;
                approximate.push(hits);
            }
            let (recall, key_recall) = recall_of(&exact, &approximate);
            eprintln!(
                "sweep m={} ef_construction={} ef={ef} scope={name}: recall@{K}={recall:.3} (same keys: {key_recall:.3}) vector_p50={:.2}ms vector_p99={:.2}ms",
                params.max_connections,
                params.ef_construction,
                latencies.value_at_quantile(0.5) as f64 / 1000.0,
                latencies.value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
    }
    Ok(())
}

/// Recall@K of `approximate` against `exact`, per query: the hits at least as close as the
/// exact K-th (ties count), and the hits that are the very documents brute force chose.
fn recall_of(exact: &[Vec<(String, f32)>], approximate: &[Vec<(String, f32)>]) -> (f64, f64) {
    let mut wanted = 0usize;
    let mut close = 0usize;
    let mut same = 0usize;
    for (exact, approximate) in exact.iter().zip(approximate) {
        let Some(&(_, kth)) = exact.last() else {
            continue;
        };
        wanted += exact.len();
        close += approximate
            .iter()
            .filter(|(_, score)| *score >= kth - TIE)
            .count()
            .min(exact.len());
        same += approximate
            .iter()
            .filter(|(key, _)| exact.iter().any(|(k, _)| k == key))
            .count();
    }
    let wanted = wanted.max(1) as f64;
    (close as f64 / wanted, same as f64 / wanted)
}

/// The same vectors in `hora`'s HNSW (graph degree and search depth as ours), its recall
/// and query p99 on the same queries: printed, not part of the summary line.
#[cfg(feature = "bench-hora")]
fn hora_compare(
    v: &chronicle_projections::search::vectors::VectorIndex,
    queries: &[Vec<f32>],
    exact: &[Vec<(String, f32)>],
) -> anyhow::Result<()> {
    use hora::core::ann_index::ANNIndex;
    use hora::core::metrics::Metric;
    use hora::index::hnsw_idx::HNSWIndex;
    use hora::index::hnsw_params::HNSWParams;

    let points: Vec<(&str, &[f32])> = v.live().collect();
    let dimension = points.first().map_or(1, |(_, v)| v.len());
    let params = HNSWParams::<f32>::default()
        .max_item(points.len() + 1)
        .n_neighbor(16)
        .n_neighbor0(32)
        .ef_build(100)
        .ef_search(96);
    let mut hora = HNSWIndex::<f32, usize>::new(dimension, &params);
    let built = Instant::now();
    for (id, (_, vector)) in points.iter().enumerate() {
        hora.add(vector, id)
            .map_err(|e| anyhow::anyhow!("hora: {e}"))?;
    }
    hora.build(Metric::DotProduct)
        .map_err(|e| anyhow::anyhow!("hora: {e}"))?;
    let build_secs = built.elapsed().as_secs_f64();
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut approximate = Vec::with_capacity(queries.len());
    for query in queries {
        let sent = Instant::now();
        let ids = hora.search(query, K);
        latencies.record(micros(sent.elapsed()))?;
        approximate.push(
            ids.into_iter()
                .filter_map(|id| points.get(id))
                .map(|(key, vector)| {
                    (
                        (*key).to_owned(),
                        chronicle_projections::search::vectors::dot(query, vector),
                    )
                })
                .collect::<Vec<_>>(),
        );
    }
    let (recall, key_recall) = recall_of(exact, &approximate);
    eprintln!(
        "hora: recall@{K}={recall:.3} (same keys as brute force: {key_recall:.3}) query_p99={:.2}ms build={build_secs:.1}s over {} points",
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        points.len()
    );
    Ok(())
}

/// Pronounceable made-up words, so stemming has little to fold.
fn vocabulary(size: usize) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "dor", "fen", "gal",
        "hux", "jin", "bel", "cor", "dax", "em", "ol", "ur", "yan", "wex",
    ];
    (0..size)
        .map(|mut i| {
            let mut word = String::new();
            for _ in 0..3 {
                word.push_str(SYLLABLES[i % SYLLABLES.len()]);
                i /= SYLLABLES.len();
            }
            word.push_str(SYLLABLES[i % SYLLABLES.len()]);
            word
        })
        .collect()
}

/// A word, the frequent ones far more often (rank ~ 1/u²).
fn zipf_word(words: &[String], rng: &mut StdRng) -> String {
    let u: f64 = rng.random_range(0.0..1.0);
    let rank = ((u * u * u) * words.len() as f64) as usize;
    words[rank.min(words.len() - 1)].clone()
}

fn synthetic_doc(i: usize, words: &[String], rng: &mut StdRng) -> SearchDoc {
    let length = rng.random_range(12..40);
    let body: Vec<String> = (0..length).map(|_| zipf_word(words, rng)).collect();
    SearchDoc {
        kind: DocKind::Task,
        id: format!("00000000-0000-7000-8000-{i:012}"),
        owner: format!("00000000-0000-4000-8000-{:012}", i % OWNERS),
        team: None,
        status: "succeeded".into(),
        time_ms: 1_700_000_000_000 + i as i64,
        title: format!("bench.{}", words[i % 50]),
        body: body.join(" "),
    }
}

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}
