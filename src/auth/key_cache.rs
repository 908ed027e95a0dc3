//! A short memory of API keys that authenticated, so that a client repeating a good key
//! costs an HMAC check instead of two aggregate loads (the key and its owner).
//!
//! An entry is what a full check found: the key's stored secret hash (a presented key is
//! still checked against it, so another secret under the same id is no hit), the actor and
//! the [`Grant`] with the key's and its owner's versions. A hit holds only while the node's
//! [`Revocations`](super::revocation::Revocations) know of no revocation, rotation or role
//! change newer than those versions, and never past the key's expiry or the TTL. The
//! revocations are fed from the global feed on every node (and at once on the node whose
//! route revoked or rotated the key), so a cached key ends exactly when a token would.
//! The TTL is at most the revocations' window: a change is never forgotten while an entry
//! older than it is still trusted.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chronicle_commands::auth::SecretHash;
use chrono::Utc;
use hashlink::LruCache;
use uuid::Uuid;

use super::keys::PresentedKey;
use super::revocation::{Grant, Revocations};
use crate::actor::Actor;

struct Entry {
    secret_hash: SecretHash,
    actor: Actor,
    grant: Grant,
    at: Instant,
}

pub struct KeyCache {
    entries: Option<Mutex<LruCache<Uuid, Entry>>>,
    ttl: Duration,
}

impl KeyCache {
    /// Keeps up to `capacity` keys for `ttl`; either at zero keeps none.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: (capacity > 0 && !ttl.is_zero()).then(|| Mutex::new(LruCache::new(capacity))),
            ttl,
        }
    }

    fn lock(
        entries: &Mutex<LruCache<Uuid, Entry>>,
    ) -> std::sync::MutexGuard<'_, LruCache<Uuid, Entry>> {
        entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The actor and grant of `presented` if it was verified less than the TTL before `now`
    /// and nothing since ended or changed what it grants.
    pub fn get(
        &self,
        presented: &PresentedKey,
        hmac_key: &[u8; 32],
        revocations: &Revocations,
        now: Instant,
    ) -> Option<(Actor, Grant)> {
        let entries = self.entries.as_ref()?;
        let mut entries = Self::lock(entries);
        let entry = entries.get(&presented.key_id)?;
        if !presented.matches(hmac_key, &entry.secret_hash) {
            // Another secret for this id (an old one after a rotation, or a guess): not a
            // hit, and not a reason to drop what the right secret verified.
            return None;
        }
        let fresh = now.saturating_duration_since(entry.at) < self.ttl;
        let unexpired = entry.grant.expires_at().is_none_or(|at| at > Utc::now());
        if fresh && unexpired && revocations.revoked(&entry.grant).is_none() {
            return Some((entry.actor.clone(), entry.grant.clone()));
        }
        entries.remove(&presented.key_id);
        None
    }

    /// Remembers what a full check of key `key_id` found at `at` (taken before the loads:
    /// the TTL counts from what was read, not from when it was kept).
    pub fn put(
        &self,
        key_id: Uuid,
        secret_hash: SecretHash,
        actor: Actor,
        grant: Grant,
        at: Instant,
    ) {
        if let Some(entries) = &self.entries {
            Self::lock(entries).insert(
                key_id,
                Entry {
                    secret_hash,
                    actor,
                    grant,
                    at,
                },
            );
        }
    }

    /// Drops what is known of `key_id` (it was revoked or rotated here).
    pub fn forget(&self, key_id: Uuid) {
        if let Some(entries) = &self.entries {
            Self::lock(entries).remove(&key_id);
        }
    }

    pub fn len(&self) -> usize {
        self.entries
            .as_ref()
            .map_or(0, |entries| Self::lock(entries).len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use chronicle_commands::auth::Role;

    use super::*;
    use crate::auth::keys;

    const HMAC: [u8; 32] = [7u8; 32];

    fn verified(cache: &KeyCache, at: Instant) -> (PresentedKey, Grant) {
        let key_id = Uuid::now_v7();
        let new = keys::generate(&HMAC, key_id).expect("a key");
        let presented = keys::parse(&new.key).expect("parses");
        let user_id = Uuid::now_v7();
        let grant = Grant::ApiKey {
            key_id,
            user_id,
            key_version: 1,
            user_version: 1,
            expires_at: None,
        };
        let actor = Actor::user(user_id, [Role::User]);
        cache.put(key_id, new.secret_hash, actor, grant.clone(), at);
        (presented, grant)
    }

    #[test]
    fn a_verified_key_is_a_hit_until_its_ttl() {
        let cache = KeyCache::new(10, Duration::from_secs(30));
        let revocations = Revocations::new(900);
        let start = Instant::now();
        let (presented, grant) = verified(&cache, start);
        let hit = cache.get(
            &presented,
            &HMAC,
            &revocations,
            start + Duration::from_secs(29),
        );
        assert_eq!(hit.map(|(_, grant)| grant), Some(grant));
        assert!(cache
            .get(
                &presented,
                &HMAC,
                &revocations,
                start + Duration::from_secs(30)
            )
            .is_none());
        assert!(cache.is_empty(), "an expired entry is dropped");
    }

    #[test]
    fn another_secret_under_the_same_id_is_no_hit_and_keeps_the_entry() {
        let cache = KeyCache::new(10, Duration::from_secs(30));
        let revocations = Revocations::new(900);
        let now = Instant::now();
        let (presented, _) = verified(&cache, now);
        let other = keys::generate(&HMAC, presented.key_id).expect("a key");
        let other = keys::parse(&other.key).expect("parses");
        assert!(cache.get(&other, &HMAC, &revocations, now).is_none());
        assert!(cache.get(&presented, &HMAC, &revocations, now).is_some());
        assert!(
            cache
                .get(&presented, &[8u8; 32], &revocations, now)
                .is_none(),
            "checked under the server's key"
        );
    }

    #[test]
    fn a_later_revocation_or_rotation_ends_the_entry() {
        let cache = KeyCache::new(10, Duration::from_secs(30));
        let revocations = Revocations::new(900);
        let now = Instant::now();
        let (rotated, _) = verified(&cache, now);
        let (revoked, _) = verified(&cache, now);
        let (untouched, _) = verified(&cache, now);
        // A change at the version the entry was read at is already in it.
        revocations.key_changed(rotated.key_id, 1, false);
        assert!(cache.get(&rotated, &HMAC, &revocations, now).is_some());
        revocations.key_changed(rotated.key_id, 2, false);
        revocations.key_changed(revoked.key_id, 2, true);
        assert!(cache.get(&rotated, &HMAC, &revocations, now).is_none());
        assert!(cache.get(&revoked, &HMAC, &revocations, now).is_none());
        assert!(cache.get(&untouched, &HMAC, &revocations, now).is_some());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded_and_can_be_off() {
        let revocations = Revocations::new(900);
        let now = Instant::now();
        let cache = KeyCache::new(2, Duration::from_secs(30));
        let (first, _) = verified(&cache, now);
        let _ = verified(&cache, now);
        let _ = verified(&cache, now);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&first, &HMAC, &revocations, now).is_none());
        for off in [
            KeyCache::new(0, Duration::from_secs(30)),
            KeyCache::new(10, Duration::ZERO),
        ] {
            let (presented, _) = verified(&off, now);
            assert!(off.get(&presented, &HMAC, &revocations, now).is_none());
        }
    }
}
