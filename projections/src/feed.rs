//! The global feed as projections read it.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// One stored event with everything the store knows about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedEvent {
    /// Global order of insertion (not of commit on PostgreSQL; see [`FeedCursor`]).
    pub position: i64,
    #[serde(skip)]
    pub transaction_id: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// Where a feed reader stands after reading this event.
    pub fn cursor(&self) -> FeedCursor {
        FeedCursor {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }
}

/// A place in the global feed. On PostgreSQL the feed is ordered by
/// `(transaction_id, position)`; on SQLite `transaction_id` is always 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FeedCursor {
    pub transaction_id: u64,
    pub position: i64,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where projections read events from: the store's global feed, upcast.
pub trait EventSource: Send + Sync {
    /// Up to `limit` events after `after`, in feed order, never skipping one.
    fn events_after(
        &self,
        after: FeedCursor,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, BoxError>> + Send;
}
