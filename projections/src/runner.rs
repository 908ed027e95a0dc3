//! Checkpointed catch-up: read the feed after the projection's checkpoint, apply a batch,
//! move the checkpoint — all in one read-model transaction, so a crash repeats nothing
//! and loses nothing. Concurrent runners (several nodes) serialise on the checkpoint row.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::db::{ReadDb, ReadTx};
use crate::feed::{BoxError, EventSource, FeedCursor, RecordedEvent};
use crate::on_tx;

/// A boxed, sendable future: what the type-erased [`AnyProjector`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read-model database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event source: {0}")]
    Source(BoxError),
    #[error("event {aggregate_type}/{aggregate_id}#{sequence}: {message}")]
    Event {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        message: String,
    },
    /// The projection stopped at an event it could not apply; it stays there until the
    /// process restarts or the projection is rebuilt.
    #[error("stopped at event {position}: {message}")]
    Failed { position: i64, message: String },
    #[error("rebuild: {0}")]
    Rebuild(String),
}

impl ProjectionError {
    /// A view row's stored aggregate state, decoded, and its version.
    pub(crate) fn decode_state<A>(state: &str, version: i64) -> Result<(A, usize), Self>
    where
        A: cqrs_es::Aggregate + serde::de::DeserializeOwned,
    {
        let aggregate: A = serde_json::from_str(state).map_err(|e| Self::Event {
            aggregate_type: A::TYPE.into(),
            aggregate_id: String::new(),
            sequence: version,
            message: format!("stored {} state does not decode: {e}", A::TYPE),
        })?;
        Ok((aggregate, usize::try_from(version).unwrap_or_default()))
    }

    pub fn event(event: &RecordedEvent, message: impl Into<String>) -> Self {
        Self::Event {
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            message: message.into(),
        }
    }
}

/// A read model folded from the feed. `apply` must be idempotent per event (the inline
/// path may have applied it already) and must not issue commands.
pub trait Projection: Send + Sync + 'static {
    const NAME: &'static str;
    /// A new version is a new set of tables, built from the first event.
    const VERSION: i64;

    /// Creates the projection's tables if they do not exist.
    fn setup(&self, tx: &mut ReadTx) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    fn apply(
        &self,
        tx: &mut ReadTx,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Applies a batch in feed order: by default one [`Projection::apply`] each. A
    /// projection may read what it needs for the whole batch at once instead.
    fn apply_batch(
        &self,
        tx: &mut ReadTx,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        async move {
            for event in events {
                self.apply(tx, event).await?;
            }
            Ok(())
        }
    }
}

/// `event` as the aggregate's event type.
pub fn decode_event<A: cqrs_es::Aggregate>(
    event: &RecordedEvent,
) -> Result<A::Event, ProjectionError> {
    chronicle_aggregates::codec::decode::<A>(&event.event_type, event.payload.clone())
        .map_err(|e| ProjectionError::event(event, e.0))
}

/// The next state of a view that keeps an aggregate's state as JSON: `current` is the
/// stored `(state, version)`, if any. `None` when the view already reflects `event` (the
/// inline write came first); an error when events are missing before it.
pub fn fold_next<A>(
    current: Option<(String, i64)>,
    event: &RecordedEvent,
) -> Result<Option<A>, ProjectionError>
where
    A: cqrs_es::Aggregate + Default + serde::de::DeserializeOwned,
{
    let (mut aggregate, version) = match current {
        Some((state, version)) => {
            let aggregate: A = serde_json::from_str(&state)
                .map_err(|e| ProjectionError::event(event, format!("stored state: {e}")))?;
            (aggregate, version)
        }
        None => (A::default(), 0),
    };
    if event.sequence <= version {
        return Ok(None);
    }
    if event.sequence != version + 1 {
        return Err(ProjectionError::event(
            event,
            format!("the view is at version {version}; events are missing"),
        ));
    }
    let domain_event = decode_event::<A>(event)?;
    aggregate.apply(domain_event);
    Ok(Some(aggregate))
}

/// One row of `/api/admin/projections` and `/api/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    pub version: i64,
    /// The last event position applied.
    pub position: i64,
    /// Events recorded after `position`.
    pub lag_events: i64,
    /// Age of the oldest of those events.
    pub lag_seconds: f64,
    #[schema(value_type = String, example = "live")]
    /// `live`, `catching_up`, `rebuilding` (a new copy is being built beside it),
    /// `failed` (stopped at an event it cannot apply: see `error`), or `retired` (an older
    /// version of a projection).
    pub status: &'static str,
    /// Why a `failed` projection stopped, naming the event's position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where and why a projection stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionFailure {
    /// The position of the event it could not apply; its checkpoint stays just before.
    pub position: i64,
    pub message: String,
}

