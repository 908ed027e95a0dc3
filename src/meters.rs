//! What Chronicle measures, in Prometheus form: the one recorder of the process, the names
//! of every family, and the observations the bus, the store, the dispatcher and the HTTP
//! layer report. Served by `GET /api/metrics` ([`crate::api::scrape`]).
//!
//! Counters and histograms are process-wide: two servers in one process (the tests) add
//! to the same series. Gauges that describe one server's store (queue depth, projections,
//! agents online, pool) are set from that server's read side when it is scraped.

use std::any::Any;
use std::sync::OnceLock;
use std::time::Duration;

use chronicle_aggregates::task::{AttemptFailureCause, Task, TaskEvent, TaskState};
use chrono::{DateTime, Utc};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "chronicle_http_requests_total";
pub const HTTP_DURATION: &str = "chronicle_http_request_duration_seconds";
pub const COMMANDS: &str = "chronicle_commands_total";
pub const COMMAND_DURATION: &str = "chronicle_command_duration_seconds";
pub const EVENTS_APPENDED: &str = "chronicle_events_appended_total";
pub const CONFLICTS: &str = "chronicle_concurrency_conflicts_total";
pub const GROUP_COMMIT_BATCH: &str = "chronicle_group_commit_batch_size";
pub const QUEUE_DEPTH: &str = "chronicle_queue_depth";
pub const DISPATCH_LATENCY: &str = "chronicle_dispatch_latency_seconds";
pub const LEASES_EXPIRED: &str = "chronicle_leases_expired_total";
pub const TASK_DURATION: &str = "chronicle_task_duration_seconds";
pub const PROJECTION_POSITION: &str = "chronicle_projection_position";
pub const PROJECTION_LAG_EVENTS: &str = "chronicle_projection_lag_events";
pub const PROJECTION_LAG_SECONDS: &str = "chronicle_projection_lag_seconds";
/// Raised by the projection runner itself (`chronicle_projections::runner`).
pub const PROJECTION_FAILURES: &str = "chronicle_projection_failures_total";
pub const AGENTS_ONLINE: &str = "chronicle_agents_online";
pub const CONNECTIONS_OPEN: &str = "chronicle_connections_open";
pub const DB_POOL_CONNECTIONS: &str = "chronicle_db_pool_connections";
pub const STORE_UP: &str = "chronicle_store_up";

/// The aggregates whose conflict counters are series from the start (at 0), so a dashboard
/// and an alert see "no conflicts" rather than nothing.
const CONFLICTING: [&str; 4] = ["task", "agent", "workflow_run", "workflow"];

/// Latency buckets in seconds: 1 ms to 1 min.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Commands per group-commit transaction (at most 256).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The process's Prometheus recorder, installed on first use. Should another recorder hold
/// the process already (a test's own), the handle renders an empty text instead.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(GROUP_COMMIT_BATCH.into()), &BATCH_BUCKETS)
            });
        let builder = match builder {
            Ok(builder) => builder,
            // Only an empty bucket list fails, and ours are constants.
            Err(error) => {
                tracing::error!(%error, "metric buckets refused; histograms become summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => describe(),
            Err(_) => {
                tracing::warn!("another metrics recorder is installed; /api/metrics is empty")
            }
        }
        handle
    })
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to the response head, by route template and method."
    );
    describe_counter!(
        COMMANDS,
        "Commands run by the bus, by aggregate, command and outcome."
    );
    describe_histogram!(
        COMMAND_DURATION,
        metrics::Unit::Seconds,
        "Time a command took in the bus, retries included."
    );
    describe_counter!(
        EVENTS_APPENDED,
        "Events appended to the store, by aggregate type."
    );
    describe_counter!(CONFLICTS, "Optimistic-concurrency conflicts met by the bus (each is retried until the attempts run out).");
    for aggregate in CONFLICTING {
        counter!(CONFLICTS, "aggregate" => aggregate).increment(0);
    }
    describe_histogram!(
        GROUP_COMMIT_BATCH,
        "Appends written in one PostgreSQL group-commit transaction."
    );
    describe_gauge!(QUEUE_DEPTH, "Tasks waiting to be leased, by capability.");
    describe_histogram!(
        DISPATCH_LATENCY,
        metrics::Unit::Seconds,
        "From a task becoming leasable to its lease, by capability."
    );
    describe_counter!(
        LEASES_EXPIRED,
        "Leases that ran out before their agent reported, by capability."
    );
    describe_histogram!(
        TASK_DURATION,
        metrics::Unit::Seconds,
        "From an attempt's lease to its end, by capability and outcome."
    );
    describe_gauge!(
        PROJECTION_POSITION,
        "The last feed position a projection applied."
    );
    describe_gauge!(
        PROJECTION_LAG_EVENTS,
        "Events recorded after a projection's position."
    );
    describe_gauge!(
        PROJECTION_LAG_SECONDS,
        metrics::Unit::Seconds,
        "Age of the oldest event a projection has not applied."
    );
    describe_counter!(
        PROJECTION_FAILURES,
        "Times a projection stopped at an event it could not apply."
    );
    describe_gauge!(
        AGENTS_ONLINE,
        "Agents whose last heartbeat is recent enough."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Open streaming connections, by kind (agent_ws, live_ws, task_sse)."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections, by pool and state (in_use, idle)."
    );
    describe_gauge!(
        STORE_UP,
        "1 when the store answered a ping at the last scrape, 0 when it did not."
    );
}

