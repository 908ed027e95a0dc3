//! The server an HTTP benchmark talks to: the one at `--url`, or one started in this
//! process on 127.0.0.1:0 against a throw-away database (a fresh PostgreSQL database that is
//! dropped afterwards, or a SQLite file in a temporary directory), with the rate limit
//! raised so that it does not throttle the benchmark. `bench tasks --nodes N` starts N
//! servers on one PostgreSQL database instead: each its own data dir, pools, projections and
//! dispatch state, nothing shared but the database and the JWT secret (as nodes of one
//! cluster share it).

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::bench::BackendArg;
use crate::app::Application;
use crate::config::Settings;

/// Requests a minute per user (and per IP) on a server the benchmark starts: never the
/// limiting factor.
const UNTHROTTLED: u32 = 1_000_000_000;

/// The server (or the nodes of one cluster) to benchmark, and how to get rid of them
/// afterwards.
pub struct Target {
    /// `http://host:port` of the first node, without a trailing slash.
    pub base: String,
    /// Every node's `http://host:port`; `nodes[0] == base`.
    pub nodes: Vec<String>,
    own: Option<OwnServers>,
}

struct OwnServers {
    nodes: Vec<OwnNode>,
    database: ThrowAwayDatabase,
    /// The SQLite file and the nodes' data dirs live here.
    _dir: tempfile::TempDir,
}

struct OwnNode {
    stop: oneshot::Sender<()>,
    serving: JoinHandle<anyhow::Result<()>>,
}

pub(crate) enum ThrowAwayDatabase {
    Postgres { admin_url: String, name: String },
    Sqlite,
}

/// A registered user as a benchmark client sees it.
pub struct SignedUp {
    pub access_token: String,
}

impl Target {
    /// With `url`, checks that the server there runs on `backend`; without, starts one.
    pub async fn open(
        settings: &Settings,
        backend: BackendArg,
        url: Option<&str>,
    ) -> anyhow::Result<Self> {
        let urls: Vec<String> = url.into_iter().map(str::to_owned).collect();
        Self::open_cluster(settings, backend, &urls, 1).await
    }

    /// With `urls`, checks that every server there runs on `backend`; without, starts
    /// `nodes` servers on one throw-away database (more than one only on PostgreSQL: an
    /// embedded SQLite file has one writer process).
    pub async fn open_cluster(
        settings: &Settings,
        backend: BackendArg,
        urls: &[String],
        nodes: usize,
    ) -> anyhow::Result<Self> {
        if urls.is_empty() {
            return Self::start(settings, backend, nodes).await;
        }
        let mut bases = Vec::with_capacity(urls.len());
        for url in urls {
            let base = url.trim_end_matches('/').to_owned();
            let status: Value = reqwest::get(format!("{base}/api/status"))
                .await
                .with_context(|| format!("cannot reach {base}"))?
                .json()
                .await
                .with_context(|| format!("{base}/api/status is not Chronicle's"))?;
            let serving = status["store"]["backend"].as_str().unwrap_or_default();
            if serving != backend.store_name() {
                anyhow::bail!(
                    "--backend {} but the server at {base} runs on `{serving}`",
                    backend.store_name()
                );
            }
            bases.push(base);
        }
        Ok(Self {
            base: bases[0].clone(),
            nodes: bases,
            own: None,
        })
    }

    async fn start(settings: &Settings, backend: BackendArg, nodes: usize) -> anyhow::Result<Self> {
        if nodes == 0 {
            anyhow::bail!("--nodes must be at least 1");
        }
        if nodes > 1 && backend == BackendArg::Sqlite {
            anyhow::bail!("--nodes above 1 needs --backend postgres: a SQLite file has one server");
        }
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let (database_url, database) =
            ThrowAwayDatabase::create(settings, backend, dir.path()).await?;
        let mut server_settings = settings.clone();
        server_settings.bind = ([127, 0, 0, 1], 0).into();
        server_settings.database_url = database_url;
        server_settings.rate_limit.per_minute = UNTHROTTLED;
        server_settings.rate_limit.auth_per_minute = UNTHROTTLED;
        if nodes > 1 && server_settings.jwt_secret.is_none() {
            // One cluster, one secret: a token minted by one node is good on every node.
            let secret = hex::encode(rand::random::<[u8; 32]>());
            server_settings.jwt_secret = Some(secret.into());
        }
        let mut own = OwnServers {
            nodes: Vec::with_capacity(nodes),
            database,
            _dir: dir,
        };
        let mut bases = Vec::with_capacity(nodes);
        for n in 0..nodes {
            let mut node_settings = server_settings.clone();
            node_settings.data_dir = own._dir.path().join(format!("data-{n}"));
            let application = match Application::build(node_settings).await {
                Ok(application) => application,
                Err(error) => {
                    let _ = own.stop().await;
                    return Err(error);
                }
            };
            bases.push(format!("http://127.0.0.1:{}", application.port()));
            let (stop, stopped) = oneshot::channel::<()>();
            let serving = tokio::spawn(application.run_until(async move {
                let _ = stopped.await;
            }));
            own.nodes.push(OwnNode { stop, serving });
        }
        eprintln!(
            "(started {} at {} on a throw-away {} database)",
            if nodes == 1 { "a server" } else { "servers" },
            bases.join(", "),
            backend.store_name()
        );
        Ok(Self {
            base: bases[0].clone(),
            nodes: bases,
            own: Some(own),
        })
    }

