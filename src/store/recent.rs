//! The aggregates this node wrote or loaded last, so that the next command on one of them
//! (a task's lease after its creation, its completion after the lease) skips the load — two
//! queries on PostgreSQL (snapshot lookup, then events).
//!
//! An entry is only a guess: the command bus decides on it and appends at its version, so a
//! stale entry (another node wrote since) makes the append conflict, the entry is dropped and
//! the command runs again on state loaded from the store. A refusal decided on a guess is
//! never answered either: it is asked again of loaded state. The guarantees are the store's —
//! optimistic concurrency and the hash chain — whatever the cache holds.
//!
//! Bounded by bytes (the aggregate's JSON size, counted without allocating), least recently
//! used first out; an aggregate larger than an eighth of the budget is not kept.

use std::any::Any;
use std::io;
use std::sync::Mutex;

use cqrs_es::Aggregate;
use hashlink::LruCache;

use super::aggregate_store::Loaded;

type Key = (&'static str, String);

struct Entry {
    loaded: Box<dyn Any + Send + Sync>,
    bytes: usize,
}

struct Entries {
    lru: LruCache<Key, Entry>,
    bytes: usize,
}

pub struct RecentAggregates {
    budget: usize,
    entries: Mutex<Entries>,
}

impl RecentAggregates {
    /// A cache of at most `budget` bytes; 0 keeps nothing.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            entries: Mutex::new(Entries {
                lru: LruCache::new_unbounded(),
                bytes: 0,
            }),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the map consistent (every change is one
        // call on it), so a poisoned lock is still good to use.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The aggregate as this node last saw it, if it still has it.
    pub fn get<A: Aggregate + Clone + 'static>(&self, aggregate_id: &str) -> Option<Loaded<A>> {
        if self.budget == 0 {
            return None;
        }
        let key = (A::TYPE, aggregate_id.to_owned());
        let mut entries = self.entries();
        entries
            .lru
            .get(&key)
            .and_then(|entry| entry.loaded.downcast_ref::<Loaded<A>>())
            .cloned()
    }

    /// Keeps `loaded` as the latest known state of its aggregate.
    pub fn put<A: Aggregate + Clone + 'static>(&self, loaded: &Loaded<A>) {
        if self.budget == 0 {
            return;
        }
        let key = (A::TYPE, loaded.aggregate_id.clone());
        let Some(bytes) = json_size(&loaded.aggregate).filter(|&n| n <= self.budget / 8) else {
            self.forget::<A>(&loaded.aggregate_id);
            return;
        };
        let entry = Entry {
            loaded: Box::new(loaded.clone()),
            bytes,
        };
        let mut entries = self.entries();
        if let Some(old) = entries.lru.insert(key, entry) {
            entries.bytes -= old.bytes;
        }
        entries.bytes += bytes;
        while entries.bytes > self.budget {
            match entries.lru.remove_lru() {
                Some((_, evicted)) => entries.bytes -= evicted.bytes,
                None => break,
            }
        }
    }

    /// Drops what this node knows of an aggregate (after a conflict or a failed append).
    pub fn forget<A: Aggregate>(&self, aggregate_id: &str) {
        if self.budget == 0 {
            return;
        }
        let key = (A::TYPE, aggregate_id.to_owned());
        let mut entries = self.entries();
        if let Some(old) = entries.lru.remove(&key) {
            entries.bytes -= old.bytes;
        }
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let entries = self.entries();
        (entries.lru.len(), entries.bytes)
    }
}

/// The length of `value` as JSON, written to a counter (nothing allocated).
fn json_size(value: &impl serde::Serialize) -> Option<usize> {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).ok()?;
    Some(counter.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::aggregate_store::Loaded;
    use chronicle_aggregates::task::Task;

    fn loaded(id: &str, version: usize) -> Loaded<Task> {
        Loaded::for_tests(id, Task::default(), version)
    }

    #[test]
    fn keeps_the_latest_and_forgets_on_request() {
        let recent = RecentAggregates::new(1 << 20);
        recent.put(&loaded("a", 1));
        recent.put(&loaded("a", 3));
        assert_eq!(recent.get::<Task>("a").map(|l| l.version), Some(3));
        recent.forget::<Task>("a");
        assert!(recent.get::<Task>("a").is_none());
        assert_eq!(recent.held(), (0, 0));
    }

    #[test]
    fn stays_within_its_budget_least_recently_used_out() {
        let one = json_size(&Task::default()).expect("a task serialises");
        let recent = RecentAggregates::new(one * 8 * 3);
        for n in 0..40 {
            recent.put(&loaded(&format!("t{n}"), 1));
            // Touch the first so that it stays.
            assert!(recent.get::<Task>("t0").is_some());
        }
        let (count, bytes) = recent.held();
        assert!(bytes <= one * 8 * 3, "{bytes} bytes held");
        assert_eq!(count, 24);
        assert!(recent.get::<Task>("t0").is_some());
        assert!(recent.get::<Task>("t1").is_none());
    }

    #[test]
    fn an_aggregate_too_large_for_the_budget_is_not_kept() {
        let one = json_size(&Task::default()).expect("a task serialises");
        let recent = RecentAggregates::new(one * 8 - 1);
        recent.put(&loaded("big", 1));
        assert!(recent.get::<Task>("big").is_none());
        let off = RecentAggregates::new(0);
        off.put(&loaded("a", 1));
        assert!(off.get::<Task>("a").is_none());
    }
}