impl ProjectionFailure {
    fn error(&self) -> ProjectionError {
        ProjectionError::Failed {
            position: self.position,
            message: self.message.clone(),
        }
    }
}

/// Events per catch-up transaction.
pub const DEFAULT_BATCH: u32 = 500;

/// Locks the checkpoint row of `P` in `tx` (a no-op update takes the row lock on
/// PostgreSQL, the write lock on SQLite: two runners never apply the same batch) and
/// returns it.
async fn lock_checkpoint<P: Projection>(tx: &mut ReadTx) -> Result<FeedCursor, sqlx::Error> {
    let row: (i64, i64) = on_tx!(&mut *tx, |conn| {
        sqlx::query(
            "UPDATE projection_checkpoints SET updated_at = updated_at
              WHERE name = $1 AND version = $2",
        )
        .bind(P::NAME)
        .bind(P::VERSION)
        .execute(&mut *conn)
        .await?;
        sqlx::query_as(
            "SELECT transaction_id, position FROM projection_checkpoints
              WHERE name = $1 AND version = $2",
        )
        .bind(P::NAME)
        .bind(P::VERSION)
        .fetch_one(&mut *conn)
        .await
    })?;
    Ok(cursor_of(row))
}

fn cursor_of((transaction_id, position): (i64, i64)) -> FeedCursor {
    FeedCursor {
        transaction_id: u64::try_from(transaction_id).unwrap_or_default(),
        position,
    }
}

/// Runs one projection against one event source.
pub struct Projector<P, S> {
    projection: Arc<P>,
    source: S,
    db: ReadDb,
    batch: u32,
    /// Set when an event cannot be applied: the projector applies nothing more.
    failure: Mutex<Option<ProjectionFailure>>,
    /// How many times the projection has stopped at an event, for the metrics.
    failures: AtomicU64,
}

impl<P: Projection, S: EventSource> Projector<P, S> {
    pub fn new(projection: P, source: S, db: ReadDb) -> Self {
        Self::with_shared(Arc::new(projection), source, db, DEFAULT_BATCH)
    }

    fn with_shared(projection: Arc<P>, source: S, db: ReadDb, batch: u32) -> Self {
        Self {
            projection,
            source,
            db,
            batch: batch.max(1),
            failure: Mutex::new(None),
            failures: AtomicU64::new(0),
        }
    }

