//! The task list read model: one row per task with the columns lists filter and sort on,
//! and the task's state as JSON. Each row carries the aggregate version it reflects, so the
//! inline write after a command and the catch-up from the feed converge on the same row.

use std::collections::HashMap;
use std::sync::LazyLock;

use chronicle_aggregates::task::{Task, TaskState};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{decode_event, fold_next, Projection, ProjectionError};
use crate::scope::ReadScope;
use crate::{on_reader, on_tx};

pub struct TaskView;

/// Filters of `GET /api/tasks`; `None` means any.
#[derive(Debug, Clone)]
pub struct TaskFilter {
    /// Whose tasks: the owner's and their teams', or all.
    pub readers: ReadScope,
    /// Only the tasks shared with this team.
    pub team_id: Option<Uuid>,
    pub status: Option<String>,
    pub capability: Option<String>,
    pub agent_id: Option<Uuid>,
    pub tag: Option<String>,
    pub workflow_run_id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only tasks older than this one (ids are UUIDv7: they sort by creation).
    pub before_id: Option<Uuid>,
}

/// A task as the read model holds it.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub task: Task,
    pub version: usize,
}

impl TaskRow {
    pub fn state(&self) -> Option<&TaskState> {
        self.task.state()
    }
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// A stored row's state and version as a [`TaskRow`].
pub(crate) fn decode_row(state: &str, version: i64) -> Result<TaskRow, ProjectionError> {
    let (task, version) = ProjectionError::decode_state::<Task>(state, version)?;
    Ok(TaskRow { task, version })
}

/// The row's columns, in `$1…$17` order, then its tags as `$18` on PostgreSQL.
const UPSERT_COLUMNS: &str = "INSERT INTO task_view_v4 (id, owner_id, status, capability, priority,
        agent_id, pinned_agent_id, workflow_run_id, not_before, created_at, updated_at, version,
        state, lease_expires_at, concurrency_key, concurrency_limit, team_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
     ON CONFLICT (id) DO UPDATE SET
        status = excluded.status, capability = excluded.capability,
        priority = excluded.priority, agent_id = excluded.agent_id,
        pinned_agent_id = excluded.pinned_agent_id,
        workflow_run_id = excluded.workflow_run_id,
        not_before = excluded.not_before, updated_at = excluded.updated_at,
        version = excluded.version, state = excluded.state,
        lease_expires_at = excluded.lease_expires_at, team_id = excluded.team_id
      WHERE task_view_v4.version < excluded.version";

/// On PostgreSQL the row and its tags in one statement (one round trip): the upsert, then —
/// only if it wrote — the tags it no longer has deleted and the new ones added.
fn postgres_upsert(returning: &str) -> String {
    format!(
        "WITH written AS ({UPSERT_COLUMNS} {returning}),
              gone AS (DELETE FROM task_view_tags_v4
                        WHERE task_id IN (SELECT id FROM written) AND tag <> ALL($18::text[])),
              added AS (INSERT INTO task_view_tags_v4 (task_id, tag)
                        SELECT written.id, tag FROM written, unnest($18::text[]) AS tag
                        ON CONFLICT DO NOTHING)
         SELECT count(*) FROM written"
    )
}

/// The upsert inside a projection's transaction.
static POSTGRES_UPSERT: LazyLock<String> = LazyLock::new(|| postgres_upsert("RETURNING id"));

/// The inline write, a transaction of its own: `set_config(…, true)` lasts until its commit,
/// which then does not wait for the WAL flush (see [`TaskView::write_committed`]).
static POSTGRES_UPSERT_QUIET: LazyLock<String> = LazyLock::new(|| {
    postgres_upsert("RETURNING id, set_config('synchronous_commit', 'off', true)")
});

/// What one row binds, taken from a task.
struct RowValues<'a> {
    state: &'a TaskState,
    json: String,
    version: usize,
}

impl<'a> RowValues<'a> {
    fn of(task: &'a Task, version: usize) -> Result<Option<Self>, ProjectionError> {
        let Some(state) = task.state() else {
            return Ok(None);
        };
        let json = serde_json::to_string(task).map_err(|e| ProjectionError::Event {
            aggregate_type: Task::TYPE.into(),
            aggregate_id: state.id.to_string(),
            sequence: version as i64,
            message: e.to_string(),
        })?;
        Ok(Some(Self {
            state,
            json,
            version,
        }))
    }

