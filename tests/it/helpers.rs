//! Throw-away databases on both backends, and a server started on port 0 against one.

use std::path::PathBuf;

use chronicle::app::Application;
use chronicle::config::Settings;
use chronicle::store::{Store, StoreOptions};
use sqlx::Connection;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

fn admin_url() -> String {
    std::env::var("CHRONICLE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test: a fresh PostgreSQL database (dropped on drop) or a
/// SQLite file in a temporary directory.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("chronicle.db").display()),
                pg_name: None,
                dir,
            },
            Backend::Postgres => {
                let admin = admin_url();
                let name = format!("chronicle_test_{}", Uuid::new_v4().simple());
                let mut connection =
                    sqlx::PgConnection::connect(&admin)
                        .await
                        .unwrap_or_else(|e| {
                            panic!("PostgreSQL must be reachable at {admin} for the tests: {e}")
                        });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut connection)
                    .await
                    .expect("create test database");
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.as_str(), |(base, _)| base);
                Self {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    dir,
                }
            }
        }
    }

    pub async fn store(&self, options: StoreOptions) -> Store {
        let store = Store::connect(&self.url, options).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = admin_url();
        // Drop runs outside any runtime guarantee, so use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut connection = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut connection)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

/// A running server on a fresh database and a client for it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Registers `email` (password [`PASSWORD`]); panics unless the server answers 201.
    pub async fn register(&self, email: &str) -> TestUser {
        let response = reqwest::Client::new()
            .post(self.url("/api/auth/register"))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .expect("register request");
        assert_eq!(
            response.status(),
            reqwest::StatusCode::CREATED,
            "register {email}"
        );
        let body: serde_json::Value = response.json().await.expect("register body");
        TestUser::new(body)
    }

    /// Registers a fresh user with a random email.
    pub async fn register_user(&self) -> TestUser {
        self.register(&format!("user-{}@example.com", Uuid::new_v4().simple()))
            .await
    }

    /// A second node on the same database (and data dir, so it shares the signing key):
    /// what an operator runs to scale out. Stopped when the returned guard drops.
    pub async fn second_node(
        &self,
        configure: impl FnOnce(&mut Settings),
    ) -> (String, tokio::sync::oneshot::Sender<()>) {
        let mut settings = test_settings(&self.db);
        configure(&mut settings);
        let app = Application::build(settings)
            .await
            .expect("build the second node");
        let address = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    /// This app with `client` acting as a freshly registered user (the first user of the
    /// app's empty system, so an admin).
    pub async fn signed_in(mut self) -> Self {
        let user = self.register_user().await;
        self.client = user.client;
        self
    }
}

pub const PASSWORD: &str = "correct horse battery";

/// A registered user and a client that sends their access token on every request.
pub struct TestUser {
    pub id: String,
    pub refresh_token: String,
    pub client: reqwest::Client,
    pub body: serde_json::Value,
}

impl TestUser {
    pub fn new(body: serde_json::Value) -> Self {
        let access_token = body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        Self {
            id: body["user"]["id"].as_str().expect("user.id").to_owned(),
            refresh_token: body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
            client: bearer_client(&access_token),
            body,
        }
    }
}

/// A client that sends `Authorization: Bearer <credential>` by default.
pub fn bearer_client(credential: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {credential}")
            .parse()
            .expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn test_settings(db: &TestDb) -> Settings {
    let mut settings = Settings {
        bind: "127.0.0.1:0".parse().expect("address"),
        database_url: db.url.clone(),
        data_dir: db.data_dir(),
        ..Settings::default()
    };
    settings.store.max_connections = 8;
    // Its agent would show in every agent list; the tests of it turn it on.
    settings.http_agent.enabled = false;
    settings
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut settings = test_settings(&db);
    configure(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("build application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::new(),
        db,
        stop: Some(stop),
    }
}

/// A new API key of `client`'s user: `(id, key)`.
pub async fn api_key(app: &TestApp, client: &reqwest::Client) -> (String, String) {
    let response = client
        .post(app.url("/api/users/me/api-keys"))
        .json(&serde_json::json!({"name": "test key"}))
        .send()
        .await
        .expect("issue an API key");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let body: serde_json::Value = response.json().await.expect("JSON");
    (
        body["id"].as_str().expect("id").to_owned(),
        body["key"].as_str().expect("key").to_owned(),
    )
}
