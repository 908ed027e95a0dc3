//! Recomputes hash chains and names the first broken link of each aggregate, then checks
//! every aggregate's head against a chain checkpoint (the latest, or a published one).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::TryStreamExt;
use serde::Serialize;

use super::chain::{ChainLink, CHAIN_VERSION, GENESIS, HASH, PREV_HASH};
use super::checkpoint::{heads_at, merkle_root, Checkpoint, Head};
use super::{AggregateFilter, RecordedEvent, Store, StoreError};

/// The first event of an aggregate whose link does not hold, or an aggregate whose head
/// at the checkpoint is no longer in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    /// Why: `hash mismatch`, `prev_hash mismatch` or `sequence gap` (the chain), or, for
    /// the head at the checkpoint (at `sequence`): `head differs from checkpoint`
    /// (re-hashed), `truncated since checkpoint` (events cut off), `missing since
    /// checkpoint` (the whole aggregate deleted).
    pub reason: String,
}

/// The checkpoint that the heads were checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointCheck {
    pub position: i64,
    pub count: i64,
    pub root: String,
    pub created_at: DateTime<Utc>,
    /// `ok`; `mac not checked: no audit key` (the heads were still checked); or what makes
    /// the checkpoint fail: `mac mismatch` (forged), `chain version N unknown`, `heads do
    /// not match the root` (the stored heads were altered), `root mismatch` or `count
    /// mismatch` (the store's prefix differs from a published checkpoint whose heads are
    /// not stored), `last event missing`.
    pub status: String,
}

impl CheckpointCheck {
    fn holds(&self) -> bool {
        self.status == "ok" || self.status == NO_KEY
    }
}

const NO_KEY: &str = "mac not checked: no audit key";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events checked.
    pub checked: u64,
    pub ok: bool,
    pub broken: Vec<BrokenLink>,
    /// The store's chain version (`chain_info`); anything but the current one fails.
    pub chain_version: Option<i64>,
    /// Absent when the store has no checkpoint yet (and none was given).
    pub checkpoint: Option<CheckpointCheck>,
}

type Heads = HashMap<(String, String), (i64, String)>;

/// Verifies the chains that `filter` covers and the heads against `against`, or else the
/// store's latest checkpoint.
pub(super) async fn verify_store(
    store: &Store,
    filter: &AggregateFilter,
    against: Option<&Checkpoint>,
) -> Result<VerifyReport, StoreError> {
    let mut heads = None;
    let mut check = None;
    // Twice at most: a checkpoint recorded while its predecessor's heads were read drops
    // them, which is no tampering; the second look takes the new one.
    for _ in 0..2 {
        let (checkpoint, stored) = match against {
            Some(checkpoint) => (
                Some(checkpoint.clone()),
                store.find_checkpoint(checkpoint).await?,
            ),
            None => match store.latest_checkpoint_row().await? {
                Some((id, checkpoint)) => (Some(checkpoint), Some(id)),
                None => (None, None),
            },
        };
        let Some(checkpoint) = checkpoint else { break };
        let (status, found) = check_checkpoint(store, &checkpoint, stored).await?;
        heads = found.map(|list| covered(list, filter));
        let superseded = heads.is_none()
            && against.is_none()
            && store.latest_checkpoint_row().await?.map(|(id, _)| id) != stored;
        check = Some(CheckpointCheck {
            position: checkpoint.position,
            count: checkpoint.count,
            root: checkpoint.root,
            created_at: checkpoint.created_at,
            status,
        });
        if !superseded {
            break;
        }
    }
    let mut report = walk(store.scan(filter), heads.unwrap_or_default()).await?;
    report.chain_version = store.chain_version().await?;
    report.ok = report.broken.is_empty()
        && report.chain_version == Some(CHAIN_VERSION)
        && check.as_ref().is_none_or(CheckpointCheck::holds);
    report.checkpoint = check;
    Ok(report)
}

/// The checkpoint's status, and its heads when they are stored and match its root.
async fn check_checkpoint(
    store: &Store,
    checkpoint: &Checkpoint,
    stored: Option<i64>,
) -> Result<(String, Option<Vec<Head>>), StoreError> {
    if checkpoint.chain_version != CHAIN_VERSION {
        let version = checkpoint.chain_version;
        return Ok((format!("chain version {version} unknown"), None));
    }
    let mut status = match store.audit_key() {
        Some(key) if !checkpoint.mac_holds(key) => return Ok(("mac mismatch".into(), None)),
        Some(_) => "ok".to_owned(),
        None => NO_KEY.to_owned(),
    };
    if let Some(id) = stored {
        let mut heads = store.checkpoint_heads(id).await?;
        if merkle_root(&mut heads) != checkpoint.root {
            return Ok(("heads do not match the root".into(), None));
        }
        return Ok((status, Some(heads)));
    }
    match heads_at(store, checkpoint.position).await? {
        None => status = "last event missing".into(),
        Some((mut heads, count)) => {
            if merkle_root(&mut heads) != checkpoint.root {
                status = "root mismatch".into();
            } else if count != checkpoint.count {
                status = "count mismatch".into();
            }
        }
    }
    Ok((status, None))
}

