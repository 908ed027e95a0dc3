//! Workflow schedules over HTTP: a cron firing every second starts one run per fire time
//! — on one node, on two server processes sharing one PostgreSQL, and across a restart
//! (one catch-up run for the missed period) — stops when deleted or when its workflow is
//! archived, and is the workflow owner's alone; bad cron expressions and zones are 422.
//!
//! A scheduled run's id is a UUIDv7 whose time is its fire time, so the tests read each
//! run's fire time from its id.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use chronicle::app::Application;
use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::crash::{free_port, start};
use crate::helpers::{spawn_app, test_settings, Backend, TestDb, TestUser, PASSWORD};

pub(crate) async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A one-step workflow; no agent serves `test.scheduled`, so its runs stay running.
async fn create_workflow(client: &reqwest::Client, base: &str) -> String {
    let (status, body) = send(client.post(format!("{base}/api/workflows")).json(&json!({
        "name": "scheduled",
        "params": {"label": {"type": "string", "default": "none"}},
        "steps": [{"id": "a", "capability": "test.scheduled", "input": {"label": "{{params.label}}"}}],
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Registers a fresh user on the node at `base`.
async fn register(base: &str) -> TestUser {
    let email = format!("user-{}@example.com", Uuid::new_v4().simple());
    let (status, body) = send(
        reqwest::Client::new()
            .post(format!("{base}/api/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    TestUser::new(body)
}

async fn create_schedule(
    client: &reqwest::Client,
    base: &str,
    workflow: &str,
    body: Value,
) -> Value {
    let (status, answer) = send(
        client
            .post(format!("{base}/api/workflows/{workflow}/schedules"))
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer
}

/// The workflow's runs (every page).
async fn runs(client: &reqwest::Client, base: &str, workflow: &str) -> Vec<Value> {
    let (status, body) =
        send(client.get(format!("{base}/api/workflows/{workflow}/status?limit=500"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["runs"].as_array().unwrap().clone()
}

/// The fire time a scheduled run's id carries.
fn fire_time(run: &Value) -> DateTime<Utc> {
    let id = Uuid::parse_str(run["id"].as_str().unwrap()).unwrap();
    let (seconds, nanos) = id.get_timestamp().unwrap().to_unix();
    DateTime::from_timestamp(seconds as i64, nanos).unwrap()
}

/// The schedule's `ScheduleFired` events from the feed.
async fn firings(client: &reqwest::Client, base: &str, schedule: &str) -> Vec<Value> {
    let (status, body) = send(client.get(format!(
        "{base}/api/events?aggregate_type=schedule&aggregate_id={schedule}&limit=500"
    )))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "ScheduleFired")
        .map(|e| e["payload"].clone())
        .collect()
}

async fn wait_for_runs(client: &reqwest::Client, base: &str, workflow: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = runs(client, base, workflow).await.len();
        if found >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {found} runs, waited for {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whole seconds that passed from `from` to `to`: the fire times of `*/1 * * * * *` in
/// `(from, to]`.
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    usize::try_from(to.timestamp() - from.timestamp()).unwrap()
}

/// Every run is one fire time, every firing recorded once with its own run.
fn assert_one_run_per_fire_time(runs: &[Value], firings: &[Value]) {
    let times: BTreeSet<DateTime<Utc>> = runs.iter().map(fire_time).collect();
    assert_eq!(
        times.len(),
        runs.len(),
        "two runs for one fire time: {runs:?}"
    );
    for time in &times {
        assert_eq!(
            time.timestamp_subsec_millis(),
            0,
            "fire times are whole seconds"
        );
    }
    let fired: HashSet<&str> = firings
        .iter()
        .map(|f| f["fire_at"].as_str().unwrap())
        .collect();
    assert_eq!(
        fired.len(),
        firings.len(),
        "a fire time recorded twice: {firings:?}"
    );
    let fired_runs: HashSet<&str> = firings
        .iter()
        .filter_map(|f| f["run_id"].as_str())
        .collect();
    let run_ids: HashSet<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(fired_runs, run_ids, "every firing's run, and only those");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_schedule_every_second_starts_one_run_per_fire_time_until_deleted(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await.signed_in().await;
    let workflow = create_workflow(&app.client, &app.address).await;
    let schedule = create_schedule(
        &app.client,
        &app.address,
        &workflow,
        json!({"cron": "*/1 * * * * *", "params": {"label": "tick"}}),
    )
    .await;
    assert_eq!(schedule["timezone"], "UTC");
    assert_eq!(schedule["params"], json!({"label": "tick"}));
    assert_eq!(schedule["workflow_id"], workflow.as_str());
    let created: DateTime<Utc> = schedule["created_at"].as_str().unwrap().parse().unwrap();
    let next: DateTime<Utc> = schedule["next_fire_at"].as_str().unwrap().parse().unwrap();
    assert!(next > created && next - created <= TimeDelta::seconds(1));
    let id = schedule["id"].as_str().unwrap();

    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_delete = Utc::now();
    let (status, _) = send(
        app.client
            .delete(app.url(&format!("/api/workflows/{workflow}/schedules/{id}"))),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after_delete = Utc::now();
    // A firing recorded just before the delete may start its run just after it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let found = runs(&app.client, &app.address, &workflow).await;
    let most = seconds_between(created, after_delete);
    let least = seconds_between(created, before_delete);
    assert!(
        (4..=6).contains(&found.len()) && found.len() + 1 >= least && found.len() <= most,
        "{} runs in {least}–{most} fire times",
        found.len()
    );
    for run in &found {
        assert_eq!(run["params"], json!({"label": "tick"}));
        assert!(fire_time(run) > created && fire_time(run) <= after_delete);
    }
    assert_one_run_per_fire_time(&found, &firings(&app.client, &app.address, id).await);

    // Deleted: gone from reads, and no run starts after it.
    let (status, _) = send(
        app.client
            .get(app.url(&format!("/api/workflows/{workflow}/schedules/{id}"))),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = send(
        app.client
            .get(app.url(&format!("/api/workflows/{workflow}/schedules"))),
    )
    .await;
    assert_eq!(list["items"], json!([]));
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        runs(&app.client, &app.address, &workflow).await.len(),
        found.len()
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn schedules_are_listed_read_and_validated(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let workflow = create_workflow(&app.client, &app.address).await;
    let base = app.url(&format!("/api/workflows/{workflow}/schedules"));
    let refused = |body: Value| {
        let request = app.client.post(&base).json(&body);
        async move {
            let (status, problem) = send(request).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
            problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(refused(json!({"cron": "every minute"})).await, ["cron"]);
    assert_eq!(refused(json!({"cron": "* * * * * * * *"})).await, ["cron"]);
    assert_eq!(
        refused(json!({"cron": "0 0 31 2 *"})).await,
        ["cron"],
        "never fires"
    );
    assert_eq!(
        refused(json!({"cron": "0 9 * * *", "timezone": "Europe/Atlantis"})).await,
        ["timezone"]
    );
    assert_eq!(
        refused(json!({"cron": "0 9 * * *", "params": {"colour": "red"}})).await,
        ["params.colour"]
    );
    assert_eq!(
        refused(json!({"cron": "0 9 * * *", "params": {"label": 3}})).await,
        ["params.label"]
    );
    let (status, _) = send(
        app.client
            .post(&base)
            .json(&json!({"cron": "0 9 * * *", "every": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, list) = send(app.client.get(&base)).await;
    assert_eq!(list["items"], json!([]), "nothing was made");

    let berlin = create_schedule(
        &app.client,
        &app.address,
        &workflow,
        json!({"cron": "0 9 * * MON-FRI", "timezone": "Europe/Berlin"}),
    )
    .await;
    let next: DateTime<Utc> = berlin["next_fire_at"].as_str().unwrap().parse().unwrap();
    let local = next.with_timezone(&chrono_tz::Europe::Berlin);
    assert_eq!(local.format("%H:%M").to_string(), "09:00");
    assert_eq!(berlin["fired"], 0);
    let yearly = create_schedule(
        &app.client,
        &app.address,
        &workflow,
        json!({"cron": "0 0 1 1 *"}),
    )
    .await;
    let (status, list) = send(app.client.get(&base)).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            yearly["id"].as_str().unwrap(),
            berlin["id"].as_str().unwrap()
        ]
    );
    let (status, one) = send(
        app.client
            .get(format!("{base}/{}", berlin["id"].as_str().unwrap())),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, berlin);

    // A definition's `schedule` is refused, pointing at the schedules.
    let (status, problem) = send(app.client.post(app.url("/api/workflows")).json(&json!({
        "name": "with schedule",
        "steps": [{"id": "a", "capability": "test.scheduled", "input": {}}],
        "schedule": "0 9 * * *",
    })))
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "schedule");

    // Unknown ids are 404, a schedule under another workflow too.
    let other = create_workflow(&app.client, &app.address).await;
    let (status, _) = send(app.client.get(app.url(&format!(
        "/api/workflows/{other}/schedules/{}",
        berlin["id"].as_str().unwrap()
    ))))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(app.client.get(format!("{base}/not-a-uuid"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn another_user_cannot_see_or_touch_a_workflows_schedules(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let workflow = create_workflow(&app.client, &app.address).await;
    let schedule = create_schedule(
        &app.client,
        &app.address,
        &workflow,
        json!({"cron": "0 0 1 1 *"}),
    )
    .await;
    let sid = schedule["id"].as_str().unwrap();
    let other: TestUser = app.register_user().await;
    let base = app.url(&format!("/api/workflows/{workflow}/schedules"));
    for request in [
        other.client.post(&base).json(&json!({"cron": "* * * * *"})),
        other.client.get(&base),
        other.client.get(format!("{base}/{sid}")),
        other.client.delete(format!("{base}/{sid}")),
    ] {
        let (status, problem) = send(request).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    }
    let (status, one) = send(app.client.get(format!("{base}/{sid}"))).await;
    assert_eq!(status, StatusCode::OK, "the owner's schedule is untouched");
    assert_eq!(one["id"], sid);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_archived_workflows_schedule_stops_firing(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let workflow = create_workflow(&app.client, &app.address).await;
    let schedule = create_schedule(
        &app.client,
        &app.address,
        &workflow,
        json!({"cron": "*/1 * * * * *"}),
    )
    .await;
    let sid = schedule["id"].as_str().unwrap();
    wait_for_runs(&app.client, &app.address, &workflow, 1).await;
    let (status, _) = send(
        app.client
            .delete(app.url(&format!("/api/workflows/{workflow}"))),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let archived_at = Utc::now();
    // The schedule is deleted at its next due time.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = send(
            app.client
                .get(app.url(&format!("/api/workflows/{workflow}/schedules/{sid}"))),
        )
        .await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the schedule outlived its workflow"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = runs(&app.client, &app.address, &workflow).await;
    assert!(
        found.iter().all(|run| fire_time(run) <= archived_at),
        "a run fired after the workflow was archived"
    );
}

/// The first node of a test that restarts it: built in this process on `db`.
async fn node(
    db: &TestDb,
) -> (
    String,
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let app = Application::build(test_settings(db)).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        let _ = app
            .run_until(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (address, running, stop)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_restart_after_a_missed_period_catches_up_with_one_run(#[case] backend: Backend) {
    // Four fire times a few seconds from now, inside one minute, and none after them
    // for a year: every one of them falls while the node is down.
    let mut now = Utc::now();
    if now.second() > 50 {
        tokio::time::sleep(
            (TimeDelta::seconds(61 - i64::from(now.second())))
                .to_std()
                .unwrap(),
        )
        .await;
        now = Utc::now();
    }
    let first = now.second() + 6;
    let last = first + 3;
    let cron = format!(
        "{first}-{last} {} {} {} {} *",
        now.minute(),
        now.hour(),
        now.day(),
        now.month()
    );
    let window_start = now.with_second(first).unwrap().with_nanosecond(0).unwrap();
    let window_end = now.with_second(last).unwrap().with_nanosecond(0).unwrap();

    let db = TestDb::new(backend).await;
    let (address, running, stop) = node(&db).await;
    let user = register(&address).await;
    let workflow = create_workflow(&user.client, &address).await;
    let schedule = create_schedule(&user.client, &address, &workflow, json!({"cron": cron})).await;
    assert_eq!(schedule["next_fire_at"], json!(window_start));
    let sid = schedule["id"].as_str().unwrap().to_owned();
    stop.send(()).unwrap();
    running.await.unwrap();
    assert!(
        Utc::now() < window_start,
        "the node took too long to stop for this test to mean anything"
    );

    let wait = (window_end - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    let (address, _running, _stop) = node(&db).await;
    wait_for_runs(&user.client, &address, &workflow, 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let found = runs(&user.client, &address, &workflow).await;
    assert_eq!(
        found.len(),
        1,
        "one catch-up run, not one per missed fire time: {found:?}"
    );
    assert_eq!(
        fire_time(&found[0]),
        window_end,
        "the latest missed fire time"
    );
    let fired = firings(&user.client, &address, &sid).await;
    assert_one_run_per_fire_time(&found, &fired);
}

#[tokio::test]
async fn two_server_processes_start_one_run_per_fire_time() {
    let db = TestDb::new(Backend::Postgres).await;
    let (one, two) = (free_port(), free_port());
    let mut first = start(&db, one).await;
    let mut second = start(&db, two).await;
    let (a, b) = (
        format!("http://127.0.0.1:{one}"),
        format!("http://127.0.0.1:{two}"),
    );
    let user = register(&a).await;
    let workflow = create_workflow(&user.client, &a).await;
    let schedule = create_schedule(
        &user.client,
        &b,
        &workflow,
        json!({"cron": "*/1 * * * * *"}),
    )
    .await;
    let sid = schedule["id"].as_str().unwrap();
    let created: DateTime<Utc> = schedule["created_at"].as_str().unwrap().parse().unwrap();

    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_delete = Utc::now();
    let (status, _) = send(
        user.client
            .delete(format!("{a}/api/workflows/{workflow}/schedules/{sid}")),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after_delete = Utc::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let found = runs(&user.client, &b, &workflow).await;
    let (least, most) = (
        seconds_between(created, before_delete),
        seconds_between(created, after_delete),
    );
    assert!(
        (4..=6).contains(&found.len()) && found.len() + 1 >= least && found.len() <= most,
        "{} runs in {least}–{most} fire times",
        found.len()
    );
    assert_one_run_per_fire_time(&found, &firings(&user.client, &a, sid).await);
    assert_eq!(runs(&user.client, &a, &workflow).await.len(), found.len());
    for child in [&mut first, &mut second] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
