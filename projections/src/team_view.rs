//! The team read model: one row per team (its name, whether it is deleted, the aggregate's
//! state as JSON) and one row per membership (team, user, email, role), so that "the
//! teams of a user" is one indexed read. `GET /api/teams` and `GET /api/teams/{id}` answer
//! from it; the authorisation keeps its own copy in memory (the runtime's team directory),
//! fed from the same events.

use chronicle_aggregates::team::{Team, TeamState};
use chronicle_commands::team::TeamRole;
use cqrs_es::Aggregate;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::RecordedEvent;
use crate::runner::{fold_next, Projection, ProjectionError};
use crate::{on_reader, on_tx};

pub struct TeamView;

/// A team as the read model holds it.
#[derive(Debug, Clone)]
pub struct TeamRow {
    pub team: Team,
    /// The aggregate's version (its event count).
    pub version: usize,
}

impl TeamRow {
    /// The team, unless it is deleted.
    pub fn state(&self) -> Option<&TeamState> {
        self.team.state().filter(|team| !team.deleted)
    }
}

/// One membership row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRow {
    pub team_id: Uuid,
    pub user_id: Uuid,
    pub email: String,
    pub role: TeamRole,
}

fn decode_row(state: &str, version: i64) -> Result<TeamRow, ProjectionError> {
    let (team, version) = ProjectionError::decode_state::<Team>(state, version)?;
    Ok(TeamRow { team, version })
}

fn role_str(role: TeamRole) -> &'static str {
    match role {
        TeamRole::Owner => "owner",
        TeamRole::Maintainer => "maintainer",
        TeamRole::Member => "member",
        TeamRole::Viewer => "viewer",
    }
}

fn parse_role(text: &str) -> Option<TeamRole> {
    TeamRole::ALL
        .into_iter()
        .find(|role| role_str(*role) == text)
}

impl TeamView {
    /// Writes `team` at `version`, its memberships with it, unless the row already
    /// reflects that version or a later one. A deleted team keeps its row (marked) and
    /// loses its memberships.
    pub async fn upsert(
        tx: &mut ReadTx,
        team: &Team,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let Some(state) = team.state() else {
            return Ok(());
        };
        let json = serde_json::to_string(team).map_err(|e| ProjectionError::Event {
            aggregate_type: Team::TYPE.into(),
            aggregate_id: state.id.to_string(),
            sequence: version as i64,
            message: e.to_string(),
        })?;
        let id = state.id.to_string();
        let written = on_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO team_view_v1 (id, name, created_at, deleted, version, state)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET
                        name = excluded.name, deleted = excluded.deleted,
                        version = excluded.version, state = excluded.state
                  WHERE team_view_v1.version < excluded.version",
            )
            .bind(&id)
            .bind(state.name.as_str())
            .bind(state.created_at.timestamp_millis())
            .bind(i64::from(state.deleted))
            .bind(version as i64)
            .bind(&json)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected())
        })?;
        if written == 0 {
            return Ok(());
        }
        on_tx!(tx, |conn| {
            sqlx::query("DELETE FROM team_members_v1 WHERE team_id = $1")
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            let members = state.members.iter().filter(|_| !state.deleted);
            for (user_id, member) in members {
                sqlx::query(
                    "INSERT INTO team_members_v1 (team_id, user_id, email, role)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(&id)
                .bind(user_id.to_string())
                .bind(member.email.as_str())
                .bind(role_str(member.role))
                .execute(&mut *conn)
                .await?;
            }
            Ok::<(), sqlx::Error>(())
        })?;
        Ok(())
    }

    /// Writes a just-committed team in its own transaction, so the caller reads its own
    /// write; the catch-up repeats it harmlessly.
    pub async fn write_committed(
        db: &ReadDb,
        team: &Team,
        version: usize,
    ) -> Result<(), ProjectionError> {
        let mut tx = db.begin_derived().await?;
        Self::upsert(&mut tx, team, version).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The team `id`, deleted or not; `None` when there is none.
    pub async fn get(db: &ReadDb, id: Uuid) -> Result<Option<TeamRow>, ProjectionError> {
        let row: Option<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as("SELECT state, version FROM team_view_v1 WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await
        })?;
        row.map(|(state, version)| decode_row(&state, version))
            .transpose()
    }

    /// The teams `user_id` belongs to (not deleted), newest first, at most `limit`, before
    /// `before_id` when given.
    pub async fn of_member(
        db: &ReadDb,
        user_id: Uuid,
        before_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<TeamRow>, ProjectionError> {
        let rows: Vec<(String, i64)> = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT t.state, t.version FROM team_view_v1 t
                   JOIN team_members_v1 m ON m.team_id = t.id
                  WHERE m.user_id = $1 AND t.deleted = 0 AND ($2 IS NULL OR t.id < $2)
                  ORDER BY t.id DESC LIMIT $3",
            )
            .bind(user_id.to_string())
            .bind(before_id.map(|id| id.to_string()))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.iter()
            .map(|(state, version)| decode_row(state, *version))
            .collect()
    }

    /// Every membership of every team that is not deleted, by team then user.
    pub async fn memberships(db: &ReadDb) -> Result<Vec<MembershipRow>, ProjectionError> {
        let rows: Vec<(String, String, String, String)> = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT team_id, user_id, email, role FROM team_members_v1
                  ORDER BY team_id, user_id",
            )
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(team_id, user_id, email, role)| {
                Some(MembershipRow {
                    team_id: Uuid::parse_str(&team_id).ok()?,
                    user_id: Uuid::parse_str(&user_id).ok()?,
                    email,
                    role: parse_role(&role)?,
                })
            })
            .collect())
    }
}

impl Projection for TeamView {
    const NAME: &'static str = "team_view";
    const VERSION: i64 = 1;

    async fn setup(&self, tx: &mut ReadTx) -> Result<(), sqlx::Error> {
        let statements = [
            "CREATE TABLE IF NOT EXISTS team_view_v1 (
                id         TEXT PRIMARY KEY,
                name       TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                deleted    BIGINT NOT NULL,
                version    BIGINT NOT NULL,
                state      TEXT NOT NULL
            )",
            "CREATE TABLE IF NOT EXISTS team_members_v1 (
                team_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                email   TEXT NOT NULL,
                role    TEXT NOT NULL,
                PRIMARY KEY (team_id, user_id)
            )",
            "CREATE INDEX IF NOT EXISTS team_members_v1_user ON team_members_v1 (user_id, team_id)",
        ];
        tx.execute_all(&statements).await
    }

    async fn apply(&self, tx: &mut ReadTx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type != Team::TYPE {
            return Ok(());
        }
        let current: Option<(String, i64)> = on_tx!(&mut *tx, |conn| {
            sqlx::query_as("SELECT state, version FROM team_view_v1 WHERE id = $1")
                .bind(&event.aggregate_id)
                .fetch_optional(conn)
                .await
        })?;
        let Some(team) = fold_next::<Team>(current, event)? else {
            return Ok(());
        };
        Self::upsert(tx, &team, event.sequence as usize).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_reads_back() {
        for role in TeamRole::ALL {
            assert_eq!(parse_role(role_str(role)), Some(role));
        }
        assert_eq!(parse_role("admin"), None);
    }
}