    fn bind<'q, DB: sqlx::Database>(
        &'q self,
        query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    ) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
    where
        String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let state = self.state;
        query
            .bind(state.id.to_string())
            .bind(state.owner_id.to_string())
            .bind(state.status.as_str())
            .bind(state.capability.as_str())
            .bind(i64::from(state.priority.get()))
            .bind(state.agent_id.map(|a| a.to_string()))
            .bind(state.pinned_agent_id.map(|a| a.to_string()))
            .bind(state.workflow_run_id.map(|a| a.to_string()))
            .bind(state.not_before.map(millis))
            .bind(millis(state.created_at))
            .bind(millis(state.updated_at))
            .bind(self.version as i64)
            .bind(self.json.as_str())
            .bind(state.lease_expires_at.map(millis))
            .bind(state.concurrency.as_ref().map(|c| c.key().to_owned()))
            .bind(state.concurrency.as_ref().map(|c| i64::from(c.limit())))
            .bind(state.team_id.map(|t| t.to_string()))
    }

    fn tags(&self) -> Vec<String> {
        self.state.tags.as_slice().to_vec()
    }
}

impl TaskView {
    /// Writes `task` at `version` unless the row already reflects that version or a later
    /// one.
    pub async fn upsert(
        tx: &mut ReadTx,
        task: &Task,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let Some(row) = RowValues::of(task, version)? else {
            return Ok(());
        };
        if let ReadTx::Postgres(tx) = tx {
            row.bind(sqlx::query(POSTGRES_UPSERT.as_str()))
                .bind(row.tags())
                .execute(&mut **tx)
                .await?;
            return Ok(());
        }
        let written = on_tx!(tx, |conn| {
            row.bind(sqlx::query(UPSERT_COLUMNS))
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected())
        })?;
        let state = row.state;
        // A task's first version is a new row: it has no tags to clear.
        if written == 0 || (version == 1 && state.tags.as_slice().is_empty()) {
            return Ok(());
        }
        let id = state.id.to_string();
        on_tx!(tx, |conn| {
            if version > 1 {
                sqlx::query("DELETE FROM task_view_tags_v4 WHERE task_id = $1")
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
            }
            for tag in state.tags.as_slice() {
                sqlx::query("INSERT INTO task_view_tags_v4 (task_id, tag) VALUES ($1, $2)")
                    .bind(&id)
                    .bind(tag)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        })?;
        Ok(())
    }

