//! The read side at run time: sets up the projections, catches them up at start, keeps
//! them current in the background, and reports their lag.

use std::sync::Arc;
use std::time::Duration;

use chronicle_projections::task_view::TaskView;
use chronicle_projections::{
    FeedCursor, Projection, ProjectionError, ProjectionStatus, Projector, ReadDb,
};
use chrono::Utc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::store::Store;

/// How often a projection looks at the feed when nothing woke it (another node wrote).
const POLL: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct ReadSide {
    pub db: ReadDb,
    wake: Arc<Notify>,
    task_view: Arc<Projector<TaskView, Store>>,
    store: Store,
}

impl ReadSide {
    /// Creates the projections' tables and catches them up before the API serves.
    pub async fn start(store: &Store) -> Result<Self, ProjectionError> {
        let db = store.read_db();
        let task_view = Arc::new(Projector::new(TaskView, store.clone(), db.clone()));
        task_view.setup().await?;
        let applied = task_view.catch_up().await?;
        tracing::info!(projection = TaskView::NAME, applied, "projection caught up");
        Ok(Self {
            db,
            wake: Arc::new(Notify::new()),
            task_view,
            store: store.clone(),
        })
    }

    /// Keeps the projections current until the handles are aborted.
    pub fn spawn(&self) -> Vec<JoinHandle<()>> {
        vec![tokio::spawn(
            self.task_view.clone().run(self.wake.clone(), POLL),
        )]
    }

    /// Tells the projections that events were appended.
    pub fn notify(&self) {
        self.wake.notify_waiters();
    }

    /// Applies whatever is left, for a clean shutdown.
    pub async fn flush(&self) {
        if let Err(error) = self.task_view.catch_up().await {
            tracing::warn!(%error, "final projection catch-up failed");
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
            let live = name == TaskView::NAME && version == TaskView::VERSION;
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
