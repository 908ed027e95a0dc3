//! `chronicle bench workflows`: workflow runs driven end to end over real HTTP. Starters
//! `POST /api/workflows/{id}/execute` and wait for their run to end while remote agents,
//! each with its own HTTP client, long-poll `POST /api/agents/{id}/lease` (the path the
//! extension uses) and report every step task succeeded at once with `PATCH /api/tasks/{id}`.
//!
//! Two workflows, one after the other, `--runs` runs each with `--concurrency` in flight:
//! - **linear**: ten steps, `s0 → s1 → … → s9`;
//! - **fanout**: one root, ten steps that depend on it alone (`p0` … `p9`, run in
//!   parallel), and a `join` that depends on all ten: twelve steps.
//!
//! A run's throughput is measured from its phase's first execute sent to the last run's
//! final step (`s9`, `join`) reported.
//!
//! **Step overhead** is what the driver adds between steps: for every step that depends on
//! others, from the moment the `PATCH` that reported the last of its dependencies succeeded
//! has returned to its agent (the completion is committed) to the moment a lease answer
//! carrying the step's own task arrives at an agent (it was created, queued and leasable,
//! and a waiting agent got it). The lease round trip is therefore inside it, as it is for a
//! real agent; a next task that was leased before its dependency's `PATCH` answer got back
//! counts as 0. Every step task's input names its step, so an agent knows which it holds.
//!
//! `chronicle bench workflows --backend postgres --runs 200 --concurrency 8` starts its own
//! server (see [`super::bench_target`]); `--url http://host:port` measures a running one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::bench::BackendArg;
use super::bench_target::{
    bearer_client, expect_status, latency_histogram, micros, millis_at, until_interrupted, Target,
};
use crate::config::Settings;

const CAPABILITY: &str = "bench.step";

/// Steps of the linear workflow, and parallel steps of the fan-out.
const WIDTH: usize = 10;

#[derive(Args)]
pub struct WorkflowsArgs {
    /// The store of the server: the one started here, or the one checked at `--url`.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Runs of each workflow.
    #[arg(long, default_value_t = 200)]
    runs: u64,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Remote agents, each its own HTTP client long-polling for work.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Most tasks one lease call asks for; also each agent's `max_concurrency`.
    #[arg(long, default_value_t = 20)]
    max_tasks: u32,
    /// How long a lease call waits for work.
    #[arg(long, default_value_t = 5)]
    wait_secs: u32,
    /// A running server; without it one is started in this process on a fresh database.
    #[arg(long)]
    url: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Clone, Copy)]
enum Shape {
    Linear,
    Fanout,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Fanout => "fanout",
        }
    }

    fn definition(self) -> Value {
        let step = |id: String, depends_on: Vec<String>| {
            json!({"id": id, "capability": CAPABILITY, "depends_on": depends_on,
                   "input": {"step": id}})
        };
        let steps: Vec<Value> = match self {
            Self::Linear => (0..WIDTH)
                .map(|n| {
                    let after = (n > 0).then(|| format!("s{}", n - 1));
                    step(format!("s{n}"), after.into_iter().collect())
                })
                .collect(),
            Self::Fanout => std::iter::once(step("root".into(), vec![]))
                .chain((0..WIDTH).map(|n| step(format!("p{n}"), vec!["root".into()])))
                .chain(std::iter::once(step(
                    "join".into(),
                    (0..WIDTH).map(|n| format!("p{n}")).collect(),
                )))
                .collect(),
        };
        json!({"name": format!("bench {}", self.name()), "steps": steps})
    }
}

/// The steps `step` waits for, in either workflow (their step ids do not overlap).
fn dependencies(step: &str) -> Vec<String> {
    match step {
        "root" => vec![],
        "join" => (0..WIDTH).map(|n| format!("p{n}")).collect(),
        _ if step.starts_with('p') => vec!["root".into()],
        _ => match step.strip_prefix('s').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n > 0 => vec![format!("s{}", n - 1)],
            _ => vec![],
        },
    }
}

fn is_final(step: &str) -> bool {
    step == "join" || step == format!("s{}", WIDTH - 1)
}

/// What happened to one run, in microseconds after the benchmark's start.
#[derive(Default)]
struct RunTrack {
    /// When each step's task was leased (the lease answer arrived).
    leased: HashMap<String, u64>,
    /// When each step's success report was answered.
    done: HashMap<String, u64>,
    /// Fired once the final step is reported; its starter waits on it.
    finished: Arc<Notify>,
}

struct Progress {
    started: Instant,
    runs: Mutex<HashMap<String, RunTrack>>,
    all_done: CancellationToken,
}

impl Progress {
    fn now(&self) -> u64 {
        micros(self.started.elapsed())
    }

    fn track<T>(&self, run_id: &str, f: impl FnOnce(&mut RunTrack) -> T) -> T {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        f(runs.entry(run_id.to_owned()).or_default())
    }
}

struct Phase {
    shape: Shape,
    runs: Vec<String>,
    secs: f64,
    start: Histogram<u64>,
}

