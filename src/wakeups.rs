//! Wake-ups between nodes over PostgreSQL `LISTEN`/`NOTIFY`: several nodes on one database
//! learn at once that a task became ready (long-polling agents and agent sockets on every
//! node look at the queue) or that events were appended (projections catch up), instead
//! of waiting for their periodic re-check.
//!
//! A notification is sent after the write it announces has committed (the task view row
//! for the queue), so a woken node always finds what woke it. Bursts coalesce: while one
//! `NOTIFY` is on its way, any number of further announcements make one more. Each node
//! ignores its own notifications (the payload is the sender's node id). A lost listener
//! connection is re-opened, and every local waiter is woken once, since a notification may
//! have been missed meanwhile; so is one on a link that stopped answering (`store::link`).
//! SQLite is one node: nothing to do there.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::store::link::Link;

/// Channel of "a task may have become ready".
pub const QUEUE_CHANNEL: &str = "chronicle_queue";
/// Channel of "events were appended".
pub const EVENTS_CHANNEL: &str = "chronicle_events";

/// Events notifications at most this often per node: projections elsewhere only need to
/// know soon, and every `NOTIFY` takes a cluster-wide lock at commit.
const EVENTS_EVERY: Duration = Duration::from_millis(50);

/// What this node announces, and the local signals that remote announcements fire.
#[derive(Clone)]
pub struct Wakeups {
    node: Uuid,
    queue_out: Arc<Notify>,
    events_out: Arc<Notify>,
}

impl Wakeups {
    pub fn new() -> Self {
        Self {
            node: Uuid::now_v7(),
            queue_out: Arc::new(Notify::new()),
            events_out: Arc::new(Notify::new()),
        }
    }

    /// Announces to other nodes that a task may have become ready.
    pub fn queue(&self) {
        self.queue_out.notify_one();
    }

    /// Announces to other nodes that events were appended.
    pub fn events(&self) {
        self.events_out.notify_one();
    }

    /// Starts the senders and the listener; `queue_in` and `events_in` are woken when
    /// another node announces.
    pub fn spawn(
        &self,
        pool: PgPool,
        link: Option<Link>,
        queue_in: Arc<Notify>,
        events_in: Arc<Notify>,
    ) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(send(
                pool.clone(),
                QUEUE_CHANNEL,
                self.node,
                self.queue_out.clone(),
                Duration::ZERO,
            )),
            tokio::spawn(send(
                pool.clone(),
                EVENTS_CHANNEL,
                self.node,
                self.events_out.clone(),
                EVENTS_EVERY,
            )),
            tokio::spawn(listen(pool, link, self.node, queue_in, events_in)),
        ]
    }
}

impl Default for Wakeups {
    fn default() -> Self {
        Self::new()
    }
}

async fn send(pool: PgPool, channel: &'static str, node: Uuid, out: Arc<Notify>, pause: Duration) {
    let payload = node.to_string();
    loop {
        out.notified().await;
        if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(&payload)
            .execute(&pool)
            .await
        {
            tracing::warn!(channel, %error, "cannot notify other nodes; they will re-check on their own");
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn listen(
    pool: PgPool,
    link: Option<Link>,
    node: Uuid,
    queue_in: Arc<Notify>,
    events_in: Arc<Notify>,
) {
    let own = node.to_string();
    let wake_all = || {
        queue_in.notify_waiters();
        events_in.notify_waiters();
    };
    // A listener on a black-holed link waits for ever without an error: it is dropped
    // when the link probe says the database stopped answering, and opened again when it
    // answers.
    let link_down = || async {
        match &link {
            Some(link) => link.down().await,
            None => std::future::pending().await,
        }
    };
    loop {
        if let Some(link) = &link {
            link.up().await;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for other nodes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen_all([QUEUE_CHANNEL, EVENTS_CHANNEL]).await {
            tracing::warn!(%error, "cannot listen for other nodes; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Whatever was announced while nobody listened is found by looking now.
        wake_all();
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = link_down() => {
                    tracing::warn!("the database stopped answering; listening again once it does");
                    wake_all();
                    break;
                }
            };
            match received {
                Ok(Some(notification)) if notification.payload() == own => {}
                Ok(Some(notification)) => match notification.channel() {
                    QUEUE_CHANNEL => queue_in.notify_waiters(),
                    EVENTS_CHANNEL => events_in.notify_waiters(),
                    _ => {}
                },
                // The connection was lost; the next call reconnects and listens again.
                Ok(None) => wake_all(),
                Err(error) => {
                    tracing::warn!(%error, "lost the listener connection; reconnecting");
                    wake_all();
                    break;
                }
            }
        }
    }
}
