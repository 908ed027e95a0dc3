//! The workflow list read model: one row per workflow with its owner, the team it is shared
//! with and whether it is archived, and the aggregate's state (every version) as JSON. The same projection keeps
//! the run rows ([`WorkflowRunView`]) and the schedule rows ([`ScheduleView`]).

use chronicle_aggregates::schedule::Schedule;
use chronicle_aggregates::workflow::{Workflow, WorkflowState};
use chronicle_aggregates::workflow_run::WorkflowRun;
use cqrs_es::Aggregate;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{fold_next, Projection, ProjectionError};
use crate::schedule_view::ScheduleView;
use crate::workflow_run_view::WorkflowRunView;
use crate::{on_reader, on_tx};

pub struct WorkflowView;

/// A workflow as the read model holds it.
#[derive(Debug, Clone)]
pub struct WorkflowRow {
    pub workflow: Workflow,
    /// The aggregate's version (its event count), for `ETag`.
    pub version: usize,
}

impl WorkflowRow {
    pub fn state(&self) -> Option<&WorkflowState> {
        self.workflow.state()
    }
}

fn decode_row(state: &str, version: i64) -> Result<WorkflowRow, ProjectionError> {
    let (workflow, version) = ProjectionError::decode_state::<Workflow>(state, version)?;
    Ok(WorkflowRow { workflow, version })
}

impl WorkflowView {
    /// Writes `workflow` at `version` unless the row already reflects that version or a
    /// later one.
    pub async fn upsert(
        tx: &mut ReadTx,
        workflow: &Workflow,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let Some(state) = workflow.state() else {
            return Ok(());
        };
        let json = serde_json::to_string(workflow).map_err(|e| ProjectionError::Event {
            aggregate_type: Workflow::TYPE.into(),
            aggregate_id: state.id.to_string(),
            sequence: version as i64,
            message: e.to_string(),
        })?;
        on_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO workflow_view_v3 (id, owner_id, archived, version, state, team_id)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET
                        archived = excluded.archived, version = excluded.version,
                        state = excluded.state, team_id = excluded.team_id
                  WHERE workflow_view_v3.version < excluded.version",
            )
            .bind(state.id.to_string())
            .bind(state.owner_id.to_string())
            .bind(i64::from(state.archived))
            .bind(version as i64)
            .bind(&json)
            .bind(state.team_id.map(|id| id.to_string()))
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Writes a just-committed workflow in its own transaction, so the caller reads its
    /// own write; the catch-up repeats it harmlessly.
    pub async fn write_committed(
        db: &ReadDb,
        workflow: &Workflow,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let mut tx = db.begin_derived().await?;
        Self::upsert(&mut tx, workflow, version).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The workflows that are not archived of the owner or shared with one of `team_ids`,
    /// newest first (ids are UUIDv7), at most `limit`, before `before_id` when given.
    pub async fn list(
        db: &ReadDb,
        owner_id: Uuid,
        team_ids: &[Uuid],
        before_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<WorkflowRow>, ProjectionError> {
        let teams: Vec<String> = team_ids.iter().map(Uuid::to_string).collect();
        let rows: Vec<(String, i64)> = match db {
            ReadDb::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT state, version FROM workflow_view_v3
                      WHERE (owner_id = $1 OR team_id = ANY($2)) AND archived = 0
                        AND ($3::text IS NULL OR id < $3)
                      ORDER BY id DESC LIMIT $4",
                )
                .bind(owner_id.to_string())
                .bind(&teams)
                .bind(before_id.map(|u| u.to_string()))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
            }
            ReadDb::Sqlite { reader, .. } => {
                let teams = serde_json::to_string(&teams).map_err(|e| ProjectionError::Event {
                    aggregate_type: Workflow::TYPE.into(),
                    aggregate_id: String::new(),
                    sequence: 0,
                    message: e.to_string(),
                })?;
                sqlx::query_as(
                    "SELECT state, version FROM workflow_view_v3
                      WHERE (owner_id = $1 OR team_id IN (SELECT value FROM json_each($2)))
                        AND archived = 0 AND ($3 IS NULL OR id < $3)
                      ORDER BY id DESC LIMIT $4",
                )
                .bind(owner_id.to_string())
                .bind(teams)
                .bind(before_id.map(|u| u.to_string()))
                .bind(i64::from(limit))
                .fetch_all(reader)
                .await?
            }
        };
        rows.iter().map(|(s, v)| decode_row(s, *v)).collect()
    }

    /// The ids of the workflows not archived that are shared with `team_id` (at most
    /// `limit`), oldest first: what stands in the way of deleting the team.
    pub async fn shared_with(
        db: &ReadDb,
        team_id: Uuid,
        limit: u32,
    ) -> Result<Vec<String>, ProjectionError> {
        const SQL: &str = "SELECT id FROM workflow_view_v3
                  WHERE team_id = $1 AND archived = 0 ORDER BY id LIMIT $2";
        Ok(crate::db::ids_of_team(db, SQL, team_id, limit).await?)
    }

    pub async fn get(db: &ReadDb, id: Uuid) -> Result<Option<WorkflowRow>, ProjectionError> {
        let row: Option<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as("SELECT state, version FROM workflow_view_v3 WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await
        })?;
        row.map(|(s, v)| decode_row(&s, v)).transpose()
    }
}

impl Projection for WorkflowView {
    const NAME: &'static str = "workflow_views";
    /// 2: the schedule rows joined ([`ScheduleView`]); 3: the team a workflow is shared with.
    const VERSION: i64 = 3;

    async fn setup(&self, tx: &mut ReadTx) -> Result<(), sqlx::Error> {
        tx.execute_all(&WorkflowRunView::SETUP).await?;
        tx.execute_all(&ScheduleView::SETUP).await?;
        let statements = [
            "CREATE TABLE IF NOT EXISTS workflow_view_v3 (
                id       TEXT PRIMARY KEY,
                owner_id TEXT NOT NULL,
                archived BIGINT NOT NULL,
                version  BIGINT NOT NULL,
                state    TEXT NOT NULL,
                team_id  TEXT
            )",
            "CREATE INDEX IF NOT EXISTS workflow_view_v3_owner
                ON workflow_view_v3 (owner_id, archived, id)",
            "CREATE INDEX IF NOT EXISTS workflow_view_v3_team
                ON workflow_view_v3 (team_id, archived, id)",
        ];
        tx.execute_all(&statements).await
    }

    async fn apply(&self, tx: &mut ReadTx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type == WorkflowRun::TYPE {
            return WorkflowRunView::apply(tx, event).await;
        }
        if event.aggregate_type == Schedule::TYPE {
            return ScheduleView::apply(tx, event).await;
        }
        if event.aggregate_type != Workflow::TYPE {
            return Ok(());
        }
        let current: Option<(String, i64)> = on_tx!(&mut *tx, |conn| {
            sqlx::query_as("SELECT state, version FROM workflow_view_v3 WHERE id = $1")
                .bind(&event.aggregate_id)
                .fetch_optional(conn)
                .await
        })?;
        let Some(workflow) = fold_next::<Workflow>(current, event)? else {
            return Ok(());
        };
        Self::upsert(tx, &workflow, event.sequence as usize).await
    }
}
