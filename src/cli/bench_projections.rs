//! `chronicle bench projections`: how fast the read side rebuilds, and how far it lags.
//!
//! `chronicle bench projections --backend postgres --events 1000000` creates a throw-away
//! database (PostgreSQL: on the server of `CHRONICLE_DATABASE_URL`), seeds it in process
//! through the command bus with `--writers` concurrent writers and a realistic mix — task
//! lifecycles with a failed attempt and a retry (create, lease, fail, lease, complete),
//! agents registering and heartbeating, API keys issued and rotated — then:
//!
//! 1. **rebuild**: rebuilds every projection at once, each from the first event beside its
//!    live copy and switched in ([`ReadSide::rebuild`]); the figure is events in the feed
//!    per second of that wall time (each projection reads the whole feed);
//! 2. **lag**: runs the projections live and a `bench tasks`-like load (`--load-tasks`
//!    tasks at `--rate` a second, each created, leased and completed, the task view written
//!    inline after each commit as the server does), and measures for each created task the
//!    time from its commit until every projection's checkpoint has passed its event (polled
//!    every millisecond);
//! 3. **ws**: WebSocket delivery under a paced create load, from [`ws_delivery_p99_ms`].
//!
//! It ends with one line: `projections: rebuild=<N> events/s lag_p99=<ms> ws_p99=<ms>`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chronicle_aggregates::agent::{Agent, AgentCommand};
use chronicle_aggregates::api_key::{ApiKey, ApiKeyCommand};
use chronicle_aggregates::task::{Task, TaskCommand, TaskFailure};
use chronicle_commands::agent::RegisterAgentRequest;
use chronicle_commands::auth::NewApiKeyRequest;
use chronicle_commands::task::NewTaskRequest;
use chronicle_projections::FeedCursor;
use chrono::{TimeDelta, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::bench::BackendArg;
use super::bench_target::{
    bearer_client, expect_status, latency_histogram, micros, millis_at, Target, ThrowAwayDatabase,
};
use super::live_client::{delivery_ms, LiveClient, Received};
use crate::actor::Actor;
use crate::auth::keys;
use crate::bus::{CommandBus, CommandContext, CommandError};
use crate::config::Settings;
use crate::read_side::ReadSide;
use crate::store::{Store, StoreOptions};

#[derive(Args)]
pub struct ProjectionsArgs {
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Events to seed (about; the last lifecycles may overshoot a little).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Concurrent writers while seeding.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Tasks of the live load while the lag is measured.
    #[arg(long, default_value_t = 2_000)]
    load_tasks: u64,
    /// Tasks a second of the live load.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
}

pub async fn run(args: ProjectionsArgs, settings: Settings) -> anyhow::Result<()> {
    if args.events == 0 || args.writers == 0 || args.load_tasks == 0 {
        anyhow::bail!("--events, --writers and --load-tasks must be at least 1");
    }
    if !args.rate.is_finite() || args.rate <= 0.0 {
        anyhow::bail!("--rate must be above 0");
    }
    let dir = tempfile::tempdir()?;
    let (url, database) = ThrowAwayDatabase::create(&settings, args.backend, dir.path()).await?;
    let measured = super::bench_target::until_interrupted(measure(&args, &settings, &url)).await;
    database.drop_now().await;
    let (rebuild_rate, lag_p99) = measured?;
    let ws_p99 =
        super::bench_target::until_interrupted(ws_delivery_p99_ms(&args, &settings)).await?;
    println!(
        "projections: rebuild={rebuild_rate:.0} events/s lag_p99={lag_p99:.1} ws_p99={ws_p99:.1}"
    );
    Ok(())
}

/// WebSocket delivery p99 in ms: a server on a throw-away database, one client subscribed
/// to `mine` on `/api/ws`, and `--load-tasks` tasks created over HTTP at `--rate` a second
/// by 8 creators; for each `TaskCreated` the time from its `recorded_at` (set just before
/// the commit) to its arrival at the client.
async fn ws_delivery_p99_ms(args: &ProjectionsArgs, settings: &Settings) -> anyhow::Result<f64> {
    let target = Target::open(settings, args.backend, None).await?;
    let measured = ws_delivery(&target, args).await;
    target.close().await?;
    measured
}

async fn ws_delivery(target: &Target, args: &ProjectionsArgs) -> anyhow::Result<f64> {
    const CREATORS: u64 = 8;
    let user = target.sign_up().await?;
    let mut client = LiveClient::connect(&target.base, &user.access_token, None).await?;
    client
        .subscribe(&["mine"], None, Duration::from_secs(10))
        .await?;
    let creator = bearer_client(&user.access_token)?;
    let every = Duration::from_secs_f64(CREATORS as f64 / args.rate);
    let creators: Vec<_> = (0..CREATORS)
        .map(|n| {
            let (client, url) = (creator.clone(), target.url("/api/tasks"));
            let count = args.load_tasks / CREATORS + u64::from(n < args.load_tasks % CREATORS);
            tokio::spawn(async move {
                let mut pace = tokio::time::interval(every);
                for _ in 0..count {
                    pace.tick().await;
                    let response = client
                        .post(&url)
                        .json(&json!({"capability": "bench.ws", "input": {}}))
                        .send()
                        .await?;
                    expect_status(response, reqwest::StatusCode::CREATED, "POST /api/tasks")
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let mut histogram = latency_histogram()?;
    while histogram.len() < args.load_tasks {
        match client.next(Duration::from_secs(30)).await? {
            Received::Event {
                event, received_at, ..
            } if event["event_type"] == "TaskCreated" => {
                let ms = delivery_ms(&event, received_at)
                    .ok_or_else(|| anyhow::anyhow!("an event without recorded_at: {event}"))?;
                histogram.record((ms * 1000.0).max(1.0) as u64)?;
            }
            Received::Closed(close) => anyhow::bail!("the server closed the socket: {close:?}"),
            _ => {}
        }
    }
    for creator in creators {
        creator.await??;
    }
    Ok(millis_at(&histogram, 0.99))
}

async fn measure(
    args: &ProjectionsArgs,
    settings: &Settings,
    url: &str,
) -> anyhow::Result<(f64, f64)> {
    let options = StoreOptions {
        max_connections: settings.store.max_connections,
        ..StoreOptions::default()
    };
    let store = Store::connect(url, options).await?;
    store.migrate().await?;
    let started = Instant::now();
    let seeded = seed(&store, args.writers, args.events).await?;
    eprintln!(
        "(seeded {seeded} events in {:.1}s, {} writers, backend {})",
        started.elapsed().as_secs_f64(),
        args.writers,
        store.backend_name()
    );
    let started = Instant::now();
    let read = ReadSide::start(&store)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the projections: {e}"))?;
    eprintln!(
        "(built the projections at start-up in {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    let (in_feed, _) = store.lag_after(FeedCursor::default()).await?;
    let started = Instant::now();
    let rebuilds = read
        .projection_names()
        .into_iter()
        .map(|name| {
            let read = read.clone();
            tokio::spawn(async move { read.rebuild(name, &|_, _| {}).await })
        })
        .collect::<Vec<_>>();
    for rebuild in rebuilds {
        let report = rebuild.await??;
        eprintln!(
            "({}: {} events in {:.2}s)",
            report.name,
            report.applied,
            report.elapsed.as_secs_f64()
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rebuild_rate = in_feed as f64 / elapsed;
    eprintln!("(rebuilt every projection over {in_feed} events in {elapsed:.2}s)");
    let lag = measure_lag(&store, &read, args.load_tasks, args.rate).await?;
    Ok((rebuild_rate, millis_at(&lag, 0.99)))
}

fn task_spec(max_attempts: u32) -> anyhow::Result<chronicle_commands::task::TaskSpec> {
    serde_json::from_value::<NewTaskRequest>(json!({
        "capability": "bench.work",
        "input": {"url": "https://example.com/", "note": "benchmark"},
        "max_attempts": max_attempts,
        "tags": ["bench"],
    }))?
    .validate()
    .map_err(|e| anyhow::anyhow!("bench task: {e}"))
}

fn context(actor: &Actor, correlation: Uuid) -> CommandContext {
    CommandContext {
        actor: actor.to_string(),
        correlation_id: correlation.to_string(),
        ..CommandContext::default()
    }
}

/// One task's lifecycle with a failed attempt and a retry: five events.
async fn lifecycle(
    bus: &CommandBus,
    actor: &Actor,
    agent_id: Uuid,
    spec: &chronicle_commands::task::TaskSpec,
) -> anyhow::Result<Uuid> {
    let task_id = Uuid::now_v7();
    let id = task_id.to_string();
    let context = context(actor, task_id);
    let now = Utc::now();
    // The retry's backoff has passed by `later`.
    let later = now + TimeDelta::hours(1);
    bus.create::<Task, CommandError<_>>(&id, &context, |_| {
        Ok(TaskCommand::CreateTask {
            task_id,
            owner_id: actor.id,
            spec: spec.clone(),
            workflow_run_id: None,
            at: now,
        })
    })
    .await?;
    let first = Uuid::now_v7();
    let steps = [
        TaskCommand::LeaseTask {
            agent_id,
            lease_id: first,
            at: now,
        },
        TaskCommand::FailTask {
            lease_id: first,
            error: TaskFailure {
                message: "bench failure".into(),
                code: None,
                details: None,
            },
            permanent: false,
            jitter: 0.0,
            at: now,
        },
    ];
    let second = Uuid::now_v7();
    let retry = [
        TaskCommand::LeaseTask {
            agent_id,
            lease_id: second,
            at: later,
        },
        TaskCommand::CompleteTask {
            lease_id: second,
            output: json!({"ok": true}),
            at: later,
        },
    ];
    for command in steps.into_iter().chain(retry) {
        bus.execute::<Task, CommandError<_>>(&id, &context, None, |_| Ok(command.clone()))
            .await?;
    }
    Ok(task_id)
}

async fn register_agent(bus: &CommandBus, actor: &Actor) -> anyhow::Result<Uuid> {
    let agent_id = Uuid::now_v7();
    let spec = serde_json::from_value::<RegisterAgentRequest>(json!({
        "name": "bench agent",
        "kind": "remote",
        "capabilities": ["bench.work"],
        "max_concurrency": 100,
    }))?
    .validate()
    .map_err(|e| anyhow::anyhow!("bench agent: {e}"))?;
    bus.create::<Agent, CommandError<_>>(&agent_id.to_string(), &context(actor, agent_id), |_| {
        Ok(AgentCommand::RegisterAgent {
            agent_id,
            owner_id: actor.id,
            spec: spec.clone(),
            at: Utc::now(),
        })
    })
    .await?;
    Ok(agent_id)
}

async fn heartbeat(bus: &CommandBus, actor: &Actor, agent_id: Uuid) -> anyhow::Result<()> {
    bus.execute::<Agent, CommandError<_>>(
        &agent_id.to_string(),
        &context(actor, agent_id),
        None,
        |_| {
            Ok(AgentCommand::RecordHeartbeat {
                at: Utc::now(),
                resolution: TimeDelta::zero(),
            })
        },
    )
    .await?;
    Ok(())
}

/// Issues a key and rotates it: two events.
async fn key_pair(bus: &CommandBus, actor: &Actor, hmac: &[u8; 32]) -> anyhow::Result<()> {
    let key_id = Uuid::now_v7();
    let id = key_id.to_string();
    let context = context(actor, key_id);
    let request = serde_json::from_value::<NewApiKeyRequest>(json!({"name": "bench key"}))?
        .validate()
        .map_err(|e| anyhow::anyhow!("bench key: {e}"))?;
    let issued = keys::generate(hmac, key_id).map_err(|e| anyhow::anyhow!(e))?;
    bus.create::<ApiKey, CommandError<_>>(&id, &context, |_| {
        Ok(ApiKeyCommand::IssueApiKey {
            key_id,
            owner_id: actor.id,
            name: request.name.clone(),
            prefix: issued.prefix.clone(),
            secret_hash: issued.secret_hash.clone(),
            expires_at: None,
            at: Utc::now(),
        })
    })
    .await?;
    let rotated = keys::generate(hmac, key_id).map_err(|e| anyhow::anyhow!(e))?;
    bus.execute::<ApiKey, CommandError<_>>(&id, &context, None, |_| {
        Ok(ApiKeyCommand::RotateApiKey {
            prefix: rotated.prefix.clone(),
            secret_hash: rotated.secret_hash.clone(),
            at: Utc::now(),
        })
    })
    .await?;
    Ok(())
}

/// Seeds about `events` events with `writers` concurrent writers; returns how many.
async fn seed(store: &Store, writers: usize, events: u64) -> anyhow::Result<u64> {
    let bus = CommandBus::new(store.clone());
    let written = Arc::new(AtomicU64::new(0));
    let hmac: [u8; 32] = rand::random();
    let spec = task_spec(3)?;
    let mut handles = Vec::with_capacity(writers);
    for _ in 0..writers {
        let bus = bus.clone();
        let written = written.clone();
        let spec = spec.clone();
        handles.push(tokio::spawn(async move {
            let actor = Actor::user(Uuid::now_v7(), []);
            let agent_id = register_agent(&bus, &actor).await?;
            written.fetch_add(1, Ordering::Relaxed);
            let mut round = 0u64;
            while written.load(Ordering::Relaxed) < events {
                lifecycle(&bus, &actor, agent_id, &spec).await?;
                let mut count = 5;
                if round % 10 == 0 {
                    heartbeat(&bus, &actor, agent_id).await?;
                    count += 1;
                }
                if round % 20 == 5 {
                    register_agent(&bus, &actor).await?;
                    key_pair(&bus, &actor, &hmac).await?;
                    count += 3;
                }
                written.fetch_add(count, Ordering::Relaxed);
                round += 1;
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(written.load(Ordering::Relaxed))
}

/// Commit → every projection's checkpoint past the task's first event, in µs.
async fn measure_lag(
    store: &Store,
    read: &ReadSide,
    tasks: u64,
    rate: f64,
) -> anyhow::Result<Histogram<u64>> {
    let stop = CancellationToken::new();
    let (projectors, background) = read.spawn(&stop);
    let pending: Arc<Mutex<VecDeque<(Instant, FeedCursor)>>> = Arc::default();
    let done = CancellationToken::new();
    let checker = {
        let read = read.clone();
        let pending = pending.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut lags = latency_histogram()?;
            loop {
                let slowest = read
                    .checkpoints()
                    .await?
                    .into_iter()
                    .map(|(_, cursor)| cursor)
                    .min()
                    .unwrap_or_default();
                let now = Instant::now();
                {
                    let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                    // Not in feed order on PostgreSQL: look at every entry.
                    pending.retain(|(committed, cursor)| {
                        if *cursor <= slowest {
                            let _ = lags.record(micros(now - *committed));
                            false
                        } else {
                            true
                        }
                    });
                    if done.is_cancelled() && pending.is_empty() {
                        return anyhow::Ok(lags);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let bus = CommandBus::new(store.clone());
    let actor = Actor::user(Uuid::now_v7(), []);
    let agent_id = register_agent(&bus, &actor).await?;
    let spec = task_spec(1)?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut load = Vec::new();
    for n in 0..tasks {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let bus = bus.clone();
        let actor = actor.clone();
        let spec = spec.clone();
        let pending = pending.clone();
        let read = read.clone();
        let store = store.clone();
        load.push(tokio::spawn(async move {
            let task_id = Uuid::now_v7();
            let id = task_id.to_string();
            let context = context(&actor, task_id);
            let at = Utc::now();
            let created = bus
                .create::<Task, CommandError<_>>(&id, &context, |_| {
                    Ok(TaskCommand::CreateTask {
                        task_id,
                        owner_id: actor.id,
                        spec: spec.clone(),
                        workflow_run_id: None,
                        at,
                    })
                })
                .await?;
            let committed = Instant::now();
            // As the server does: the task view written inline, the projections woken.
            read.task_committed(&created.aggregate, created.version)
                .await;
            let first = store
                .history("task", &id)
                .await?
                .first()
                .map(|event| event.cursor())
                .ok_or_else(|| anyhow::anyhow!("task {id} has no events"))?;
            pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back((committed, first));
            let lease_id = Uuid::now_v7();
            for command in [
                TaskCommand::LeaseTask {
                    agent_id,
                    lease_id,
                    at: Utc::now(),
                },
                TaskCommand::CompleteTask {
                    lease_id,
                    output: json!({"ok": true}),
                    at: Utc::now(),
                },
            ] {
                let done = bus
                    .execute::<Task, CommandError<_>>(&id, &context, None, |_| Ok(command.clone()))
                    .await?;
                read.task_committed(&done.aggregate, done.version).await;
            }
            anyhow::Ok(())
        }));
    }
    for task in load {
        task.await??;
    }
    done.cancel();
    let lags = tokio::time::timeout(Duration::from_secs(120), checker).await???;
    stop.cancel();
    for projector in projectors {
        let _ = projector.await;
    }
    for handle in background {
        handle.abort();
    }
    Ok(lags)
}
