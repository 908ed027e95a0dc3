//! Lease timers. A background loop reads the task view for leases that ran out and sends
//! `ExpireLease` for each (a failed attempt: retried after backoff or failed for good), and
//! wakes long-polling agents when a retry delay ends. The deadlines live in the view, so
//! they survive a restart; two nodes firing for one lease have one effect, because the
//! aggregate answers the second `ExpireLease` with nothing to do.

use std::time::Duration;

use chronicle_aggregates::task::{TaskCommand, TaskError};
use chronicle_projections::task_view::TaskView;
use chrono::{DateTime, Utc};
use rand::Rng;
use uuid::Uuid;

use super::dispatch::DispatchError;
use super::{jitter, try_task_command};
use crate::bus::{CommandBus, CommandContext, CommandError};
use crate::read_side::ReadSide;

/// The longest the loop sleeps: it also notices deadlines written by other nodes.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Leases expired per round; the next round takes the rest at once.
const BATCH: u32 = 200;

fn context() -> CommandContext {
    CommandContext {
        actor: "system:lease-timer".into(),
        correlation_id: Uuid::now_v7().to_string(),
        ..CommandContext::default()
    }
}

/// Runs until aborted; errors are logged and the loop goes on.
pub async fn run(bus: CommandBus, read: ReadSide) {
    let mut last = Utc::now();
    loop {
        let now = Utc::now();
        let mut full = false;
        match expire_due(&bus, &read, now).await {
            Ok(expired) => full = expired >= BATCH as usize,
            Err(error) => tracing::error!(%error, "lease expiry failed"),
        }
        match TaskView::became_ready(&read.db, last, now).await {
            Ok(true) => read.notify_queue(),
            Ok(false) => {}
            Err(error) => tracing::error!(%error, "retry readiness check failed"),
        }
        last = now;
        if full {
            continue;
        }
        let sleep = match TaskView::next_deadline(&read.db, now).await {
            Ok(Some(deadline)) => until(deadline).min(MAX_SLEEP),
            Ok(None) => MAX_SLEEP,
            Err(error) => {
                tracing::error!(%error, "next deadline unknown");
                MAX_SLEEP
            }
        };
        // A little jitter keeps the timers of several nodes from firing in lockstep.
        let spread = Duration::from_millis(rand::rng().random_range(0..=20));
        tokio::time::sleep(sleep + spread).await;
    }
}

fn until(deadline: DateTime<Utc>) -> Duration {
    (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

/// Sends `ExpireLease` for every lease the view says ran out by `now` (at most a batch);
/// returns how many it expired.
pub async fn expire_due(
    bus: &CommandBus,
    read: &ReadSide,
    now: DateTime<Utc>,
) -> Result<usize, DispatchError> {
    let due = TaskView::expired_leases(&read.db, now, BATCH).await?;
    let context = context();
    let mut expired = 0;
    for task_id in &due {
        let committed = try_task_command(bus, read, *task_id, &context, |task| {
            let lease_id = task
                .state()
                .and_then(|state| state.lease_id)
                .ok_or(CommandError::Refused(TaskError::StaleLease))?;
            Ok(TaskCommand::ExpireLease {
                lease_id,
                jitter: jitter(),
                at: Utc::now(),
            })
        })
        .await?;
        // Refused: renewed, reported or expired elsewhere in the meantime.
        if committed.is_some_and(|c| !c.events.is_empty()) {
            tracing::info!(%task_id, "lease expired");
            expired += 1;
        }
    }
    Ok(expired)
}
