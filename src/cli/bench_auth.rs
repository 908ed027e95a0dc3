//! `chronicle bench auth`: what authentication costs. In one run, against one server, the
//! same closed loop of `--concurrency` clients sends `--requests` requests to each of
//! - `GET /api/health`, unauthenticated (the floor: routing, middleware, JSON);
//! - `GET /api/tasks/{id}` with an access JWT (HS256 check, then the task's load);
//! - `GET /api/tasks/{id}` with an API key (the key's and its owner's loads, the HMAC
//!   check, then the task's load);
//!
//! and reports each one's req/s and latency, and the cost ratios `health req/s ÷ req/s`.
//!
//! `chronicle bench auth --backend postgres --requests 20000 --concurrency 32` starts its
//! own server (see [`super::bench_target`]); `--url` measures a running one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::bench::BackendArg;
use super::bench_target::{
    bearer_client, expect_status, latency_histogram, micros, millis_at, until_interrupted, Target,
};
use crate::config::Settings;

#[derive(Args)]
pub struct AuthArgs {
    /// The store of the server: the one started here, or the one checked at `--url`.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Measured requests per kind (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// A running server; without it one is started in this process on a fresh database.
    #[arg(long)]
    url: Option<String>,
}

pub async fn run(args: AuthArgs, settings: Settings) -> anyhow::Result<()> {
    if args.requests == 0 || args.concurrency == 0 {
        anyhow::bail!("--requests and --concurrency must be at least 1");
    }
    let target = Target::open(&settings, args.backend, args.url.as_deref()).await?;
    let measured = until_interrupted(measure(&target, &args)).await;
    target.close().await?;
    let [health, jwt, api_key] = measured?;
    eprintln!(
        "({} requests each after a warm-up, {} in flight, backend {})",
        args.requests,
        args.concurrency,
        args.backend.store_name()
    );
    for run in [&health, &jwt, &api_key] {
        eprintln!(
            "{:<8} {:>8.0} req/s p50={:.2} p99={:.2} ms",
            run.name,
            run.rate(),
            millis_at(&run.latency, 0.50),
            millis_at(&run.latency, 0.99),
        );
    }
    let jwt_ratio = health.rate() / jwt.rate();
    let api_key_ratio = health.rate() / api_key.rate();
    eprintln!(
        "cost relative to /api/health (health req/s ÷ req/s): jwt {jwt_ratio:.2}×, api_key {api_key_ratio:.2}×"
    );
    println!(
        "auth: health={:.0}/s jwt={:.0}/s api_key={:.0}/s jwt_ratio={jwt_ratio:.2} api_key_ratio={api_key_ratio:.2}",
        health.rate(),
        jwt.rate(),
        api_key.rate(),
    );
    Ok(())
}

/// One kind of request, measured.
struct Measured {
    name: &'static str,
    latency: Histogram<u64>,
    elapsed: Duration,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.latency.len() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

async fn measure(target: &Target, args: &AuthArgs) -> anyhow::Result<[Measured; 3]> {
    let user = target.sign_up().await?;
    let with_jwt = bearer_client(&user.access_token)?;
    let response = with_jwt
        .post(target.url("/api/users/me/api-keys"))
        .json(&json!({"name": "bench auth"}))
        .send()
        .await
        .context("POST /api/users/me/api-keys")?;
    let key: Value = expect_status(response, StatusCode::CREATED, "API key creation")
        .await?
        .json()
        .await?;
    let with_key = bearer_client(key["key"].as_str().context("no key in the answer")?)?;
    let response = with_jwt
        .post(target.url("/api/tasks"))
        .json(&json!({"capability": "bench.auth", "input": {"n": 0}}))
        .send()
        .await
        .context("POST /api/tasks")?;
    let task: Value = expect_status(response, StatusCode::CREATED, "task creation")
        .await?
        .json()
        .await?;
    let task_url = target.url(&format!(
        "/api/tasks/{}",
        task["id"].as_str().context("no id in the answer")?
    ));
    let health = closed_loop(
        "health",
        reqwest::Client::new(),
        target.url("/api/health"),
        args,
    )
    .await?;
    let jwt = closed_loop("jwt", with_jwt, task_url.clone(), args).await?;
    let api_key = closed_loop("api_key", with_key, task_url, args).await?;
    Ok([health, jwt, api_key])
}

/// A warm-up, then `requests` GETs of `url` with `concurrency` in flight; each must be 200.
async fn closed_loop(
    name: &'static str,
    client: reqwest::Client,
    url: String,
    args: &AuthArgs,
) -> anyhow::Result<Measured> {
    let warm_up = (args.requests / 10).max(args.concurrency as u64);
    drive(&client, &url, warm_up, args.concurrency).await?;
    let started = Instant::now();
    let latency = drive(&client, &url, args.requests, args.concurrency).await?;
    Ok(Measured {
        name,
        latency,
        elapsed: started.elapsed(),
    })
}

async fn drive(
    client: &reqwest::Client,
    url: &str,
    requests: u64,
    concurrency: usize,
) -> anyhow::Result<Histogram<u64>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = latency_histogram()?;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let sent = Instant::now();
                let response = client
                    .get(&url)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let response =
                    expect_status(response, StatusCode::OK, &format!("GET {url}")).await?;
                response.bytes().await?;
                latency.saturating_record(micros(sent.elapsed()));
            }
            anyhow::Ok(latency)
        }));
    }
    let mut latency = latency_histogram()?;
    for worker in workers {
        latency.add(worker.await??)?;
    }
    Ok(latency)
}