    /// Writes a just-committed task, so the caller reads its own write; the catch-up
    /// repeats it harmlessly.
    ///
    /// On PostgreSQL it is one statement in a transaction of its own that does not wait for
    /// its WAL flush (`synchronous_commit` off for that commit): it is visible at once, and
    /// should a crash lose it, the catch-up writes it again — the checkpoint only moves in a
    /// synchronous commit, which flushes every earlier commit with it.
    pub async fn write_committed(
        db: &ReadDb,
        task: &Task,
        version: usize,
    ) -> Result<(), ProjectionError> {
        match db {
            ReadDb::Postgres(pool) => {
                let Some(row) = RowValues::of(task, version)? else {
                    return Ok(());
                };
                row.bind(sqlx::query(POSTGRES_UPSERT_QUIET.as_str()))
                    .bind(row.tags())
                    .execute(pool)
                    .await?;
            }
            ReadDb::Sqlite { .. } => {
                let mut tx = db.begin_derived().await?;
                Self::upsert(&mut tx, task, version).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// One task as the view holds it, with the version it reflects; `None` when the view
    /// has no row for it (no such task, or the view has not caught up with its creation).
    pub async fn get(db: &ReadDb, id: Uuid) -> Result<Option<TaskRow>, ProjectionError> {
        let row: Option<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as("SELECT state, version FROM task_view_v4 WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await
        })?;
        row.map(|(state, version)| decode_row(&state, version))
            .transpose()
    }

    /// The unfinished tasks shared with `team_id` (not succeeded, failed or cancelled),
    /// oldest first, at most `limit`: what keeps a team from being deleted. Finished ones
    /// are history, read by their owners once the team is gone.
    pub async fn shared_with(
        db: &ReadDb,
        team_id: Uuid,
        limit: u32,
    ) -> Result<Vec<String>, ProjectionError> {
        const SQL: &str = "SELECT id FROM task_view_v4
                  WHERE team_id = $1 AND status NOT IN ('succeeded', 'failed', 'cancelled')
                  ORDER BY id LIMIT $2";
        Ok(crate::db::ids_of_team(db, SQL, team_id, limit).await?)
    }

    /// Newest first, at most `limit`.
    pub async fn list(
        db: &ReadDb,
        filter: &TaskFilter,
        limit: u32,
    ) -> Result<Vec<TaskRow>, ProjectionError> {
        const SQL: &str = "SELECT v.state, v.version FROM task_view_v4 v
             WHERE ($1 IS NULL OR v.owner_id = $1 OR ($11 <> ',' AND $11 LIKE '%,' || v.team_id || ',%'))
               AND ($2 IS NULL OR v.status = $2)
               AND ($3 IS NULL OR v.capability = $3)
               AND ($4 IS NULL OR v.agent_id = $4)
               AND ($5 IS NULL OR EXISTS (SELECT 1 FROM task_view_tags_v4 t
                                           WHERE t.task_id = v.id AND t.tag = $5))
               AND ($6 IS NULL OR v.workflow_run_id = $6)
               AND ($7 IS NULL OR v.created_at > $7)
               AND ($8 IS NULL OR v.created_at < $8)
               AND ($9 IS NULL OR v.id < $9)
               AND ($12 IS NULL OR v.team_id = $12)
             ORDER BY v.id DESC
             LIMIT $10";
        let rows: Vec<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as(SQL)
                .bind(filter.readers.owner_param())
                .bind(filter.status.as_deref())
                .bind(filter.capability.as_deref())
                .bind(filter.agent_id.map(|u| u.to_string()))
                .bind(filter.tag.as_deref())
                .bind(filter.workflow_run_id.map(|u| u.to_string()))
                .bind(filter.created_after.map(millis))
                .bind(filter.created_before.map(millis))
                .bind(filter.before_id.map(|u| u.to_string()))
                .bind(i64::from(limit))
                .bind(filter.readers.teams_param())
                .bind(filter.team_id.map(|u| u.to_string()))
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter()
            .map(|(state, version)| decode_row(&state, version))
            .collect()
    }

    /// Tasks waiting to be leased (queued or scheduled for retry).
    pub async fn queue_depth(db: &ReadDb) -> Result<u64, ProjectionError> {
        let count: i64 = on_reader!(db, |pool| {
            sqlx::query_scalar(
                "SELECT count(*) FROM task_view_v4 WHERE status IN ('queued', 'retry_scheduled')",
            )
            .fetch_one(pool)
            .await
        })?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// [`queue_depth`](Self::queue_depth) by capability (only capabilities that wait).
    pub async fn queue_depth_by_capability(
        db: &ReadDb,
    ) -> Result<Vec<(String, i64)>, ProjectionError> {
        let rows = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT coalesce(capability, ''), count(*) FROM task_view_v4
                  WHERE status IN ('queued', 'retry_scheduled') GROUP BY 1 ORDER BY 1",
            )
            .fetch_all(pool)
            .await
        })?;
        Ok(rows)
    }

    /// How many tasks `readers` may read are in each status (only statuses that occur);
    /// with `team_id`, of that team's tasks only.
    pub async fn count_by_status(
        db: &ReadDb,
        readers: &ReadScope,
        team_id: Option<Uuid>,
    ) -> Result<Vec<(String, i64)>, ProjectionError> {
        let rows = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT status, count(*) FROM task_view_v4
                  WHERE ($1 IS NULL OR owner_id = $1 OR ($2 <> ',' AND $2 LIKE '%,' || team_id || ',%'))
                    AND ($3 IS NULL OR team_id = $3)
                  GROUP BY status",
            )
            .bind(readers.owner_param())
            .bind(readers.teams_param())
            .bind(team_id.map(|id| id.to_string()))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows)
    }
}

impl Projection for TaskView {
    const NAME: &'static str = "task_view";
    /// 2 adds `lease_expires_at`, for the lease timers; 3 the concurrency group
    /// (`concurrency_key`, `concurrency_limit`), so dispatch skips a group that is full;
    /// 4 the team a task belongs to (`team_id`), so the team's agents lease it.
    const VERSION: i64 = 4;

