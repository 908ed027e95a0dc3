//! Usage analytics (`GET /api/analytics/usage`): one fact per task event that counts —
//! created, retried, succeeded, failed for good, cancelled — with the task's owner,
//! capability and agent, when it happened, and for a finished task how long it ran and
//! the tokens its output reports. Aggregates are computed from the facts at query time,
//! so the p95 duration is an exact percentile (nearest rank) over the facts in a bucket.
//!
//! A task's duration runs from its first lease to its end, retries included; a task put
//! back in the queue by hand (`TaskRequeued`) starts again.

use std::collections::HashMap;

use chronicle_aggregates::task::{Task, TaskEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::Aggregate;
use serde_json::Value;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{decode_event, Projection, ProjectionError};
use crate::scope::ReadScope;
use crate::{on_reader, on_tx};

pub struct UsageView;

/// What the rows of a usage report are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// The UTC day, `YYYY-MM-DD`.
    Day,
    Agent,
    Capability,
    User,
}

/// Which facts a report covers: `[from, to)`, of the tasks `readers` may read — a task
/// counts for a team while it belongs to the team now (the task view says which) — and,
/// with `team_id`, only that team's tasks.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub readers: ReadScope,
    pub team_id: Option<Uuid>,
    pub group_by: GroupBy,
}

/// One bucket of a usage report.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// The day, agent id, capability or user id; `None` for facts without one (a task
    /// created or cancelled before any agent held it has no agent).
    pub bucket: Option<String>,
    pub created: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub retries: i64,
    pub avg_duration_ms: Option<f64>,
    pub p95_duration_ms: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Whether a fact is in the report's scope: `$3` the reader (NULL: everyone), `$4` their
/// teams (`,id,id,`), `$5` one team or NULL. A fact's team is its task's now.
macro_rules! in_scope {
    () => {
        "($3 IS NULL OR owner_id = $3
              OR ($4 <> ',' AND EXISTS (SELECT 1 FROM task_view_v4 t
                                          WHERE t.id = usage_facts_v1.task_id
                                            AND $4 LIKE '%,' || t.team_id || ',%')))
         AND ($5 IS NULL OR EXISTS (SELECT 1 FROM task_view_v4 t
                                     WHERE t.id = usage_facts_v1.task_id AND t.team_id = $5))"
    };
}

