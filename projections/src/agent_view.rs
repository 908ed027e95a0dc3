//! The agent registry read model: one row per agent with the columns lists filter on, its
//! capabilities beside it, and the agent's state as JSON. Online and offline are derived at
//! read time from `last_heartbeat_at`, never stored, so nothing has to fire to change them.

use chronicle_aggregates::agent::{Agent, AgentLifecycle, AgentState, AgentStatus};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{fold_next, Projection, ProjectionError};
use crate::scope::ReadScope;
use crate::{on_reader, on_tx};

pub struct AgentView;

/// Filters of `GET /api/agents`; `None` means any.
#[derive(Debug, Clone)]
pub struct AgentFilter {
    /// Whose agents: the owner's and those shared with their teams, or all.
    pub readers: ReadScope,
    /// Only the agents shared with this team.
    pub team_id: Option<Uuid>,
    pub capability: Option<String>,
    pub status: Option<AgentStatus>,
    /// Only agents registered before this one (ids are UUIDv7).
    pub before_id: Option<Uuid>,
}

/// An agent as the read model holds it.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub agent: Agent,
    pub version: usize,
}

impl AgentRow {
    pub fn state(&self) -> Option<&AgentState> {
        self.agent.state()
    }
}

fn lifecycle_str(lifecycle: AgentLifecycle) -> &'static str {
    match lifecycle {
        AgentLifecycle::Active => "active",
        AgentLifecycle::Draining => "draining",
        AgentLifecycle::Deregistered => "deregistered",
    }
}

fn decode_row(state: &str, version: i64) -> Result<AgentRow, ProjectionError> {
    let (agent, version) = ProjectionError::decode_state::<Agent>(state, version)?;
    Ok(AgentRow { agent, version })
}

impl AgentView {
    /// Writes `agent` at `version` unless the row already reflects that version or a later
    /// one.
    pub async fn upsert(
        tx: &mut ReadTx,
        agent: &Agent,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let Some(state) = agent.state() else {
            return Ok(());
        };
        let json = serde_json::to_string(agent).map_err(|e| ProjectionError::Event {
            aggregate_type: Agent::TYPE.into(),
            aggregate_id: state.id.to_string(),
            sequence: version as i64,
            message: e.to_string(),
        })?;
        let id = state.id.to_string();
        let written = on_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO agent_view_v2 (id, owner_id, kind, lifecycle, last_heartbeat_at,
                        created_at, updated_at, version, state, team_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (id) DO UPDATE SET
                        lifecycle = excluded.lifecycle, team_id = excluded.team_id,
                        last_heartbeat_at = excluded.last_heartbeat_at,
                        updated_at = excluded.updated_at,
                        version = excluded.version, state = excluded.state
                  WHERE agent_view_v2.version < excluded.version",
            )
            .bind(&id)
            .bind(state.owner_id.to_string())
            .bind(state.kind.as_str())
            .bind(lifecycle_str(state.lifecycle))
            .bind(state.last_heartbeat_at.map(|at| at.timestamp_millis()))
            .bind(state.created_at.timestamp_millis())
            .bind(state.updated_at.timestamp_millis())
            .bind(version as i64)
            .bind(&json)
            .bind(state.team_id.map(|id| id.to_string()))
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected())
        })?;
        if written == 0 {
            return Ok(());
        }
        // Capabilities never change after registration, but rewriting them keeps a row
        // written first by the inline path and then by the catch-up identical.
        on_tx!(tx, |conn| {
            sqlx::query("DELETE FROM agent_view_caps_v2 WHERE agent_id = $1")
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            for capability in &state.capabilities {
                sqlx::query(
                    "INSERT INTO agent_view_caps_v2 (agent_id, capability) VALUES ($1, $2)",
                )
                .bind(&id)
                .bind(capability.as_str())
                .execute(&mut *conn)
                .await?;
            }
            Ok::<(), sqlx::Error>(())
        })?;
        Ok(())
    }

    /// Writes a just-committed agent in its own transaction, so the caller reads its own
    /// write; the catch-up repeats it harmlessly.
    pub async fn write_committed(
        db: &ReadDb,
        agent: &Agent,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let mut tx = db.begin_derived().await?;
        Self::upsert(&mut tx, agent, version).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The agents shared with `team_id` that are not deregistered, oldest first, at most
    /// `limit`: what keeps a team from being deleted.
    pub async fn shared_with(
        db: &ReadDb,
        team_id: Uuid,
        limit: u32,
    ) -> Result<Vec<String>, ProjectionError> {
        const SQL: &str = "SELECT id FROM agent_view_v2
                  WHERE team_id = $1 AND lifecycle <> 'deregistered' ORDER BY id LIMIT $2";
        Ok(crate::db::ids_of_team(db, SQL, team_id, limit).await?)
    }

    /// Newest first, at most `limit`. An agent is online at `now` when it is active and
    /// was heard from less than `offline_after` ago.
    pub async fn list(
        db: &ReadDb,
        filter: &AgentFilter,
        now: DateTime<Utc>,
        offline_after: chrono::TimeDelta,
        limit: u32,
    ) -> Result<Vec<AgentRow>, ProjectionError> {
        const SQL: &str = "SELECT a.state, a.version FROM agent_view_v2 a
             WHERE ($1 IS NULL OR a.owner_id = $1 OR ($8 <> ',' AND $8 LIKE '%,' || a.team_id || ',%'))
               AND ($2 IS NULL OR EXISTS (SELECT 1 FROM agent_view_caps_v2 c
                                           WHERE c.agent_id = a.id AND c.capability = $2))
               AND ($3 IS NULL OR a.lifecycle = $3)
               AND ($4 IS NULL OR (a.last_heartbeat_at IS NOT NULL
                                   AND a.last_heartbeat_at > $4))
               AND ($5 IS NULL OR a.last_heartbeat_at IS NULL OR a.last_heartbeat_at <= $5)
               AND ($6 IS NULL OR a.id < $6)
               AND ($9 IS NULL OR a.team_id = $9)
             ORDER BY a.id DESC
             LIMIT $7";
        let cutoff = (now - offline_after).timestamp_millis();
        let (lifecycle, online_after, offline_at_or_before) = match filter.status {
            None => (None, None, None),
            Some(AgentStatus::Online) => (Some("active"), Some(cutoff), None),
            Some(AgentStatus::Offline) => (Some("active"), None, Some(cutoff)),
            Some(AgentStatus::Draining) => (Some("draining"), None, None),
            Some(AgentStatus::Deregistered) => (Some("deregistered"), None, None),
        };
        let rows: Vec<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as(SQL)
                .bind(filter.readers.owner_param())
                .bind(filter.capability.as_deref())
                .bind(lifecycle)
                .bind(online_after)
                .bind(offline_at_or_before)
                .bind(filter.before_id.map(|u| u.to_string()))
                .bind(i64::from(limit))
                .bind(filter.readers.teams_param())
                .bind(filter.team_id.map(|u| u.to_string()))
                .fetch_all(pool)
                .await
        })?;
        rows.iter()
            .map(|(state, version)| decode_row(state, *version))
            .collect()
    }

    /// Active agents heard from less than `offline_after` before `now`.
    pub async fn count_online(
        db: &ReadDb,
        now: DateTime<Utc>,
        offline_after: chrono::TimeDelta,
    ) -> Result<u64, ProjectionError> {
        let cutoff = (now - offline_after).timestamp_millis();
        let count: i64 = on_reader!(db, |pool| {
            sqlx::query_scalar(
                "SELECT count(*) FROM agent_view_v2
                  WHERE lifecycle = 'active' AND last_heartbeat_at > $1",
            )
            .bind(cutoff)
            .fetch_one(pool)
            .await
        })?;
        Ok(u64::try_from(count).unwrap_or_default())
    }
}

