//! `chronicle bench tasks`: the whole task lifecycle over real HTTP. Creators `POST
//! /api/tasks` concurrently while remote agents, each with its own HTTP client, long-poll
//! `POST /api/agents/{id}/lease` and report every task they get with `PATCH
//! /api/tasks/{id}` (succeeded).
//!
//! Measured: create throughput (first create sent → last 201), full-lifecycle throughput
//! (first create sent → last completion answered) and dispatch latency, from the moment a
//! create request is sent to the moment the lease answer holding that task arrives at an
//! agent. Every task carries its number in its input, so an agent knows when it was sent.
//!
//! `chronicle bench tasks --backend postgres --agents 8 --tasks 20000` starts its own server
//! (see [`super::bench_target`]); `--url http://host:port` measures a running one instead
//! (raise its `CHRONICLE_RATE_LIMIT__PER_MINUTE` first: all requests come from one user).
//! `--nodes 3` starts three servers on one PostgreSQL database (or `--url` given three
//! times names three running nodes): creator n talks to node n mod N, agent n likewise, so
//! a task is often created on one node and leased and completed on another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::bench::BackendArg;
use super::bench_target::{
    bearer_client, expect_status, latency_histogram, micros, millis_at, until_interrupted, Target,
};
use crate::config::Settings;

const CAPABILITY: &str = "bench.work";

#[derive(Args)]
pub struct TasksArgs {
    /// The store of the server: the one started here, or the one checked at `--url`.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Remote agents, each its own HTTP client long-polling for work.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Tasks in all.
    #[arg(long, default_value_t = 10_000)]
    tasks: u64,
    /// Concurrent creators.
    #[arg(long, default_value_t = 8)]
    creators: usize,
    /// Most tasks one lease call asks for; also each agent's `max_concurrency`.
    #[arg(long, default_value_t = 10)]
    max_tasks: u32,
    /// How long a lease call waits for work.
    #[arg(long, default_value_t = 5)]
    wait_secs: u32,
    /// Creates per second in all (paced); as fast as the creators can without it.
    #[arg(long)]
    rate: Option<f64>,
    /// A running server (repeat for the nodes of one cluster); without it the servers are
    /// started in this process on a fresh database.
    #[arg(long)]
    url: Vec<String>,
    /// Servers to start on one database (PostgreSQL only above 1), each its own node.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Give up after this long.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

pub async fn run(args: TasksArgs, settings: Settings) -> anyhow::Result<()> {
    if args.agents == 0 || args.creators == 0 || args.tasks == 0 || args.max_tasks == 0 {
        anyhow::bail!("--agents, --creators, --tasks and --max-tasks must be at least 1");
    }
    if args
        .rate
        .is_some_and(|rate| !rate.is_finite() || rate <= 0.0)
    {
        anyhow::bail!("--rate must be above 0");
    }
    if !args.url.is_empty() && args.nodes != 1 {
        anyhow::bail!("--nodes starts servers; with --url, name each running node instead");
    }
    let target = Target::open_cluster(&settings, args.backend, &args.url, args.nodes).await?;
    let target_nodes = target.nodes.len();
    let measured = until_interrupted(async {
        tokio::time::timeout(
            Duration::from_secs(args.timeout_secs),
            measure(&target, &args),
        )
        .await
        .map_err(|_| anyhow::anyhow!("gave up after {} s (--timeout-secs)", args.timeout_secs))?
    })
    .await;
    target.close().await?;
    let report = measured?;
    report.print(&args, target_nodes);
    Ok(())
}

/// What creators and agents share: when each task was sent, and how far the run is.
struct Progress {
    started: Instant,
    /// Microseconds after `started` at which task n's create was sent, plus one; 0 = not yet.
    sent_at: Vec<AtomicU64>,
    next: AtomicU64,
    completed: AtomicU64,
    /// Microseconds after `started` of the last 201 and the last completion.
    last_created: AtomicU64,
    last_completed: AtomicU64,
    all_done: CancellationToken,
}

impl Progress {
    fn now(&self) -> u64 {
        micros(self.started.elapsed())
    }
}

struct CreatorStats {
    latency: Histogram<u64>,
}

struct AgentStats {
    dispatch: Histogram<u64>,
    complete: Histogram<u64>,
    lease_calls: u64,
    empty_leases: u64,
    leased: u64,
}

struct Report {
    tasks: u64,
    create: Histogram<u64>,
    dispatch: Histogram<u64>,
    complete: Histogram<u64>,
    create_secs: f64,
    lifecycle_secs: f64,
    lease_calls: u64,
    empty_leases: u64,
    leased: u64,
}

async fn measure(target: &Target, args: &TasksArgs) -> anyhow::Result<Report> {
    let user = target.sign_up().await?;
    let creator_client = bearer_client(&user.access_token)?;
    let mut agent_ids = Vec::with_capacity(args.agents);
    for n in 0..args.agents {
        let response = creator_client
            .post(target.url("/api/agents/register"))
            .json(&json!({
                "name": format!("bench agent {n}"),
                "kind": "remote",
                "capabilities": [CAPABILITY],
                "max_concurrency": args.max_tasks,
            }))
            .send()
            .await
            .context("POST /api/agents/register")?;
        let agent: Value = expect_status(response, StatusCode::CREATED, "agent registration")
            .await?
            .json()
            .await?;
        agent_ids.push(
            agent["id"]
                .as_str()
                .context("the registration answer has no id")?
                .to_owned(),
        );
    }

    let progress = Arc::new(Progress {
        started: Instant::now(),
        sent_at: (0..args.tasks).map(|_| AtomicU64::new(0)).collect(),
        next: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        last_created: AtomicU64::new(0),
        last_completed: AtomicU64::new(0),
        all_done: CancellationToken::new(),
    });
    let mut agents = Vec::with_capacity(agent_ids.len());
    for (n, id) in agent_ids.into_iter().enumerate() {
        let agent = RemoteAgent {
            client: bearer_client(&user.access_token)?,
            lease_url: target.url_on(n, &format!("/api/agents/{id}/lease")),
            base: target.url_on(n, ""),
            max_tasks: args.max_tasks,
            wait_secs: args.wait_secs,
            total: args.tasks,
            progress: progress.clone(),
        };
        agents.push(tokio::spawn(stop_all_on_error(
            agent.run(),
            progress.all_done.clone(),
        )));
    }
    let mut creators = Vec::with_capacity(args.creators);
    for n in 0..args.creators {
        let creator = Creator {
            client: creator_client.clone(),
            url: target.url_on(n, "/api/tasks"),
            rate: args.rate,
            progress: progress.clone(),
        };
        creators.push(tokio::spawn(stop_all_on_error(
            creator.run(),
            progress.all_done.clone(),
        )));
    }

    let mut create = latency_histogram()?;
    for creator in creators {
        create.add(creator.await??.latency)?;
    }
    let mut report = Report {
        tasks: args.tasks,
        create,
        dispatch: latency_histogram()?,
        complete: latency_histogram()?,
        create_secs: 0.0,
        lifecycle_secs: 0.0,
        lease_calls: 0,
        empty_leases: 0,
        leased: 0,
    };
    for agent in agents {
        let stats = agent.await??;
        report.dispatch.add(stats.dispatch)?;
        report.complete.add(stats.complete)?;
        report.lease_calls += stats.lease_calls;
        report.empty_leases += stats.empty_leases;
        report.leased += stats.leased;
    }
    if progress.completed.load(Ordering::Acquire) < args.tasks {
        anyhow::bail!("the run stopped before every task was complete");
    }
    let first_sent = progress
        .sent_at
        .first()
        .map_or(0, |at| at.load(Ordering::Acquire).saturating_sub(1));
    let seconds = |until: &AtomicU64| {
        until.load(Ordering::Acquire).saturating_sub(first_sent) as f64 / 1_000_000.0
    };
    report.create_secs = seconds(&progress.last_created);
    report.lifecycle_secs = seconds(&progress.last_completed);
    Ok(report)
}

/// Runs `work`; should it fail, tells every other creator and agent to stop.
async fn stop_all_on_error<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
    all_done: CancellationToken,
) -> anyhow::Result<T> {
    let result = work.await;
    if result.is_err() {
        all_done.cancel();
    }
    result
}

