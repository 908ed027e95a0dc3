//! Usage analytics and status counts: tasks driven through the bus at chosen times, so
//! every count, duration and percentile is known exactly; scoping per caller.

use std::time::{Duration, Instant};

use chronicle::api::error::ApiError;
use chronicle::bus::{CommandBus, CommandContext};
use chronicle_aggregates::task::{Task, TaskCommand, TaskFailure};
use chronicle_commands::task::NewTaskRequest;
use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, Backend, TestApp};

fn at(day: u32, hour: u32, ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, hour, 0, 0).unwrap() + chrono::Duration::milliseconds(ms)
}

struct Driver {
    bus: CommandBus,
    agent: Uuid,
}

impl Driver {
    async fn run(&self, task: Uuid, command: TaskCommand) {
        self.bus
            .execute::<Task, ApiError>(&task.to_string(), &CommandContext::default(), None, {
                let command = command.clone();
                move |_| Ok(command.clone())
            })
            .await
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    }

    async fn create(
        &self,
        owner: Uuid,
        capability: &str,
        max_attempts: i64,
        when: DateTime<Utc>,
    ) -> Uuid {
        let task_id = Uuid::now_v7();
        let spec = serde_json::from_value::<NewTaskRequest>(json!({
            "capability": capability,
            "max_attempts": max_attempts,
            "retry": {"initial_backoff_ms": 1000, "max_backoff_ms": 1000},
        }))
        .unwrap()
        .validate()
        .unwrap();
        self.run(
            task_id,
            TaskCommand::CreateTask {
                task_id,
                owner_id: owner,
                spec,
                workflow_run_id: None,
                at: when,
            },
        )
        .await;
        task_id
    }

    async fn lease(&self, task: Uuid, when: DateTime<Utc>) -> Uuid {
        let lease_id = Uuid::now_v7();
        self.run(
            task,
            TaskCommand::LeaseTask {
                agent_id: self.agent,
                lease_id,
                at: when,
            },
        )
        .await;
        lease_id
    }

    async fn fail(&self, task: Uuid, lease_id: Uuid, when: DateTime<Utc>) {
        let error = TaskFailure {
            message: "no".into(),
            code: None,
            details: None,
        };
        self.run(
            task,
            TaskCommand::FailTask {
                lease_id,
                error,
                permanent: false,
                jitter: 0.0,
                at: when,
            },
        )
        .await;
    }
}

