//! The workflow-run read model: one row per run with its workflow, owner and status, and
//! the run's state (params, per-step map) as JSON.

use chronicle_aggregates::workflow_run::{RunState, WorkflowRun};
use cqrs_es::Aggregate;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{fold_next, ProjectionError};
use crate::{on_reader, on_tx};

/// The run rows; kept by the [`crate::workflow_view::WorkflowView`] projection, which
/// follows both workflow and run events (one projector, one connection fewer).
pub struct WorkflowRunView;

/// A run as the read model holds it.
#[derive(Debug, Clone)]
pub struct WorkflowRunRow {
    pub run: WorkflowRun,
    pub version: usize,
}

impl WorkflowRunRow {
    pub fn state(&self) -> Option<&RunState> {
        self.run.state()
    }
}

fn decode_row(state: &str, version: i64) -> Result<WorkflowRunRow, ProjectionError> {
    let (run, version) = ProjectionError::decode_state::<WorkflowRun>(state, version)?;
    Ok(WorkflowRunRow { run, version })
}

impl WorkflowRunView {
    /// Writes `run` at `version` unless the row already reflects that version or a later
    /// one.
    pub async fn upsert(
        tx: &mut ReadTx,
        run: &WorkflowRun,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let Some(state) = run.state() else {
            return Ok(());
        };
        let json = serde_json::to_string(run).map_err(|e| ProjectionError::Event {
            aggregate_type: WorkflowRun::TYPE.into(),
            aggregate_id: state.id.to_string(),
            sequence: version as i64,
            message: e.to_string(),
        })?;
        on_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO workflow_run_view_v2 (id, workflow_id, owner_id, status, version, state)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET
                        status = excluded.status, version = excluded.version,
                        state = excluded.state
                  WHERE workflow_run_view_v2.version < excluded.version",
            )
            .bind(state.id.to_string())
            .bind(state.workflow_id.to_string())
            .bind(state.owner_id.to_string())
            .bind(state.status.as_str())
            .bind(version as i64)
            .bind(&json)
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Writes a just-committed run in its own transaction, so the caller reads its own
    /// write; the catch-up repeats it harmlessly.
    pub async fn write_committed(
        db: &ReadDb,
        run: &WorkflowRun,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let mut tx = db.begin_derived().await?;
        Self::upsert(&mut tx, run, version).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get(db: &ReadDb, id: Uuid) -> Result<Option<WorkflowRunRow>, ProjectionError> {
        let row: Option<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as("SELECT state, version FROM workflow_run_view_v2 WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await
        })?;
        row.map(|(s, v)| decode_row(&s, v)).transpose()
    }

    /// The ids of runs still running, oldest first: what the process manager looks after.
    pub async fn running(db: &ReadDb, limit: u32) -> Result<Vec<Uuid>, ProjectionError> {
        let ids: Vec<String> = on_reader!(db, |pool| {
            sqlx::query_scalar(
                "SELECT id FROM workflow_run_view_v2 WHERE status = 'running'
                  ORDER BY id LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    }

    /// The runs of a workflow, newest first, at most `limit`, before `before_id` if given.
    pub async fn of_workflow(
        db: &ReadDb,
        workflow_id: Uuid,
        before_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<WorkflowRunRow>, ProjectionError> {
        let rows: Vec<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT state, version FROM workflow_run_view_v2
                  WHERE workflow_id = $1 AND ($2 IS NULL OR id < $2)
                  ORDER BY id DESC LIMIT $3",
            )
            .bind(workflow_id.to_string())
            .bind(before_id.map(|u| u.to_string()))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.iter().map(|(s, v)| decode_row(s, *v)).collect()
    }
}

impl WorkflowRunView {
    pub(crate) const SETUP: [&'static str; 3] = [
        "CREATE TABLE IF NOT EXISTS workflow_run_view_v2 (
            id          TEXT PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            owner_id    TEXT NOT NULL,
            status      TEXT NOT NULL,
            version     BIGINT NOT NULL,
            state       TEXT NOT NULL
        )",
        "CREATE INDEX IF NOT EXISTS workflow_run_view_v2_workflow
            ON workflow_run_view_v2 (workflow_id, id)",
        "CREATE INDEX IF NOT EXISTS workflow_run_view_v2_status
            ON workflow_run_view_v2 (status, id)",
    ];

    /// Folds one run event into its row.
    pub(crate) async fn apply(
        tx: &mut ReadTx,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let current: Option<(String, i64)> = on_tx!(&mut *tx, |conn| {
            sqlx::query_as("SELECT state, version FROM workflow_run_view_v2 WHERE id = $1")
                .bind(&event.aggregate_id)
                .fetch_optional(conn)
                .await
        })?;
        let Some(run) = fold_next::<WorkflowRun>(current, event)? else {
            return Ok(());
        };
        Self::upsert(tx, &run, event.sequence as usize).await
    }
}
