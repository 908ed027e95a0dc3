//! Watches the link to PostgreSQL from a connection of its own, so that a cut or
//! black-holed link is known within about a second and its end as soon as a connection
//! succeeds again.
//!
//! Why: a black-holed link (packets go nowhere) never fails a socket, it only stops
//! answering, and neither sqlx nor postgres-es bound a query in time. While the link is
//! down, requests answer 503 at once instead of waiting on sockets that will never answer
//! (`api::store_link`), pooled connections released meanwhile are closed instead of tested
//! (sqlx's test on release has no time limit and would hold a pool slot for as long as the
//! socket stays silent), and the `LISTEN` connection is opened anew (`wakeups`).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the link is probed while it answers.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe (a round trip, or opening the probe connection) slower than this failed.
const PROBE_TIMEOUT: Duration = Duration::from_millis(600);
/// Failed probes in a row that make the link down: one slow answer from a busy server is
/// not a cut. With the two constants above, a cut is known within 1.4 s.
const FAILURES_TO_DOWN: u32 = 2;

/// Whether the database answers, as last probed; cheap to clone.
#[derive(Clone, Debug)]
pub struct Link {
    up: watch::Receiver<bool>,
}

impl Link {
    /// Starts probing the database of `options`; the prober stops when every [`Link`] is
    /// dropped.
    pub(crate) fn watch(options: PgConnectOptions) -> (Self, JoinHandle<()>) {
        let (sender, up) = watch::channel(true);
        let prober = tokio::spawn(probe(options, sender));
        (Self { up }, prober)
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Resolves once the link is down (at once if it is down now).
    pub async fn down(&self) {
        let mut up = self.up.clone();
        if up.wait_for(|up| !*up).await.is_err() {
            // The prober stopped: nobody will say the link went down.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once the link is up (at once if it is up now).
    pub async fn up(&self) {
        let mut up = self.up.clone();
        if up.wait_for(|up| *up).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn probe(options: PgConnectOptions, sender: watch::Sender<bool>) {
    let mut connection: Option<PgConnection> = None;
    let mut failures = 0;
    while !sender.is_closed() {
        let answered = match connection.as_mut() {
            Some(open) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, open.ping()).await,
                Ok(Ok(()))
            ),
            None => match tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect_with(&options))
                .await
            {
                Ok(Ok(opened)) => {
                    connection = Some(opened);
                    true
                }
                _ => false,
            },
        };
        if answered {
            failures = 0;
        } else {
            // Dropped, not closed: closing says goodbye over the link that just failed.
            connection = None;
            failures += 1;
        }
        let up = failures < FAILURES_TO_DOWN;
        sender.send_if_modified(|current| {
            if *current == up {
                return false;
            }
            if up {
                tracing::info!("the database answers again");
            } else {
                tracing::warn!("the database does not answer; failing requests fast until it does");
            }
            *current = up;
            true
        });
        if answered {
            tokio::time::sleep(PROBE_EVERY).await;
        } else if !up {
            // Down: try again soon, but do not spin on a refused connection.
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}