impl Projection for AgentView {
    const NAME: &'static str = "agent_view";
    /// 2 the team an agent is shared with (`team_id`), for the team's members' lists.
    const VERSION: i64 = 2;

    async fn setup(&self, tx: &mut ReadTx) -> Result<(), sqlx::Error> {
        let statements = [
            "CREATE TABLE IF NOT EXISTS agent_view_v2 (
                id                TEXT PRIMARY KEY,
                owner_id          TEXT NOT NULL,
                kind              TEXT NOT NULL,
                lifecycle         TEXT NOT NULL,
                last_heartbeat_at BIGINT,
                created_at        BIGINT NOT NULL,
                updated_at        BIGINT NOT NULL,
                version           BIGINT NOT NULL,
                state             TEXT NOT NULL,
                team_id           TEXT
            )",
            "CREATE INDEX IF NOT EXISTS agent_view_v2_owner ON agent_view_v2 (owner_id, id)",
            "CREATE INDEX IF NOT EXISTS agent_view_v2_status
                ON agent_view_v2 (lifecycle, last_heartbeat_at)",
            "CREATE TABLE IF NOT EXISTS agent_view_caps_v2 (
                agent_id   TEXT NOT NULL,
                capability TEXT NOT NULL,
                PRIMARY KEY (agent_id, capability)
            )",
            "CREATE INDEX IF NOT EXISTS agent_view_caps_v2_capability
                ON agent_view_caps_v2 (capability)",
        ];
        tx.execute_all(&statements).await
    }

    async fn apply(&self, tx: &mut ReadTx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type != Agent::TYPE {
            return Ok(());
        }
        let current: Option<(String, i64)> = on_tx!(&mut *tx, |conn| {
            sqlx::query_as("SELECT state, version FROM agent_view_v2 WHERE id = $1")
                .bind(&event.aggregate_id)
                .fetch_optional(conn)
                .await
        })?;
        let Some(agent) = fold_next::<Agent>(current, event)? else {
            return Ok(());
        };
        Self::upsert(tx, &agent, event.sequence as usize).await
    }
}
