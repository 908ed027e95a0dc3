//! The edge under attack and failure (issue 8, items 4, 6, 8): exactly-once writes when a
//! request fails after its commit, limits before authentication, trusted proxies, the
//! cached status, security headers and HTTPS.

use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp};

async fn get(app: &TestApp, path: &str) -> Value {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

/// A command that commits and then fails (503 from a view read, say) keeps its key: the
/// repeat answers the resource of the first effect instead of acting again.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_failure_after_the_commit_keeps_the_key(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |s| s.fail_after_commit = 2)
        .await
        .signed_in()
        .await;
    let post = |path: &'static str, key: &'static str, body: Value| {
        app.client
            .post(app.url(path))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let registration = json!({"name": "ext", "kind": "remote", "capabilities": ["x.work"]});
    let failed = post("/api/agents/register", "reg", registration.clone())
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);

    let repeat = post("/api/agents/register", "reg", registration.clone())
        .await
        .unwrap();
    assert_eq!(repeat.status(), StatusCode::CREATED);
    assert_eq!(repeat.headers()["idempotent-replayed"], "true");
    let agent: Value = repeat.json().await.unwrap();
    let agents = get(&app, "/api/agents").await;
    let items = agents["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one effect: {agents}");
    assert_eq!(items[0]["id"], agent["id"]);
    assert_eq!(agent["name"], "ext");

    // Later repeats get the kept answer.
    let again = post("/api/agents/register", "reg", registration)
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], agent["id"]);

    // A new API key that failed after its commit: one key, and the repeat cannot show a
    // secret it never kept.
    let failed = post("/api/users/me/api-keys", "key", json!({"name": "ci"}))
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let repeat = post("/api/users/me/api-keys", "key", json!({"name": "ci"}))
        .await
        .unwrap();
    assert_eq!(repeat.status(), StatusCode::CREATED);
    let issued: Value = repeat.json().await.unwrap();
    assert_eq!(issued["key"], Value::Null);
    assert_eq!(issued["name"], "ci");
    let keys = get(&app, "/api/users/me/api-keys").await;
    let items = keys["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{keys}");
    assert_eq!(items[0]["id"], issued["id"]);

    // With no failure left to inject, a new key runs as usual.
    let fresh = post(
        "/api/agents/register",
        "reg-2",
        json!({"name": "two", "kind": "remote", "capabilities": ["x.work"]}),
    )
    .await
    .unwrap();
    assert_eq!(fresh.status(), StatusCode::CREATED);
    assert!(fresh.headers().get("idempotent-replayed").is_none());
}

/// A well-formed `chr_` key that no key has.
fn bogus_key() -> String {
    format!("chr_{}_{}", uuid::Uuid::now_v7().simple(), "ab".repeat(32))
}