    async fn setup(&self, tx: &mut ReadTx) -> Result<(), sqlx::Error> {
        let statements = [
            "CREATE TABLE IF NOT EXISTS task_view_v4 (
                id              TEXT PRIMARY KEY,
                owner_id        TEXT NOT NULL,
                status          TEXT NOT NULL,
                capability      TEXT NOT NULL,
                priority        BIGINT NOT NULL,
                agent_id        TEXT,
                pinned_agent_id TEXT,
                workflow_run_id TEXT,
                not_before      BIGINT,
                created_at      BIGINT NOT NULL,
                updated_at      BIGINT NOT NULL,
                version         BIGINT NOT NULL,
                state           TEXT NOT NULL,
                lease_expires_at BIGINT,
                concurrency_key  TEXT,
                concurrency_limit BIGINT,
                team_id          TEXT
            )",
            "CREATE INDEX IF NOT EXISTS task_view_v4_held
                ON task_view_v4 (status, lease_expires_at)",
            "CREATE INDEX IF NOT EXISTS task_view_v4_agent ON task_view_v4 (agent_id, status)",
            "CREATE INDEX IF NOT EXISTS task_view_v4_owner ON task_view_v4 (owner_id, id)",
            "CREATE INDEX IF NOT EXISTS task_view_v4_queue
                ON task_view_v4 (status, capability, priority, created_at)",
            // The tasks of a group that are held, counted for each candidate of the group.
            "CREATE INDEX IF NOT EXISTS task_view_v4_group
                ON task_view_v4 (owner_id, concurrency_key, status)
                WHERE concurrency_key IS NOT NULL",
            "CREATE TABLE IF NOT EXISTS task_view_tags_v4 (
                task_id TEXT NOT NULL,
                tag     TEXT NOT NULL,
                PRIMARY KEY (task_id, tag)
            )",
            "CREATE INDEX IF NOT EXISTS task_view_tags_v4_tag ON task_view_tags_v4 (tag)",
        ];
        tx.execute_all(&statements).await
    }

    async fn apply(&self, tx: &mut ReadTx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type != Task::TYPE {
            return Ok(());
        }
        let current: Option<(String, i64)> = on_tx!(&mut *tx, |conn| {
            sqlx::query_as("SELECT state, version FROM task_view_v4 WHERE id = $1")
                .bind(&event.aggregate_id)
                .fetch_optional(conn)
                .await
        })?;
        let Some(task) = fold_next::<Task>(current, event)? else {
            return Ok(());
        };
        Self::upsert(tx, &task, event.sequence as usize).await
    }

    /// Most events in the feed were already written inline by the node that committed
    /// them: one query reads the stored state and version of the batch's tasks, events
    /// past them are folded in memory, and each task that changed is written once — in a
    /// rebuild, one write per task per batch instead of one per event.
    async fn apply_batch(
        &self,
        tx: &mut ReadTx,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let tasks: Vec<&RecordedEvent> = events
            .iter()
            .filter(|event| event.aggregate_type == Task::TYPE)
            .collect();
        let mut ids: Vec<&str> = tasks.iter().map(|e| e.aggregate_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let mut stored: HashMap<String, (String, i64)> = HashMap::with_capacity(ids.len());
        // Only placeholders are formatted in; every value is bound. Chunks stay under
        // SQLite's bound-parameter limit.
        for chunk in ids.chunks(5_000) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT id, state, version FROM task_view_v4 WHERE id IN ({})",
                placeholders.join(", ")
            );
            let rows: Vec<(String, String, i64)> = on_tx!(&mut *tx, |conn| {
                let mut query = sqlx::query_as(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(conn).await
            })?;
            stored.extend(
                rows.into_iter()
                    .map(|(id, state, version)| (id, (state, version))),
            );
        }
        let mut folded: HashMap<&str, (Task, i64)> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for event in tasks {
            let id = event.aggregate_id.as_str();
            if let Some((task, version)) = folded.get_mut(id) {
                if event.sequence <= *version {
                    continue;
                }
                if event.sequence != *version + 1 {
                    return Err(ProjectionError::event(
                        event,
                        format!("the view is at version {version}; events are missing"),
                    ));
                }
                task.apply(decode_event::<Task>(event)?);
                *version = event.sequence;
                continue;
            }
            if let Some(task) = fold_next::<Task>(stored.get(id).cloned(), event)? {
                stored.remove(id);
                folded.insert(id, (task, event.sequence));
                order.push(id);
            }
        }
        for id in order {
            if let Some((task, version)) = folded.get(id) {
                Self::upsert(tx, task, *version as usize).await?;
            }
        }
        Ok(())
    }
}