/// The SQL of a report grouped by `$column`: counts and sums, then the p95 by nearest rank
/// (the smallest duration whose rank reaches 95 % of the bucket: `20·rank ≥ 19·n`), which
/// both PostgreSQL and SQLite compute with the same window functions.
macro_rules! report_sql {
    ($column:literal) => {
        (
            concat!(
                "SELECT ",
                $column,
                " AS bucket,
                    CAST(SUM(CASE WHEN kind = 'created' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(CASE WHEN kind = 'succeeded' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(CASE WHEN kind = 'failed' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(CASE WHEN kind = 'cancelled' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(CASE WHEN kind = 'retry' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(AVG(duration_ms) AS DOUBLE PRECISION),
                    CAST(SUM(input_tokens) AS BIGINT),
                    CAST(SUM(output_tokens) AS BIGINT)
               FROM usage_facts_v1
              WHERE at >= $1 AND at < $2 AND ",
                in_scope!(),
                "
              GROUP BY ",
                $column,
                " ORDER BY ",
                $column
            ),
            concat!(
                "WITH ranked AS (
                    SELECT ",
                $column,
                " AS bucket, duration_ms,
                           ROW_NUMBER() OVER (PARTITION BY ",
                $column,
                " ORDER BY duration_ms) AS rn,
                           COUNT(*) OVER (PARTITION BY ",
                $column,
                ") AS n
                      FROM usage_facts_v1
                     WHERE duration_ms IS NOT NULL
                       AND at >= $1 AND at < $2 AND ",
                in_scope!(),
                "
                 )
                 SELECT bucket, MIN(duration_ms) FROM ranked
                  WHERE rn * 20 >= n * 19
                  GROUP BY bucket"
            ),
        )
    };
}

impl GroupBy {
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            Self::Day => report_sql!("day_utc"),
            Self::Agent => report_sql!("agent_id"),
            Self::Capability => report_sql!("capability"),
            Self::User => report_sql!("owner_id"),
        }
    }
}

type ReportRow = (
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<f64>,
    Option<i64>,
    Option<i64>,
);

impl UsageView {
    /// The report `query` asks for, one row per bucket in bucket order.
    pub async fn report(db: &ReadDb, query: &UsageQuery) -> Result<Vec<UsageRow>, ProjectionError> {
        let (totals_sql, p95_sql) = query.group_by.sql();
        let from = query.from.timestamp_millis();
        let to = query.to.timestamp_millis();
        let owner = query.readers.owner_param();
        let teams = query.readers.teams_param();
        let team = query.team_id.map(|id| id.to_string());
        let totals: Vec<ReportRow> = on_reader!(db, |pool| {
            sqlx::query_as(totals_sql)
                .bind(from)
                .bind(to)
                .bind(owner.as_deref())
                .bind(&teams)
                .bind(team.as_deref())
                .fetch_all(pool)
                .await
        })?;
        let p95: Vec<(Option<String>, Option<i64>)> = on_reader!(db, |pool| {
            sqlx::query_as(p95_sql)
                .bind(from)
                .bind(to)
                .bind(owner.as_deref())
                .bind(&teams)
                .bind(team.as_deref())
                .fetch_all(pool)
                .await
        })?;
        Ok(totals
            .into_iter()
            .map(
                |(bucket, created, succeeded, failed, cancelled, retries, avg, input, output)| {
                    let p95_duration_ms = p95
                        .iter()
                        .find(|(b, _)| *b == bucket)
                        .and_then(|(_, value)| *value);
                    UsageRow {
                        bucket,
                        created,
                        succeeded,
                        failed,
                        cancelled,
                        retries,
                        avg_duration_ms: avg,
                        p95_duration_ms,
                        input_tokens: input.unwrap_or_default(),
                        output_tokens: output.unwrap_or_default(),
                    }
                },
            )
            .collect())
    }
}

/// One fact as stored.
struct Fact {
    task_id: String,
    sequence: i64,
    kind: &'static str,
    owner_id: String,
    capability: String,
    agent_id: Option<Uuid>,
    at: DateTime<Utc>,
    duration_ms: Option<i64>,
    tokens: (i64, i64),
}

/// What the facts of one task share, kept from its earlier events.
#[derive(Debug, Clone, PartialEq)]
struct TaskFacts {
    owner_id: String,
    capability: String,
    first_leased_at: Option<i64>,
}

/// `usage.input_tokens` and `usage.output_tokens` of an output, 0 where absent.
fn tokens(output: &Value) -> (i64, i64) {
    let count = |field: &str| {
        output
            .get("usage")
            .and_then(|usage| usage.get(field))
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .max(0)
    };
    (count("input_tokens"), count("output_tokens"))
}

fn day(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
        .chars()
        .take(10)
        .collect()
}

/// A task's row as it stands in the batch being applied: as stored (`None` when there was
/// none), and whether the batch changed it.
struct Folding {
    facts: Option<TaskFacts>,
    changed: bool,
}

/// Folds one task event into `task`, the task's row so far (a `TaskCreated` makes it when
/// there is none, as `INSERT … ON CONFLICT DO NOTHING` would): the fact it counts, if any.
/// The one rule both the event-by-event and the batch path apply.
fn fold(
    task: &mut Folding,
    event: &RecordedEvent,
    decoded: &TaskEvent,
) -> Result<Option<Fact>, ProjectionError> {
    if let (TaskEvent::TaskCreated(created), None) = (decoded, &task.facts) {
        task.facts = Some(TaskFacts {
            owner_id: created.owner_id.to_string(),
            capability: created.capability.as_str().to_owned(),
            first_leased_at: None,
        });
        task.changed = true;
    }
    let Some(facts) = task.facts.as_mut() else {
        return Err(ProjectionError::event(event, "no TaskCreated before it"));
    };
    let since_first_lease = |at: DateTime<Utc>, facts: &TaskFacts| {
        facts
            .first_leased_at
            .map(|first| at.timestamp_millis() - first)
    };
    let counted = match decoded {
        TaskEvent::TaskCreated(created) => Some(("created", None, created.at, None, (0, 0))),
        TaskEvent::TaskLeased(leased) => {
            if facts.first_leased_at.is_none() {
                facts.first_leased_at = Some(leased.at.timestamp_millis());
                task.changed = true;
            }
            None
        }
        TaskEvent::TaskRequeued(_) => {
            if facts.first_leased_at.is_some() {
                facts.first_leased_at = None;
                task.changed = true;
            }
            None
        }
        TaskEvent::TaskSucceeded(succeeded) => Some((
            "succeeded",
            Some(succeeded.agent_id),
            succeeded.at,
            since_first_lease(succeeded.at, facts),
            tokens(&succeeded.output),
        )),
        TaskEvent::TaskAttemptFailed(failed) => Some((
            if failed.retry_at.is_some() {
                "retry"
            } else {
                "failed"
            },
            Some(failed.agent_id),
            failed.at,
            failed
                .retry_at
                .is_none()
                .then(|| since_first_lease(failed.at, facts))
                .flatten(),
            (0, 0),
        )),
        TaskEvent::TaskCancelled(cancelled) => {
            Some(("cancelled", cancelled.agent_id, cancelled.at, None, (0, 0)))
        }
        TaskEvent::TaskStarted(_)
        | TaskEvent::TaskProgressed(_)
        | TaskEvent::LeaseExtended(_)
        | TaskEvent::TaskReprioritised(_)
        | TaskEvent::TaskShared(_)
        | TaskEvent::TaskUnshared(_) => None,
    };
    Ok(
        counted.map(|(kind, agent_id, at, duration_ms, tokens)| Fact {
            task_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            kind,
            owner_id: facts.owner_id.clone(),
            capability: facts.capability.clone(),
            agent_id,
            at,
            duration_ms,
            tokens,
        }),
    )
}

/// Rows per multi-row statement: 11 columns × 1 000 stays well under the bound-parameter
/// limits of both backends (SQLite's is 32 766).
const ROWS_PER_STATEMENT: usize = 1_000;

/// `($1, $2, …), ($k+1, …)`: `rows` groups of `columns` placeholders. Only placeholders are
/// formatted into SQL; every value is bound.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let group: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", group.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl UsageView {
    /// The stored rows of `task_ids`, one query per few thousand ids.
    async fn load_tasks(
        tx: &mut ReadTx,
        task_ids: &[&str],
    ) -> Result<HashMap<String, TaskFacts>, ProjectionError> {
        let mut stored = HashMap::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(5_000) {
            let sql = format!(
                "SELECT task_id, owner_id, capability, first_leased_at FROM usage_tasks_v1
                  WHERE task_id IN ({})",
                (1..=chunk.len())
                    .map(|n| format!("${n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let rows: Vec<(String, String, String, Option<i64>)> = on_tx!(&mut *tx, |conn| {
                let mut query = sqlx::query_as(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(conn).await
            })?;
            stored.extend(rows.into_iter().map(
                |(task_id, owner_id, capability, first_leased_at)| {
                    (
                        task_id,
                        TaskFacts {
                            owner_id,
                            capability,
                            first_leased_at,
                        },
                    )
                },
            ));
        }
        Ok(stored)
    }

    /// Writes the tasks' rows as they stand after the batch: new ones inserted, the first
    /// lease of known ones updated; a few statements for the whole batch.
    async fn write_tasks(
        tx: &mut ReadTx,
        tasks: &[(&str, &TaskFacts)],
    ) -> Result<(), ProjectionError> {
        for chunk in tasks.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO usage_tasks_v1 (task_id, owner_id, capability, first_leased_at)
                 VALUES {}
                 ON CONFLICT (task_id) DO UPDATE SET first_leased_at = excluded.first_leased_at",
                placeholders(chunk.len(), 4)
            );
            on_tx!(&mut *tx, |conn| {
                let mut query = sqlx::query(&sql);
                for (task_id, facts) in chunk {
                    query = query
                        .bind(*task_id)
                        .bind(facts.owner_id.as_str())
                        .bind(facts.capability.as_str())
                        .bind(facts.first_leased_at);
                }
                query.execute(conn).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }

    /// Inserts `facts`, a few statements for the whole batch; a fact already there stays.
    async fn record(tx: &mut ReadTx, facts: &[Fact]) -> Result<(), ProjectionError> {
        for chunk in facts.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO usage_facts_v1 (task_id, sequence, kind, owner_id, capability,
                        agent_id, at, day_utc, duration_ms, input_tokens, output_tokens)
                 VALUES {}
                 ON CONFLICT (task_id, sequence) DO NOTHING",
                placeholders(chunk.len(), 11)
            );
            on_tx!(&mut *tx, |conn| {
                let mut query = sqlx::query(&sql);
                for fact in chunk {
                    query = query
                        .bind(fact.task_id.as_str())
                        .bind(fact.sequence)
                        .bind(fact.kind)
                        .bind(fact.owner_id.as_str())
                        .bind(fact.capability.as_str())
                        .bind(fact.agent_id.map(|id| id.to_string()))
                        .bind(fact.at.timestamp_millis())
                        .bind(day(fact.at))
                        .bind(fact.duration_ms)
                        .bind(fact.tokens.0)
                        .bind(fact.tokens.1);
                }
                query.execute(conn).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }
}

impl Projection for UsageView {
    const NAME: &'static str = "usage";
    const VERSION: i64 = 1;

    async fn setup(&self, tx: &mut ReadTx) -> Result<(), sqlx::Error> {
        let statements = [
            "CREATE TABLE IF NOT EXISTS usage_tasks_v1 (
                task_id         TEXT PRIMARY KEY,
                owner_id        TEXT NOT NULL,
                capability      TEXT NOT NULL,
                first_leased_at BIGINT
            )",
            "CREATE TABLE IF NOT EXISTS usage_facts_v1 (
                task_id       TEXT   NOT NULL,
                sequence      BIGINT NOT NULL,
                kind          TEXT   NOT NULL,
                owner_id      TEXT   NOT NULL,
                capability    TEXT   NOT NULL,
                agent_id      TEXT,
                at            BIGINT NOT NULL,
                day_utc       TEXT   NOT NULL,
                duration_ms   BIGINT,
                input_tokens  BIGINT NOT NULL,
                output_tokens BIGINT NOT NULL,
                PRIMARY KEY (task_id, sequence)
            )",
            "CREATE INDEX IF NOT EXISTS usage_facts_v1_at ON usage_facts_v1 (at)",
            "CREATE INDEX IF NOT EXISTS usage_facts_v1_owner_at ON usage_facts_v1 (owner_id, at)",
        ];
        tx.execute_all(&statements).await
    }

    async fn apply(&self, tx: &mut ReadTx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }

    /// One query reads the stored rows of the batch's tasks; the events are folded in
    /// memory in feed order; then the changed task rows and the new facts are written with
    /// a few multi-row statements — instead of two to four statements per event. The facts
    /// are the same rows event-by-event application writes, so reports (the exact p95
    /// included) do not change.
    async fn apply_batch(
        &self,
        tx: &mut ReadTx,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut decoded = Vec::new();
        for event in events.iter().filter(|e| e.aggregate_type == Task::TYPE) {
            decoded.push((event, decode_event::<Task>(event)?));
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<&str> = decoded
            .iter()
            .map(|(event, _)| event.aggregate_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut stored = Self::load_tasks(tx, &ids).await?;
        let mut tasks: HashMap<&str, Folding> = ids
            .iter()
            .map(|id| {
                let facts = stored.remove(*id);
                (
                    *id,
                    Folding {
                        facts,
                        changed: false,
                    },
                )
            })
            .collect();
        let mut facts = Vec::new();
        for (event, task_event) in &decoded {
            let Some(task) = tasks.get_mut(event.aggregate_id.as_str()) else {
                continue;
            };
            if let Some(fact) = fold(task, event, task_event)? {
                facts.push(fact);
            }
        }
        let changed: Vec<(&str, &TaskFacts)> = ids
            .iter()
            .filter_map(|id| {
                let task = tasks.get(*id)?;
                task.facts
                    .as_ref()
                    .filter(|_| task.changed)
                    .map(|facts| (*id, facts))
            })
            .collect();
        Self::write_tasks(tx, &changed).await?;
        Self::record(tx, &facts).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{day, tokens};
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn tokens_come_from_the_outputs_usage() {
        assert_eq!(
            tokens(&json!({"usage": {"input_tokens": 12, "output_tokens": 3}})),
            (12, 3)
        );
        assert_eq!(tokens(&json!({"status": 200})), (0, 0));
        assert_eq!(tokens(&json!({"usage": {"input_tokens": -4}})), (0, 0));
    }

    #[test]
    fn days_are_utc() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 12, 1, 23, 59, 59)
            .single()
            .unwrap_or_default();
        assert_eq!(day(at), "2026-12-01");
    }
}