/// The per-IP limit runs before the credentials are checked: bogus keys spend it, and
/// once it is spent even a good token from that address waits.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_ip_limit_runs_before_authentication(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.rate_limit.per_minute = 1_000;
        s.rate_limit.per_ip_per_minute = Some(5);
    })
    .await;
    let user = app.register_user().await; // 1 of 5
    for _ in 0..4 {
        let response = reqwest::Client::new()
            .get(app.url("/api/users/me"))
            .header("x-api-key", bogus_key())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = user
        .client
        .get(app.url("/api/users/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    let bogus = reqwest::Client::new()
        .get(app.url("/api/users/me"))
        .header("x-api-key", bogus_key())
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Behind a trusted proxy each forwarded client has its own budget; from anyone else,
/// `X-Forwarded-For` is ignored.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn forwarded_clients_are_told_apart_only_behind_trusted_proxies(#[case] backend: Backend) {
    let health = |app: &TestApp, client: &'static str| {
        reqwest::Client::new()
            .get(app.url("/api/health"))
            .header("x-forwarded-for", client)
            .send()
    };
    let limited = |s: &mut chronicle::config::Settings| {
        s.rate_limit.per_ip_per_minute = Some(2);
    };
    let proxied = spawn_app_with(backend, |s| {
        limited(s);
        s.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            health(&proxied, "203.0.113.1").await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        health(&proxied, "203.0.113.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A client cannot pose as another by writing the header itself: the proxy's hop
    // (the rightmost) is the one believed.
    assert_eq!(
        health(&proxied, "203.0.113.2, 203.0.113.1")
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        health(&proxied, "203.0.113.2").await.unwrap().status(),
        StatusCode::OK
    );

    let direct = spawn_app_with(backend, limited).await;
    assert_eq!(
        health(&direct, "203.0.113.1").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        health(&direct, "203.0.113.2").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        health(&direct, "203.0.113.3").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Misses are remembered by the whole key: after a wrong secret was refused (and
/// remembered), the same key id rotated to a new secret authenticates at once.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_remembered_miss_never_refuses_a_good_key(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await.signed_in().await;
    let issued: Value = app
        .client
        .post(app.url("/api/users/me/api-keys"))
        .json(&json!({"name": "agent"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap();
    let me = |key: String| {
        reqwest::Client::new()
            .get(app.url("/api/users/me"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(me(key.clone()).await.unwrap().status(), StatusCode::OK);
    let (prefix, _) = key.rsplit_once('_').unwrap();
    let wrong = format!("{prefix}_{}", "cd".repeat(32));
    for _ in 0..2 {
        assert_eq!(
            me(wrong.clone()).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(me(key.clone()).await.unwrap().status(), StatusCode::OK);

    let rotated: Value = app
        .client
        .post(app.url(&format!("/api/users/me/api-keys/{id}/rotate")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(
        me(key.clone()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me(new_key).await.unwrap().status(), StatusCode::OK);
    // A revoked key is refused at once (good answers are never cached).
    let revoked = app
        .client
        .delete(app.url(&format!("/api/users/me/api-keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        me(rotated["key"].as_str().unwrap().to_owned())
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn queue_depth(app: &TestApp) -> u64 {
    let response = reqwest::Client::new()
        .get(app.url("/api/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Value>().await.unwrap()["queue_depth"]
        .as_u64()
        .unwrap()
}

async fn create_task(app: &TestApp) {
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "x.work", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// `/api/status` is computed at most once per `status_cache_ms`.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn status_answers_are_reused_within_their_ttl(#[case] backend: Backend) {
    let cached = spawn_app_with(backend, |s| s.status_cache_ms = 3_600_000)
        .await
        .signed_in()
        .await;
    assert_eq!(queue_depth(&cached).await, 0);
    create_task(&cached).await;
    assert_eq!(queue_depth(&cached).await, 0, "the cached answer");

    let uncached = spawn_app_with(backend, |s| s.status_cache_ms = 0)
        .await
        .signed_in()
        .await;
    assert_eq!(queue_depth(&uncached).await, 0);
    create_task(&uncached).await;
    assert_eq!(queue_depth(&uncached).await, 1);
}

/// Every answer, error or not, carries the hardening headers; HSTS only in production.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn every_answer_carries_the_security_headers(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    for path in ["/api/health", "/api/nowhere", "/api/users/me"] {
        let response = reqwest::Client::new()
            .get(app.url(path))
            .send()
            .await
            .unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert!(headers.get("strict-transport-security").is_none(), "{path}");
    }
}

/// Production behind a proxy: only what the trusted proxy says came over HTTPS is
/// answered (health checks excepted), always with HSTS.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn production_answers_https_only(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.profile = chronicle::config::Profile::Production;
        s.jwt_secret = Some("0123456789abcdef0123456789abcdef".to_owned().into());
        s.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    let status = |proto: Option<&'static str>| {
        let request = reqwest::Client::new().get(app.url("/api/status"));
        match proto {
            Some(proto) => request.header("x-forwarded-proto", proto),
            None => request,
        }
        .send()
    };
    for refused in [None, Some("http")] {
        let response = status(refused).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{refused:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.headers().contains_key("strict-transport-security"));
    }
    let served = status(Some("https")).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert!(served.headers()["strict-transport-security"]
        .to_str()
        .unwrap()
        .starts_with("max-age="));
    let health = reqwest::Client::new()
        .get(app.url("/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// A self-signed certificate for localhost and 127.0.0.1, as (certificate, key) PEM.
fn self_signed() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    (certified.cert.pem(), certified.key_pair.serialize_pem())
}

fn trusting(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// Chronicle serves HTTPS itself: reached with the certificate's root, refused in plain
/// HTTP, HSTS in production; SIGHUP swaps in a renewed certificate for new connections.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn https_with_a_certificate_reloaded_on_sighup(#[case] backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert, key) = self_signed();
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let app = spawn_app_with(backend, |s| {
        s.profile = chronicle::config::Profile::Production;
        s.jwt_secret = Some("0123456789abcdef0123456789abcdef".to_owned().into());
        s.tls.cert_path = Some(cert_path.clone());
        s.tls.key_path = Some(key_path.clone());
    })
    .await;
    let https = app.address.replace("http://", "https://");
    let status = format!("{https}/api/status");

    let answer = trusting(&cert).get(&status).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.headers().contains_key("strict-transport-security"));
    assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    let by_name = trusting(&cert)
        .get(status.replace("127.0.0.1", "localhost"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.status(), StatusCode::OK);
    assert!(
        reqwest::get(app.url("/api/health")).await.is_err(),
        "plain HTTP on the TLS port"
    );
    assert!(
        reqwest::Client::new().get(&status).send().await.is_err(),
        "an unknown root is refused"
    );

    // Renew: new files, then SIGHUP (this process; nextest runs each test in its own).
    let (renewed, renewed_key) = self_signed();
    std::fs::write(&cert_path, &renewed).unwrap();
    std::fs::write(&key_path, &renewed_key).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Ok(answer) = trusting(&renewed).get(&status).send().await {
            assert_eq!(answer.status(), StatusCode::OK);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is not served within 5 s of SIGHUP"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        trusting(&cert).get(&status).send().await.is_err(),
        "the old certificate is no longer served"
    );
}

/// A lease that failed after committing: the repeat hands out the lease granted then
/// (its id works for reports), not a second one.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_repeated_lease_answers_the_lease_granted_first(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |s| s.fail_after_commit = 1)
        .await
        .signed_in()
        .await;
    let agent: Value = app
        .client
        .post(app.url("/api/agents/register"))
        .json(&json!({"name": "ext", "kind": "remote", "capabilities": ["x.work"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = agent["id"].as_str().unwrap().to_owned();
    create_task(&app).await;
    let lease = || {
        app.client
            .post(app.url(&format!("/api/agents/{agent}/lease")))
            .header("idempotency-key", "lease-1")
            .json(&json!({"max_tasks": 1}))
            .send()
    };
    assert_eq!(
        lease().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let repeat = lease().await.unwrap();
    assert_eq!(repeat.status(), StatusCode::OK);
    let leased: Value = repeat.json().await.unwrap();
    let tasks = leased["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{leased}");
    let (task, lease_id) = (tasks[0]["id"].as_str().unwrap(), &tasks[0]["lease_id"]);
    assert_eq!(tasks[0]["attempt"], 1, "one lease, not two");
    let started = app
        .client
        .patch(app.url(&format!("/api/tasks/{task}")))
        .json(&json!({"status": "running", "lease_id": lease_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        started.status(),
        StatusCode::OK,
        "the answered lease is the one in force"
    );
}

/// Claims are stamped by the database's clock (epoch milliseconds, as the node's would
/// be when the clocks agree), on both backends.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn claims_are_stamped_by_the_database_clock(#[case] backend: Backend) {
    use sqlx::Connection;
    let app = spawn_app_with(backend, |_| {}).await.signed_in().await;
    let response = app
        .client
        .post(app.url("/api/agents/register"))
        .header("idempotency-key", "stamp")
        .json(&json!({"name": "ext", "kind": "remote", "capabilities": ["x.work"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let query = "SELECT claimed_at FROM idempotency_keys WHERE key = 'stamp'";
    let claimed_at: i64 = match backend {
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_scalar(query)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_scalar(query)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        (now - 10_000..=now + 1_000).contains(&claimed_at),
        "claimed_at {claimed_at} vs now {now}"
    );
}
