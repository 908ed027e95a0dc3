//! The database link cut under load: a TCP proxy between Chronicle and PostgreSQL (in this
//! test, on loopback) first forwards, then cuts the link one of two ways, then forwards
//! again.
//!
//! - **refused**: every open connection is dropped and the port is closed, so new ones
//!   are refused (what a stopped database or a closed firewall port looks like);
//! - **black-holed**: open connections go silent and new ones are accepted but never
//!   forwarded (packets go nowhere: what a dead route or a hung host looks like, and what
//!   makes a pool without time limits hang). When the link returns, the connections held
//!   silent are dropped, as a peer that lost their state would reset them.
//!
//! While cut, every request must be answered within 2 s, with 503 `problem+json` unless
//! it succeeded; `/api/status` says 503 `store.ok = false`. After the link returns, service
//! comes back on its own within 5 s: writes, `/api/status`, the projections, the
//! LISTEN/NOTIFY listener of a second node and the built-in HTTP agent. Nothing is
//! half-written (every hash chain verifies) and every write acknowledged is there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle::store::{AggregateFilter, StoreOptions};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::helpers::{spawn_app_with, Backend, TestApp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Refused,
    BlackHoled,
}

/// A TCP proxy on 127.0.0.1 whose link can be cut and restored.
struct Proxy {
    port: u16,
    link: watch::Sender<Link>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = bind(0).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (link, _) = watch::channel(Link::Up);
        let modes = link.subscribe();
        tokio::spawn(accept(listener, port, upstream, modes));
        Self { port, link }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(128)
}

async fn accept(
    mut listener: tokio::net::TcpListener,
    port: u16,
    upstream: SocketAddr,
    mut link: watch::Receiver<Link>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => Some(accepted),
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                None
            }
        };
        match accepted {
            Some(Ok((client, _))) => {
                tokio::spawn(serve(client, upstream, link.clone()));
            }
            Some(Err(_)) => {}
            None if *link.borrow() == Link::Refused => {
                // Closing the listening socket is what makes new connections refused.
                drop(listener);
                if link.wait_for(|l| *l != Link::Refused).await.is_err() {
                    return;
                }
                listener = bind(port).expect("re-bind the proxy port");
            }
            None => {}
        }
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    if *link.borrow_and_update() == Link::BlackHoled {
        // Accepted, never forwarded; dropped when the link returns.
        let _ = link.wait_for(|l| *l != Link::BlackHoled).await;
        return;
    }
    if *link.borrow() == Link::Refused {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
        cut = link.wait_for(|l| *l != Link::Up) => cut.ok().map(|l| *l),
    };
    if cut == Some(Link::BlackHoled) {
        // Both sockets stay open and nothing moves, until the link returns.
        let _ = link.wait_for(|l| *l != Link::BlackHoled).await;
    }
    // Dropping both sockets cuts the connection.
}

/// The proxy's URL for the app's database: the same database, through `port`.
fn through(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).expect("database URL");
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(port)).expect("port");
    url.to_string()
}

fn upstream() -> SocketAddr {
    let admin = std::env::var("CHRONICLE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = url::Url::parse(&admin).expect("CHRONICLE_TEST_PG_URL");
    let host = url.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", url.port().unwrap_or(5432))
        .parse()
        .expect("PostgreSQL address")
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    unavailable: usize,
    /// Anything but 2xx or a 503 `problem+json`, and answers slower than 2 s.
    wrong: Vec<String>,
}

/// Deadline of every request while the link is cut: a client waits no longer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Service must be back this soon after the link returns.
const RECOVER_WITHIN: Duration = Duration::from_secs(5);

async fn judge(response: reqwest::Result<reqwest::Response>, what: &str, seen: &Mutex<Seen>) {
    match response {
        Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
            let media = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = response.text().await.unwrap_or_default();
            let mut seen = seen.lock().unwrap();
            if media == "application/problem+json" && body.contains("\"status\":503") {
                seen.unavailable += 1;
            } else {
                seen.wrong.push(format!("{what}: 503 as {media}: {body}"));
            }
        }
        Ok(response) if response.status().is_success() => {
            let created = response.status() == StatusCode::CREATED;
            let body: Value = response.json().await.unwrap_or_default();
            if created {
                if let Some(id) = body["id"].as_str() {
                    seen.lock().unwrap().acknowledged.push(id.to_owned());
                }
            }
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            seen.lock()
                .unwrap()
                .wrong
                .push(format!("{what}: {status}: {body}"));
        }
        Err(error) => seen.lock().unwrap().wrong.push(format!(
            "{what}: no answer within {ANSWER_WITHIN:?}: {error}"
        )),
    }
}

/// Creates and reads tasks as fast as it can until `stop`.
async fn load(
    app_url: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let created = client
            .post(format!("{app_url}/api/tasks"))
            .timeout(ANSWER_WITHIN)
            .json(&json!({"capability": "browser.navigate", "input": {"n": n}}))
            .send()
            .await;
        judge(created, "POST /api/tasks", &seen).await;
        let last = seen.lock().unwrap().acknowledged.last().cloned();
        if let Some(id) = last {
            let read = client
                .get(format!("{app_url}/api/tasks/{id}"))
                .timeout(ANSWER_WITHIN)
                .send()
                .await;
            judge(read, "GET /api/tasks/{id}", &seen).await;
        }
    }
}