fn covered(heads: Vec<Head>, filter: &AggregateFilter) -> Heads {
    heads
        .into_iter()
        .filter(|head| {
            filter
                .aggregate_type
                .as_ref()
                .is_none_or(|t| *t == head.aggregate_type)
                && filter
                    .aggregate_id
                    .as_ref()
                    .is_none_or(|i| *i == head.aggregate_id)
        })
        .map(|head| {
            (
                (head.aggregate_type, head.aggregate_id),
                (head.sequence, head.hash),
            )
        })
        .collect()
}

/// Walks `events` (ordered by aggregate, then sequence), checks every link, and checks
/// that each of `heads` is still in its aggregate's chain.
pub async fn verify(
    events: BoxStream<'_, Result<RecordedEvent, StoreError>>,
) -> Result<VerifyReport, StoreError> {
    walk(events, Heads::new()).await
}

async fn walk(
    mut events: BoxStream<'_, Result<RecordedEvent, StoreError>>,
    mut heads: Heads,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport {
        ok: true,
        ..VerifyReport::default()
    };
    let mut current: Option<(String, String)> = None;
    let mut last_sequence = 0;
    let mut expected_prev = GENESIS.to_owned();
    let mut expected_sequence = 1;
    let mut aggregate_broken = false;
    while let Some(event) = events.try_next().await? {
        report.checked += 1;
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        if current.as_ref() != Some(&key) {
            if let Some(done) = current.take() {
                end_of_aggregate(&mut report, &mut heads, done, last_sequence);
            }
            current = Some(key.clone());
            expected_prev = GENESIS.to_owned();
            expected_sequence = 1;
            aggregate_broken = false;
        }
        last_sequence = event.sequence;
        if let Some((sequence, hash)) = heads.get(&key) {
            if *sequence == event.sequence {
                if event.metadata_str(HASH) != Some(hash.as_str()) {
                    report.broken.push(BrokenLink {
                        aggregate_type: key.0.clone(),
                        aggregate_id: key.1.clone(),
                        sequence: *sequence,
                        reason: "head differs from checkpoint".into(),
                    });
                }
                heads.remove(&key);
            }
        }
        if aggregate_broken {
            continue;
        }
        if let Some(reason) = check(&event, &expected_prev, expected_sequence) {
            aggregate_broken = true;
            report.broken.push(BrokenLink {
                aggregate_type: event.aggregate_type,
                aggregate_id: event.aggregate_id,
                sequence: event.sequence,
                reason: reason.to_owned(),
            });
            continue;
        }
        expected_prev = event.metadata_str(HASH).unwrap_or_default().to_owned();
        expected_sequence += 1;
    }
    if let Some(done) = current.take() {
        end_of_aggregate(&mut report, &mut heads, done, last_sequence);
    }
    let mut missing: Vec<BrokenLink> = heads
        .into_iter()
        .map(
            |((aggregate_type, aggregate_id), (sequence, _))| BrokenLink {
                aggregate_type,
                aggregate_id,
                sequence,
                reason: "missing since checkpoint".into(),
            },
        )
        .collect();
    missing.sort_by(|a, b| {
        (&a.aggregate_type, &a.aggregate_id).cmp(&(&b.aggregate_type, &b.aggregate_id))
    });
    report.broken.extend(missing);
    report.ok = report.broken.is_empty();
    Ok(report)
}

/// An aggregate whose checkpoint head was never reached was cut short.
fn end_of_aggregate(
    report: &mut VerifyReport,
    heads: &mut Heads,
    aggregate: (String, String),
    last_sequence: i64,
) {
    if let Some((sequence, _)) = heads.remove(&aggregate) {
        if sequence > last_sequence {
            report.broken.push(BrokenLink {
                aggregate_type: aggregate.0,
                aggregate_id: aggregate.1,
                sequence,
                reason: "truncated since checkpoint".into(),
            });
        }
    }
}

fn check(
    event: &RecordedEvent,
    expected_prev: &str,
    expected_sequence: i64,
) -> Option<&'static str> {
    if event.sequence != expected_sequence {
        return Some("sequence gap");
    }
    if event.metadata_str(PREV_HASH) != Some(expected_prev) {
        return Some("prev_hash mismatch");
    }
    let recomputed = ChainLink {
        prev_hash: expected_prev,
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        sequence: u64::try_from(event.sequence).unwrap_or_default(),
        event_type: &event.event_type,
        event_version: &event.event_version,
        recorded_at: event.recorded_at,
        payload: &event.payload,
        metadata: &event.metadata,
    }
    .hash();
    match recomputed {
        Ok(hash) if Some(hash.as_str()) == event.metadata_str(HASH) => None,
        _ => Some("hash mismatch"),
    }
}
