//! A brief memory of API keys that did not authenticate, so that a client repeating a
//! bogus, revoked or expired `chr_` key costs no store reads for a while.
//!
//! Entries are the SHA-256 of the whole presented key, id *and* secret: a miss can never
//! turn into a refusal of a good key. A new key has a fresh random id; a rotated key keeps
//! its id but gets a new secret, so its new form is another entry; the same id and secret
//! only ever become valid if the server draws that 256-bit secret again. Nothing that
//! authenticated is remembered, so a revocation still ends a key at once, and a store
//! that could not be asked is not a miss.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hashlink::LruCache;
use sha2::{Digest, Sha256};

/// How long a miss is remembered.
pub const MISS_TTL: Duration = Duration::from_secs(10);
/// At most this many misses are remembered; the least recently seen go first.
const CAPACITY: usize = 10_000;

pub struct KeyMisses {
    misses: Mutex<LruCache<[u8; 32], Instant>>,
    ttl: Duration,
}

impl Default for KeyMisses {
    fn default() -> Self {
        Self::new(CAPACITY, MISS_TTL)
    }
}

impl KeyMisses {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            misses: Mutex::new(LruCache::new(capacity)),
            ttl,
        }
    }

    fn digest(raw: &str) -> [u8; 32] {
        Sha256::digest(raw.as_bytes()).into()
    }

    /// Whether `raw` failed to authenticate less than the TTL before `now`.
    pub fn recalls(&self, raw: &str, now: Instant) -> bool {
        let digest = Self::digest(raw);
        let mut misses = self.misses.lock().unwrap_or_else(PoisonError::into_inner);
        match misses.get(&digest) {
            Some(at) if now.saturating_duration_since(*at) < self.ttl => true,
            Some(_) => {
                misses.remove(&digest);
                false
            }
            None => false,
        }
    }

    pub fn remember(&self, raw: &str, now: Instant) {
        self.misses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Self::digest(raw), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_miss_is_recalled_until_it_expires() {
        let misses = KeyMisses::new(10, Duration::from_secs(10));
        let start = Instant::now();
        assert!(!misses.recalls("chr_a_b", start));
        misses.remember("chr_a_b", start);
        assert!(misses.recalls("chr_a_b", start + Duration::from_secs(9)));
        assert!(
            !misses.recalls("chr_a_c", start),
            "another secret is another key"
        );
        assert!(!misses.recalls("chr_a_b", start + Duration::from_secs(10)));
        assert!(
            !misses.recalls("chr_a_b", start),
            "expired entries are gone"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let misses = KeyMisses::new(2, Duration::from_secs(10));
        let now = Instant::now();
        for raw in ["one", "two", "three"] {
            misses.remember(raw, now);
        }
        assert!(!misses.recalls("one", now));
        assert!(misses.recalls("two", now) && misses.recalls("three", now));
    }
}
