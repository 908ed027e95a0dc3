//! Usage analytics and status counts: tasks driven through the bus at chosen times, so
//! every count, duration and percentile is known exactly; scoping per caller.

use std::time::{Duration, Instant};

use chronicle::api::error::ApiError;
use chronicle::bus::{CommandBus, CommandContext};
use chronicle::store::Store;
use chronicle_aggregates::task::{Task, TaskCommand, TaskFailure};
use chronicle_commands::task::NewTaskRequest;
use chronicle_projections::task_view::TaskView;
use chronicle_projections::usage::{GroupBy, UsageQuery, UsageRow, UsageView};
use chronicle_projections::ReadScope;
use chronicle_projections::{
    on_reader, AnyProjector, Projection, ProjectionError, Projector, ReadDb, ReadTx, RecordedEvent,
};
use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, Backend, TestApp, TestDb};

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

/// The usage projection applied one event at a time, for comparison with its batches.
struct EventByEvent;

impl Projection for EventByEvent {
    const NAME: &'static str = "usage_event_by_event";
    const VERSION: i64 = 1;

    async fn setup(&self, tx: &mut ReadTx) -> Result<(), sqlx::Error> {
        UsageView.setup(tx).await
    }

    async fn apply(&self, tx: &mut ReadTx, event: &RecordedEvent) -> Result<(), ProjectionError> {
        UsageView.apply(tx, event).await
    }
}

type FactRow = (
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
    Option<i64>,
    i64,
    i64,
);

/// Every stored row of the usage view, and its report under each grouping.
async fn usage_snapshot(
    db: &ReadDb,
) -> (
    Vec<FactRow>,
    Vec<(String, String, String, Option<i64>)>,
    Vec<Vec<UsageRow>>,
) {
    let facts: Vec<FactRow> = on_reader!(db, |pool| {
        sqlx::query_as(
            "SELECT task_id, sequence, kind, owner_id, capability, agent_id, at, day_utc,
                    duration_ms, input_tokens, output_tokens
               FROM usage_facts_v1 ORDER BY task_id, sequence",
        )
        .fetch_all(pool)
        .await
    })
    .unwrap();
    let tasks: Vec<(String, String, String, Option<i64>)> = on_reader!(db, |pool| {
        sqlx::query_as(
            "SELECT task_id, owner_id, capability, first_leased_at FROM usage_tasks_v1
              ORDER BY task_id",
        )
        .fetch_all(pool)
        .await
    })
    .unwrap();
    let mut reports = Vec::new();
    for group_by in [
        GroupBy::Day,
        GroupBy::Agent,
        GroupBy::Capability,
        GroupBy::User,
    ] {
        let query = UsageQuery {
            from: at(1, 0, 0),
            to: at(28, 0, 0),
            readers: ReadScope::All,
            team_id: None,
            group_by,
        };
        reports.push(UsageView::report(db, &query).await.unwrap());
    }
    (facts, tasks, reports)
}

async fn clear_usage(db: &ReadDb) {
    for statement in [
        "DELETE FROM usage_facts_v1",
        "DELETE FROM usage_tasks_v1",
        "UPDATE projection_checkpoints SET transaction_id = 0, position = 0 WHERE name = 'usage'",
    ] {
        match db {
            ReadDb::Postgres(pool) => sqlx::query(statement).execute(pool).await.map(|_| ()),
            ReadDb::Sqlite { writer, .. } => {
                sqlx::query(statement).execute(writer).await.map(|_| ())
            }
        }
        .unwrap();
    }
}

/// Catches `projector` up past everything written so far (on PostgreSQL, transactions of
/// other tests on the cluster may hold the feed's horizon back for a moment).
async fn catch_up_fully(store: &Store, projector: &dyn AnyProjector) {
    projector.setup().await.unwrap();
    let watermark = store.feed_watermark().await.unwrap();
    while !store.feed_reached(watermark).await.unwrap() {
        projector.catch_up().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    projector.catch_up().await.unwrap();
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_batch_applied_usage_view_equals_one_applied_event_by_event(#[case] backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let store = test_db.store(Default::default()).await;
    let driver = Driver {
        bus: CommandBus::new(store.clone()),
        agent: Uuid::now_v7(),
    };
    let owners = [Uuid::now_v7(), Uuid::now_v7()];
    // Lifecycles of every kind, their events interleaved across tasks (so that a batch
    // holds parts of many tasks and a task spans batches), over three days.
    let mut tasks = Vec::new();
    for n in 0..24i64 {
        let day = 3 + u32::try_from(n % 3).unwrap();
        let capability = ["x.alpha", "x.beta", "x.gamma"][usize::try_from(n % 3).unwrap()];
        let task = driver
            .create(
                owners[usize::try_from(n % 2).unwrap()],
                capability,
                2,
                at(day, 8, n),
            )
            .await;
        tasks.push((n, day, task));
    }
    let mut leases = Vec::new();
    for &(n, day, task) in &tasks {
        if n % 6 != 5 {
            leases.push(driver.lease(task, at(day, 9, n * 7)).await);
        } else {
            leases.push(Uuid::nil());
        }
    }
    for (&(n, day, task), &lease_id) in tasks.iter().zip(&leases) {
        let when = at(day, 9, 1_000 + n * 113);
        let command = match n % 6 {
            0 | 3 => TaskCommand::CompleteTask {
                lease_id,
                output: json!({"usage": {"input_tokens": n, "output_tokens": 2 * n}}),
                at: when,
            },
            1 | 4 => {
                driver.fail(task, lease_id, when).await;
                let again = driver.lease(task, at(day, 11, n * 31)).await;
                if n % 6 == 1 {
                    TaskCommand::CompleteTask {
                        lease_id: again,
                        output: json!({}),
                        at: at(day, 11, 2_000 + n * 57),
                    }
                } else {
                    driver.fail(task, again, at(day, 11, 2_000 + n * 57)).await;
                    // Failed for good, then queued again by hand and run once more.
                    driver
                        .run(task, TaskCommand::RetryTask { at: at(day, 13, 0) })
                        .await;
                    let third = driver.lease(task, at(day, 14, n)).await;
                    TaskCommand::CompleteTask {
                        lease_id: third,
                        output: json!({"usage": {"output_tokens": 5}}),
                        at: at(day, 14, 500 + n * 11),
                    }
                }
            }
            // Cancelled while an agent held it, and before any did.
            _ => TaskCommand::CancelTask {
                reason: None,
                at: when,
            },
        };
        driver.run(task, command).await;
    }

    let db = store.read_db();
    let by_event = Projector::new(EventByEvent, store.clone(), db.clone());
    catch_up_fully(&store, &by_event).await;
    // A report reads the task view for the teams of the tasks.
    let tasks = Projector::new(TaskView, store.clone(), db.clone());
    catch_up_fully(&store, &tasks).await;
    let expected = usage_snapshot(&db).await;
    assert_eq!(expected.1.len(), 24, "every task has its row");
    assert!(
        expected.0.iter().any(|fact| fact.2 == "retry") && expected.2[0].len() == 3,
        "{expected:?}"
    );
    // Batches small enough to cut lifecycles apart, and one batch for the whole feed.
    for batch in [7, 5_000] {
        clear_usage(&db).await;
        let batched =
            Projector::new(UsageView, store.clone(), db.clone()).with_db(db.clone(), batch);
        catch_up_fully(&store, batched.as_ref()).await;
        assert_eq!(usage_snapshot(&db).await, expected, "batches of {batch}");
    }
}
