//! Usage analytics (`GET /api/analytics/usage`): one fact per task event that counts —
//! created, retried, succeeded, failed for good, cancelled — with the task's owner,
//! capability and agent, when it happened, and for a finished task how long it ran and
//! the tokens its output reports. Aggregates are computed from the facts at query time,
//! so the p95 duration is an exact percentile (nearest rank) over the facts in a bucket.
//!
//! A task's duration runs from its first lease to its end, retries included; a task put
//! back in the queue by hand (`TaskRequeued`) starts again.

use chronicle_aggregates::task::{Task, TaskEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::Aggregate;
use serde_json::Value;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{decode_event, Projection, ProjectionError};
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

/// Which facts a report covers: `[from, to)`, and one owner's unless `owner_id` is `None`.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub owner_id: Option<Uuid>,
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
              WHERE at >= $1 AND at < $2 AND ($3 IS NULL OR owner_id = $3)
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
                       AND at >= $1 AND at < $2 AND ($3 IS NULL OR owner_id = $3)
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
        let owner = query.owner_id.map(|id| id.to_string());
        let totals: Vec<ReportRow> = on_reader!(db, |pool| {
            sqlx::query_as(totals_sql)
                .bind(from)
                .bind(to)
                .bind(owner.as_deref())
                .fetch_all(pool)
                .await
        })?;
        let p95: Vec<(Option<String>, Option<i64>)> = on_reader!(db, |pool| {
            sqlx::query_as(p95_sql)
                .bind(from)
                .bind(to)
                .bind(owner.as_deref())
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
struct Fact<'a> {
    kind: &'static str,
    agent_id: Option<Uuid>,
    at: DateTime<Utc>,
    duration_ms: Option<i64>,
    tokens: (i64, i64),
    task: &'a TaskFacts,
}

/// What the facts of one task share, kept from its earlier events.
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

impl UsageView {
    async fn task_facts(
        tx: &mut ReadTx,
        task_id: &str,
    ) -> Result<Option<TaskFacts>, ProjectionError> {
        let row: Option<(String, String, Option<i64>)> = on_tx!(tx, |conn| {
            sqlx::query_as(
                "SELECT owner_id, capability, first_leased_at FROM usage_tasks_v1
                  WHERE task_id = $1",
            )
            .bind(task_id)
            .fetch_optional(conn)
            .await
        })?;
        Ok(
            row.map(|(owner_id, capability, first_leased_at)| TaskFacts {
                owner_id,
                capability,
                first_leased_at,
            }),
        )
    }

    async fn set_first_leased_at(
        tx: &mut ReadTx,
        task_id: &str,
        at: Option<i64>,
        only_if_unset: bool,
    ) -> Result<(), ProjectionError> {
        on_tx!(tx, |conn| {
            sqlx::query(
                "UPDATE usage_tasks_v1 SET first_leased_at = $2
                  WHERE task_id = $1 AND (NOT $3 OR first_leased_at IS NULL)",
            )
            .bind(task_id)
            .bind(at)
            .bind(only_if_unset)
            .execute(conn)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    async fn record(
        tx: &mut ReadTx,
        event: &RecordedEvent,
        fact: Fact<'_>,
    ) -> Result<(), ProjectionError> {
        on_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO usage_facts_v1 (task_id, sequence, kind, owner_id, capability,
                        agent_id, at, day_utc, duration_ms, input_tokens, output_tokens)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (task_id, sequence) DO NOTHING",
            )
            .bind(event.aggregate_id.as_str())
            .bind(event.sequence)
            .bind(fact.kind)
            .bind(fact.task.owner_id.as_str())
            .bind(fact.task.capability.as_str())
            .bind(fact.agent_id.map(|id| id.to_string()))
            .bind(fact.at.timestamp_millis())
            .bind(day(fact.at))
            .bind(fact.duration_ms)
            .bind(fact.tokens.0)
            .bind(fact.tokens.1)
            .execute(conn)
            .await
            .map(|r| r.rows_affected())
        })?;
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
        if event.aggregate_type != Task::TYPE {
            return Ok(());
        }
        let decoded = decode_event::<Task>(event)?;
        let task_id = event.aggregate_id.as_str();
        if let TaskEvent::TaskCreated(created) = &decoded {
            on_tx!(tx, |conn| {
                sqlx::query(
                    "INSERT INTO usage_tasks_v1 (task_id, owner_id, capability)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (task_id) DO NOTHING",
                )
                .bind(task_id)
                .bind(created.owner_id.to_string())
                .bind(created.capability.as_str())
                .execute(conn)
                .await
                .map(|r| r.rows_affected())
            })?;
        }
        let Some(task) = Self::task_facts(tx, task_id).await? else {
            return Err(ProjectionError::event(event, "no TaskCreated before it"));
        };
        let since_first_lease = |at: DateTime<Utc>| {
            task.first_leased_at
                .map(|first| at.timestamp_millis() - first)
        };
        let fact = match &decoded {
            TaskEvent::TaskCreated(created) => Some(Fact {
                kind: "created",
                agent_id: None,
                at: created.at,
                duration_ms: None,
                tokens: (0, 0),
                task: &task,
            }),
            TaskEvent::TaskLeased(leased) => {
                Self::set_first_leased_at(tx, task_id, Some(leased.at.timestamp_millis()), true)
                    .await?;
                None
            }
            TaskEvent::TaskRequeued(_) => {
                Self::set_first_leased_at(tx, task_id, None, false).await?;
                None
            }
            TaskEvent::TaskSucceeded(succeeded) => Some(Fact {
                kind: "succeeded",
                agent_id: Some(succeeded.agent_id),
                at: succeeded.at,
                duration_ms: since_first_lease(succeeded.at),
                tokens: tokens(&succeeded.output),
                task: &task,
            }),
            TaskEvent::TaskAttemptFailed(failed) => Some(Fact {
                kind: if failed.retry_at.is_some() {
                    "retry"
                } else {
                    "failed"
                },
                agent_id: Some(failed.agent_id),
                at: failed.at,
                duration_ms: failed
                    .retry_at
                    .is_none()
                    .then(|| since_first_lease(failed.at))
                    .flatten(),
                tokens: (0, 0),
                task: &task,
            }),
            TaskEvent::TaskCancelled(cancelled) => Some(Fact {
                kind: "cancelled",
                agent_id: cancelled.agent_id,
                at: cancelled.at,
                duration_ms: None,
                tokens: (0, 0),
                task: &task,
            }),
            TaskEvent::TaskStarted(_)
            | TaskEvent::TaskProgressed(_)
            | TaskEvent::LeaseExtended(_)
            | TaskEvent::TaskReprioritised(_) => None,
        };
        if let Some(fact) = fact {
            Self::record(tx, event, fact).await?;
        }
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
