//! The commands a deployment runs around the server: `chronicle migrate` as a release step
//! and `chronicle health` as the container's HEALTHCHECK.

use std::path::Path;
use std::process::{Command, Output};

use rstest::rstest;
use sqlx::Connection;

use crate::helpers::{spawn_app, Backend, TestDb};

/// `chronicle` with `args`, configured only by `env` (no file, no inherited `CHRONICLE_*`).
fn chronicle(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    for (name, _) in std::env::vars_os().filter(|(name, _)| {
        name.to_str()
            .is_some_and(|name| name.starts_with("CHRONICLE_"))
    }) {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .env("CHRONICLE_LOG__FORMAT", "json")
        .current_dir(dir)
        .output()
        .expect("run chronicle")
}

/// The migrations the store records as applied.
async fn applied_migrations(db: &TestDb, backend: Backend) -> Vec<i64> {
    let query = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
    match backend {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query_scalar(query)
                .fetch_all(&mut connection)
                .await
                .expect("applied migrations")
        }
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            sqlx::query_scalar(query)
                .fetch_all(&mut connection)
                .await
                .expect("applied migrations")
        }
    }
}

/// The versions of the migration files shipped for `backend`.
fn shipped_migrations(backend: Backend) -> Vec<i64> {
    let folder = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(folder);
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .expect("migrations folder")
        .filter_map(|entry| {
            let name = entry.expect("entry").file_name().into_string().ok()?;
            name.strip_suffix(".sql")?.split('_').next()?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn migrate_applies_every_migration_and_runs_again_harmlessly(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [("CHRONICLE_DATABASE_URL", db.url.as_str())];
    for run in ["first", "second"] {
        let output = chronicle(db.dir.path(), &["migrate"], &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{run} run: {stderr}");
        assert!(stderr.contains("migrations applied"), "{run} run: {stderr}");
    }
    let shipped = shipped_migrations(backend);
    assert!(!shipped.is_empty());
    assert_eq!(applied_migrations(&db, backend).await, shipped);
}

/// A rolled-back binary meets a schema with a migration of a newer release: it runs (the
/// migrations are additive), and the newer migration stays recorded.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_older_binary_runs_against_a_newer_schema(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [("CHRONICLE_DATABASE_URL", db.url.as_str())];
    assert!(chronicle(db.dir.path(), &["migrate"], &env)
        .status
        .success());
    let newer = "INSERT INTO _sqlx_migrations \
                 (version, description, success, checksum, execution_time) \
                 VALUES (99991231000000, 'a newer release', true, x'00', 1)";
    let newer = match backend {
        Backend::Postgres => newer.replace("x'00'", "'\\x00'::bytea"),
        Backend::Sqlite => newer.to_owned(),
    };
    match backend {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query(&newer)
                .execute(&mut connection)
                .await
                .expect("insert");
        }
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            sqlx::query(&newer)
                .execute(&mut connection)
                .await
                .expect("insert");
        }
    }
    let output = chronicle(db.dir.path(), &["migrate"], &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        applied_migrations(&db, backend).await.last(),
        Some(&99_991_231_000_000)
    );
}

#[tokio::test]
async fn migrate_fails_with_one_line_when_the_store_is_unreachable() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // Port 1 on loopback: nothing listens there.
    let env = [(
        "CHRONICLE_DATABASE_URL",
        "postgres://chronicle:a-password@127.0.0.1:1/chronicle",
    )];
    let output = chronicle(dir.path(), &["migrate"], &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot open the event store"), "{stderr}");
    assert!(!stderr.contains("a-password"), "{stderr}");
}

// Two workers: the server answers on one while the test blocks on the command in the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_only_for_a_server_that_answers_ok() {
    let app = spawn_app(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = app
        .address
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned())
        .expect("port");
    // Bound to every address, as in a container: asked on loopback.
    let bind = format!("0.0.0.0:{port}");
    let output = chronicle(dir.path(), &["health"], &[("CHRONICLE_BIND", &bind)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A 200 that is not the health answer.
    let status = app.url("/api/status");
    let output = chronicle(dir.path(), &["health", "--url", &status], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("answered 200"), "{stderr}");

    // Nobody listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let closed = format!("127.0.0.1:{}", free.local_addr().expect("address").port());
    drop(free);
    let output = chronicle(dir.path(), &["health"], &[("CHRONICLE_BIND", &closed)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not answer"), "{stderr}");
}
