//! Recomputes hash chains and names the first broken link of each aggregate.

use futures::stream::BoxStream;
use futures::TryStreamExt;
use serde::Serialize;

use super::chain::{ChainLink, GENESIS, HASH, PREV_HASH};
use super::{RecordedEvent, StoreError};

/// The first event of an aggregate whose link does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    /// Why: `hash mismatch`, `prev_hash mismatch` or `sequence gap`.
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events checked.
    pub checked: u64,
    pub ok: bool,
    pub broken: Vec<BrokenLink>,
}

/// Walks `events` (ordered by aggregate, then sequence) and checks every link.
pub async fn verify(
    mut events: BoxStream<'_, Result<RecordedEvent, StoreError>>,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport {
        ok: true,
        ..VerifyReport::default()
    };
    let mut current: Option<(String, String)> = None;
    let mut expected_prev = GENESIS.to_owned();
    let mut expected_sequence = 1;
    let mut aggregate_broken = false;
    while let Some(event) = events.try_next().await? {
        report.checked += 1;
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        if current.as_ref() != Some(&key) {
            current = Some(key);
            expected_prev = GENESIS.to_owned();
            expected_sequence = 1;
            aggregate_broken = false;
        }
        if aggregate_broken {
            continue;
        }
        if let Some(reason) = check(&event, &expected_prev, expected_sequence) {
            aggregate_broken = true;
            report.ok = false;
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
    Ok(report)
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
        payload: &event.payload,
        metadata: &event.metadata,
    }
    .hash();
    match recomputed {
        Ok(hash) if Some(hash.as_str()) == event.metadata_str(HASH) => None,
        _ => Some("hash mismatch"),
    }
}
