//! Who owns each aggregate, as its first event says: the one read model that scopes the
//! event history (the feed over HTTP, live subscriptions, audit) to what a caller may read.
//!
//! Every aggregate names its owner in its first event: `owner_id` (tasks, agents, API
//! keys) or `user_id` (users — themselves —, sessions, email claims, the first-user
//! claim). An aggregate whose first event names neither, or the nil id, belongs to the
//! system: only readers of everything (auditors, admins) see it.
//!
//! An aggregate may also belong to a team: the `team_id` its first event names (a task or
//! run of a team workflow, a workflow created for a team), then whatever its latest
//! `…Shared` or `…Unshared` event says. A team's members read the events of every
//! aggregate that belongs to the team now, its earlier history included — the same answer
//! as the aggregate's own `/events`.
//!
//! A reader that scopes the feed by this table must not read past the table's own
//! checkpoint ([`AggregateOwners::checkpoint`]): an event whose aggregate is not yet here
//! would be passed over for good.

use serde_json::Value;
use uuid::Uuid;

use crate::db::{ReadDb, ReadTx};
use crate::feed::{FeedCursor, RecordedEvent};
use crate::runner::{Projection, ProjectionError};
use crate::{on_reader, on_tx};

pub struct AggregateOwners;

/// The owner an aggregate's first event names, if any (`None`: the system's).
pub fn owner_in_first_event(payload: &Value) -> Option<Uuid> {
    ["owner_id", "user_id"]
        .iter()
        .find_map(|field| payload.get(field).and_then(Value::as_str))
        .and_then(|text| Uuid::parse_str(text).ok())
        .filter(|id| !id.is_nil())
}

/// The events that give an aggregate to the team their payload's `team_id` names.
const SHARED: [&str; 3] = ["TaskShared", "WorkflowShared", "AgentShared"];
/// The events that take an aggregate back from its team.
const UNSHARED: [&str; 3] = ["TaskUnshared", "WorkflowUnshared", "AgentUnshared"];

/// The team a payload names, if any.
fn team_in(payload: &Value) -> Option<String> {
    payload
        .get("team_id")
        .and_then(Value::as_str)
        .and_then(|text| Uuid::parse_str(text).ok())
        .map(|id| id.to_string())
}

impl AggregateOwners {
    /// The owner of one aggregate: `Ok(None)` when it is unknown here or the system's.
    pub async fn owner_of(
        db: &ReadDb,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Uuid>, ProjectionError> {
        let row: Option<(Option<String>,)> = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT owner_id FROM aggregate_owners_v2
                  WHERE aggregate_type = $1 AND aggregate_id = $2",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row
            .and_then(|(owner,)| owner)
            .and_then(|text| Uuid::parse_str(&text).ok()))
    }

    /// How far the table reflects the feed: a reader scoping by it reads no further.
    pub async fn checkpoint(db: &ReadDb) -> Result<FeedCursor, ProjectionError> {
        let row: Option<(i64, i64)> = on_reader!(db, |pool| {
            sqlx::query_as(
                "SELECT transaction_id, position FROM projection_checkpoints
                  WHERE name = $1 AND version = $2",
            )
            .bind(Self::NAME)
            .bind(Self::VERSION)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row
            .map(|(transaction_id, position)| FeedCursor {
                transaction_id: u64::try_from(transaction_id).unwrap_or_default(),
                position,
            })
            .unwrap_or_default())
    }
}

impl Projection for AggregateOwners {
    const NAME: &'static str = "aggregate_owners";
    /// 2 the team an aggregate belongs to now (`team_id`).
    const VERSION: i64 = 2;

    async fn setup(&self, tx: &mut ReadTx) -> Result<(), sqlx::Error> {
        let statements = [
            "CREATE TABLE IF NOT EXISTS aggregate_owners_v2 (
                aggregate_type TEXT NOT NULL,
                aggregate_id   TEXT NOT NULL,
                owner_id       TEXT,
                team_id        TEXT,
                PRIMARY KEY (aggregate_type, aggregate_id)
            )",
            "CREATE INDEX IF NOT EXISTS aggregate_owners_v2_owner
                ON aggregate_owners_v2 (owner_id, aggregate_type, aggregate_id)",
            "CREATE INDEX IF NOT EXISTS aggregate_owners_v2_team
                ON aggregate_owners_v2 (team_id, aggregate_type, aggregate_id)",
        ];
        tx.execute_all(&statements).await
    }

    async fn apply(&self, tx: &mut ReadTx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let event_type = event.event_type.as_str();
        if event.sequence != 1 {
            let team = if SHARED.contains(&event_type) {
                team_in(&event.payload)
            } else if UNSHARED.contains(&event_type) {
                None
            } else {
                return Ok(());
            };
            on_tx!(tx, |conn| {
                sqlx::query(
                    "UPDATE aggregate_owners_v2 SET team_id = $3
                      WHERE aggregate_type = $1 AND aggregate_id = $2",
                )
                .bind(event.aggregate_type.as_str())
                .bind(event.aggregate_id.as_str())
                .bind(team)
                .execute(conn)
                .await
                .map(|r| r.rows_affected())
            })?;
            return Ok(());
        }
        let owner = owner_in_first_event(&event.payload).map(|id| id.to_string());
        let team = team_in(&event.payload);
        on_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO aggregate_owners_v2 (aggregate_type, aggregate_id, owner_id, team_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING",
            )
            .bind(event.aggregate_type.as_str())
            .bind(event.aggregate_id.as_str())
            .bind(owner)
            .bind(team)
            .execute(conn)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::owner_in_first_event;
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn the_owner_is_named_by_owner_id_or_user_id() {
        let id = Uuid::now_v7();
        assert_eq!(
            owner_in_first_event(&json!({"owner_id": id.to_string()})),
            Some(id)
        );
        assert_eq!(
            owner_in_first_event(&json!({"user_id": id.to_string()})),
            Some(id)
        );
        assert_eq!(
            owner_in_first_event(&json!({"owner_id": Uuid::nil().to_string()})),
            None,
            "the nil owner is the system"
        );
        assert_eq!(owner_in_first_event(&json!({"name": "x"})), None);
        assert_eq!(owner_in_first_event(&json!({"owner_id": "nope"})), None);
    }
}
