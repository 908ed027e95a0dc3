//! The server an HTTP benchmark talks to: the one at `--url`, or one started in this
//! process on 127.0.0.1:0 against a throw-away database (a fresh PostgreSQL database that is
//! dropped afterwards, or a SQLite file in a temporary directory), with the rate limit
//! raised so that it does not throttle the benchmark.

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

/// A server to benchmark, and how to get rid of it afterwards.
pub struct Target {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
    own: Option<OwnServer>,
}

struct OwnServer {
    stop: oneshot::Sender<()>,
    serving: JoinHandle<anyhow::Result<()>>,
    database: ThrowAwayDatabase,
    /// The SQLite file and the server's data dir (its JWT secret) live here.
    _dir: tempfile::TempDir,
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
        match url {
            Some(url) => {
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
                Ok(Self { base, own: None })
            }
            None => Self::start(settings, backend).await,
        }
    }

    async fn start(settings: &Settings, backend: BackendArg) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let (database_url, database) =
            ThrowAwayDatabase::create(settings, backend, dir.path()).await?;
        let mut server_settings = settings.clone();
        server_settings.bind = ([127, 0, 0, 1], 0).into();
        server_settings.database_url = database_url;
        server_settings.data_dir = dir.path().join("data");
        server_settings.rate_limit.per_minute = UNTHROTTLED;
        server_settings.rate_limit.auth_per_minute = UNTHROTTLED;
        let application = match Application::build(server_settings).await {
            Ok(application) => application,
            Err(error) => {
                database.drop_now().await;
                return Err(error);
            }
        };
        let base = format!("http://127.0.0.1:{}", application.port());
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(application.run_until(async move {
            let _ = stopped.await;
        }));
        eprintln!(
            "(started a server at {base} on a throw-away {} database)",
            backend.store_name()
        );
        Ok(Self {
            base,
            own: Some(OwnServer {
                stop,
                serving,
                database,
                _dir: dir,
            }),
        })
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

    /// Stops a server the benchmark started and drops its database.
    pub async fn close(self) -> anyhow::Result<()> {
        let Some(own) = self.own else {
            return Ok(());
        };
        let _ = own.stop.send(());
        let served = own.serving.await;
        own.database.drop_now().await;
        served??;
        Ok(())
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
