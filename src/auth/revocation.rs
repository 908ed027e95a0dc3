//! Credentials that end before they expire: ended sessions (logout, refresh-token reuse),
//! revoked or rotated API keys and users whose roles changed, held in memory on every node
//! and fed from their events, so that access tokens stay stateless on the hot path (no
//! lookup per request) and still end everywhere within a second.
//!
//! [`RevocationFeed`] follows the global feed: at start from the first event younger than
//! the [window](Revocations::window) (anything older concerns only access tokens that have
//! expired), then whenever the read side's events signal fires — local commits, and other
//! nodes' commits through `LISTEN`/`NOTIFY` — with a poll as the safety net. An open socket
//! holds the [`Grant`] it was opened with and `select!`s on [`Revocations::ended`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chronicle_aggregates::api_key::ApiKey;
use chronicle_aggregates::session::Session;
use chronicle_aggregates::user::User;
use chronicle_commands::auth::Role;
use chronicle_projections::{FeedCursor, RecordedEvent};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::jwt::AccessClaims;
use crate::store::{AggregateFilter, Store, StoreError};

/// How often the feed is read when nothing woke the follower (SQLite nodes sharing a file
/// have no `NOTIFY`; a lost notification is found here too).
const POLL: Duration = Duration::from_millis(400);
/// After a wake-up, wait this long so that a burst of commits is one read.
const SETTLE: Duration = Duration::from_millis(50);
const BATCH: u32 = 500;
/// How far back each read looks for credential-ending events past the feed's horizon:
/// their `recorded_at` is their transaction's start (PostgreSQL), so a transaction longer
/// than this is left to the feed.
const RECENT: Duration = Duration::from_secs(30);
/// Kept beyond the access-token lifetime: the JWT leeway and clock differences.
const MARGIN_SECS: i64 = 60;

/// What a credential granted when it was checked: enough to tell later whether it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// An access token (JWT) of a session.
    Token {
        user_id: Uuid,
        session_id: Uuid,
        /// Sorted, without duplicates.
        roles: Vec<Role>,
        /// `iat`, seconds since the epoch.
        issued_at: i64,
        expires_at: DateTime<Utc>,
    },
    /// An API key, as loaded when it was checked.
    ApiKey {
        key_id: Uuid,
        user_id: Uuid,
        /// The key's and its owner's aggregate versions then: a later rotation, revocation
        /// or role change has a higher sequence (no clocks compared across nodes).
        key_version: i64,
        user_version: i64,
        expires_at: Option<DateTime<Utc>>,
    },
}

impl Grant {
    pub fn token(claims: &AccessClaims) -> Self {
        let roles: BTreeSet<Role> = claims.roles.iter().copied().collect();
        Self::Token {
            user_id: claims.sub,
            session_id: claims.sid,
            roles: roles.into_iter().collect(),
            issued_at: claims.iat,
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    pub fn user_id(&self) -> Uuid {
        match self {
            Self::Token { user_id, .. } | Self::ApiKey { user_id, .. } => *user_id,
        }
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Token { expires_at, .. } => Some(*expires_at),
            Self::ApiKey { expires_at, .. } => *expires_at,
        }
    }
}

/// Why a credential ended; a socket closes with [`CloseReason::CODE`] and
/// [`CloseReason::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Expired,
    SessionEnded,
    KeyRevoked,
    KeyRotated,
    RolesChanged,
}

impl CloseReason {
    /// The WebSocket close code: 4000 + HTTP 401, "authenticate again".
    pub const CODE: u16 = 4401;