    /// Where the projection stopped, if it did.
    pub fn failure(&self) -> Option<ProjectionFailure> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Lets a stopped projection go on (after a rebuild replaced its tables).
    pub fn clear_failure(&self) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// How many times it stopped at an event since the process started; each stop also
    /// raises the metric `chronicle_projection_failures_total{projection}` (the `metrics`
    /// facade: exported by whatever recorder the process installs).
    pub fn failures_total(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records the stop at `event`, once: two catch-ups that raced past the failure check
    /// (the runner's and a command's) both reach the bad event, and that is one stop.
    fn fail(&self, event: &RecordedEvent, error: &ProjectionError) {
        let failure = ProjectionFailure {
            position: event.position,
            message: error.to_string(),
        };
        {
            let mut held = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            if held
                .as_ref()
                .is_some_and(|f| f.position == failure.position)
            {
                return;
            }
            *held = Some(failure.clone());
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("chronicle_projection_failures_total", "projection" => P::NAME)
            .increment(1);
        tracing::error!(
            projection = P::NAME,
            version = P::VERSION,
            position = failure.position,
            error = %failure.message,
            "projection stopped at an event it cannot apply; the other projections go on; \
             restart or rebuild it after a fix"
        );
    }

    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Creates the tables and the checkpoint row, in one transaction: a checkpoint row for
    /// this `(NAME, VERSION)` means the tables are there, and nothing is run again. That
    /// matters with several nodes on one PostgreSQL: a `CREATE INDEX IF NOT EXISTS` locks
    /// its table even when the index exists, and a node starting while another applies
    /// events would deadlock against it. A change to a projection's tables is therefore a
    /// new `VERSION` (built beside the old one), never an edit of its `setup`.
    pub async fn setup(&self) -> Result<(), ProjectionError> {
        let mut tx = self.db.begin_setup().await?;
        let present: Option<i64> = on_tx!(&mut tx, |conn| {
            sqlx::query_scalar(
                "SELECT version FROM projection_checkpoints WHERE name = $1 AND version = $2",
            )
            .bind(P::NAME)
            .bind(P::VERSION)
            .fetch_optional(conn)
            .await
        })?;
        if present.is_none() {
            self.projection.setup(&mut tx).await?;
            on_tx!(&mut tx, |conn| {
                sqlx::query(
                    "INSERT INTO projection_checkpoints (name, version, transaction_id, position, updated_at)
                     VALUES ($1, $2, 0, 0, $3)
                     ON CONFLICT (name, version) DO NOTHING",
                )
                .bind(P::NAME)
                .bind(P::VERSION)
                .bind(Utc::now().timestamp_millis())
                .execute(conn)
                .await
                .map(|r| r.rows_affected())
            })?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies everything the feed has after the checkpoint; returns how many events.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        let mut total = 0;
        loop {
            let applied = self.advance().await?;
            total += applied;
            if applied < u64::from(self.batch) {
                return Ok(total);
            }
        }
    }

    /// Applies one batch. When an event of it cannot be applied, the events before it are
    /// applied one by one, so the checkpoint stops right before the bad one, and the
    /// projector stops there ([`Projector::failure`]).
    pub async fn advance(&self) -> Result<u64, ProjectionError> {
        if let Some(failure) = self.failure() {
            return Err(failure.error());
        }
        match self.step(self.batch).await {
            Err(ProjectionError::Event { .. }) => {}
            other => return other,
        }
        let mut applied = 0;
        loop {
            match self.step(1).await {
                Ok(0) => return Ok(applied),
                Ok(n) => applied += n,
                Err(error) => return Err(self.failure().map_or(error, |f| f.error())),
            }
        }
    }

    /// One batch in its own transaction. The feed is read before the transaction opens:
    /// a runner holding the checkpoint's row lock (PostgreSQL) or the write lock (SQLite)
    /// while it waits for a second connection to read the feed would hold up every commit
    /// on SQLite and, with as many projections as pooled connections, starve the pool on
    /// PostgreSQL. Under the lock the checkpoint is read again; if another runner moved it
    /// meanwhile, the events are read again from there.
    async fn step(&self, limit: u32) -> Result<u64, ProjectionError> {
        loop {
            let cursor = self.checkpoint().await?;
            let events = self
                .source
                .events_after(cursor, limit)
                .await
                .map_err(ProjectionError::Source)?;
            if events.is_empty() {
                return Ok(0);
            }
            let mut tx = self.db.begin_derived().await?;
            if lock_checkpoint::<P>(&mut tx).await? != cursor {
                continue;
            }
            let applied = self.apply_and_checkpoint(&mut tx, &events).await?;
            tx.commit().await?;
            return Ok(applied);
        }
    }

    /// Applies everything after the checkpoint inside `tx`, which the caller commits: the
    /// final catch-up of a rebuild, in the transaction that switches the tables.
    pub async fn catch_up_in(&self, tx: &mut ReadTx) -> Result<u64, ProjectionError> {
        let mut total = 0;
        loop {
            let applied = self.step_in(tx, self.batch).await?;
            total += applied;
            if applied < u64::from(self.batch) {
                return Ok(total);
            }
        }
    }

    async fn step_in(&self, tx: &mut ReadTx, limit: u32) -> Result<u64, ProjectionError> {
        let cursor = lock_checkpoint::<P>(tx).await?;
        let events = self
            .source
            .events_after(cursor, limit)
            .await
            .map_err(ProjectionError::Source)?;
        self.apply_and_checkpoint(tx, &events).await
    }

    /// The checkpoint as committed, read without a lock.
    async fn checkpoint(&self) -> Result<FeedCursor, ProjectionError> {
        let row: (i64, i64) = crate::on_reader!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT transaction_id, position FROM projection_checkpoints
                  WHERE name = $1 AND version = $2",
            )
            .bind(P::NAME)
            .bind(P::VERSION)
            .fetch_one(pool)
            .await
        })?;
        Ok(cursor_of(row))
    }

