//! What an event view may not show: lease ids, which are bearer capabilities.
//!
//! Whoever knows a lease id could report on the lease, so no event view — the task's
//! history, the global feed over HTTP, `/api/ws`, SSE — hands one out: the one conversion
//! into a view (`EventView::from`) passes every payload through [`redact_leases`]. The holder learned its lease id from the
//! lease answer (or `task.assigned`), so it needs none from a view; it can still match
//! one by hashing its own: each `lease_id` becomes `lease_id_sha256`, the lower-case hex
//! SHA-256 of the id's hyphenated text. A redacted payload no longer hashes to the event's
//! `hash`; the chain is verified on the server (`/api/audit/verify`), which sees the
//! events as stored.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The payload key that carries a lease id in the events of the task aggregate.
const LEASE_ID: &str = "lease_id";
/// What it becomes in a view.
const LEASE_ID_SHA256: &str = "lease_id_sha256";

/// The hash a view shows in place of `lease_id`.
pub(crate) fn lease_id_hash(lease_id: &str) -> String {
    hex::encode(Sha256::digest(lease_id.as_bytes()))
}

/// Replaces every `lease_id` string, at any depth, with `lease_id_sha256`: what every
/// event view ([`super::views::EventView`]) does to its payload.
pub(crate) fn redact_leases(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(lease_id)) = object.remove(LEASE_ID) {
                object.insert(
                    LEASE_ID_SHA256.to_owned(),
                    Value::String(lease_id_hash(&lease_id)),
                );
            }
            object.values_mut().for_each(redact_leases);
        }
        Value::Array(items) => items.iter_mut().for_each(redact_leases),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_view_shows_a_hash_where_the_lease_id_was() {
        let lease_id = Uuid::now_v7().to_string();
        let mut payload =
            json!({"lease_id": lease_id, "agent_id": "a", "nested": [{"lease_id": lease_id}]});
        redact_leases(&mut payload);
        let text = payload.to_string();
        assert!(!text.contains(&lease_id), "{text}");
        assert_eq!(payload["lease_id_sha256"], json!(lease_id_hash(&lease_id)));
        assert_eq!(
            payload["nested"][0]["lease_id_sha256"],
            json!(lease_id_hash(&lease_id))
        );
        assert_eq!(payload["agent_id"], json!("a"));
    }
}
