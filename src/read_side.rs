//! The read side at run time: sets up the projections, catches them up at start, keeps
//! them current in the background, reports their lag, and rebuilds them without downtime.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chronicle_aggregates::agent::Agent;
use chronicle_aggregates::api_key::ApiKey;
use chronicle_aggregates::schedule::Schedule;
use chronicle_aggregates::task::{is_ready, Task};
use chronicle_aggregates::team::Team;
use chronicle_aggregates::workflow::Workflow;
use chronicle_aggregates::workflow_run::WorkflowRun;
use chronicle_projections::agent_view::AgentView;
use chronicle_projections::aggregate_owners::AggregateOwners;
use chronicle_projections::api_key_view::ApiKeyView;
use chronicle_projections::rebuild::Shadow;
use chronicle_projections::schedule_view::ScheduleView;
use chronicle_projections::search::SearchIndex;
use chronicle_projections::task_view::TaskView;
use chronicle_projections::team_view::TeamView;
use chronicle_projections::usage::UsageView;
use chronicle_projections::workflow_run_view::WorkflowRunView;
use chronicle_projections::workflow_view::WorkflowView;
use chronicle_projections::{
    AnyProjector, FeedCursor, ProjectionError, ProjectionStatus, Projector, ReadDb,
};
use chrono::Utc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::dispatch::DispatchState;
use crate::process::workflows::EndedSteps;
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
    /// Runs whose step task ended here: the workflow driver looks at them at once.
    ended_steps: Arc<EndedSteps>,
    /// Fired after a projection applied events: readers scoped by a projection's
    /// checkpoint (the owners) look again.
    projected: Arc<Notify>,
    /// Projections this node is rebuilding now.
    rebuilding: Arc<Mutex<HashSet<&'static str>>>,
    /// This node's search index (not SQL: its position is in its own commits), once
    /// attached; `None` in tools that do not search.
    search: Option<SearchIndex>,
}

/// Events per transaction while a rebuild builds its copy: larger than the live batch,
/// since nobody waits on the copy's checkpoint.
const REBUILD_BATCH: u32 = 5_000;

/// Why a rebuild did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("no projection is named {0:?}")]
    Unknown(String),
    #[error("projection {0} is being rebuilt already")]
    Running(&'static str),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// The right to rebuild one projection: at most one per projection per node (and, on
/// PostgreSQL, per cluster: [`ReadSide::rebuild_claimed`] takes an advisory lock too).
/// Released on drop.
pub struct RebuildClaim {
    target: RebuildTarget,
    rebuilding: Arc<Mutex<HashSet<&'static str>>>,
}

/// What a rebuild builds again: a SQL projection, or this node's search index.
#[derive(Clone)]
enum RebuildTarget {
    Sql(Arc<dyn AnyProjector>),
    Search(SearchIndex),
}

impl RebuildTarget {
    fn name(&self) -> &'static str {
        match self {
            Self::Sql(projector) => projector.name(),
            Self::Search(_) => chronicle_projections::search::NAME,
        }
    }
}

impl RebuildClaim {
    pub fn name(&self) -> &'static str {
        self.target.name()
    }
}