struct Creator {
    client: reqwest::Client,
    url: String,
    rate: Option<f64>,
    progress: Arc<Progress>,
}

impl Creator {
    async fn run(self) -> anyhow::Result<CreatorStats> {
        let mut latency = latency_histogram()?;
        loop {
            let n = self.progress.next.fetch_add(1, Ordering::Relaxed);
            let Some(sent_at) = self.progress.sent_at.get(n as usize) else {
                break;
            };
            if let Some(rate) = self.rate {
                let due = self.progress.started + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            sent_at.store(self.progress.now() + 1, Ordering::Release);
            let sent = Instant::now();
            let create = self
                .client
                .post(&self.url)
                .json(&json!({"capability": CAPABILITY, "input": {"n": n}}))
                .send();
            let response = tokio::select! {
                () = self.progress.all_done.cancelled() => break,
                response = create => response.context("POST /api/tasks")?,
            };
            expect_status(response, StatusCode::CREATED, "POST /api/tasks").await?;
            latency.saturating_record(micros(sent.elapsed()));
            self.progress
                .last_created
                .fetch_max(self.progress.now(), Ordering::AcqRel);
        }
        Ok(CreatorStats { latency })
    }
}

/// A remote agent over HTTP: long-polls for up to `max_tasks`, reports them all done
/// (concurrently), and polls again until every task of the run is complete.
struct RemoteAgent {
    client: reqwest::Client,
    lease_url: String,
    base: String,
    max_tasks: u32,
    wait_secs: u32,
    total: u64,
    progress: Arc<Progress>,
}

impl RemoteAgent {
    async fn run(self) -> anyhow::Result<AgentStats> {
        let mut stats = AgentStats {
            dispatch: latency_histogram()?,
            complete: latency_histogram()?,
            lease_calls: 0,
            empty_leases: 0,
            leased: 0,
        };
        let done = self.progress.all_done.clone();
        loop {
            let poll = self
                .client
                .post(&self.lease_url)
                .json(&json!({"max_tasks": self.max_tasks, "wait_secs": self.wait_secs}))
                .send();
            let response = tokio::select! {
                () = done.cancelled() => break,
                response = poll => response.context("POST /api/agents/{id}/lease")?,
            };
            let answer: Value = expect_status(response, StatusCode::OK, "lease")
                .await?
                .json()
                .await?;
            let received = self.progress.now();
            stats.lease_calls += 1;
            let tasks = answer["tasks"].as_array().cloned().unwrap_or_default();
            if tasks.is_empty() {
                stats.empty_leases += 1;
                continue;
            }
            stats.leased += tasks.len() as u64;
            for task in &tasks {
                let sent = task["input"]["n"]
                    .as_u64()
                    .and_then(|n| self.progress.sent_at.get(n as usize))
                    .map_or(0, |at| at.load(Ordering::Acquire));
                if sent > 0 {
                    stats
                        .dispatch
                        .saturating_record(received.saturating_sub(sent - 1).max(1));
                }
            }
            let reports = tasks.iter().map(|task| self.complete(task));
            for latency in futures::future::try_join_all(reports).await? {
                stats.complete.saturating_record(latency);
            }
        }
        Ok(stats)
    }

