//! What an event view may not show: lease ids, which are bearer capabilities.
//!
//! Whoever knows a lease id could report on the lease, so no event view — the task's
//! history, the global feed over HTTP, `/api/ws`, SSE — hands one out. Every such view
//! passes its events through [`redact_event`]. The holder learned its lease id from the
//! lease answer (or `task.assigned`), so it needs none from a view; it can still match
//! one by hashing its own: each `lease_id` becomes `lease_id_sha256`, the lower-case hex
//! SHA-256 of the id's hyphenated text. A redacted payload no longer hashes to the event's
//! `hash`; the chain is verified on the server (`/api/audit/verify`), which sees the
//! events as stored.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::views::EventView;
use crate::actor::{Actor, ActorKind};

/// The payload key that carries a lease id in the events of the task aggregate.
const LEASE_ID: &str = "lease_id";
/// What it becomes in a view.
const LEASE_ID_SHA256: &str = "lease_id_sha256";

/// `event` as `actor` may see it: every lease id in its payload replaced by its hash.
/// Only the server itself (built-in agents, the process manager) sees them as stored.
pub(crate) fn redact_event(mut event: EventView, actor: &Actor) -> EventView {
    if actor.kind != ActorKind::System {
        redact_leases(&mut event.payload);
    }
    event
}

/// The hash a view shows in place of `lease_id`.
pub(crate) fn lease_id_hash(lease_id: &str) -> String {
    hex::encode(Sha256::digest(lease_id.as_bytes()))
}

/// Replaces every `lease_id` string, at any depth, with `lease_id_sha256`.
fn redact_leases(value: &mut Value) {
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

    fn view(payload: Value) -> EventView {
        EventView {
            position: 1,
            aggregate_type: "task".into(),
            aggregate_id: Uuid::now_v7().to_string(),
            sequence: 2,
            event_type: "TaskLeased".into(),
            event_version: "1".into(),
            payload,
            metadata: crate::api::views::EventMetadataView {
                actor: None,
                correlation_id: None,
                causation_id: None,
                request_id: None,
                idempotency_key: None,
                recorded_at: chrono::Utc::now(),
            },
            hash: None,
            prev_hash: None,
        }
    }

    #[test]
    fn users_see_a_hash_where_the_lease_id_was() {
        let lease_id = Uuid::now_v7().to_string();
        let payload =
            json!({"lease_id": lease_id, "agent_id": "a", "nested": [{"lease_id": lease_id}]});
        for roles in [vec![], vec![crate::actor::Role::Admin]] {
            let redacted = redact_event(view(payload.clone()), &Actor::user(Uuid::now_v7(), roles));
            let text = redacted.payload.to_string();
            assert!(!text.contains(&lease_id), "{text}");
            assert_eq!(
                redacted.payload["lease_id_sha256"],
                json!(lease_id_hash(&lease_id))
            );
            assert_eq!(
                redacted.payload["nested"][0]["lease_id_sha256"],
                json!(lease_id_hash(&lease_id))
            );
            assert_eq!(redacted.payload["agent_id"], json!("a"));
        }
    }

    #[test]
    fn the_server_sees_events_as_stored() {
        let payload = json!({"lease_id": Uuid::now_v7().to_string()});
        let seen = redact_event(view(payload.clone()), &Actor::system());
        assert_eq!(seen.payload, payload);
    }
}
