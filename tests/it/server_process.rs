//! The real `chronicle serve` as a child process, its log (stderr, JSON lines) kept in a file.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::TestDb;

pub struct ServerProcess {
    child: tokio::process::Child,
    pub address: String,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl ServerProcess {
    /// Starts the binary on `db` with `env` on top of the test defaults and waits until it
    /// answers `/api/health`.
    pub async fn start(db: &TestDb, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = db.dir.path().join("chronicle.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chronicle"));
        command
            .arg("serve")
            .env("CHRONICLE_DATABASE_URL", &db.url)
            .env("CHRONICLE_BIND", format!("127.0.0.1:{port}"))
            .env("CHRONICLE_DATA_DIR", db.data_dir())
            .env("CHRONICLE_HTTP_AGENT__ENABLED", "false")
            .env("CHRONICLE_STORE__MAX_CONNECTIONS", "8")
            .env_remove("CHRONICLE_CONFIG")
            .env_remove("RUST_LOG")
            .current_dir(db.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("spawn chronicle");
        let address = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(response) = client.get(format!("{address}/api/health")).send().await {
                if response.status() == StatusCode::OK {
                    return Self {
                        child,
                        address,
                        log,
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "chronicle did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Stops it with SIGTERM (a graceful shutdown: everything logged is written) and returns
    /// its log.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("chronicle stops on SIGTERM")
            .expect("wait");
        std::fs::read_to_string(&self.log).expect("log")
    }
}