pub async fn run(args: WorkflowsArgs, settings: Settings) -> anyhow::Result<()> {
    if args.agents == 0 || args.concurrency == 0 || args.runs == 0 || args.max_tasks == 0 {
        anyhow::bail!("--agents, --concurrency, --runs and --max-tasks must be at least 1");
    }
    let target = Target::open(&settings, args.backend, args.url.as_deref()).await?;
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
    measured
}

async fn measure(target: &Target, args: &WorkflowsArgs) -> anyhow::Result<()> {
    let user = target.sign_up().await?;
    let client = bearer_client(&user.access_token)?;
    let progress = Arc::new(Progress {
        started: Instant::now(),
        runs: Mutex::default(),
        all_done: CancellationToken::new(),
    });
    let mut agents = Vec::with_capacity(args.agents);
    for n in 0..args.agents {
        let response = client
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
        let id = agent["id"]
            .as_str()
            .context("the registration answer has no id")?;
        let agent = RemoteAgent {
            client: bearer_client(&user.access_token)?,
            lease_url: target.url(&format!("/api/agents/{id}/lease")),
            base: target.base.clone(),
            max_tasks: args.max_tasks,
            wait_secs: args.wait_secs,
            progress: progress.clone(),
        };
        agents.push(tokio::spawn(agent.run()));
    }

    let phases = async {
        let mut phases = Vec::new();
        for shape in [Shape::Linear, Shape::Fanout] {
            phases.push(run_phase(target, &client, &progress, args, shape).await?);
        }
        anyhow::Ok(phases)
    }
    .await;
    progress.all_done.cancel();
    for agent in agents {
        agent.await??;
    }
    let phases = phases?;
    for phase in &phases {
        for run_id in &phase.runs {
            wait_succeeded(target, &client, run_id).await?;
        }
    }
    report(&progress, &phases, args)
}

/// Runs `args.runs` runs of `shape`, `args.concurrency` at a time.
async fn run_phase(
    target: &Target,
    client: &reqwest::Client,
    progress: &Arc<Progress>,
    args: &WorkflowsArgs,
    shape: Shape,
) -> anyhow::Result<Phase> {
    let response = client
        .post(target.url("/api/workflows"))
        .json(&shape.definition())
        .send()
        .await
        .context("POST /api/workflows")?;
    let workflow: Value = expect_status(response, StatusCode::CREATED, "POST /api/workflows")
        .await?
        .json()
        .await?;
    let id = workflow["id"]
        .as_str()
        .context("the workflow answer has no id")?;
    let execute_url = target.url(&format!("/api/workflows/{id}/execute"));
    let next = Arc::new(AtomicU64::new(0));
    let phase_started = Instant::now();
    let mut starters = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (client, url, next, progress) = (
            client.clone(),
            execute_url.clone(),
            next.clone(),
            progress.clone(),
        );
        let runs = args.runs;
        starters.push(tokio::spawn(async move {
            let mut started = Vec::new();
            let mut start = latency_histogram()?;
            while next.fetch_add(1, Ordering::Relaxed) < runs {
                let sent = progress.now();
                let response = client
                    .post(&url)
                    .json(&json!({"params": {}}))
                    .send()
                    .await
                    .context("POST /api/workflows/{id}/execute")?;
                let run: Value = expect_status(response, StatusCode::ACCEPTED, "execute")
                    .await?
                    .json()
                    .await?;
                let run_id = run["id"]
                    .as_str()
                    .context("the run answer has no id")?
                    .to_owned();
                let finished = progress.track(&run_id, |track| track.finished.clone());
                tokio::select! {
                    () = finished.notified() => {}
                    () = progress.all_done.cancelled() => anyhow::bail!("the agents stopped"),
                }
                let first = if matches!(shape, Shape::Linear) {
                    "s0"
                } else {
                    "root"
                };
                if let Some(leased) = progress.track(&run_id, |t| t.leased.get(first).copied()) {
                    start.saturating_record(leased.saturating_sub(sent).max(1));
                }
                started.push(run_id);
            }
            anyhow::Ok((started, start))
        }));
    }
    let mut runs = Vec::new();
    let mut start = latency_histogram()?;
    for starter in starters {
        let (started, latencies) = starter.await??;
        runs.extend(started);
        start.add(latencies)?;
    }
    Ok(Phase {
        shape,
        runs,
        secs: phase_started.elapsed().as_secs_f64(),
        start,
    })
}

/// Waits until the run has ended, and fails unless it succeeded.
async fn wait_succeeded(
    target: &Target,
    client: &reqwest::Client,
    run_id: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = client
            .get(target.url(&format!("/api/workflow-runs/{run_id}")))
            .send()
            .await
            .context("GET /api/workflow-runs/{id}")?;
        let run: Value = expect_status(response, StatusCode::OK, "GET /api/workflow-runs/{id}")
            .await?
            .json()
            .await?;
        match run["status"].as_str() {
            Some("succeeded") => return Ok(()),
            Some("running") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => anyhow::bail!("run {run_id} did not succeed: {run}"),
        }
    }
}

/// A remote agent over HTTP: long-polls for up to `max_tasks`, reports them all succeeded
/// (concurrently), and polls again until the benchmark is over.
struct RemoteAgent {
    client: reqwest::Client,
    lease_url: String,
    base: String,
    max_tasks: u32,
    wait_secs: u32,
    progress: Arc<Progress>,
}