async fn status(app: &TestApp) -> Option<(StatusCode, Value)> {
    let response = app
        .client
        .get(app.url("/api/status"))
        .timeout(ANSWER_WITHIN)
        .send()
        .await
        .ok()?;
    let code = response.status();
    Some((code, response.json().await.ok()?))
}

/// Polls `check` until it holds or `deadline` passes; panics with `what` then.
async fn by<F, Fut>(deadline: Instant, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[rstest]
#[case::refused(Link::Refused)]
#[case::black_holed(Link::BlackHoled)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_database_link_fails_fast_and_heals_on_its_own(#[case] cut: Link) {
    let proxy = Proxy::start(upstream()).await;
    let port = proxy.port;
    let configure = move |settings: &mut chronicle::config::Settings| {
        settings.database_url = through(&settings.database_url, port);
        settings.rate_limit.per_minute = 1_000_000;
        // Only a wake-up over LISTEN/NOTIFY brings the second node's poll back early.
        settings.dispatch.recheck_secs = 3600;
    };
    let app = spawn_app_with(Backend::Postgres, move |settings| {
        configure(settings);
        settings.http_agent.enabled = true;
        settings.http_agent.allow_private = true;
    })
    .await
    .signed_in()
    .await;
    let (other, _stop_other) = app.second_node(configure).await;
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_url = format!("http://{}/", target.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(target, axum::Router::new().fallback(|| async { "fetched" })).await
    });

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load(
                app.address.clone(),
                app.client.clone(),
                seen.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_cut = seen.lock().unwrap().acknowledged.len();
    assert!(before_cut > 0, "no write succeeded before the cut");

    proxy.set(cut);
    let cut_at = Instant::now();
    by(
        cut_at + ANSWER_WITHIN,
        "/api/status did not say 503 store.ok=false within 2 s of the cut",
        || async {
            matches!(status(&app).await, Some((StatusCode::SERVICE_UNAVAILABLE, body))
                if body["store"]["ok"] == json!(false))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unavailable_during_cut = seen.lock().unwrap().unavailable;

    proxy.set(Link::Up);
    let restored = Instant::now();
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let recover_by = restored + RECOVER_WITHIN;
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.wrong.is_empty(),
            "answers while the link was cut that were neither a success nor a 503 problem within 2 s:\n{}",
            seen.wrong.join("\n")
        );
    }
    assert!(unavailable_during_cut > 0, "the cut never showed as 503");

    // Writes and reads are back.
    by(
        recover_by,
        "no write succeeded within 5 s of the link returning",
        || async {
            let response = app
                .client
                .post(app.url("/api/tasks"))
                .timeout(ANSWER_WITHIN)
                .json(&json!({"capability": "browser.navigate", "input": {}}))
                .send()
                .await;
            matches!(response, Ok(response) if response.status() == StatusCode::CREATED)
        },
    )
    .await;
    by(recover_by, "/api/status did not say 200 within 5 s of the link returning", || async {
        matches!(status(&app).await, Some((StatusCode::OK, body)) if body["store"]["ok"] == json!(true))
    })
    .await;
    // The projections caught up with everything, the writes during the cut included.
    by(
        recover_by,
        "the projections did not catch up within 5 s of the link returning",
        || async {
            match status(&app).await {
                Some((StatusCode::OK, body)) => body["projections"].as_array().is_some_and(|all| {
                    !all.is_empty() && all.iter().all(|p| p["lag_events"] == json!(0))
                }),
                _ => false,
            }
        },
    )
    .await;
    // The built-in HTTP agent works again.
    let http_task = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "http.request", "input": {"url": target_url}}))
        .send()
        .await
        .unwrap();
    assert_eq!(http_task.status(), StatusCode::CREATED);
    let http_task: Value = http_task.json().await.unwrap();
    let http_task = http_task["id"].as_str().unwrap().to_owned();
    by(
        recover_by,
        "the built-in HTTP agent did not run a task within 5 s of the link returning",
        || async {
            let task: Value = app
                .client
                .get(app.url(&format!("/api/tasks/{http_task}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            task["status"] == json!("succeeded")
        },
    )
    .await;

    // The second node's listener is back: a task created here wakes a poll there.
    let agent: Value = app
        .client
        .post(format!("{other}/api/agents/register"))
        .json(&json!({"name": "woken", "kind": "remote", "capabilities": ["link.check"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = agent["id"].as_str().unwrap().to_owned();
    let poll = {
        let client = app.client.clone();
        let url = format!("{other}/api/agents/{agent}/lease");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"wait_secs": 30}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let woken = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "link.check", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(woken.status(), StatusCode::CREATED);
    let woken: Value = woken.json().await.unwrap();
    let answer = tokio::time::timeout(RECOVER_WITHIN, poll)
        .await
        .expect("the second node's listener did not come back: its poll was not woken")
        .unwrap();
    assert_eq!(answer["tasks"][0]["id"], woken["id"]);

    // Every acknowledged write is there, and nothing is half-written.
    let acknowledged = std::mem::take(&mut seen.lock().unwrap().acknowledged);
    for id in &acknowledged {
        let response = app
            .client
            .get(app.url(&format!("/api/tasks/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "acknowledged task {id} is gone"
        );
    }
    let direct = app.db.store(StoreOptions::default()).await;
    let report = direct.verify(&AggregateFilter::default()).await.unwrap();
    assert!(
        report.ok,
        "broken chains after the cut: {:?}",
        report.broken
    );
    assert!(report.checked as usize >= acknowledged.len());
}
