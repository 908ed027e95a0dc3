//! The event store: two backends (PostgreSQL through postgres-es, SQLite of our own) behind
//! one interface, with event metadata, the per-aggregate hash chain and the global feed.
//!
//! Layout:
//! - [`aggregate_store`]: cqrs-es's `EventStore` for one aggregate type — load (snapshot +
//!   replay + upcast), commit (sequence, metadata, hash chain, snapshot).
//! - [`postgres`], [`sqlite`]: the backends; each is a cqrs-es `PersistedEventRepository`
//!   plus the reads cqrs-es has no word for (global feed, history, audit scan).
//! - [`chain`]: the hash chain. `group_commit`: PostgreSQL appends batched per transaction.
//! - [`checkpoint`]: MAC'd checkpoints of every aggregate's head, the chain's anchor.
//! - [`verify`]: recomputes every chain, names the first broken link, checks the heads
//!   against a checkpoint.
//! - [`lease_slots`]: an agent's concurrency limit, decided in the lease's transaction.
//! - [`import`]: loads an export into an empty store.
//! - [`link`]: whether PostgreSQL answers, probed from a connection of its own.
//! - [`recent`]: the aggregates this node wrote or loaded last, a guess that saves a load.

/// The `WHERE … ORDER BY` of the events that end credentials before they expire (see
/// `auth::revocation`) recorded at or after `$1`, for either backend: the list must stay
/// the one the partial index `events_credential_ends` names (migration
/// `20261201010000_credential_events_index`), or the index no longer serves the query.
macro_rules! credential_events_since {
    () => {
        "WHERE event_type IN ('SessionRevoked', 'ApiKeyRevoked', 'ApiKeyRotated', \
                              'RoleGranted', 'RoleRevoked')
           AND recorded_at >= $1
         ORDER BY position"
    };
}

pub mod aggregate_store;
pub mod chain;
pub mod checkpoint;
mod group_commit;
pub mod import;
pub mod lease_slots;
pub mod link;
pub mod postgres;
pub mod recent;
pub mod sqlite;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_projections::aggregate_owners::AggregateOwners;
use chronicle_projections::{Projection, ProjectionError, ReadScope};
use cqrs_es::persist::{
    EventUpcaster, PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::Aggregate;
use futures::stream::BoxStream;
use serde_json::Value;
use uuid::Uuid;

pub use aggregate_store::{AggregateStore, Loaded};
pub use checkpoint::{AuditKey, Checkpoint};
pub use chronicle_projections::feed::{FeedCursor, RecordedEvent};
pub use lease_slots::{KeySlot, LeaseSlot};
pub use verify::{BrokenLink, CheckpointCheck, VerifyReport};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the aggregate first.
    #[error("the aggregate was changed concurrently")]
    Conflict,
    #[error("database unavailable: {0}")]
    Unavailable(#[source] BoxError),
    #[error("database error: {0}")]
    Database(#[source] BoxError),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data does not decode: {0}")]
    Codec(String),
    /// A lease for an agent that already holds `max_concurrency` leases.
    #[error("the agent holds as many leases as it may")]
    NoFreeSlot,
    /// A lease of a task whose concurrency group already holds its limit of leases: the
    /// task waits, and the agent may take another.
    #[error("the task's concurrency group holds as many leases as it may")]
    KeyBusy,
    /// A lease for an agent that drained or deregistered since it was loaded.
    #[error("the agent takes no new work")]
    AgentRetired,
    #[error("unsupported database URL `{0}`: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict,
            _ if unreachable(&error) => Self::Unavailable(Box::new(error)),
            _ => Self::Database(Box::new(error)),
        }
    }
}

/// True when sqlx could not reach the database (as opposed to the database refusing).
pub(crate) fn unreachable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

impl From<chronicle_aggregates::codec::CodecError> for StoreError {
    fn from(error: chronicle_aggregates::codec::CodecError) -> Self {
        Self::Codec(error.0)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        Self::Codec(error.to_string())
    }
}

impl From<PersistenceError> for StoreError {
    fn from(error: PersistenceError) -> Self {
        match error {
            PersistenceError::OptimisticLockError => Self::Conflict,
            PersistenceError::ConnectionError(e) => Self::Unavailable(e),
            PersistenceError::DeserializationError(e) => Self::Codec(e.to_string()),
            PersistenceError::UnknownError(e) => match e.downcast::<sqlx::Error>() {
                Ok(sqlx_error) => Self::from(*sqlx_error),
                Err(e) => match e.downcast::<StoreError>() {
                    Ok(store_error) => *store_error,
                    Err(other) => Self::Database(other),
                },
            },
        }
    }
}