    /// `path` on node `n` (round robin over the nodes).
    pub fn url_on(&self, n: usize, path: &str) -> String {
        format!("{}{path}", self.nodes[n % self.nodes.len()])
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers a fresh user (the first on a server the benchmark started, so an admin).
    pub async fn sign_up(&self) -> anyhow::Result<SignedUp> {
        let email = format!("bench-{}@example.com", Uuid::new_v4().simple());
        let response = reqwest::Client::new()
            .post(self.url("/api/auth/register"))
            .json(&json!({"email": email, "password": "benchmark password"}))
            .send()
            .await
            .context("POST /api/auth/register")?;
        let body: Value = expect_status(response, StatusCode::CREATED, "POST /api/auth/register")
            .await?
            .json()
            .await?;
        let access_token = body["access_token"]
            .as_str()
            .context("the registration answer has no access_token")?
            .to_owned();
        Ok(SignedUp { access_token })
    }

    /// Stops the servers the benchmark started and drops their database.
    pub async fn close(self) -> anyhow::Result<()> {
        match self.own {
            Some(own) => own.stop().await,
            None => Ok(()),
        }
    }
}

impl OwnServers {
    /// Stops every node, then drops the database; the first node's failure, if any.
    async fn stop(self) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        let mut serving = Vec::with_capacity(self.nodes.len());
        for node in self.nodes {
            let _ = node.stop.send(());
            serving.push(node.serving);
        }
        for served in serving {
            let served = served
                .await
                .map_err(anyhow::Error::from)
                .and_then(|served| served);
            if outcome.is_ok() {
                outcome = served;
            }
        }
        self.database.drop_now().await;
        outcome
    }
}

impl ThrowAwayDatabase {
    /// A fresh database for `backend` (a SQLite file in `dir`, or a new database on the
    /// PostgreSQL server of `CHRONICLE_DATABASE_URL`): its URL, and what drops it.
    pub(crate) async fn create(
        settings: &Settings,
        backend: BackendArg,
        dir: &std::path::Path,
    ) -> anyhow::Result<(String, Self)> {
        Ok(match backend {
            BackendArg::Sqlite => (
                format!("sqlite://{}", dir.join("bench.db").display()),
                ThrowAwayDatabase::Sqlite,
            ),
            BackendArg::Postgres => {
                let admin_url = settings.database_url.clone();
                if !admin_url.starts_with("postgres") {
                    anyhow::bail!(
                        "--backend postgres creates a throw-away database: set \
                         CHRONICLE_DATABASE_URL to a PostgreSQL server where it may (now {})",
                        crate::store::redact_url(&admin_url)
                    );
                }
                let name = format!("chronicle_bench_{}", Uuid::new_v4().simple());
                let mut connection =
                    sqlx::PgConnection::connect(&admin_url)
                        .await
                        .with_context(|| {
                            format!("cannot connect to {}", crate::store::redact_url(&admin_url))
                        })?;
                // The name is minted here, never taken from input.
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut connection)
                    .await
                    .context("cannot create the benchmark database")?;
                let mut url = Url::parse(&admin_url).context("CHRONICLE_DATABASE_URL")?;
                url.set_path(&format!("/{name}"));
                (
                    url.to_string(),
                    ThrowAwayDatabase::Postgres { admin_url, name },
                )
            }
        })
    }

    pub(crate) async fn drop_now(&self) {
        let Self::Postgres { admin_url, name } = self else {
            return;
        };
        let dropped = async {
            let mut connection = sqlx::PgConnection::connect(admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut connection)
                .await?;
            anyhow::Ok(())
        };
        if let Err(error) = dropped.await {
            eprintln!("chronicle: cannot drop the benchmark database {name}: {error:#}");
        }
    }
}

impl BackendArg {
    /// The name the store reports in `/api/status`.
    pub fn store_name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// `work`'s result, or an error if Ctrl-C comes first — so that the caller still closes the
/// target and drops its throw-away database.
pub async fn until_interrupted<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        result = work => result,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.context("cannot listen for Ctrl-C")?;
            anyhow::bail!("interrupted")
        }
    }
}

/// A client that sends `credential` as `Authorization: Bearer …` on every request.
pub fn bearer_client(credential: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    let mut value = HeaderValue::from_str(&format!("Bearer {credential}"))
        .context("the credential is not a valid header value")?;
    value.set_sensitive(true);
    headers.insert(AUTHORIZATION, value);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// The response if it has `expected` status; otherwise an error naming `what`, the status
/// and the problem body.
pub async fn expect_status(
    response: reqwest::Response,
    expected: StatusCode,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    if response.status() == expected {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!("{what} answered {status}, not {expected}: {body}")
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A quantile of a microsecond histogram, in milliseconds.
pub fn millis_at(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}
