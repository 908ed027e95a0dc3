//! The event history over HTTP: the global feed (`GET /api/events`, pages and NDJSON),
//! `GET /api/audit/verify`, and the paged task and agent histories — on both backends.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chronicle::actor::Actor;
use chronicle::auth::accounts::{create_user, RoleChoice};
use chronicle::bus::{CommandBus, CommandContext};
use chronicle::store::{Backend as StoreBackend, Store, StoreOptions};
use chronicle_commands::auth::{RegisterRequest, Role};
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LINK};
use reqwest::{Client, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp, TestUser, PASSWORD};

/// A user with the `auditor` role, created as an operator would, then signed in.
async fn auditor(app: &TestApp) -> TestUser {
    let store = Store::connect(&app.db.url, StoreOptions::default())
        .await
        .unwrap();
    let bus = CommandBus::new(store);
    let email = format!("auditor-{}@example.com", uuid::Uuid::now_v7().simple());
    let registration = RegisterRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        display_name: None,
    }
    .validate()
    .unwrap();
    let context = CommandContext {
        actor: Actor::system().to_string(),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        ..CommandContext::default()
    };
    create_user(
        &bus,
        registration,
        RoleChoice::Exactly(Role::Auditor),
        context,
    )
    .await
    .unwrap();
    let response = Client::new()
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    TestUser::new(response.json().await.unwrap())
}

async fn create_task(app: &TestApp, client: &Client) -> String {
    let response = client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "a.b", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let task: Value = response.json().await.unwrap();
    task["id"].as_str().unwrap().to_owned()
}

