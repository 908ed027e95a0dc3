//! The per-aggregate hash chain that makes the history tamper-evident.
//!
//! Chain version 2 (the only one; a store records it in `chain_info`):
//! `hash = sha256("chronicle-chain/v2" ‖ prev_hash ‖ aggregate_type ‖ aggregate_id ‖
//! sequence ‖ event_type ‖ event_version ‖ recorded_at ‖ canonical payload ‖ canonical
//! metadata)`, each field length-prefixed so no two different events can concatenate to the
//! same bytes. `recorded_at` is set by the application at append time, truncated to
//! microseconds (what PostgreSQL's `timestamptz` keeps) and hashed as RFC 3339 UTC with six
//! fractional digits, exactly as stored; `as_of` reads that same stored value. JSON is canonicalised with
//! RFC 8785 (JCS), so key order and whitespace in storage do not matter. The metadata
//! (actor, correlation, …) is covered too — minus the two hash fields — so an auditor can
//! trust who did what, not only what was done.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The formula's version; bumped whenever the hashed fields change.
pub const CHAIN_VERSION: i64 = 2;
const DOMAIN: &str = "chronicle-chain/v2";

/// `prev_hash` of the first event of every aggregate.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Metadata keys that carry the chain itself and so are not hashed.
pub const PREV_HASH: &str = "prev_hash";
pub const HASH: &str = "hash";

/// The fields of one event that the chain covers.
pub struct ChainLink<'a> {
    pub prev_hash: &'a str,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub recorded_at: DateTime<Utc>,
    pub payload: &'a Value,
    pub metadata: &'a Value,
}

/// Now, at the precision every backend stores: what an append records and hashes.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `recorded_at` as hashed and as SQLite stores it: `2026-12-01T21:33:55.123456Z`.
pub fn format_recorded_at(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl ChainLink<'_> {
    /// The hex SHA-256 of this link.
    pub fn hash(&self) -> Result<String, serde_json::Error> {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(DOMAIN.as_bytes());
        field(self.prev_hash.as_bytes());
        field(self.aggregate_type.as_bytes());
        field(self.aggregate_id.as_bytes());
        field(self.sequence.to_string().as_bytes());
        field(self.event_type.as_bytes());
        field(self.event_version.as_bytes());
        field(format_recorded_at(self.recorded_at).as_bytes());
        field(&serde_jcs::to_vec(self.payload)?);
        field(&serde_jcs::to_vec(&hashed_metadata(self.metadata))?);
        Ok(hex::encode(hasher.finalize()))
    }
}

fn hashed_metadata(metadata: &Value) -> Value {
    match metadata {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| key.as_str() != PREV_HASH && key.as_str() != HASH)
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link<'a>(payload: &'a Value, metadata: &'a Value) -> ChainLink<'a> {
        ChainLink {
            prev_hash: GENESIS,
            aggregate_type: "task",
            aggregate_id: "a",
            sequence: 1,
            event_type: "TaskCreated",
            event_version: "1.0",
            recorded_at: DateTime::from_timestamp_micros(1_796_000_000_123_456).unwrap_or_default(),
            payload,
            metadata,
        }
    }

    #[test]
    fn key_order_and_chain_fields_do_not_matter() {
        let a = link(&json!({"x": 1, "y": [1.5, "z"]}), &json!({"actor": "u"}))
            .hash()
            .unwrap();
        let b = link(
            &json!({"y": [1.5, "z"], "x": 1}),
            &json!({"actor": "u", "hash": "ignored", "prev_hash": "ignored"}),
        )
        .hash()
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn every_field_is_covered() {
        let payload = json!({"x": 1});
        let metadata = json!({"actor": "u"});
        let base = link(&payload, &metadata).hash().unwrap();
        let other_payload = json!({"x": 2});
        let other_metadata = json!({"actor": "v"});
        let variants = [
            ChainLink {
                prev_hash: "1",
                ..link(&payload, &metadata)
            },
            ChainLink {
                aggregate_id: "b",
                ..link(&payload, &metadata)
            },
            ChainLink {
                sequence: 2,
                ..link(&payload, &metadata)
            },
            ChainLink {
                event_version: "2.0",
                ..link(&payload, &metadata)
            },
            ChainLink {
                recorded_at: link(&payload, &metadata).recorded_at
                    + chrono::Duration::microseconds(1),
                ..link(&payload, &metadata)
            },
            link(&other_payload, &metadata),
            link(&payload, &other_metadata),
        ];
        for variant in variants {
            assert_ne!(variant.hash().unwrap(), base);
        }
    }

    #[test]
    fn recorded_at_is_hashed_at_microsecond_precision() {
        let at = DateTime::from_timestamp_nanos(1_796_000_000_123_456_789);
        assert_eq!(
            format_recorded_at(at.trunc_subsecs(6)),
            "2026-11-30T00:53:20.123456Z"
        );
        let now = now();
        assert_eq!(now, now.trunc_subsecs(6));
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let payload = json!({});
        let metadata = json!({});
        let a = ChainLink {
            aggregate_type: "ab",
            aggregate_id: "c",
            ..link(&payload, &metadata)
        };
        let b = ChainLink {
            aggregate_type: "a",
            aggregate_id: "bc",
            ..link(&payload, &metadata)
        };
        assert_ne!(a.hash().unwrap(), b.hash().unwrap());
    }
}