    pub fn reason(self) -> &'static str {
        match self {
            Self::Expired => "credentials expired",
            Self::SessionEnded => "session ended",
            Self::KeyRevoked => "API key revoked",
            Self::KeyRotated => "API key rotated",
            Self::RolesChanged => "roles changed",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct KeyChange {
    at: DateTime<Utc>,
    /// The sequence of the key's latest rotation or revocation.
    sequence: i64,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct RoleChange {
    at: DateTime<Utc>,
    sequence: i64,
    /// The user's roles after the change, sorted.
    roles: Vec<Role>,
}

#[derive(Debug, Default)]
struct Ended {
    /// Session id → when it ended.
    sessions: HashMap<Uuid, DateTime<Utc>>,
    keys: HashMap<Uuid, KeyChange>,
    users: HashMap<Uuid, RoleChange>,
}

struct Inner {
    ended: RwLock<Ended>,
    /// Bumped whenever something ended, to wake [`Revocations::ended`].
    changes: watch::Sender<u64>,
    window: chrono::Duration,
}

/// The in-memory set of ended credentials of one node (held by its
/// [`Authenticator`](super::Authenticator)); cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

impl Revocations {
    /// Remembers what ended for `access_ttl_secs` (and a margin): by then every access token
    /// issued before has expired.
    pub fn new(access_ttl_secs: u64) -> Self {
        let ttl = i64::try_from(access_ttl_secs).unwrap_or(i64::MAX / 2_000);
        Self {
            inner: Arc::new(Inner {
                ended: RwLock::new(Ended::default()),
                changes: watch::channel(0).0,
                window: chrono::Duration::seconds(ttl.saturating_add(MARGIN_SECS)),
            }),
        }
    }

    /// How far back an ended credential still matters.
    pub fn window(&self) -> chrono::Duration {
        self.inner.window
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ended> {
        self.inner
            .ended
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ended> {
        self.inner
            .ended
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Why `grant` no longer holds, if it was revoked (expiry is not looked at: the JWT
    /// check does that, with its leeway).
    pub fn revoked(&self, grant: &Grant) -> Option<CloseReason> {
        let ended = self.read();
        match grant {
            Grant::Token {
                user_id,
                session_id,
                roles,
                issued_at,
                ..
            } => {
                if ended.sessions.contains_key(session_id) {
                    return Some(CloseReason::SessionEnded);
                }
                // Stale: issued in an earlier second than the change, or naming other roles
                // than the user holds since (a token of the same second may be either side).
                ended
                    .users
                    .get(user_id)
                    .filter(|change| *issued_at < change.at.timestamp() || *roles != change.roles)
                    .map(|_| CloseReason::RolesChanged)
            }
            Grant::ApiKey {
                key_id,
                user_id,
                key_version,
                user_version,
                ..
            } => {
                if let Some(change) = ended.keys.get(key_id) {
                    if change.sequence > *key_version {
                        return Some(if change.revoked {
                            CloseReason::KeyRevoked
                        } else {
                            CloseReason::KeyRotated
                        });
                    }
                }
                ended
                    .users
                    .get(user_id)
                    .filter(|change| change.sequence > *user_version)
                    .map(|_| CloseReason::RolesChanged)
            }
        }
    }

    /// Whether the key was revoked (recently: older revocations are found by loading it).
    pub fn key_revoked(&self, key_id: Uuid) -> bool {
        self.read()
            .keys
            .get(&key_id)
            .is_some_and(|change| change.revoked)
    }

    /// Why `grant` no longer holds, if it expired or was revoked by now: for a socket to
    /// look before acting on a message.
    pub fn ended_now(&self, grant: &Grant) -> Option<CloseReason> {
        let expired = grant.expires_at().is_some_and(|at| at <= Utc::now());
        self.revoked(grant)
            .or(expired.then_some(CloseReason::Expired))
    }

    /// Resolves when `grant` ends: it expires, or it is revoked on any node. A socket
    /// `select!`s on this beside its work and closes with [`CloseReason::CODE`].
    pub async fn ended(&self, grant: &Grant) -> CloseReason {
        let mut changes = self.inner.changes.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(reason) = self.ended_now(grant) {
                return reason;
            }
            tokio::select! {
                changed = changes.changed() => {
                    // The sender lives as long as `self`; only expiry is left to wait for.
                    if changed.is_err() {
                        until_expiry(grant).await;
                        return CloseReason::Expired;
                    }
                }
                () = until_expiry(grant) => return CloseReason::Expired,
            }
        }
    }

    /// Records at once that this node revoked (`revoked`) or rotated key `key_id` with the
    /// event at `sequence`, without waiting for the feed to bring it: the next request with
    /// the key, on this node, is checked against it.
    pub fn key_changed(&self, key_id: Uuid, sequence: usize, revoked: bool) {
        let change = KeyChange {
            at: Utc::now(),
            sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
            revoked,
        };
        if self.change_key(key_id, change) {
            self.announce();
        }
    }

    // Each of these says whether it learnt something: the same event is read more than once
    // (by the feed and by the recent read).

    fn end_session(&self, session_id: Uuid, at: DateTime<Utc>) -> bool {
        self.write().sessions.insert(session_id, at).is_none()
    }

    fn change_key(&self, key_id: Uuid, change: KeyChange) -> bool {
        let mut ended = self.write();
        match ended.keys.get(&key_id) {
            Some(known) if known.sequence >= change.sequence => false,
            _ => {
                ended.keys.insert(key_id, change);
                true
            }
        }
    }

    fn knows_role_change(&self, user_id: Uuid, sequence: i64) -> bool {
        self.read()
            .users
            .get(&user_id)
            .is_some_and(|known| known.sequence >= sequence)
    }

    fn change_roles(&self, user_id: Uuid, change: RoleChange) -> bool {
        let mut ended = self.write();
        match ended.users.get(&user_id) {
            Some(known) if known.sequence >= change.sequence => false,
            _ => {
                ended.users.insert(user_id, change);
                true
            }
        }
    }

    /// Wakes every [`Revocations::ended`] to look again.
    fn announce(&self) {
        self.inner
            .changes
            .send_modify(|generation| *generation += 1);
    }

    /// Forgets what ended before the window: no unexpired token predates it.
    fn prune(&self, now: DateTime<Utc>) {
        let since = now - self.inner.window;
        let mut ended = self.write();
        ended.sessions.retain(|_, at| *at >= since);
        ended.keys.retain(|_, change| change.at >= since);
        ended.users.retain(|_, change| change.at >= since);
    }
}

/// Sleeps until `grant` expires; forever if it does not.
async fn until_expiry(grant: &Grant) {
    match grant.expires_at() {
        Some(at) => {
            let left = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

/// Follows the global feed into a node's [`Revocations`].
pub(crate) struct RevocationFeed {
    store: Store,
    revocations: Revocations,
    cursor: FeedCursor,
}

impl RevocationFeed {
    /// Reads what ended within the window, before the node serves.
    pub(crate) async fn start(store: &Store, revocations: Revocations) -> Result<Self, StoreError> {
        let cursor = store
            .cursor_since(Utc::now() - revocations.window())
            .await?;
        let mut feed = Self {
            store: store.clone(),
            revocations,
            cursor,
        };
        let applied = feed.catch_up().await?;
        tracing::info!(applied, "revocations caught up");
        Ok(feed)
    }

    /// Reads what ended lately, then the feed up to its end; the number of events that
    /// ended something not known before.
    async fn catch_up(&mut self) -> Result<usize, StoreError> {
        // The feed never skips an event but waits for every older transaction in the
        // cluster to end; the recent read does not wait, so a long transaction elsewhere
        // does not hold a logout back.
        let mut applied = 0;
        let recent = self
            .store
            .credential_events_since(
                Utc::now() - chrono::Duration::from_std(RECENT).unwrap_or_default(),
            )
            .await?;
        for event in &recent {
            applied += usize::from(self.apply(event).await?);
        }
        if applied > 0 {
            self.revocations.announce();
        }
        let all = AggregateFilter::default();
        loop {
            let batch = self.store.feed(self.cursor, BATCH, &all).await?;
            let mut learnt = 0;
            for event in &batch {
                learnt += usize::from(self.apply(event).await?);
                self.cursor = event.cursor();
            }
            if learnt > 0 {
                self.revocations.announce();
            }
            applied += learnt;
            if batch.len() < BATCH as usize {
                break;
            }
        }
        self.revocations.prune(Utc::now());
        Ok(applied)
    }

    /// Records what `event` ended; whether that was news.
    async fn apply(&self, event: &RecordedEvent) -> Result<bool, StoreError> {
        let relevant = matches!(
            (event.aggregate_type.as_str(), event.event_type.as_str()),
            (Session::TYPE, "SessionRevoked")
                | (ApiKey::TYPE, "ApiKeyRevoked" | "ApiKeyRotated")
                | (User::TYPE, "RoleGranted" | "RoleRevoked")
        );
        if !relevant {
            return Ok(false);
        }
        let Ok(id) = Uuid::parse_str(&event.aggregate_id) else {
            return Ok(false);
        };
        // `at` is the deciding node's clock, the one access tokens' `iat` come from.
        let at = event
            .payload
            .get("at")
            .and_then(|at| serde_json::from_value::<DateTime<Utc>>(at.clone()).ok())
            .unwrap_or(event.recorded_at);
        let learnt = match event.aggregate_type.as_str() {
            Session::TYPE => self.revocations.end_session(id, at),
            ApiKey::TYPE => self.revocations.change_key(
                id,
                KeyChange {
                    at,
                    sequence: event.sequence,
                    revoked: event.event_type == "ApiKeyRevoked",
                },
            ),
            _ if self.revocations.knows_role_change(id, event.sequence) => false,
            _ => {
                let user = self.store.aggregate::<User>().load(&id.to_string()).await?;
                let roles = user
                    .aggregate
                    .state()
                    .map(|user| user.roles.iter().copied().collect())
                    .unwrap_or_default();
                self.revocations.change_roles(
                    id,
                    RoleChange {
                        at,
                        sequence: event.sequence,
                        roles,
                    },
                )
            }
        };
        Ok(learnt)
    }

    /// Keeps following until `stop` is cancelled: woken by `events` (local commits and
    /// other nodes' `NOTIFY`), and every [`POLL`] without it.
    pub(crate) async fn run(mut self, events: Arc<Notify>, stop: CancellationToken) {
        loop {
            // Interest registered before reading, so a commit during the read wakes us.
            let woken = events.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Err(error) = self.catch_up().await {
                tracing::warn!(%error, "cannot read revocations from the feed; retrying");
            }
            tokio::select! {
                () = woken => tokio::time::sleep(SETTLE).await,
                () = tokio::time::sleep(POLL) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(session_id: Uuid, user_id: Uuid, issued_at: DateTime<Utc>) -> Grant {
        Grant::Token {
            user_id,
            session_id,
            roles: vec![Role::User],
            issued_at: issued_at.timestamp(),
            expires_at: issued_at + chrono::Duration::minutes(15),
        }
    }

    #[test]
    fn an_ended_session_revokes_its_tokens_only() {
        let revocations = Revocations::new(900);
        let (user, ended, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let now = Utc::now();
        revocations.end_session(ended, now);
        assert_eq!(
            revocations.revoked(&token(ended, user, now)),
            Some(CloseReason::SessionEnded)
        );
        assert_eq!(revocations.revoked(&token(other, user, now)), None);
    }

    #[test]
    fn a_role_change_makes_older_tokens_and_other_roles_stale() {
        let revocations = Revocations::new(900);
        let user = Uuid::now_v7();
        let at = Utc::now();
        revocations.change_roles(
            user,
            RoleChange {
                at,
                sequence: 2,
                roles: vec![Role::User],
            },
        );
        let before = token(Uuid::now_v7(), user, at - chrono::Duration::seconds(2));
        assert_eq!(
            revocations.revoked(&before),
            Some(CloseReason::RolesChanged)
        );
        // The same second: judged by the roles it names.
        assert_eq!(revocations.revoked(&token(Uuid::now_v7(), user, at)), None);
        let Grant::Token { session_id, .. } = token(Uuid::now_v7(), user, at) else {
            unreachable!()
        };
        let admin = Grant::Token {
            user_id: user,
            session_id,
            roles: vec![Role::Admin],
            issued_at: at.timestamp(),
            expires_at: at + chrono::Duration::minutes(15),
        };
        assert_eq!(revocations.revoked(&admin), Some(CloseReason::RolesChanged));
    }

    #[test]
    fn keys_end_by_sequence_not_by_clock() {
        let revocations = Revocations::new(900);
        let (key_id, user_id) = (Uuid::now_v7(), Uuid::now_v7());
        let grant = |key_version| Grant::ApiKey {
            key_id,
            user_id,
            key_version,
            user_version: 1,
            expires_at: None,
        };
        revocations.change_key(
            key_id,
            KeyChange {
                at: Utc::now(),
                sequence: 2,
                revoked: false,
            },
        );
        assert_eq!(
            revocations.revoked(&grant(1)),
            Some(CloseReason::KeyRotated)
        );
        assert_eq!(revocations.revoked(&grant(2)), None);
        assert!(!revocations.key_revoked(key_id));
        revocations.change_key(
            key_id,
            KeyChange {
                at: Utc::now(),
                sequence: 3,
                revoked: true,
            },
        );
        assert_eq!(
            revocations.revoked(&grant(2)),
            Some(CloseReason::KeyRevoked)
        );
        assert!(revocations.key_revoked(key_id));
    }

    #[test]
    fn what_ended_before_the_window_is_forgotten() {
        let revocations = Revocations::new(900);
        let (old, recent) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Utc::now();
        revocations.end_session(old, now - chrono::Duration::seconds(900 + MARGIN_SECS + 1));
        revocations.end_session(recent, now);
        revocations.prune(now);
        let user = Uuid::now_v7();
        assert_eq!(revocations.revoked(&token(old, user, now)), None);
        assert!(revocations.revoked(&token(recent, user, now)).is_some());
    }

    #[tokio::test]
    async fn ended_resolves_on_revocation_and_on_expiry() {
        let revocations = Revocations::new(900);
        let (session, user) = (Uuid::now_v7(), Uuid::now_v7());
        let grant = token(session, user, Utc::now());
        let waiting = tokio::spawn({
            let revocations = revocations.clone();
            let grant = grant.clone();
            async move { revocations.ended(&grant).await }
        });
        tokio::task::yield_now().await;
        revocations.end_session(session, Utc::now());
        revocations.announce();
        let reason = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(reason, CloseReason::SessionEnded);

        let expiring = Grant::Token {
            user_id: user,
            session_id: Uuid::now_v7(),
            roles: vec![Role::User],
            issued_at: Utc::now().timestamp(),
            expires_at: Utc::now() + chrono::Duration::milliseconds(50),
        };
        let reason = tokio::time::timeout(Duration::from_secs(5), revocations.ended(&expiring))
            .await
            .expect("expired");
        assert_eq!(reason, CloseReason::Expired);
    }
}