impl StoreError {
    /// True when the database could not be reached (as opposed to refusing something).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// True when `error` or any of its causes says the database could not be reached.
    pub(crate) fn caused_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if error
                .downcast_ref::<StoreError>()
                .is_some_and(Self::is_unavailable)
                || error.downcast_ref::<sqlx::Error>().is_some_and(unreachable)
            {
                return true;
            }
            next = error.source();
        }
        false
    }
}

/// Which aggregates an audit or history read covers.
#[derive(Debug, Clone, Default)]
pub struct AggregateFilter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
}

/// Options that shape how aggregates are stored.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Take a snapshot every this many events of an aggregate; 0 turns snapshots off.
    pub snapshot_every: usize,
    /// Connections to PostgreSQL (SQLite uses one writer and a few readers).
    pub max_connections: u32,
    /// Bytes of recently written or loaded aggregates kept in memory (see [`recent`]);
    /// 0 keeps none.
    pub aggregate_cache_bytes: usize,
    /// How long PostgreSQL work waits for a pooled connection, or for a new one to open:
    /// short for the server (it answers 503 rather than hang), longer for a one-shot command.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            snapshot_every: 50,
            max_connections: 32,
            aggregate_cache_bytes: 64 << 20,
            acquire_timeout: Duration::from_secs(1),
        }
    }
}

pub enum Backend {
    Postgres(postgres::PgBackend),
    Sqlite(sqlite::SqliteBackend),
}

struct Inner {
    backend: Backend,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    options: StoreOptions,
    audit_key: std::sync::OnceLock<AuditKey>,
    recent: recent::RecentAggregates,
}

