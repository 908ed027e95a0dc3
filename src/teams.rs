//! Who belongs to which team, held in memory on every node and fed from the Team events,
//! so that every authorisation decision ([`crate::authz`]) is a map lookup and a removed
//! member loses access everywhere within a second — open sockets included, since they ask
//! again before each event they push.
//!
//! [`TeamFeed`] follows the global feed like the revocations do (`auth::revocation`): at
//! start every Team event from the beginning, then on each wake-up of the read side's
//! events signal (local commits, other nodes' `NOTIFY`) with a poll as the safety net. A
//! node's own commits are learnt at once ([`TeamDirectory::learn`]), so a caller reads
//! its own write.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chronicle_aggregates::team::{Team, TeamState};
use chronicle_commands::team::TeamRole;
use chronicle_projections::{FeedCursor, RecordedEvent};
use cqrs_es::Aggregate;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::{AggregateFilter, Store, StoreError};

const POLL: Duration = Duration::from_millis(400);
const SETTLE: Duration = Duration::from_millis(20);
const BATCH: u32 = 500;

#[derive(Debug, Clone)]
struct Known {
    team: Team,
    version: usize,
}

#[derive(Debug, Default)]
struct Directory {
    teams: HashMap<Uuid, Known>,
    /// Open and accepted invitations → their team.
    invitations: HashMap<Uuid, Uuid>,
}

/// The teams one node knows, at the latest version it has seen of each; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TeamDirectory {
    inner: Arc<RwLock<Directory>>,
}

impl TeamDirectory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `team` at `version` unless a later version is known; whether it was news.
    pub fn learn(&self, team: &Team, version: usize) -> bool {
        let Some(state) = team.state() else {
            return false;
        };
        let mut directory = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if directory
            .teams
            .get(&state.id)
            .is_some_and(|known| known.version >= version)
        {
            return false;
        }
        for invitation in state.invitations.keys().chain(&state.accepted) {
            directory.invitations.insert(*invitation, state.id);
        }
        directory.teams.insert(
            state.id,
            Known {
                team: team.clone(),
                version,
            },
        );
        true
    }

    /// The role of `user_id` in `team_id`; `None` for a stranger or a deleted team.
    pub fn role(&self, team_id: Uuid, user_id: Uuid) -> Option<TeamRole> {
        self.read()
            .teams
            .get(&team_id)
            .and_then(|known| known.team.state())
            .filter(|team| !team.deleted)
            .and_then(|team| team.role_of(user_id))
    }

    /// The teams `user_id` belongs to (not deleted), oldest first.
    pub fn teams_of(&self, user_id: Uuid) -> Vec<TeamState> {
        let mut teams: Vec<TeamState> = self
            .read()
            .teams
            .values()
            .filter_map(|known| known.team.state())
            .filter(|team| !team.deleted && team.members.contains_key(&user_id))
            .cloned()
            .collect();
        teams.sort_by_key(|team| team.id);
        teams
    }

    /// The ids of the teams `user_id` belongs to.
    pub fn team_ids_of(&self, user_id: Uuid) -> Vec<Uuid> {
        self.teams_of(user_id).iter().map(|team| team.id).collect()
    }

    /// The team an invitation belongs to, if this node has seen it.
    pub fn invitation_team(&self, invitation_id: Uuid) -> Option<Uuid> {
        self.read().invitations.get(&invitation_id).copied()
    }
}

/// Follows the global feed into a node's [`TeamDirectory`].
pub(crate) struct TeamFeed {
    store: Store,
    directory: TeamDirectory,
    cursor: FeedCursor,
}

impl TeamFeed {
    /// Reads every team there is, before the node serves.
    pub(crate) async fn start(store: &Store, directory: TeamDirectory) -> Result<Self, StoreError> {
        let mut feed = Self {
            store: store.clone(),
            directory,
            cursor: FeedCursor::default(),
        };
        let learnt = feed.catch_up().await?;
        tracing::info!(learnt, "teams caught up");
        Ok(feed)
    }

    async fn catch_up(&mut self) -> Result<usize, StoreError> {
        let teams = AggregateFilter {
            aggregate_type: Some(Team::TYPE.to_owned()),
            aggregate_id: None,
        };
        let mut learnt = 0;
        loop {
            let batch = self.store.feed(self.cursor, BATCH, &teams).await?;
            for event in &batch {
                learnt += usize::from(self.apply(event).await?);
                self.cursor = event.cursor();
            }
            if batch.len() < BATCH as usize {
                return Ok(learnt);
            }
        }
    }

    /// Loads the event's team as it stands now (a later event is then old news).
    async fn apply(&self, event: &RecordedEvent) -> Result<bool, StoreError> {
        let Ok(id) = Uuid::parse_str(&event.aggregate_id) else {
            return Ok(false);
        };
        let loaded = self.store.aggregate::<Team>().load(&id.to_string()).await?;
        Ok(self.directory.learn(&loaded.aggregate, loaded.version))
    }

    /// Keeps following until `stop` is cancelled.
    pub(crate) async fn run(mut self, events: Arc<Notify>, stop: CancellationToken) {
        loop {
            let woken = events.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Err(error) = self.catch_up().await {
                tracing::warn!(%error, "cannot read the teams from the feed; retrying");
            }
            tokio::select! {
                () = woken => tokio::time::sleep(SETTLE).await,
                () = tokio::time::sleep(POLL) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