impl Drop for RebuildClaim {
    fn drop(&mut self) {
        self.rebuilding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.target.name());
    }
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub name: &'static str,
    pub version: i64,
    /// Events applied to the copy, the final catch-up inside the switch included.
    pub applied: u64,
    /// Of those, applied inside the switch transaction.
    pub in_switch: u64,
    pub elapsed: Duration,
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
            Arc::new(Projector::new(WorkflowView, store.clone(), db.clone())),
            Arc::new(Projector::new(TeamView, store.clone(), db.clone())),
        ]);
        // A new `VERSION` is a new set of tables (`…_v<N>`): it is built here from the
        // first event before the API serves, beside the older version's tables, which nodes
        // still running the old code go on using.
        for projector in projectors.iter() {
            projector.setup().await?;
            match projector.catch_up().await {
                Ok(applied) => tracing::info!(
                    projection = projector.name(),
                    applied,
                    "projection caught up"
                ),
                // Stopped at an event it cannot apply (logged): the others go on, and the
                // API serves, with `/api/status` saying so.
                Err(error) if projector.failure().is_some() => {
                    tracing::warn!(projection = projector.name(), %error, "projection failed");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Self {
            wake: Arc::new(Notify::new()),
            queue: Arc::new(Notify::new()),
            wakeups: matches!(db, ReadDb::Postgres(_)).then(Wakeups::new),
            db,
            projectors,
            store: store.clone(),
            dispatch: Arc::default(),
            ended_steps: Arc::default(),
            projected: Arc::default(),
            rebuilding: Arc::default(),
            search: None,
        })
    }

    /// Catches the search index up (from its own committed position) and serves searches
    /// from it; it is kept current by [`ReadSide::spawn`] like the other projections.
    pub async fn attach_search(&mut self, index: SearchIndex) -> Result<(), ProjectionError> {
        match index.catch_up(&self.store).await {
            Ok(applied) => tracing::info!(
                projection = chronicle_projections::search::NAME,
                applied,
                documents = index.len(),
                "projection caught up"
            ),
            // A failed event, or an embedder not answering: the node starts and the
            // index tries again (the error shows in /api/admin/projections).
            Err(error) if index.failure().is_some() || index.retrying().is_some() => {
                tracing::warn!(projection = "search", %error, "projection failed");
            }
            Err(error) => return Err(error),
        }
        self.search = Some(index);
        Ok(())
    }

    /// This node's search index, when attached.
    pub fn search(&self) -> Option<&SearchIndex> {
        self.search.as_ref()
    }

    /// The names of the projections, live versions only.
    pub fn projection_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.projectors.iter().map(|p| p.name()).collect();
        if self.search.is_some() {
            names.push(chronicle_projections::search::NAME);
        }
        names
    }

    /// How many times each projection stopped at an event it could not apply, since this
    /// process started: `chronicle_projection_failures_total{projection}` for the metrics
    /// endpoint.
    pub fn projection_failures(&self) -> Vec<(&'static str, u64)> {
        self.projectors
            .iter()
            .map(|p| (p.name(), p.failures_total()))
            .collect()
    }

    /// Claims the rebuild of projection `name` on this node.
    pub fn claim_rebuild(&self, name: &str) -> Result<RebuildClaim, RebuildError> {
        let target = match &self.search {
            Some(index) if name == chronicle_projections::search::NAME => {
                RebuildTarget::Search(index.clone())
            }
            _ => self
                .projectors
                .iter()
                .find(|p| p.name() == name)
                .cloned()
                .map(RebuildTarget::Sql)
                .ok_or_else(|| RebuildError::Unknown(name.to_owned()))?,
        };
        let mut rebuilding = self
            .rebuilding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !rebuilding.insert(target.name()) {
            return Err(RebuildError::Running(target.name()));
        }
        Ok(RebuildClaim {
            target,
            rebuilding: self.rebuilding.clone(),
        })
    }

    /// Rebuilds projection `name` without downtime; see [`ReadSide::rebuild_claimed`].
    pub async fn rebuild(
        &self,
        name: &str,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<RebuildReport, RebuildError> {
        let claim = self.claim_rebuild(name)?;
        self.rebuild_claimed(claim, progress).await
    }

    /// Builds the claimed projection again from the first event in fresh tables beside the
    /// live ones, which serve reads meanwhile (and take the inline writes), then applies
    /// what is left and swaps the copy in, atomically
    /// ([`chronicle_projections::rebuild`]). `progress` gets (events applied, events in
    /// the feed) after each batch. A failed projection goes on again once rebuilt.
    pub async fn rebuild_claimed(
        &self,
        claim: RebuildClaim,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<RebuildReport, RebuildError> {
        let started = std::time::Instant::now();
        let projector = match claim.target.clone() {
            RebuildTarget::Sql(projector) => projector,
            // This node's own index: no cluster lock, no shadow tables.
            RebuildTarget::Search(index) => {
                let (total, _) = self
                    .store
                    .lag_after(FeedCursor::default())
                    .await
                    .map_err(|e| ProjectionError::Source(Box::new(e)))?;
                let total = u64::try_from(total).unwrap_or_default();
                let applied = index.rebuild(&self.store, total, progress).await?;
                self.notify();
                let report = RebuildReport {
                    name: chronicle_projections::search::NAME,
                    version: chronicle_projections::search::VERSION,
                    applied,
                    in_switch: 0,
                    elapsed: started.elapsed(),
                };
                tracing::info!(
                    projection = report.name,
                    applied,
                    elapsed_ms = report.elapsed.as_millis() as u64,
                    "search index rebuilt"
                );
                drop(claim);
                return Ok(report);
            }
        };
        let name = projector.name();
        // Across nodes: a session advisory lock, held on this connection until the end.
        let mut cluster_lock = match &self.db {
            ReadDb::Postgres(pool) => {
                let mut conn = pool.acquire().await.map_err(ProjectionError::from)?;
                let locked: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1)::bigint)")
                        .bind(format!("chronicle.rebuild.{name}"))
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(ProjectionError::from)?;
                if !locked {
                    return Err(RebuildError::Running(name));
                }
                Some(conn)
            }
            ReadDb::Sqlite { .. } => None,
        };
        let built = self.build_and_switch(&*projector, progress).await;
        if let Some(conn) = cluster_lock.as_mut() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1)::bigint)")
                .bind(format!("chronicle.rebuild.{name}"))
                .execute(&mut **conn)
                .await;
            if let Err(error) = unlocked {
                // The lock ends with the connection: close it rather than return it.
                tracing::warn!(%error, "could not release the rebuild lock");
                if let Some(conn) = cluster_lock.take() {
                    drop(conn.detach());
                }
            }
        }
        let (applied, in_switch) = built?;
        projector.clear_failure();
        self.notify();
        let report = RebuildReport {
            name,
            version: projector.version(),
            applied,
            in_switch,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            projection = name,
            applied,
            in_switch,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "projection rebuilt and switched"
        );
        drop(claim);
        Ok(report)
    }

    async fn build_and_switch(
        &self,
        projector: &dyn AnyProjector,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(u64, u64), ProjectionError> {
        let (total, _) = self
            .store
            .lag_after(FeedCursor::default())
            .await
            .map_err(|e| ProjectionError::Source(Box::new(e)))?;
        let total = u64::try_from(total).unwrap_or_default();
        let shadow = Shadow::create(&self.db, projector.name(), projector.version()).await?;
        let copy = projector.with_db(shadow.db().clone(), REBUILD_BATCH);
        let mut applied = 0;
        let built = async {
            copy.setup().await?;
            loop {
                let batch = copy.advance().await?;
                applied += batch;
                progress(applied, total.max(applied));
                if batch < u64::from(REBUILD_BATCH) {
                    return Ok::<_, ProjectionError>(());
                }
            }
        }
        .await;
        if let Err(error) = built {
            shadow.discard().await;
            return Err(error);
        }
        let in_switch = shadow.switch(&self.db, &*copy).await?;
        progress(applied + in_switch, total.max(applied + in_switch));
        Ok((applied + in_switch, in_switch))
    }

    /// Keeps the projections current until `stop` is cancelled (they finish the catch-up
    /// they are in; await the first list), and the cross-node wake-ups until their handles
    /// (the second list) are aborted.
    pub fn spawn(&self, stop: &CancellationToken) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>) {
        let projectors = self
            .projectors
            .iter()
            .map(|projector| {
                tokio::spawn(projector.clone().run(
                    self.wake.clone(),
                    self.projected.clone(),
                    POLL,
                    SETTLE,
                    stop.clone(),
                ))
            })
            .collect::<Vec<_>>();
        let mut projectors = projectors;
        if let Some(index) = self.search.clone() {
            projectors.push(tokio::spawn(run_search(
                index,
                self.store.clone(),
                self.wake.clone(),
                stop.clone(),
            )));
        }
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

    /// Runs whose step task ended on this node (see `process::workflows`).
    pub(crate) fn ended_steps(&self) -> &EndedSteps {
        &self.ended_steps
    }

    /// Fired after a projection on this node applied events (see the `projected` field).
    pub fn projected_signal(&self) -> Arc<Notify> {
        self.projected.clone()
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
    /// tells the workflow driver when a step's task ended, and wakes waiting agents when
    /// the task is ready to lease, or when it has a
    /// concurrency group and is not held (a hold of the group may have ended, freeing a
    /// slot for the next of its tasks). A failure here only delays the view (the catch-up
    /// repairs it), so it is logged.
    pub async fn task_committed(&self, task: &Task, version: usize) {
        if let Some(state) = task.state() {
            if let (Some(run_id), true) = (state.workflow_run_id, state.status.is_terminal()) {
                self.ended_steps.ended(run_id);
            }
        }
        if let Err(error) = TaskView::write_committed(&self.db, task, version).await {
            tracing::warn!(%error, "inline task view write failed; catch-up will repair it");
        }
        self.notify();
        if task.state().is_some_and(|state| {
            is_ready(state, Utc::now()) || (state.concurrency.is_some() && !state.status.is_held())
        }) {
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

    /// Brings the workflow list up to a just-committed workflow; see
    /// [`ReadSide::task_committed`].
    pub async fn workflow_committed(&self, workflow: &Workflow, version: usize) {
        if let Err(error) = WorkflowView::write_committed(&self.db, workflow, version).await {
            tracing::warn!(%error, "inline workflow view write failed; catch-up will repair it");
        }
        self.notify();
    }

    /// Brings the team view up to a just-committed team; see [`ReadSide::task_committed`].
    pub async fn team_committed(&self, team: &Team, version: usize) {
        if let Err(error) = TeamView::write_committed(&self.db, team, version).await {
            tracing::warn!(%error, "inline team view write failed; catch-up will repair it");
        }
        self.notify();
    }

    /// Brings the run view up to a just-committed run; see [`ReadSide::task_committed`].
    pub async fn workflow_run_committed(&self, run: &WorkflowRun, version: usize) {
        if let Err(error) = WorkflowRunView::write_committed(&self.db, run, version).await {
            tracing::warn!(%error, "inline run view write failed; catch-up will repair it");
        }
        self.notify();
    }

    /// Brings the schedule view up to a just-committed schedule; see
    /// [`ReadSide::task_committed`].
    pub async fn schedule_committed(&self, schedule: &Schedule, version: usize) {
        if let Err(error) = ScheduleView::write_committed(&self.db, schedule, version).await {
            tracing::warn!(%error, "inline schedule view write failed; catch-up will repair it");
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
        if let Some(index) = &self.search {
            if let Err(error) = index.catch_up(&self.store).await {
                tracing::warn!(projection = "search", %error, "final projection catch-up failed");
            }
        }
    }

    /// Where each live projection's checkpoint stands: cheaper than [`ReadSide::status`].
    pub async fn checkpoints(&self) -> Result<Vec<(&'static str, FeedCursor)>, ProjectionError> {
        let rows: Vec<(String, i64, i64, i64)> =
            chronicle_projections::on_reader!(&self.db, |pool| {
                sqlx::query_as(
                    "SELECT name, version, transaction_id, position FROM projection_checkpoints",
                )
                .fetch_all(pool)
                .await
            })?;
        Ok(self
            .projectors
            .iter()
            .filter_map(|p| {
                let (_, _, transaction_id, position) = rows
                    .iter()
                    .find(|(name, version, _, _)| name == p.name() && *version == p.version())?;
                Some((
                    p.name(),
                    FeedCursor {
                        transaction_id: u64::try_from(*transaction_id).unwrap_or_default(),
                        position: *position,
                    },
                ))
            })
            .collect())
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
                .find(|p| p.name() == name && p.version() == version);
            let failure = live.and_then(|p| p.failure());
            let rebuilding = self
                .rebuilding
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(name.as_str());
            statuses.push(ProjectionStatus {
                status: if live.is_none() {
                    "retired"
                } else if failure.is_some() {
                    "failed"
                } else if rebuilding {
                    "rebuilding"
                } else if lag_events == 0 {
                    "live"
                } else {
                    "catching_up"
                },
                error: failure.map(|f| format!("at position {}: {}", f.position, f.message)),
                name,
                version,
                position,
                lag_events,
                lag_seconds,
            });
        }
        if let Some(index) = &self.search {
            statuses.push(self.search_status(index).await?);
            statuses.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
        }
        Ok(statuses)
    }

    /// The search index's row: its position is the one in its own last commit.
    async fn search_status(
        &self,
        index: &SearchIndex,
    ) -> Result<ProjectionStatus, ProjectionError> {
        let cursor = index.committed();
        let (lag_events, oldest) = self
            .store
            .lag_after(cursor)
            .await
            .map_err(|e| ProjectionError::Source(Box::new(e)))?;
        let failure = index.failure();
        Ok(ProjectionStatus {
            name: chronicle_projections::search::NAME.to_owned(),
            version: chronicle_projections::search::VERSION,
            position: cursor.position,
            lag_events,
            lag_seconds: oldest
                .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
            status: if failure.is_some() {
                "failed"
            } else if index.is_rebuilding()
                || self
                    .rebuilding
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(chronicle_projections::search::NAME)
            {
                "rebuilding"
            } else if lag_events == 0 {
                "live"
            } else {
                "catching_up"
            },
            error: failure
                .map(|f| format!("at position {}: {}", f.position, f.message))
                .or_else(|| {
                    index
                        .retrying()
                        .map(|why| format!("retrying after position {}: {why}", cursor.position))
                }),
        })
    }
}

/// Keeps the search index current: a catch-up on every wake-up (after [`SETTLE`]) and at
/// least every [`POLL`], until `stop`; errors are logged and retried.
async fn run_search(index: SearchIndex, store: Store, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        match index.catch_up(&store).await {
            Ok(_) | Err(ProjectionError::Failed { .. }) => {}
            Err(error) => tracing::error!(projection = "search", %error, "catch-up failed"),
        }
        tokio::select! {
            () = wake.notified() => tokio::time::sleep(SETTLE).await,
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return,
        }
    }
}
