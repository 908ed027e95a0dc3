//! `chronicle bench`: throughput and latency, measured against a real store.
//!
//! `chronicle bench append --backend postgres --writers 64 --events 50000` appends through
//! the command bus (each event a full `CreateTask` command: load, decide, append with its
//! hash-chain link) into the store named by `CHRONICLE_DATABASE_URL`. Writers share the
//! server's connection pool (`CHRONICLE_STORE__MAX_CONNECTIONS`), as requests do.
//!
//! `chronicle bench tasks` ([`super::bench_tasks`]) and `chronicle bench auth`
//! ([`super::bench_auth`]) measure over HTTP, against a running server or one they start;
//! `chronicle bench projections` ([`super::bench_projections`]) the read side, in process;
//! `chronicle bench workflows` ([`super::bench_workflows`]) workflow runs and the driver's
//! step overhead, over HTTP; `chronicle bench search` ([`super::bench_search`]) the search
//! index, in process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_aggregates::task::{Task, TaskCommand};
use chronicle_commands::task::NewTaskRequest;
use chrono::Utc;
use clap::{Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use uuid::Uuid;

use crate::actor::Actor;
use crate::app::connect_store;
use crate::bus::{CommandBus, CommandContext, CommandError};
use crate::config::Settings;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Postgres,
    Sqlite,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Appends through the command bus: one new task per command.
    Append {
        /// Must match CHRONICLE_DATABASE_URL.
        #[arg(long, value_enum)]
        backend: BackendArg,
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Events in all.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
    },
    /// Task lifecycles over HTTP: creators, and remote agents that long-poll and complete.
    Tasks(super::bench_tasks::TasksArgs),
    /// The cost of authentication: /api/health against GET /api/tasks/{id} with a JWT and
    /// with an API key.
    Auth(super::bench_auth::AuthArgs),
    /// Rebuild throughput of every projection, and live projection lag under load.
    Projections(super::bench_projections::ProjectionsArgs),
    /// Workflow runs over HTTP (a linear and a fan-out workflow), and the driver's
    /// overhead between one step's success and the next step's lease.
    Workflows(super::bench_workflows::WorkflowsArgs),
    /// The search index: indexing rate, query latency per mode, the vector leg's recall.
    Search(super::bench_search::SearchArgs),
}

pub async fn run(command: BenchCommand, settings: Settings) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append {
            backend,
            writers,
            events,
        } => {
            let is_postgres = settings.database_url.starts_with("postgres");
            if is_postgres != (backend == BackendArg::Postgres) {
                anyhow::bail!(
                    "--backend does not match CHRONICLE_DATABASE_URL ({})",
                    crate::store::redact_url(&settings.database_url)
                );
            }
            append(settings, writers.max(1), events).await
        }
        BenchCommand::Tasks(args) => super::bench_tasks::run(args, settings).await,
        BenchCommand::Auth(args) => super::bench_auth::run(args, settings).await,
        BenchCommand::Projections(args) => super::bench_projections::run(args, settings).await,
        BenchCommand::Workflows(args) => super::bench_workflows::run(args, settings).await,
        BenchCommand::Search(args) => super::bench_search::run(args, settings).await,
    }
}

async fn append(settings: Settings, writers: usize, events: u64) -> anyhow::Result<()> {
    let store = connect_store(&settings).await?;
    let bus = CommandBus::new(store);
    let spec = serde_json::from_value::<NewTaskRequest>(json!({
        "capability": "bench.append",
        "input": {"url": "https://example.com/", "note": "benchmark"},
    }))?
    .validate()
    .map_err(|e| anyhow::anyhow!("bench spec: {e}"))?;
    let actor = Actor::system();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(writers);
    for _ in 0..writers {
        let bus = bus.clone();
        let spec = spec.clone();
        let next = next.clone();
        let actor = actor.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while next.fetch_add(1, Ordering::Relaxed) < events {
                let task_id = Uuid::now_v7();
                let context = CommandContext {
                    actor: actor.to_string(),
                    correlation_id: task_id.to_string(),
                    ..CommandContext::default()
                };
                let sent = Instant::now();
                bus.create::<Task, CommandError<_>>(&task_id.to_string(), &context, |_| {
                    Ok(TaskCommand::CreateTask {
                        task_id,
                        owner_id: actor.id,
                        spec: spec.clone(),
                        workflow_run_id: None,
                        at: Utc::now(),
                    })
                })
                .await?;
                latencies.record(micros(sent.elapsed()))?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for handle in handles {
        latencies.add(handle.await??)?;
    }
    let elapsed = started.elapsed();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "append: {rate:.0} events/s p50={:.2} p99={:.2}",
        latencies.value_at_quantile(0.50) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
    );
    eprintln!(
        "({} events, {writers} writers, {:.2}s, backend {})",
        latencies.len(),
        elapsed.as_secs_f64(),
        bus.store().backend_name()
    );
    Ok(())
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}