/// The event store, cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) without migrating.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(
                postgres::PgBackend::connect(url, options.max_connections, options.acquire_timeout)
                    .await?,
            )
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite(sqlite::SqliteBackend::connect(url).await?)
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        Ok(Self::from_backend(backend, options, Vec::new()))
    }

    pub fn from_backend(
        backend: Backend,
        options: StoreOptions,
        upcasters: Vec<Box<dyn EventUpcaster>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                upcasters,
                options,
                audit_key: std::sync::OnceLock::new(),
                recent: recent::RecentAggregates::new(options.aggregate_cache_bytes),
            }),
        }
    }

    /// The same store with these upcasters applied to events on load.
    pub fn with_upcasters(self, upcasters: Vec<Box<dyn EventUpcaster>>) -> Result<Self, Self> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => Ok(Self::from_backend(inner.backend, inner.options, upcasters)),
            Err(inner) => Err(Self { inner }),
        }
    }

    /// Applies the backend's migrations (safe to run from several nodes at once: sqlx takes
    /// a lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => pg.migrate().await,
            Backend::Sqlite(lite) => lite.migrate().await,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    pub fn options(&self) -> StoreOptions {
        self.inner.options
    }

    pub(crate) fn recent(&self) -> &recent::RecentAggregates {
        &self.inner.recent
    }

    pub(crate) fn upcasters(&self) -> &[Box<dyn EventUpcaster>] {
        &self.inner.upcasters
    }

    /// The typed store for one aggregate, a cqrs-es `EventStore`.
    pub fn aggregate<A: Aggregate>(&self) -> AggregateStore<A> {
        AggregateStore::new(self.clone())
    }

    /// Whether the database answers; `None` for SQLite, which has no link to lose.
    pub fn link(&self) -> Option<&link::Link> {
        match self.backend() {
            Backend::Postgres(pg) => Some(pg.link()),
            Backend::Sqlite(_) => None,
        }
    }

    /// Round-trip time of a trivial query.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        match self.backend() {
            Backend::Postgres(pg) => pg.ping().await?,
            Backend::Sqlite(lite) => lite.ping().await?,
        }
        Ok(started.elapsed())
    }

    /// Up to `limit` events after `after`, in feed order, never skipping one that commits
    /// later (see ARCHITECTURE.md, Storage).
    pub async fn feed(
        &self,
        after: FeedCursor,
        limit: u32,
        filter: &AggregateFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => pg.feed(after, limit, filter).await,
            Backend::Sqlite(lite) => lite.feed(after, limit, filter).await,
        }
    }

    /// [`Store::feed`] as a reader of `scope` may read it: for a scoped reader, only events
    /// of aggregates the scope's owner owns or that belong to one of its teams now (the
    /// `aggregate_owners` read model, joined in the same statement) and never past that
    /// projection's checkpoint, so an event whose aggregate the projection has not seen
    /// yet is held back rather than passed over; for [`ReadScope::All`] (auditors,
    /// admins), the whole feed. The HTTP feed and live subscriptions both read
    /// through here; a reader that wants the caller's latest writes waits until
    /// [`Store::scope_bound`] reaches [`Store::feed_tail`].
    pub async fn feed_scoped(
        &self,
        after: FeedCursor,
        limit: u32,
        filter: &AggregateFilter,
        scope: &ReadScope,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let Some(owner) = scope.owner_param() else {
            return self.feed(after, limit, filter).await;
        };
        let teams = scope.teams_param();
        let readers = (owner.as_str(), teams.as_str());
        let owners = (AggregateOwners::NAME, AggregateOwners::VERSION);
        match self.backend() {
            Backend::Postgres(pg) => pg.feed_owned(after, limit, filter, readers, owners).await,
            Backend::Sqlite(lite) => lite.feed_owned(after, limit, filter, readers, owners).await,
        }
    }

    /// How far a scoped read ([`Store::feed_scoped`] with an owner) can see: the
    /// `aggregate_owners` projection's checkpoint.
    pub async fn scope_bound(&self) -> Result<FeedCursor, StoreError> {
        AggregateOwners::checkpoint(&self.read_db())
            .await
            .map_err(|error| match error {
                ProjectionError::Database(sqlx) => StoreError::from(sqlx),
                other => StoreError::Database(Box::new(other)),
            })
    }

    /// The cursor of the last event the feed can read now; the default when it is empty.
    pub async fn feed_tail(&self) -> Result<FeedCursor, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => pg.feed_tail().await,
            Backend::Sqlite(lite) => lite.feed_tail().await,
        }
    }

    /// A mark that the feed passes once every event committed before this call is readable.
    pub async fn feed_watermark(&self) -> Result<u64, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => Ok(pg.horizon().await?.1),
            Backend::Sqlite(_) => Ok(0),
        }
    }

    /// Has the feed's horizon passed `watermark`? Until then an empty page may only mean
    /// that an older transaction — in any database of the cluster — is still open.
    pub async fn feed_reached(&self, watermark: u64) -> Result<bool, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => Ok(pg.horizon().await?.0 >= watermark),
            Backend::Sqlite(_) => Ok(true),
        }
    }

    /// A cursor from which the feed yields every event recorded at or after `since` (and
    /// perhaps a few older ones), without reading the history before it.
    pub async fn cursor_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<FeedCursor, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => pg.cursor_since(since).await,
            Backend::Sqlite(lite) => lite.cursor_since(since).await,
        }
    }

    /// The events that end credentials before they expire (session revocations, API-key
    /// revocations and rotations, role changes) recorded at or after `since`, as soon as
    /// they commit: unlike [`Store::feed`], not held back by transactions still open.
    pub async fn credential_events_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => pg.credential_events_since(since).await,
            Backend::Sqlite(lite) => lite.credential_events_since(since).await,
        }
    }

    /// The feed cursor just after the event at `position`, if there is one.
    pub async fn cursor_after(&self, position: i64) -> Result<Option<FeedCursor>, StoreError> {
        if position <= 0 {
            return Ok(Some(FeedCursor::default()));
        }
        match self.backend() {
            Backend::Postgres(pg) => pg.cursor_at(position).await,
            Backend::Sqlite(_) => Ok(Some(FeedCursor {
                transaction_id: 0,
                position,
            })),
        }
    }

    /// Every event of one aggregate, in sequence order, as stored (not upcast).
    pub async fn history(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => pg.history(aggregate_type, aggregate_id).await,
            Backend::Sqlite(lite) => lite.history(aggregate_type, aggregate_id).await,
        }
    }

    /// Events of one aggregate after `after_sequence`, in sequence order, as stored; at most
    /// `limit` (`None`: all of them).
    pub async fn history_page(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
        limit: Option<u32>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => {
                pg.history_page(aggregate_type, aggregate_id, after_sequence, limit)
                    .await
            }
            Backend::Sqlite(lite) => {
                lite.history_page(aggregate_type, aggregate_id, after_sequence, limit)
                    .await
            }
        }
    }

    /// Every event matching `filter`, ordered by aggregate then sequence, streamed.
    pub fn scan<'a>(
        &'a self,
        filter: &'a AggregateFilter,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        match self.backend() {
            Backend::Postgres(pg) => pg.scan(filter),
            Backend::Sqlite(lite) => lite.scan(filter),
        }
    }

    /// [`Store::scan`] narrowed to the aggregates `owner` owns (`None`: every aggregate).
    pub fn scan_scoped<'a>(
        &'a self,
        filter: &'a AggregateFilter,
        owner: Option<Uuid>,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        match (self.backend(), owner) {
            (_, None) => self.scan(filter),
            (Backend::Postgres(pg), Some(owner)) => pg.scan_owned(filter, owner),
            (Backend::Sqlite(lite), Some(owner)) => lite.scan_owned(filter, owner),
        }
    }

    /// The read-model database: the store's own.
    pub fn read_db(&self) -> chronicle_projections::ReadDb {
        match self.backend() {
            Backend::Postgres(pg) => chronicle_projections::ReadDb::Postgres(pg.pool().clone()),
            Backend::Sqlite(lite) => chronicle_projections::ReadDb::Sqlite {
                writer: lite.writer().clone(),
                reader: lite.reader().clone(),
            },
        }
    }

    /// `event` as current code reads it: old `event_version`s upcast.
    pub fn upcast(&self, event: RecordedEvent) -> RecordedEvent {
        let serialized = SerializedEvent::new(
            event.aggregate_id,
            usize::try_from(event.sequence).unwrap_or_default(),
            event.aggregate_type,
            event.event_type,
            event.event_version,
            event.payload,
            event.metadata,
        );
        let upcast = self.upcasters().iter().fold(serialized, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        });
        RecordedEvent {
            aggregate_id: upcast.aggregate_id,
            aggregate_type: upcast.aggregate_type,
            event_type: upcast.event_type,
            event_version: upcast.event_version,
            payload: upcast.payload,
            metadata: upcast.metadata,
            ..event
        }
    }

    /// Events after `cursor` and how long the oldest of them has waited: a reader's lag.
    pub async fn lag_after(
        &self,
        cursor: FeedCursor,
    ) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), StoreError> {
        match self.backend() {
            Backend::Postgres(pg) => pg.lag_after(cursor).await,
            Backend::Sqlite(lite) => lite.lag_after(cursor).await,
        }
    }

    /// Recomputes every hash chain that `filter` covers and checks their heads against the
    /// latest checkpoint.
    pub async fn verify(&self, filter: &AggregateFilter) -> Result<VerifyReport, StoreError> {
        verify::verify_store(self, filter, None).await
    }

    /// Like [`Store::verify`], against `checkpoint` (one published elsewhere).
    pub async fn verify_against(
        &self,
        filter: &AggregateFilter,
        checkpoint: &Checkpoint,
    ) -> Result<VerifyReport, StoreError> {
        verify::verify_store(self, filter, Some(checkpoint)).await
    }

    /// Recomputes the hash chains of the aggregates `owner` owns that `filter` covers.
    pub async fn verify_owned(
        &self,
        filter: &AggregateFilter,
        owner: Uuid,
    ) -> Result<VerifyReport, StoreError> {
        verify::verify(self.scan_scoped(filter, Some(owner))).await
    }
}

