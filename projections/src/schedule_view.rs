//! The schedule read model: one row per schedule with its workflow, owner, whether it is
//! deleted and its next fire time (milliseconds since the epoch, so both backends compare
//! it as a number), and the aggregate's state as JSON. The schedule process reads the due
//! ones from here; the API lists a workflow's.

use chronicle_aggregates::schedule::{Schedule, ScheduleState};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{fold_next, ProjectionError};
use crate::{on_reader, on_tx};

/// The schedule rows; kept by the [`crate::workflow_view::WorkflowView`] projection, which
/// follows workflow, run and schedule events (one projector, one connection fewer).
pub struct ScheduleView;

/// A schedule as the read model holds it.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub schedule: Schedule,
    /// The aggregate's version (its event count), for `ETag`.
    pub version: usize,
}

impl ScheduleRow {
    pub fn state(&self) -> Option<&ScheduleState> {
        self.schedule.state()
    }
}

fn decode_row(state: &str, version: i64) -> Result<ScheduleRow, ProjectionError> {
    let (schedule, version) = ProjectionError::decode_state::<Schedule>(state, version)?;
    Ok(ScheduleRow { schedule, version })
}

impl ScheduleView {
    /// Writes `schedule` at `version` unless the row already reflects that version or a
    /// later one.
    pub async fn upsert(
        tx: &mut ReadTx,
        schedule: &Schedule,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let Some(state) = schedule.state() else {
            return Ok(());
        };
        let json = serde_json::to_string(schedule).map_err(|e| ProjectionError::Event {
            aggregate_type: Schedule::TYPE.into(),
            aggregate_id: state.id.to_string(),
            sequence: version as i64,
            message: e.to_string(),
        })?;
        let next = state.next_fire_at().map(|at| at.timestamp_millis());
        on_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO schedule_view_v2
                        (id, workflow_id, owner_id, deleted, next_fire_at, version, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET
                        deleted = excluded.deleted, next_fire_at = excluded.next_fire_at,
                        version = excluded.version, state = excluded.state
                  WHERE schedule_view_v2.version < excluded.version",
            )
            .bind(state.id.to_string())
            .bind(state.workflow_id.to_string())
            .bind(state.owner_id.to_string())
            .bind(i64::from(state.deleted))
            .bind(next)
            .bind(version as i64)
            .bind(&json)
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Writes a just-committed schedule in its own transaction, so the caller reads its
    /// own write; the catch-up repeats it harmlessly.
    pub async fn write_committed(
        db: &ReadDb,
        schedule: &Schedule,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let mut tx = db.begin_derived().await?;
        Self::upsert(&mut tx, schedule, version).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get(db: &ReadDb, id: Uuid) -> Result<Option<ScheduleRow>, ProjectionError> {
        let row: Option<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as("SELECT state, version FROM schedule_view_v2 WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await
        })?;
        row.map(|(s, v)| decode_row(&s, v)).transpose()
    }

    /// The live schedules of a workflow, newest first (ids are UUIDv7), at most `limit`,
    /// before `before_id` when given.
    pub async fn of_workflow(
        db: &ReadDb,
        workflow_id: Uuid,
        before_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ScheduleRow>, ProjectionError> {
        let rows: Vec<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT state, version FROM schedule_view_v2
                  WHERE workflow_id = $1 AND deleted = 0 AND ($2 IS NULL OR id < $2)
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

    /// The live schedules whose next fire time is at or before `now`, earliest first.
    pub async fn due(
        db: &ReadDb,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, ProjectionError> {
        let ids: Vec<String> = on_reader!(db, |pool| {
            sqlx::query_scalar(
                "SELECT id FROM schedule_view_v2
                  WHERE deleted = 0 AND next_fire_at <= $1
                  ORDER BY next_fire_at, id LIMIT $2",
            )
            .bind(now.timestamp_millis())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    }

    /// The earliest next fire time of any live schedule.
    pub async fn earliest(db: &ReadDb) -> Result<Option<DateTime<Utc>>, ProjectionError> {
        let earliest: Option<i64> = on_reader!(db, |pool| {
            sqlx::query_scalar("SELECT MIN(next_fire_at) FROM schedule_view_v2 WHERE deleted = 0")
                .fetch_one(pool)
                .await
        })?;
        Ok(earliest.and_then(DateTime::from_timestamp_millis))
    }
}

impl ScheduleView {
    pub(crate) const SETUP: [&'static str; 3] = [
        "CREATE TABLE IF NOT EXISTS schedule_view_v2 (
            id           TEXT PRIMARY KEY,
            workflow_id  TEXT NOT NULL,
            owner_id     TEXT NOT NULL,
            deleted      BIGINT NOT NULL,
            next_fire_at BIGINT,
            version      BIGINT NOT NULL,
            state        TEXT NOT NULL
        )",
        "CREATE INDEX IF NOT EXISTS schedule_view_v2_workflow
            ON schedule_view_v2 (workflow_id, deleted, id)",
        "CREATE INDEX IF NOT EXISTS schedule_view_v2_due
            ON schedule_view_v2 (deleted, next_fire_at)",
    ];

    /// Folds one schedule event into its row.
    pub(crate) async fn apply(
        tx: &mut ReadTx,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let current: Option<(String, i64)> = on_tx!(&mut *tx, |conn| {
            sqlx::query_as("SELECT state, version FROM schedule_view_v2 WHERE id = $1")
                .bind(&event.aggregate_id)
                .fetch_optional(conn)
                .await
        })?;
        let Some(schedule) = fold_next::<Schedule>(current, event)? else {
            return Ok(());
        };
        Self::upsert(tx, &schedule, event.sequence as usize).await
    }
}
