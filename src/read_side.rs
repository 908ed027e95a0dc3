//! The read side at run time: sets up the projections, catches them up at start, keeps
//! them current in the background, and reports their lag.

use std::sync::Arc;
use std::time::Duration;

use chronicle_aggregates::agent::Agent;
use chronicle_aggregates::api_key::ApiKey;
use chronicle_aggregates::task::{is_ready, Task};
use chronicle_projections::agent_view::AgentView;
use chronicle_projections::aggregate_owners::AggregateOwners;
use chronicle_projections::api_key_view::ApiKeyView;
use chronicle_projections::task_view::TaskView;
use chronicle_projections::usage::UsageView;
use chronicle_projections::{
    AnyProjector, FeedCursor, ProjectionError, ProjectionStatus, Projector, ReadDb,
};
use chrono::Utc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::dispatch::DispatchState;
use crate::store::Store;
use crate::wakeups::Wakeups;

/// How often a projection looks at the feed when nothing woke it (another node wrote).
const POLL: Duration = Duration::from_millis(500);

/// After a wake-up, a projection waits this long so that a burst of commits is one batch.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct ReadSide {
    pub db: ReadDb,
    wake: Arc<Notify>,
    /// Woken when a task may have become ready to lease: long-polling agents wait on it.
    queue: Arc<Notify>,
    projectors: Arc<[Arc<dyn AnyProjector>]>,
    store: Store,
    /// Announcements to other nodes on the same PostgreSQL; `None` on SQLite.
    wakeups: Option<Wakeups>,
    /// What this node's lease calls share.
    dispatch: Arc<DispatchState>,
}

impl ReadSide {
    /// Creates the projections' tables and catches them up before the API serves.
    pub async fn start(store: &Store) -> Result<Self, ProjectionError> {
        let db = store.read_db();
        let projectors: Arc<[Arc<dyn AnyProjector>]> = Arc::new([
            Arc::new(Projector::new(TaskView, store.clone(), db.clone())) as Arc<dyn AnyProjector>,
            Arc::new(Projector::new(AgentView, store.clone(), db.clone())),
            Arc::new(Projector::new(ApiKeyView, store.clone(), db.clone())),
            Arc::new(Projector::new(AggregateOwners, store.clone(), db.clone())),
            Arc::new(Projector::new(UsageView, store.clone(), db.clone())),
        ]);
        for projector in projectors.iter() {
            projector.setup().await?;
            let applied = projector.catch_up().await?;
            tracing::info!(
                projection = projector.name(),
                applied,
                "projection caught up"
            );
        }
        Ok(Self {
            wake: Arc::new(Notify::new()),
            queue: Arc::new(Notify::new()),
            wakeups: matches!(db, ReadDb::Postgres(_)).then(Wakeups::new),
            db,
            projectors,
            store: store.clone(),
            dispatch: Arc::default(),
        })
    }

    /// Keeps the projections current until `stop` is cancelled (they finish the catch-up
    /// they are in; await the first list), and the cross-node wake-ups until their handles
    /// (the second list) are aborted.
    pub fn spawn(&self, stop: &CancellationToken) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>) {
        let projectors = self
            .projectors
            .iter()
            .map(|projector| {
                tokio::spawn(
                    projector
                        .clone()
                        .run(self.wake.clone(), POLL, SETTLE, stop.clone()),
                )
            })
            .collect();
        let mut others = Vec::new();
        if let (Some(wakeups), ReadDb::Postgres(pool)) = (&self.wakeups, &self.db) {
            others.extend(wakeups.spawn(
                pool.clone(),
                self.store.link().cloned(),
                self.queue.clone(),
                self.wake.clone(),
            ));
        }
        (projectors, others)
    }

    /// Tells the projections that events were appended.
    pub fn notify(&self) {
        self.wake.notify_waiters();
        if let Some(wakeups) = &self.wakeups {
            wakeups.events();
        }
    }

    /// Tells waiting agents that a task may have become ready to lease.
    pub fn notify_queue(&self) {
        self.queue.notify_waiters();
        if let Some(wakeups) = &self.wakeups {
            wakeups.queue();
        }
    }

    /// What this node's lease calls share (see `process::dispatch`).
    pub(crate) fn dispatch(&self) -> &DispatchState {
        &self.dispatch
    }

    /// The signal behind [`ReadSide::notify_queue`]; register interest (`enable`) before
    /// looking at the queue, so a wake-up between the look and the wait is not lost.
    pub fn queue_signal(&self) -> &Notify {
        &self.queue
    }

    /// Fired after local commits and when another node announces appended events: what
    /// projections wake on, for live subscribers too. Register interest (`enable`) before
    /// reading the feed, so events committed between the read and the wait still wake.
    pub fn events_signal(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Brings the task views up to a just-committed task so its caller reads its own write,
    /// and wakes waiting agents when the task is ready to lease. A failure here only delays
    /// the view (the catch-up repairs it), so it is logged.
    pub async fn task_committed(&self, task: &Task, version: usize) {
        if let Err(error) = TaskView::write_committed(&self.db, task, version).await {
            tracing::warn!(%error, "inline task view write failed; catch-up will repair it");
        }
        self.notify();
        if task
            .state()
            .is_some_and(|state| is_ready(state, Utc::now()))
        {
            self.notify_queue();
        }
    }

    /// Brings the agent view up to a just-committed agent; see [`ReadSide::task_committed`].
    pub async fn agent_committed(&self, agent: &Agent, version: usize) {
        if let Err(error) = AgentView::write_committed(&self.db, agent, version).await {
            tracing::warn!(%error, "inline agent view write failed; catch-up will repair it");
        }
        self.notify();
    }

    /// Brings the API key list up to a just-committed key; see [`ReadSide::task_committed`].
    pub async fn api_key_committed(&self, key: &ApiKey, version: usize) {
        if let Err(error) = ApiKeyView::write_committed(&self.db, key, version).await {
            tracing::warn!(%error, "inline API key view write failed; catch-up will repair it");
        }
        self.notify();
    }

    /// Applies whatever is left, for a clean shutdown.
    pub async fn flush(&self) {
        for projector in self.projectors.iter() {
            if let Err(error) = projector.catch_up().await {
                tracing::warn!(projection = projector.name(), %error, "final projection catch-up failed");
            }
        }
    }

    /// Where each projection stands and how far behind the feed it is.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        let rows: Vec<(String, i64, i64, i64)> =
            chronicle_projections::on_reader!(&self.db, |pool| {
                sqlx::query_as(
                    "SELECT name, version, transaction_id, position FROM projection_checkpoints
                  ORDER BY name, version",
                )
                .fetch_all(pool)
                .await
            })?;
        let mut statuses = Vec::with_capacity(rows.len());
        for (name, version, transaction_id, position) in rows {
            let cursor = FeedCursor {
                transaction_id: u64::try_from(transaction_id).unwrap_or_default(),
                position,
            };
            let (lag_events, oldest) = self
                .store
                .lag_after(cursor)
                .await
                .map_err(|e| ProjectionError::Source(Box::new(e)))?;
            let lag_seconds = oldest
                .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            let live = self
                .projectors
                .iter()
                .any(|p| p.name() == name && p.version() == version);
            statuses.push(ProjectionStatus {
                name,
                version,
                position,
                lag_events,
                lag_seconds,
                status: if !live {
                    "retired"
                } else if lag_events == 0 {
                    "live"
                } else {
                    "catching_up"
                },
            });
        }
        Ok(statuses)
    }
}