impl chronicle_projections::EventSource for Store {
    async fn events_after(
        &self,
        after: FeedCursor,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, chronicle_projections::feed::BoxError> {
        let events = self.feed(after, limit, &AggregateFilter::default()).await?;
        Ok(events.into_iter().map(|event| self.upcast(event)).collect())
    }
}

/// Dispatches cqrs-es's repository calls to the configured backend.
impl PersistedEventRepository for Backend {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match self {
            Self::Postgres(pg) => pg.repo().get_events::<A>(aggregate_id).await,
            Self::Sqlite(lite) => lite.get_events::<A>(aggregate_id).await,
        }
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match self {
            Self::Postgres(pg) => {
                pg.repo()
                    .get_last_events::<A>(aggregate_id, last_sequence)
                    .await
            }
            Self::Sqlite(lite) => lite.get_last_events::<A>(aggregate_id, last_sequence).await,
        }
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        match self {
            Self::Postgres(pg) => pg.repo().get_snapshot::<A>(aggregate_id).await,
            Self::Sqlite(lite) => lite.get_snapshot::<A>(aggregate_id).await,
        }
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match self {
            Self::Postgres(pg) => pg.repo().persist::<A>(events, snapshot_update).await,
            Self::Sqlite(lite) => lite.persist::<A>(events, snapshot_update).await,
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(pg) => pg.repo().stream_events::<A>(aggregate_id).await,
            Self::Sqlite(lite) => lite.stream_events::<A>(aggregate_id).await,
        }
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(pg) => pg.repo().stream_all_events::<A>().await,
            Self::Sqlite(lite) => lite.stream_all_events::<A>().await,
        }
    }
}

/// The URL with any password replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl From<StoreError> for PersistenceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => Self::OptimisticLockError,
            StoreError::Unavailable(e) => Self::ConnectionError(e),
            StoreError::Codec(message) => Self::DeserializationError(message.into()),
            other => Self::UnknownError(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact_url("sqlite://data/c.db"), "sqlite://data/c.db");
    }
}