    /// Reports `task` succeeded; the answer's latency in microseconds.
    async fn complete(&self, task: &Value) -> anyhow::Result<u64> {
        let id = task["id"].as_str().context("a leased task has no id")?;
        let lease_id = task["lease_id"]
            .as_str()
            .context("a leased task has no lease_id")?;
        let sent = Instant::now();
        let response = self
            .client
            .patch(format!("{}/api/tasks/{id}", self.base))
            .json(&json!({
                "status": "succeeded",
                "lease_id": lease_id,
                "output": {"n": task["input"]["n"]},
            }))
            .send()
            .await
            .context("PATCH /api/tasks/{id}")?;
        expect_status(response, StatusCode::OK, "PATCH /api/tasks/{id}").await?;
        let latency = micros(sent.elapsed());
        self.progress
            .last_completed
            .fetch_max(self.progress.now(), Ordering::AcqRel);
        if self.progress.completed.fetch_add(1, Ordering::AcqRel) + 1 >= self.total {
            self.progress.all_done.cancel();
        }
        Ok(latency)
    }
}

impl Report {
    fn print(&self, args: &TasksArgs, nodes: usize) {
        let create_rate = self.tasks as f64 / self.create_secs.max(f64::MIN_POSITIVE);
        let lifecycle_rate = self.tasks as f64 / self.lifecycle_secs.max(f64::MIN_POSITIVE);
        let pacing = args.rate.map_or("as fast as they can".to_owned(), |rate| {
            format!("paced at {rate:.0}/s")
        });
        eprintln!(
            "({} tasks, {} creators {pacing}, {} agents asking for up to {} tasks, wait_secs {}, backend {}, {nodes} node{})",
            self.tasks,
            args.creators,
            args.agents,
            args.max_tasks,
            args.wait_secs,
            args.backend.store_name(),
            if nodes == 1 { "" } else { "s" },
        );
        eprintln!(
            "create:    {create_rate:.0}/s over {:.2} s; POST /api/tasks p50={:.2} p99={:.2} ms",
            self.create_secs,
            millis_at(&self.create, 0.50),
            millis_at(&self.create, 0.99),
        );
        eprintln!(
            "lifecycle: {lifecycle_rate:.0}/s over {:.2} s (create → lease → complete); PATCH p50={:.2} p99={:.2} ms",
            self.lifecycle_secs,
            millis_at(&self.complete, 0.50),
            millis_at(&self.complete, 0.99),
        );
        eprintln!(
            "dispatch:  create request sent → lease answer received p50={:.2} p99={:.2} max={:.2} ms",
            millis_at(&self.dispatch, 0.50),
            millis_at(&self.dispatch, 0.99),
            self.dispatch.max() as f64 / 1000.0,
        );
        let answered = self.lease_calls - self.empty_leases;
        eprintln!(
            "leases:    {} calls, {} empty, {:.1} tasks per non-empty answer",
            self.lease_calls,
            self.empty_leases,
            self.leased as f64 / answered.max(1) as f64,
        );
        println!(
            "tasks: {lifecycle_rate:.0} lifecycles/s create={create_rate:.0}/s dispatch_p50={:.2} dispatch_p99={:.2}",
            millis_at(&self.dispatch, 0.50),
            millis_at(&self.dispatch, 0.99),
        );
    }
}
