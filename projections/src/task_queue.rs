//! The queue side of the task view: what an agent may lease, what it holds, and which
//! leases and retry delays run out when — the reads of the dispatcher and the timers.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::ReadDb;
use crate::on_reader;
use crate::runner::ProjectionError;
use crate::task_view::TaskView;

/// Which ready tasks an agent may be offered.
#[derive(Debug, Clone)]
pub struct ReadyQuery<'a> {
    /// Only this owner's tasks; `None` for a built-in agent that serves every user.
    pub owner_id: Option<Uuid>,
    /// And this team's tasks: the agent is shared with the team.
    pub team_id: Option<Uuid>,
    /// The agent asking: tasks pinned to another agent are not offered.
    pub agent_id: Uuid,
    /// The agent's capabilities; a task is offered only for one of them.
    pub capabilities: &'a [String],
    pub now: DateTime<Utc>,
    pub limit: u32,
}

/// A ready task an agent may be offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: Uuid,
    /// Its concurrency group, if it has one.
    pub group: Option<CandidateGroup>,
}

/// A candidate's concurrency group as the view saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateGroup {
    pub owner_id: Uuid,
    pub key: String,
    pub limit: u32,
    /// How many more of the group's tasks may be held now (at least 1: a full group's
    /// tasks are not offered).
    pub free: u32,
}

/// Most capabilities one agent may have (commands::agent allows 64).
const MAX_CAPABILITIES: usize = 64;

fn parse_ids(rows: Vec<String>) -> Vec<Uuid> {
    rows.iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect()
}