impl RemoteAgent {
    async fn run(self) -> anyhow::Result<()> {
        let done = self.progress.all_done.clone();
        let result = async {
            loop {
                let poll = self
                    .client
                    .post(&self.lease_url)
                    .json(&json!({"max_tasks": self.max_tasks, "wait_secs": self.wait_secs}))
                    .send();
                let response = tokio::select! {
                    () = done.cancelled() => return Ok(()),
                    response = poll => response.context("POST /api/agents/{id}/lease")?,
                };
                let answer: Value = expect_status(response, StatusCode::OK, "lease")
                    .await?
                    .json()
                    .await?;
                let received = self.progress.now();
                let tasks = answer["tasks"].as_array().cloned().unwrap_or_default();
                for task in &tasks {
                    let (run_id, step) = task_step(task)?;
                    self.progress.track(run_id, |track| {
                        track.leased.insert(step.to_owned(), received);
                    });
                }
                futures::future::try_join_all(tasks.iter().map(|task| self.complete(task))).await?;
            }
        }
        .await;
        if result.is_err() {
            done.cancel();
        }
        result
    }

    /// Reports `task` succeeded and records when the answer came.
    async fn complete(&self, task: &Value) -> anyhow::Result<()> {
        let (run_id, step) = task_step(task)?;
        let id = task["id"].as_str().context("a leased task has no id")?;
        let lease_id = task["lease_id"]
            .as_str()
            .context("a leased task has no lease_id")?;
        let response = self
            .client
            .patch(format!("{}/api/tasks/{id}", self.base))
            .json(&json!({"status": "succeeded", "lease_id": lease_id, "output": {"step": step}}))
            .send()
            .await
            .context("PATCH /api/tasks/{id}")?;
        expect_status(response, StatusCode::OK, "PATCH /api/tasks/{id}").await?;
        let answered = self.progress.now();
        let finished = self.progress.track(run_id, |track| {
            track.done.insert(step.to_owned(), answered);
            is_final(step).then(|| track.finished.clone())
        });
        if let Some(finished) = finished {
            finished.notify_one();
        }
        Ok(())
    }
}

/// The run and the step a leased task belongs to.
fn task_step(task: &Value) -> anyhow::Result<(&str, &str)> {
    let run_id = task["workflow_run_id"]
        .as_str()
        .context("a leased task has no workflow_run_id")?;
    let step = task["input"]["step"]
        .as_str()
        .context("a leased task's input names no step")?;
    Ok((run_id, step))
}

/// Step overheads of `runs` (see the module comment), in microseconds.
fn step_overheads(progress: &Progress, runs: &[String]) -> anyhow::Result<Histogram<u64>> {
    let mut overheads = latency_histogram()?;
    let tracks = progress.runs.lock().unwrap_or_else(PoisonError::into_inner);
    for run_id in runs {
        let Some(track) = tracks.get(run_id) else {
            continue;
        };
        for (step, leased) in &track.leased {
            let dependencies = dependencies(step);
            let last_done = dependencies
                .iter()
                .map(|dependency| track.done.get(dependency).copied())
                .collect::<Option<Vec<_>>>()
                .and_then(|done| done.into_iter().max());
            if let Some(last_done) = last_done {
                overheads.saturating_record(leased.saturating_sub(last_done).max(1));
            }
        }
    }
    Ok(overheads)
}

fn report(progress: &Progress, phases: &[Phase], args: &WorkflowsArgs) -> anyhow::Result<()> {
    eprintln!(
        "({} runs of each workflow, {} in flight, {} agents asking for up to {} tasks, wait_secs {}, backend {})",
        args.runs,
        args.concurrency,
        args.agents,
        args.max_tasks,
        args.wait_secs,
        args.backend.store_name(),
    );
    let mut all = latency_histogram()?;
    let mut rates = Vec::new();
    for phase in phases {
        let overheads = step_overheads(progress, &phase.runs)?;
        let rate = phase.runs.len() as f64 / phase.secs.max(f64::MIN_POSITIVE);
        eprintln!(
            "{:<7} {rate:.1} runs/s over {:.2} s; execute → first lease p50={:.2} p99={:.2} ms; \
             step overhead ({} steps) p50={:.2} p99={:.2} max={:.2} ms",
            phase.shape.name(),
            phase.secs,
            millis_at(&phase.start, 0.50),
            millis_at(&phase.start, 0.99),
            overheads.len(),
            millis_at(&overheads, 0.50),
            millis_at(&overheads, 0.99),
            overheads.max() as f64 / 1000.0,
        );
        all.add(overheads)?;
        rates.push(rate);
    }
    let [linear, fanout] = rates[..] else {
        anyhow::bail!("both workflows should have run");
    };
    println!(
        "workflows: linear={linear:.1}/s fanout={fanout:.1}/s step_overhead_p50={:.2} step_overhead_p99={:.2}",
        millis_at(&all, 0.50),
        millis_at(&all, 0.99),
    );
    Ok(())
}