async fn register_agent(app: &TestApp, client: &Client) -> String {
    let response = client
        .post(app.url("/api/agents/register"))
        .json(&json!({"name": "feed agent", "kind": "remote", "capabilities": ["a.b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let agent: Value = response.json().await.unwrap();
    agent["id"].as_str().unwrap().to_owned()
}

async fn get_json(client: &Client, url: String) -> Value {
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.json().await.unwrap()
}

/// Every event the client can read now, page by page through `next_cursor`.
async fn whole_feed(app: &TestApp, client: &Client, limit: u32) -> Vec<Value> {
    let mut events = Vec::new();
    let mut query = format!("limit={limit}");
    loop {
        let page = get_json(client, app.url(&format!("/api/events?{query}"))).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit as usize);
        events.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit={limit}&cursor={cursor}"),
            None => return events,
        }
    }
}

/// `GET /api/events{query}` as NDJSON, every line parsed.
async fn ndjson(app: &TestApp, client: &Client, query: &str) -> Vec<Value> {
    let response = client
        .get(app.url(&format!("/api/events{query}")))
        .header(ACCEPT, "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/x-ndjson");
    let text = response.text().await.unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The feed as `client` reads it, once every id in `expected` shows in it.
async fn feed_showing(
    app: &TestApp,
    client: &Client,
    expected: &[&str],
) -> (Vec<Value>, HashSet<String>) {
    // Generous: on PostgreSQL any transaction of the cluster holds the feed's horizon.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = whole_feed(app, client, 7).await;
        let ids: HashSet<String> = events
            .iter()
            .map(|e| e["aggregate_id"].as_str().unwrap().to_owned())
            .collect();
        if expected.iter().all(|id| ids.contains(*id)) {
            return (events, ids);
        }
        assert!(
            Instant::now() < deadline,
            "the feed never showed all of {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_feed_shows_users_only_their_own_aggregates(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.register_user().await;
    let a = app.register_user().await;
    let b = app.register_user().await;
    let a_tasks = [
        create_task(&app, &a.client).await,
        create_task(&app, &a.client).await,
    ];
    let a_agent = register_agent(&app, &a.client).await;
    let b_task = create_task(&app, &b.client).await;
    let auditor = auditor(&app).await;

    let (a_events, a_ids) = feed_showing(
        &app,
        &a.client,
        &[&a_tasks[0], &a_tasks[1], &a_agent, &a.id],
    )
    .await;
    for foreign in [&b_task, &b.id, &admin.id, &auditor.id] {
        assert!(!a_ids.contains(foreign), "A sees {foreign}, not theirs");
    }
    let event = a_events
        .iter()
        .find(|e| e["aggregate_id"] == a_tasks[0].as_str())
        .unwrap();
    for key in [
        "position",
        "aggregate_type",
        "sequence",
        "event_type",
        "event_version",
        "payload",
        "hash",
        "prev_hash",
    ] {
        assert!(!event[key].is_null(), "Event.{key} missing: {event}");
    }
    assert_eq!(event["aggregate_type"], "task");
    let registered = a_events
        .iter()
        .find(|e| e["event_type"] == "UserRegistered")
        .unwrap();
    assert_eq!(registered["payload"]["password_hash"], "[redacted]");
    assert!(
        !serde_json::to_string(&a_events)
            .unwrap()
            .contains("$argon2"),
        "no credential hash is answered"
    );
    assert!(event["metadata"]["recorded_at"].is_string());

    let (_, b_ids) = feed_showing(&app, &b.client, &[&b_task, &b.id]).await;
    for foreign in [&a_tasks[0], &a_tasks[1], &a_agent, &a.id, &admin.id] {
        assert!(!b_ids.contains(foreign), "B sees {foreign}, not theirs");
    }
    // Naming another's aggregate gives nothing either.
    let page = get_json(
        &b.client,
        app.url(&format!(
            "/api/events?aggregate_type=task&aggregate_id={}",
            a_tasks[0]
        )),
    )
    .await;
    assert_eq!(page["items"], json!([]));

    let everyone = [
        &a_tasks[0],
        &a_tasks[1],
        &a_agent,
        &b_task,
        &a.id,
        &b.id,
        &admin.id,
        &auditor.id,
    ];
    for reader in [&auditor, &admin] {
        let (all, _) = feed_showing(&app, &reader.client, &everyone.map(String::as_str)).await;
        // Pages of 7 give the same feed as one big page.
        let single = whole_feed(&app, &reader.client, 500).await;
        assert_eq!(all[..], single[..all.len()]);
    }

    // Streamed, a user's feed is the same as paged, and ends; so is the auditor's after
    // a position.
    let streamed = ndjson(&app, &a.client, "").await;
    assert_eq!(streamed, whole_feed(&app, &a.client, 500).await);
    let everything = whole_feed(&app, &auditor.client, 500).await;
    let third = everything[2]["position"].as_i64().unwrap();
    let streamed = ndjson(&app, &auditor.client, &format!("?after={third}")).await;
    assert_eq!(streamed[..], everything[3..]);

    // The filter: one aggregate, resumed after its first event.
    let only = get_json(
        &a.client,
        app.url(&format!("/api/events?aggregate_id={}", a_tasks[1])),
    )
    .await;
    let items = only["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let after = items[0]["position"].as_i64().unwrap();
    let rest = get_json(
        &a.client,
        app.url(&format!(
            "/api/events?aggregate_id={}&after={after}",
            a_tasks[1]
        )),
    )
    .await;
    assert_eq!(rest["items"], json!([]));
    assert!(rest["next_cursor"].is_null());

    for bad in ["limit=0", "limit=501", "after=-1", "cursor=x", "nope=1"] {
        let response = a
            .client
            .get(app.url(&format!("/api/events?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    }
    let anonymous = Client::new()
        .get(app.url("/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

const WRITERS: usize = 6;
const TASKS_PER_WRITER: usize = 40;

/// Reads the feed as `client`, resuming after the last position seen, until `expected`
/// task events arrived and a few more reads brought nothing new; returns the events of
/// tasks seen, as `(aggregate_id, sequence)`, and how many came twice.
async fn follow_feed(
    app: &TestApp,
    client: &Client,
    expected: usize,
    writers_done: &std::sync::atomic::AtomicBool,
) -> (HashSet<(String, i64)>, usize) {
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    let mut after = 0i64;
    let mut last_progress = Instant::now();
    let mut quiet_rounds = 0;
    loop {
        let page = get_json(
            client,
            app.url(&format!(
                "/api/events?aggregate_type=task&limit=25&after={after}"
            )),
        )
        .await;
        let items = page["items"].as_array().unwrap();
        for event in items {
            let key = (
                event["aggregate_id"].as_str().unwrap().to_owned(),
                event["sequence"].as_i64().unwrap(),
            );
            if !seen.insert(key) {
                duplicates += 1;
            }
        }
        if let Some(last) = items.last() {
            after = last["position"].as_i64().unwrap();
            last_progress = Instant::now();
        }
        let complete =
            seen.len() >= expected && writers_done.load(std::sync::atomic::Ordering::Acquire);
        if complete && items.is_empty() {
            quiet_rounds += 1;
            if quiet_rounds >= 3 {
                return (seen, duplicates);
            }
        }
        if last_progress.elapsed() > Duration::from_secs(30) {
            return (seen, duplicates);
        }
        if items.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Concurrent writers over HTTP (on PostgreSQL their group commits land out of position
/// order) and two readers paging the HTTP feed by `after`: a user through the owners
/// scope and an auditor through the whole feed. Each sees every task event exactly once.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_feed_pages_without_gaps_under_concurrent_writers(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.rate_limit.per_minute = 1_000_000;
    })
    .await;
    let _admin = app.register_user().await;
    let writer = app.register_user().await;
    let auditor = auditor(&app).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let expected = WRITERS * TASKS_PER_WRITER;
    let writers = async {
        let creators = (0..WRITERS).map(|_| async {
            for _ in 0..TASKS_PER_WRITER {
                create_task(&app, &writer.client).await;
            }
        });
        futures::future::join_all(creators).await;
        done.store(true, std::sync::atomic::Ordering::Release);
    };
    let ((), (mine, mine_twice), (all, all_twice)) = tokio::join!(
        writers,
        follow_feed(&app, &writer.client, expected, &done),
        follow_feed(&app, &auditor.client, expected, &done),
    );
    assert_eq!(mine_twice, 0, "the user's feed delivered an event twice");
    assert_eq!(all_twice, 0, "the auditor's feed delivered an event twice");
    assert_eq!(mine.len(), expected, "the user's feed skipped events");
    assert_eq!(all.len(), expected, "the auditor's feed skipped events");
}

/// Process-wide resident set size, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const BULK_EVENTS: i64 = 100_000;

/// `BULK_EVENTS` events of 1,000 aggregates straight into the store, each payload ~600
/// bytes, in one statement.
async fn seed_bulk(url: &str) {
    let store = Store::connect(url, StoreOptions::default()).await.unwrap();
    match store.backend() {
        StoreBackend::Postgres(pg) => {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 SELECT 'bulk', 'bulk-' || (n / 100), n % 100 + 1, 'Tick', '1.0',
                        json_build_object('n', n, 'filler', repeat('x', 600)), '{}'
                   FROM generate_series(0, $1 - 1) AS n",
            )
            .bind(BULK_EVENTS)
            .execute(pg.pool())
            .await
            .unwrap();
        }
        StoreBackend::Sqlite(lite) => {
            sqlx::query(
                "WITH RECURSIVE n(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM n WHERE n + 1 < ?1)
                 INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 SELECT 'bulk', 'bulk-' || (n / 100), n % 100 + 1, 'Tick', '1.0',
                        json_object('n', n, 'filler', replace(hex(zeroblob(300)), '0', 'x')),
                        '{}'
                   FROM n",
            )
            .bind(BULK_EVENTS)
            .execute(lite.writer())
            .await
            .unwrap();
        }
    }
}

/// Waits until every projection has applied the whole feed.
async fn projections_caught_up(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = get_json(&Client::new(), app.url("/api/status")).await;
        let projections = status["projections"].as_array().unwrap();
        if !projections.is_empty() && projections.iter().all(|p| p["lag_events"] == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "projections never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Accept: application/x-ndjson` streams all 100,000 events (~80 MB of JSON) while the
/// process — server and client in one — grows by far less than the answer: nothing holds
/// the whole feed in memory.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn ndjson_streams_the_whole_feed_in_bounded_memory(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    seed_bulk(&app.db.url).await;
    projections_caught_up(&app).await;

    let before = rss_kib();
    let response = app
        .client
        .get(app.url("/api/events?limit=3"))
        .header(ACCEPT, "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/x-ndjson");
    let mut body = response.bytes_stream();
    let (mut bytes, mut lines, mut bulk, mut peak) = (0usize, 0usize, 0i64, before);
    let mut partial = Vec::new();
    let mut last_n = -1i64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        bytes += chunk.len();
        partial.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = partial[start..].iter().position(|b| *b == b'\n') {
            let line = &partial[start..start + end];
            lines += 1;
            let event: Value = serde_json::from_slice(line).unwrap();
            if event["aggregate_type"] == "bulk" {
                bulk += 1;
                // Feed order is insertion order within the one seeding transaction.
                let n = event["payload"]["n"].as_i64().unwrap();
                assert_eq!(n, last_n + 1, "bulk events out of order");
                last_n = n;
            }
            start += end + 1;
        }
        partial.drain(..start);
        peak = peak.max(rss_kib());
    }
    assert!(partial.is_empty(), "the stream ends with a whole line");
    assert_eq!(bulk, BULK_EVENTS, "every seeded event is streamed once");
    assert!(lines as i64 > BULK_EVENTS, "the users' own events too");
    assert!(bytes > 50_000_000, "the answer is large: {bytes} bytes");
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "ndjson: {lines} events, {} MiB streamed; RSS {} MiB before, peak {} MiB (+{grown_mib} MiB)",
        bytes / (1 << 20),
        before / 1024,
        peak / 1024,
    );
    assert!(
        grown_mib < 40,
        "RSS grew by {grown_mib} MiB while streaming {} MiB",
        bytes / (1 << 20)
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn audit_verify_covers_what_the_caller_may_read(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.register_user().await;
    let a = app.register_user().await;
    let b = app.register_user().await;
    let a_task = create_task(&app, &a.client).await;
    let b_task = create_task(&app, &b.client).await;
    let auditor = auditor(&app).await;
    let verify = |client: &Client, query: String| {
        let request = client.get(app.url(&format!("/api/audit/verify{query}")));
        async move { request.send().await.unwrap() }
    };

    let own = verify(
        &a.client,
        format!("?aggregate_type=task&aggregate_id={a_task}"),
    )
    .await;
    assert_eq!(own.status(), StatusCode::OK);
    let own: Value = own.json().await.unwrap();
    assert_eq!(own["ok"], true);
    assert_eq!(own["checked"], 1);
    assert_eq!(own["broken"], json!([]));
    let theirs = verify(
        &a.client,
        format!("?aggregate_type=task&aggregate_id={b_task}"),
    )
    .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    assert_eq!(theirs.headers()[CONTENT_TYPE], "application/problem+json");
    for reader in [&auditor, &admin] {
        let any = verify(&reader.client, format!("?aggregate_id={b_task}")).await;
        assert_eq!(any.status(), StatusCode::OK);
        let any: Value = any.json().await.unwrap();
        assert_eq!(
            (any["ok"].clone(), any["checked"].clone()),
            (json!(true), json!(1))
        );
    }
    let none = verify(&auditor.client, "?aggregate_id=no-such-thing".into()).await;
    assert_eq!(none.status(), StatusCode::NOT_FOUND);

    // A user's whole set comes from the owners projection, which follows the feed: wait
    // until the feed shows each user their task.
    feed_showing(&app, &a.client, &[&a_task]).await;
    feed_showing(&app, &b.client, &[&b_task]).await;
    let a_all: Value = verify(&a.client, String::new()).await.json().await.unwrap();
    assert_eq!(a_all["ok"], true);
    let everything: Value = verify(&auditor.client, String::new())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(everything["ok"], true);
    assert!(
        everything["checked"].as_u64().unwrap() > a_all["checked"].as_u64().unwrap(),
        "{everything} covers more than {a_all}"
    );

    // Rewrite B's task behind the store's back: B and the auditor see it, A does not.
    let store = Store::connect(&app.db.url, StoreOptions::default())
        .await
        .unwrap();
    match store.backend() {
        StoreBackend::Postgres(pg) => {
            sqlx::query("UPDATE events SET payload = '{\"forged\": true}' WHERE aggregate_id = $1")
                .bind(&b_task)
                .execute(pg.pool())
                .await
                .unwrap();
        }
        StoreBackend::Sqlite(lite) => {
            sqlx::query("UPDATE events SET payload = '{\"forged\": true}' WHERE aggregate_id = ?1")
                .bind(&b_task)
                .execute(lite.writer())
                .await
                .unwrap();
        }
    }
    let broken = json!([{
        "aggregate_type": "task",
        "aggregate_id": b_task,
        "sequence": 1,
        "reason": "hash mismatch",
    }]);
    for reader in [&b, &auditor] {
        let report: Value = verify(&reader.client, String::new())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(report["ok"], false);
        assert_eq!(report["broken"], broken);
    }
    let a_after: Value = verify(&a.client, String::new()).await.json().await.unwrap();
    assert_eq!(
        a_after["ok"], true,
        "A's aggregates are untouched: {a_after}"
    );
}

/// Follows `Link: rel="next"` from `first`, collecting every event.
async fn follow_links(app: &TestApp, client: &Client, first: String) -> (Vec<Value>, usize) {
    let (mut events, mut pages, mut url) = (Vec::new(), 0, Some(first));
    while let Some(next) = url.take() {
        let response = client.get(app.url(&next)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        url = response.headers().get(LINK).map(|link| {
            let link = link.to_str().unwrap();
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            link.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap()
                .to_owned()
        });
        let page: Vec<Value> = response.json().await.unwrap();
        events.extend(page);
        pages += 1;
    }
    (events, pages)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn task_and_agent_histories_page_by_sequence(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let stranger = app.register_user().await;
    let task = create_task(&app, &app.client).await;
    for priority in [1, 2, 3] {
        let response = app
            .client
            .patch(app.url(&format!("/api/tasks/{task}")))
            .json(&json!({"priority": priority}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let cancelled = app
        .client
        .delete(app.url(&format!("/api/tasks/{task}")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);

    // Without parameters: the whole history, a bare array, as before.
    let path = format!("/api/tasks/{task}/events");
    let all = app.client.get(app.url(&path)).send().await.unwrap();
    assert!(all.headers().get(LINK).is_none());
    let all: Vec<Value> = all.json().await.unwrap();
    let sequences: Vec<i64> = all
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5]);

    let (paged, pages) = follow_links(&app, &app.client, format!("{path}?limit=2")).await;
    assert_eq!(paged, all);
    assert_eq!(pages, 3, "2 + 2 + 1");
    let tail: Vec<Value> = get_json(&app.client, app.url(&format!("{path}?after_sequence=3")))
        .await
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(tail, all[3..]);
    let past_end = get_json(
        &app.client,
        app.url(&format!("{path}?after_sequence=5&limit=10")),
    )
    .await;
    assert_eq!(past_end, json!([]));
    for bad in ["limit=0", "limit=501", "after_sequence=-1", "cursor=1"] {
        let response = app
            .client
            .get(app.url(&format!("{path}?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let foreign = stranger.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    let agent = register_agent(&app, &app.client).await;
    let gone = app
        .client
        .delete(app.url(&format!("/api/agents/{agent}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let path = format!("/api/agents/{agent}/events");
    let all: Vec<Value> = get_json(&app.client, app.url(&path))
        .await
        .as_array()
        .unwrap()
        .clone();
    assert!(all.len() >= 2, "registered and deregistered: {all:?}");
    assert_eq!(all[0]["aggregate_type"], "agent");
    assert_eq!(all[0]["aggregate_id"], agent.as_str());
    let (paged, pages) = follow_links(&app, &app.client, format!("{path}?limit=1")).await;
    assert_eq!(paged, all);
    assert_eq!(pages, all.len());
    for (client, id) in [
        (&stranger.client, agent.clone()),
        (&app.client, uuid::Uuid::now_v7().to_string()),
    ] {
        let response = client
            .get(app.url(&format!("/api/agents/{id}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}

/// Inserts one raw event; `payload` as JSON text.
async fn insert_event(store: &Store, aggregate_id: &str, sequence: i64, payload: &str) {
    match store.backend() {
        StoreBackend::Postgres(pg) => {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 VALUES ('thing', $1, $2, 'Happened', '1.0', $3::json, '{}')",
            )
            .bind(aggregate_id)
            .bind(sequence)
            .bind(payload)
            .execute(pg.pool())
            .await
            .unwrap();
        }
        StoreBackend::Sqlite(lite) => {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 VALUES ('thing', ?1, ?2, 'Happened', '1.0', ?3, '{}')",
            )
            .bind(aggregate_id)
            .bind(sequence)
            .bind(payload)
            .execute(lite.writer())
            .await
            .unwrap();
        }
    }
}

/// The scoped feed never reads past the owners projection's checkpoint, even for an
/// aggregate the projection already knows: what it has not reached is held back, then
/// delivered once it has — never passed over.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_scoped_feed_stops_at_the_owners_checkpoint(#[case] backend: Backend) {
    use chronicle::store::{AggregateFilter, FeedCursor};
    use chronicle_projections::aggregate_owners::AggregateOwners;
    use chronicle_projections::Projector;

    let db = crate::helpers::TestDb::new(backend).await;
    let store = db.store(StoreOptions::default()).await;
    let owners = Projector::new(AggregateOwners, store.clone(), store.read_db());
    owners.setup().await.unwrap();
    let (me, other) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let owned_by = |owner: uuid::Uuid| format!("{{\"owner_id\": \"{owner}\"}}");
    let settle = || async {
        let watermark = store.feed_watermark().await.unwrap();
        while !store.feed_reached(watermark).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let scoped = |owner: Option<uuid::Uuid>| {
        let store = store.clone();
        let scope = owner.map_or(chronicle_projections::ReadScope::All, |owner| {
            chronicle_projections::ReadScope::owner(owner)
        });
        async move {
            store
                .feed_scoped(
                    FeedCursor::default(),
                    100,
                    &AggregateFilter::default(),
                    &scope,
                )
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.aggregate_id, e.sequence))
                .collect::<Vec<_>>()
        }
    };

    insert_event(&store, "mine-1", 1, &owned_by(me)).await;
    insert_event(&store, "theirs", 1, &owned_by(other)).await;
    settle().await;
    owners.catch_up().await.unwrap();
    assert!(store.scope_bound().await.unwrap() >= store.feed_tail().await.unwrap());

    insert_event(&store, "mine-1", 2, "{}").await;
    insert_event(&store, "mine-2", 1, &owned_by(me)).await;
    settle().await;
    assert!(store.scope_bound().await.unwrap() < store.feed_tail().await.unwrap());
    assert_eq!(scoped(Some(me)).await, [("mine-1".to_owned(), 1)]);
    assert_eq!(scoped(None).await.len(), 4, "the whole feed is not bounded");

    owners.catch_up().await.unwrap();
    assert_eq!(
        scoped(Some(me)).await,
        [
            ("mine-1".to_owned(), 1),
            ("mine-1".to_owned(), 2),
            ("mine-2".to_owned(), 1)
        ]
    );
    assert_eq!(scoped(Some(other)).await, [("theirs".to_owned(), 1)]);
    assert_eq!(scoped(Some(uuid::Uuid::now_v7())).await, []);
}