async fn get(client: &reqwest::Client, app: &TestApp, path: &str) -> (StatusCode, Value) {
    let response = client.get(app.url(path)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until every projection has applied every event (`/api/status` lag 0).
async fn caught_up(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = get(&reqwest::Client::new(), app, "/api/status").await;
        let projections = status["projections"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !projections.is_empty() && projections.iter().all(|p| p["lag_events"] == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projections did not catch up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn report(client: &reqwest::Client, app: &TestApp, group_by: &str) -> Vec<Value> {
    let path = format!(
        "/api/analytics/usage?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z&group_by={group_by}"
    );
    let (status, body) = get(client, app, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["from"], "2026-01-01T00:00:00Z");
    body["rows"].as_array().unwrap().clone()
}

fn bucket<'a>(rows: &'a [Value], name: Option<&str>) -> &'a Value {
    rows.iter()
        .find(|row| row["bucket"].as_str() == name)
        .unwrap_or_else(|| panic!("no bucket {name:?} in {rows:?}"))
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn usage_counts_durations_percentiles_and_tokens_per_bucket(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.register_user().await;
    let alice = app.register_user().await;
    let bob = app.register_user().await;
    let alice_id: Uuid = alice.id.parse().unwrap();
    let bob_id: Uuid = bob.id.parse().unwrap();
    let store = app.db.store(Default::default()).await;
    let driver = Driver {
        bus: CommandBus::new(store),
        agent: Uuid::now_v7(),
    };

    // 5 January: twenty x.alpha tasks that ran 100, 200, …, 2000 ms, each reporting tokens.
    for n in 1..=20i64 {
        let task = driver.create(alice_id, "x.alpha", 3, at(5, 10, n)).await;
        let lease_id = driver.lease(task, at(5, 11, 0)).await;
        driver
            .run(
                task,
                TaskCommand::CompleteTask {
                    lease_id,
                    output: json!({"usage": {"input_tokens": 10, "output_tokens": n}}),
                    at: at(5, 11, n * 100),
                },
            )
            .await;
    }
    // 6 January: an x.beta task that fails once (retried), then for good 90 s after its
    // first lease; another cancelled before any agent held it.
    let failing = driver.create(alice_id, "x.beta", 2, at(6, 9, 0)).await;
    let first = driver.lease(failing, at(6, 10, 0)).await;
    driver.fail(failing, first, at(6, 10, 30_000)).await;
    let second = driver.lease(failing, at(6, 10, 60_000)).await;
    driver.fail(failing, second, at(6, 10, 90_000)).await;
    let cancelled = driver.create(alice_id, "x.beta", 1, at(6, 9, 1)).await;
    driver
        .run(
            cancelled,
            TaskCommand::CancelTask {
                reason: None,
                at: at(6, 12, 0),
            },
        )
        .await;
    // Bob's one task, still queued; and one of Alice's outside the window.
    driver.create(bob_id, "x.alpha", 1, at(5, 8, 0)).await;
    driver
        .create(
            alice_id,
            "x.alpha",
            1,
            at(2, 8, 0) + chrono::Duration::days(60),
        )
        .await;

    caught_up(&app).await;
    let by_day = report(&alice.client, &app, "day").await;
    assert_eq!(by_day.len(), 2, "{by_day:?}");
    let fifth = bucket(&by_day, Some("2026-01-05"));
    assert_eq!(fifth["created"], 20);
    assert_eq!(fifth["succeeded"], 20);
    assert_eq!(fifth["failed"], 0);
    assert_eq!(fifth["retries"], 0);
    assert_eq!(fifth["avg_duration_ms"], 1050.0);
    // Nearest rank: the 19th of 20 sorted durations.
    assert_eq!(fifth["p95_duration_ms"], 1900);
    assert_eq!(fifth["input_tokens"], 200);
    assert_eq!(fifth["output_tokens"], (1..=20).sum::<i64>());
    let sixth = bucket(&by_day, Some("2026-01-06"));
    assert_eq!(sixth["created"], 2);
    assert_eq!(sixth["succeeded"], 0);
    assert_eq!(sixth["failed"], 1);
    assert_eq!(sixth["cancelled"], 1);
    assert_eq!(sixth["retries"], 1);
    assert_eq!(sixth["avg_duration_ms"], 90_000.0);
    assert_eq!(sixth["p95_duration_ms"], 90_000);
    assert_eq!(sixth["input_tokens"], 0);

    let by_capability = report(&alice.client, &app, "capability").await;
    assert_eq!(by_capability.len(), 2);
    assert_eq!(bucket(&by_capability, Some("x.alpha"))["succeeded"], 20);
    let beta = bucket(&by_capability, Some("x.beta"));
    assert_eq!(
        (
            &beta["created"],
            &beta["failed"],
            &beta["cancelled"],
            &beta["retries"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(1))
    );

    let by_agent = report(&alice.client, &app, "agent").await;
    let agent = driver.agent.to_string();
    let held = bucket(&by_agent, Some(&agent));
    assert_eq!(
        (&held["succeeded"], &held["failed"], &held["retries"]),
        (&json!(20), &json!(1), &json!(1))
    );
    let unheld = bucket(&by_agent, None);
    assert_eq!(
        (&unheld["created"], &unheld["cancelled"]),
        (&json!(22), &json!(1))
    );

    // Bob sees his own task only; the admin sees both users.
    let bobs = report(&bob.client, &app, "user").await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["bucket"], bob.id.as_str());
    assert_eq!(bobs[0]["created"], 1);
    let everyone = report(&admin.client, &app, "user").await;
    assert_eq!(bucket(&everyone, Some(&alice.id))["created"], 22);
    assert_eq!(bucket(&everyone, Some(&bob.id))["created"], 1);

    // Status counts, scoped the same way.
    let (status, counts) = get(&alice.client, &app, "/api/analytics/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts["counts"]["succeeded"], 20);
    assert_eq!(counts["counts"]["failed"], 1);
    assert_eq!(counts["counts"]["cancelled"], 1);
    assert_eq!(counts["counts"]["queued"], 1, "the task outside the window");
    assert_eq!(counts["counts"]["running"], 0);
    assert_eq!(counts["total"], 23);
    let (_, counts) = get(&bob.client, &app, "/api/analytics/status").await;
    assert_eq!(counts["total"], 1);
    assert_eq!(counts["counts"]["queued"], 1);
    let (_, counts) = get(&admin.client, &app, "/api/analytics/status").await;
    assert_eq!(counts["total"], 24);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_windows_and_groupings_are_422_and_strangers_401(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    for bad in [
        "?group_by=week",
        "?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "?from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "?from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "?from=yesterday",
        "?colour=red",
    ] {
        let (status, body) = get(&app.client, &app, &format!("/api/analytics/usage{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (status, body) = get(&app.client, &app, "/api/analytics/usage").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["rows"], json!([]));
    for path in ["/api/analytics/usage", "/api/analytics/status"] {
        let response = reqwest::get(app.url(path)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
}