/// One command through the bus.
pub fn command(
    aggregate: &'static str,
    command: &'static str,
    outcome: &'static str,
    took: Duration,
) {
    let labels = [
        ("aggregate", aggregate),
        ("command", command),
        ("outcome", outcome),
    ];
    counter!(COMMANDS, &labels).increment(1);
    histogram!(COMMAND_DURATION, &labels).record(took.as_secs_f64());
}

pub fn events_appended(aggregate: &'static str, count: usize) {
    counter!(EVENTS_APPENDED, "aggregate" => aggregate).increment(count as u64);
}

pub fn conflict(aggregate: &'static str) {
    counter!(CONFLICTS, "aggregate" => aggregate).increment(1);
}

pub fn group_commit_batch(requests: usize) {
    histogram!(GROUP_COMMIT_BATCH).record(requests as f64);
}

/// What a task's events say about dispatch and run times, recorded once they are
/// committed.
pub struct TaskTimes {
    capability: String,
    /// From leasable to leased.
    dispatch: Option<f64>,
    /// How the attempt ended and how long it ran (from its lease).
    ended: Option<(&'static str, f64)>,
}

impl TaskTimes {
    /// `before` is the aggregate the events were decided on; `None` for other aggregates
    /// and for events that neither lease nor end an attempt.
    // A `Vec`, not a slice: a slice cannot be downcast.
    #[allow(clippy::ptr_arg)]
    pub fn of<A: Any, E: Any>(before: &A, events: &Vec<E>) -> Option<Self> {
        let task = (before as &dyn Any).downcast_ref::<Task>()?;
        let events = (events as &dyn Any).downcast_ref::<Vec<TaskEvent>>()?;
        let state = task.state()?;
        let mut times = Self {
            capability: String::new(),
            dispatch: None,
            ended: None,
        };
        for event in events {
            match event {
                TaskEvent::TaskLeased(leased) => {
                    // Leasable since its last change, or since its `not_before` if later.
                    let ready = state
                        .not_before
                        .map_or(state.updated_at, |n| n.max(state.updated_at));
                    times.dispatch = Some(seconds_between(ready, leased.at));
                }
                TaskEvent::TaskSucceeded(done) => {
                    times.ended = attempt_took(state, done.at).map(|s| ("succeeded", s));
                }
                TaskEvent::TaskAttemptFailed(failed) => {
                    let outcome = match failed.cause {
                        AttemptFailureCause::Reported => "failed",
                        AttemptFailureCause::LeaseExpired => "lease_expired",
                    };
                    times.ended = attempt_took(state, failed.at).map(|s| (outcome, s));
                }
                _ => {}
            }
        }
        if times.dispatch.is_none() && times.ended.is_none() {
            return None;
        }
        times.capability = state.capability.as_str().to_owned();
        Some(times)
    }

    pub fn record(self) {
        if let Some(seconds) = self.dispatch {
            histogram!(DISPATCH_LATENCY, "capability" => self.capability.clone()).record(seconds);
        }
        if let Some((outcome, seconds)) = self.ended {
            if outcome == "lease_expired" {
                counter!(LEASES_EXPIRED, "capability" => self.capability.clone()).increment(1);
            }
            histogram!(TASK_DURATION, "capability" => self.capability, "outcome" => outcome)
                .record(seconds);
        }
    }
}

/// From the attempt's lease (or its start, for a state from before leases were dated).
fn attempt_took(state: &TaskState, at: DateTime<Utc>) -> Option<f64> {
    let began = state.leased_at.or(state.started_at)?;
    Some(seconds_between(began, at))
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or_default().max(0) as f64 / 1e6
}

/// Counts one open streaming connection of `kind` while it lives.
pub struct ConnectionGauge(&'static str);

impl ConnectionGauge {
    pub fn open(kind: &'static str) -> Self {
        gauge!(CONNECTIONS_OPEN, "kind" => kind).increment(1.0);
        Self(kind)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        gauge!(CONNECTIONS_OPEN, "kind" => self.0).decrement(1.0);
    }
}