    /// Applies `events` (read after the checkpoint `tx` holds locked) and moves the
    /// checkpoint to the last of them.
    async fn apply_and_checkpoint(
        &self,
        tx: &mut ReadTx,
        events: &[RecordedEvent],
    ) -> Result<u64, ProjectionError> {
        let Some(last) = events.last().map(RecordedEvent::cursor) else {
            return Ok(0);
        };
        if let Err(error) = self.projection.apply_batch(tx, events).await {
            if let (ProjectionError::Event { .. }, [event]) = (&error, events) {
                self.fail(event, &error);
            }
            return Err(error);
        }
        on_tx!(&mut *tx, |conn| {
            sqlx::query(
                "UPDATE projection_checkpoints
                    SET transaction_id = $3, position = $4, updated_at = $5
                  WHERE name = $1 AND version = $2",
            )
            .bind(P::NAME)
            .bind(P::VERSION)
            .bind(i64::try_from(last.transaction_id).unwrap_or(i64::MAX))
            .bind(last.position)
            .bind(Utc::now().timestamp_millis())
            .execute(conn)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(events.len() as u64)
    }

    /// Catches up whenever `wake` fires, and at least every `every`, until the task is
    /// aborted; after a wake-up it lets `settle` pass first, so a burst of commits is
    /// applied as one batch instead of one catch-up each (the committing node's own views
    /// are written inline, so this delays only what the feed repairs or other nodes wrote).
    /// Database and feed errors are logged and retried: the projection falls behind. An
    /// event it cannot apply stops it there ([`Projector::advance`]) while the other
    /// projections go on. `stop` is obeyed between catch-ups, never inside one (an aborted
    /// transaction can leave a SQLite connection unusable).
    pub async fn run(
        self: Arc<Self>,
        wake: Arc<Notify>,
        progress: Arc<Notify>,
        every: Duration,
        settle: Duration,
        stop: CancellationToken,
    ) {
        loop {
            match self.catch_up().await {
                Ok(0) => {}
                Ok(applied) => {
                    tracing::debug!(projection = P::NAME, applied, "caught up");
                    progress.notify_waiters();
                }
                // Logged once, when it stopped.
                Err(ProjectionError::Failed { .. }) => {}
                Err(error) => tracing::error!(projection = P::NAME, %error, "catch-up failed"),
            }
            tokio::select! {
                () = wake.notified() => tokio::time::sleep(settle).await,
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// A projector whose projection type is erased, so the runtime can hold all of them in one
/// list: set up, catch up, run, and know which `NAME`/`VERSION` is live.
pub trait AnyProjector: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn version(&self) -> i64;
    fn setup(&self) -> BoxFuture<'_, Result<(), ProjectionError>>;
    fn catch_up(&self) -> BoxFuture<'_, Result<u64, ProjectionError>>;
    fn advance(&self) -> BoxFuture<'_, Result<u64, ProjectionError>>;
    fn catch_up_in<'a>(&'a self, tx: &'a mut ReadTx)
        -> BoxFuture<'a, Result<u64, ProjectionError>>;
    fn failure(&self) -> Option<ProjectionFailure>;
    fn clear_failure(&self);
    fn failures_total(&self) -> u64;
    /// The same projection over the same feed, writing to `db` in batches of `batch`: the
    /// copy a rebuild builds beside the live one.
    fn with_db(&self, db: ReadDb, batch: u32) -> Arc<dyn AnyProjector>;
    /// Catches up on every `wake` (after `settle`) and at least every `every` until `stop`;
    /// fires `progress` after each catch-up that applied events.
    fn run(
        self: Arc<Self>,
        wake: Arc<Notify>,
        progress: Arc<Notify>,
        every: Duration,
        settle: Duration,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

impl<P: Projection, S: EventSource + Clone + 'static> AnyProjector for Projector<P, S> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn version(&self) -> i64 {
        P::VERSION
    }

    fn setup(&self) -> BoxFuture<'_, Result<(), ProjectionError>> {
        Box::pin(Projector::setup(self))
    }

    fn catch_up(&self) -> BoxFuture<'_, Result<u64, ProjectionError>> {
        Box::pin(Projector::catch_up(self))
    }

    fn advance(&self) -> BoxFuture<'_, Result<u64, ProjectionError>> {
        Box::pin(Projector::advance(self))
    }

    fn catch_up_in<'a>(
        &'a self,
        tx: &'a mut ReadTx,
    ) -> BoxFuture<'a, Result<u64, ProjectionError>> {
        Box::pin(Projector::catch_up_in(self, tx))
    }

    fn failure(&self) -> Option<ProjectionFailure> {
        Projector::failure(self)
    }

    fn clear_failure(&self) {
        Projector::clear_failure(self);
    }

    fn failures_total(&self) -> u64 {
        Projector::failures_total(self)
    }

    fn with_db(&self, db: ReadDb, batch: u32) -> Arc<dyn AnyProjector> {
        Arc::new(Projector::with_shared(
            self.projection.clone(),
            self.source.clone(),
            db,
            batch,
        ))
    }

    fn run(
        self: Arc<Self>,
        wake: Arc<Notify>,
        progress: Arc<Notify>,
        every: Duration,
        settle: Duration,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(Projector::run(self, wake, progress, every, settle, stop))
    }
}