impl TaskView {
    /// Ready tasks for `query`, best first: priority 9 first, then oldest. Queued or
    /// scheduled for retry, and `not_before` (if any) reached. A task whose concurrency
    /// group holds its limit of leases is not offered, so a busy group does not stand in
    /// front of other work.
    pub async fn ready_for(
        db: &ReadDb,
        query: &ReadyQuery<'_>,
    ) -> Result<Vec<Candidate>, ProjectionError> {
        let capabilities = &query.capabilities[..query.capabilities.len().min(MAX_CAPABILITIES)];
        if capabilities.is_empty() {
            return Ok(Vec::new());
        }
        // Only placeholders are formatted in; every value is bound.
        let placeholders: Vec<String> = (0..capabilities.len())
            .map(|n| format!("${}", n + 6))
            .collect();
        let sql = format!(
            "SELECT id, owner_id, concurrency_key, concurrency_limit, held FROM (
                SELECT t.id, t.owner_id, t.concurrency_key, t.concurrency_limit,
                       t.priority, t.created_at,
                       CASE WHEN t.concurrency_key IS NULL THEN CAST(0 AS BIGINT)
                            ELSE (SELECT count(*) FROM task_view_v4 h
                                   WHERE h.owner_id = t.owner_id
                                     AND h.concurrency_key = t.concurrency_key
                                     AND h.status IN ('leased', 'running'))
                       END AS held
                  FROM task_view_v4 t
                 WHERE t.status IN ('queued', 'retry_scheduled')
                   AND (t.not_before IS NULL OR t.not_before <= $3)
                   AND ($1 IS NULL OR t.owner_id = $1 OR t.team_id = $5)
                   AND (t.pinned_agent_id IS NULL OR t.pinned_agent_id = $2)
                   AND t.capability IN ({})
             ) ready
              WHERE concurrency_key IS NULL OR held < concurrency_limit
              ORDER BY priority DESC, created_at, id
              LIMIT $4",
            placeholders.join(", ")
        );
        type Row = (String, String, Option<String>, Option<i64>, i64);
        let rows: Vec<Row> = on_reader!(db, |pool| {
            let mut statement = sqlx::query_as(&sql)
                .bind(query.owner_id.map(|u| u.to_string()))
                .bind(query.agent_id.to_string())
                .bind(query.now.timestamp_millis())
                .bind(i64::from(query.limit))
                .bind(query.team_id.map(|u| u.to_string()));
            for capability in capabilities {
                statement = statement.bind(capability.as_str());
            }
            statement.fetch_all(pool).await
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, owner_id, key, limit, held)| {
                let group = match (key, limit) {
                    (Some(key), Some(limit)) => {
                        let limit = u32::try_from(limit).ok()?;
                        Some(CandidateGroup {
                            owner_id: Uuid::parse_str(&owner_id).ok()?,
                            key,
                            limit,
                            free: limit.saturating_sub(u32::try_from(held).ok()?),
                        })
                    }
                    _ => None,
                };
                Some(Candidate {
                    id: Uuid::parse_str(&id).ok()?,
                    group,
                })
            })
            .collect())
    }

    /// The tasks `agent_id` holds a lease on (leased or running).
    pub async fn held_by(db: &ReadDb, agent_id: Uuid) -> Result<Vec<Uuid>, ProjectionError> {
        let rows: Vec<String> = on_reader!(db, |pool| {
            sqlx::query_scalar(
                "SELECT id FROM task_view_v4
                  WHERE agent_id = $1 AND status IN ('leased', 'running')
                  ORDER BY id",
            )
            .bind(agent_id.to_string())
            .fetch_all(pool)
            .await
        })?;
        Ok(parse_ids(rows))
    }

    /// How many tasks each agent holds a lease on; agents holding none are absent.
    pub async fn held_counts(db: &ReadDb) -> Result<HashMap<Uuid, u32>, ProjectionError> {
        let rows: Vec<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT agent_id, count(*) FROM task_view_v4
                  WHERE agent_id IS NOT NULL AND status IN ('leased', 'running')
                  GROUP BY agent_id",
            )
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, count)| {
                Some((Uuid::parse_str(&id).ok()?, u32::try_from(count).ok()?))
            })
            .collect())
    }

    /// Held tasks whose lease ran out at or before `now`, the longest overdue first.
    pub async fn expired_leases(
        db: &ReadDb,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, ProjectionError> {
        let rows: Vec<String> = on_reader!(db, |pool| {
            sqlx::query_scalar(
                "SELECT id FROM task_view_v4
                  WHERE status IN ('leased', 'running') AND lease_expires_at <= $1
                  ORDER BY lease_expires_at, id
                  LIMIT $2",
            )
            .bind(now.timestamp_millis())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(parse_ids(rows))
    }

    /// The next moment after `now` at which a lease runs out or a waiting task becomes
    /// ready, if any is known.
    pub async fn next_deadline(
        db: &ReadDb,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ProjectionError> {
        let (lease, ready): (Option<i64>, Option<i64>) = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT
                    (SELECT min(lease_expires_at) FROM task_view_v4
                      WHERE status IN ('leased', 'running') AND lease_expires_at > $1),
                    (SELECT min(not_before) FROM task_view_v4
                      WHERE status IN ('queued', 'retry_scheduled') AND not_before > $1)",
            )
            .bind(now.timestamp_millis())
            .fetch_one(pool)
            .await
        })?;
        Ok([lease, ready]
            .into_iter()
            .flatten()
            .min()
            .and_then(DateTime::from_timestamp_millis))
    }

    /// Whether a waiting task's `not_before` fell in `(after, upto]`: it became ready then.
    pub async fn became_ready(
        db: &ReadDb,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
    ) -> Result<bool, ProjectionError> {
        let found: Option<String> = on_reader!(db, |pool| {
            sqlx::query_scalar(
                "SELECT id FROM task_view_v4
                  WHERE status IN ('queued', 'retry_scheduled')
                    AND not_before > $1 AND not_before <= $2
                  LIMIT 1",
            )
            .bind(after.timestamp_millis())
            .bind(upto.timestamp_millis())
            .fetch_optional(pool)
            .await
        })?;
        Ok(found.is_some())
    }
}
