//! `Idempotency-Key` on task creation: the key names the task. The task id is derived from
//! (caller, key), so a repeated create is the aggregate's `AlreadyExists` — one effect even
//! when both requests race — and the first answer is rebuilt from the task's first event.
//!
//! Such ids are UUIDv8 (SHA-256 of the caller and the key), not v7: they do not sort by
//! creation time, so a keyed task's place in "newest first" lists follows its id. A key is
//! remembered for as long as its task exists, which is longer than the 24 h promised.

use chronicle_aggregates::task::TaskState;
use chronicle_commands::task::TaskSpec;
use sha2::{Digest, Sha256};
use uuid::{Builder, Uuid};

/// The id of the task that `owner` creates with `key`.
pub fn keyed_task_id(owner: Uuid, key: &str) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"chronicle:task:idempotency-key:");
    hasher.update(owner.as_bytes());
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Builder::from_custom_bytes(bytes).into_uuid()
}

/// Whether the task was created from the same request as `spec`: a key reused for another
/// request is an error, not a replay.
pub fn same_request(state: &TaskState, spec: &TaskSpec) -> bool {
    state.capability == spec.capability
        && state.input == spec.input
        && state.priority == spec.priority
        && state.timeout_secs == spec.timeout_secs
        && state.retry == spec.retry
        && state.pinned_agent_id == spec.pinned_agent_id
        && state.tags == spec.tags
        && state.not_before == spec.not_before
        && state.team_id == spec.team_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_the_caller_and_the_key() {
        let me = Uuid::now_v7();
        let you = Uuid::now_v7();
        assert_eq!(keyed_task_id(me, "k1"), keyed_task_id(me, "k1"));
        assert_ne!(keyed_task_id(me, "k1"), keyed_task_id(me, "k2"));
        assert_ne!(keyed_task_id(me, "k1"), keyed_task_id(you, "k1"));
        assert_eq!(keyed_task_id(me, "k1").get_version_num(), 8);
    }
}
