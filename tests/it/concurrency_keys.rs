//! Concurrency keys: at most `concurrency_limit` tasks of one owner with one
//! `concurrency_key` are held at once, on however many nodes; the others wait in priority,
//! then age, order without standing in front of other work.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chronicle::store::{Backend as StoreBackend, Store};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Backend, TestApp};

/// The tasks whose latest event leaves them held (leased or running), in one snapshot of
/// the event store: the truth at one moment, not a view that may lag.
async fn held_now(store: &Store) -> HashSet<String> {
    const SQL: &str = "SELECT e.aggregate_id FROM events e
         WHERE e.aggregate_type = 'task'
           AND e.event_type IN ('TaskLeased', 'TaskStarted', 'TaskProgressed', 'LeaseExtended')
           AND e.sequence = (SELECT max(sequence) FROM events l
                              WHERE l.aggregate_type = 'task' AND l.aggregate_id = e.aggregate_id)";
    let rows: Vec<String> = match store.backend() {
        StoreBackend::Postgres(pg) => sqlx::query_scalar(SQL).fetch_all(pg.pool()).await,
        StoreBackend::Sqlite(lite) => sqlx::query_scalar(SQL).fetch_all(lite.reader()).await,
    }
    .unwrap();
    rows.into_iter().collect()
}

fn held_of(held: &HashSet<String>, group: &[String]) -> usize {
    group.iter().filter(|id| held.contains(*id)).count()
}

async fn register_agent(client: &reqwest::Client, node: &str, max_concurrency: u32) -> String {
    let response = client
        .post(format!("{node}/api/agents/register"))
        .json(&json!({
            "name": "keyed", "kind": "remote",
            "capabilities": ["x.work"], "max_concurrency": max_concurrency,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Creates an `x.work` task with `extra` fields; answers its id.
async fn create(client: &reqwest::Client, node: &str, extra: Value) -> String {
    let mut body = json!({"capability": "x.work", "timeout_secs": 600});
    for (field, value) in extra.as_object().unwrap() {
        body[field] = value.clone();
    }
    let response = client
        .post(format!("{node}/api/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn create_keyed(client: &reqwest::Client, node: &str, key: &str, limit: u32) -> String {
    create(
        client,
        node,
        json!({"concurrency_key": key, "concurrency_limit": limit}),
    )
    .await
}

/// One lease call: the leased tasks (`id`, `lease_id`).
async fn lease(client: &reqwest::Client, node: &str, agent: &str, wait_secs: u32) -> Vec<Value> {
    let response = client
        .post(format!("{node}/api/agents/{agent}/lease"))
        .json(&json!({"max_tasks": 10, "wait_secs": wait_secs}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    answer["tasks"].as_array().unwrap().clone()
}

fn ids(tasks: &[Value]) -> HashSet<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn complete(client: &reqwest::Client, node: &str, task: &Value) {
    let id = task["id"].as_str().unwrap();
    let reported = client
        .patch(format!("{node}/api/tasks/{id}"))
        .json(&json!({"status": "succeeded", "lease_id": task["lease_id"], "output": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(reported.status(), StatusCode::OK);
}

/// Five tasks of `example.com` (limit 2) and three of `other.org` (limit 3), an agent
/// that may hold ten: two of the first key and all of the other are leased, the rest of
/// the first key wait — and a waiting long-poll gets the next one when one of the two
/// completes.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_key_holds_its_limit_without_blocking_other_keys(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let (client, node) = (app.client.clone(), app.address.clone());
    let store = app.db.store(Default::default()).await;
    let agent = register_agent(&client, &node, 10).await;
    let mut busy = Vec::new();
    for _ in 0..5 {
        busy.push(create_keyed(&client, &node, "example.com", 2).await);
    }
    let mut other = Vec::new();
    for _ in 0..3 {
        other.push(create_keyed(&client, &node, "other.org", 3).await);
    }
    let shown: Value = client
        .get(format!("{node}/api/tasks/{}", busy[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["concurrency_key"], "example.com");
    assert_eq!(shown["concurrency_limit"], 2);

    // Every lease call until nothing more is handed out.
    let mut leased = Vec::new();
    loop {
        let got = lease(&client, &node, &agent, 0).await;
        if got.is_empty() {
            break;
        }
        leased.extend(got);
        assert!(leased.len() <= 5, "{leased:#?}");
    }
    let expected: HashSet<String> = busy[..2].iter().chain(&other).cloned().collect();
    assert_eq!(
        ids(&leased),
        expected,
        "the oldest two of the key, and the other key"
    );
    let held = held_now(&store).await;
    assert_eq!(held_of(&held, &busy), 2);
    assert_eq!(held_of(&held, &other), 3);

    // A long-poll waits (the key is full, the agent is not); a completion wakes it.
    let waiting = {
        let (client, node, agent) = (client.clone(), node.clone(), agent.clone());
        tokio::spawn(async move { lease(&client, &node, &agent, 20).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = leased.iter().find(|t| t["id"] == busy[0].as_str()).unwrap();
    complete(&client, &node, first).await;
    let next = waiting.await.unwrap();
    assert_eq!(ids(&next), HashSet::from([busy[2].clone()]));
    let held = held_now(&store).await;
    assert_eq!(held_of(&held, &busy), 2);
    assert!(lease(&client, &node, &agent, 0).await.is_empty());
}

/// Within a key, tasks go by priority (9 first), then age.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_keys_tasks_go_by_priority_then_age(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let (client, node) = (app.client.clone(), app.address.clone());
    let agent = register_agent(&client, &node, 10).await;
    let mut tasks = Vec::new();
    for priority in [5, 9, 5, 9] {
        let extra = json!({"concurrency_key": "k", "priority": priority});
        tasks.push(create(&client, &node, extra).await);
    }
    let order = [&tasks[1], &tasks[3], &tasks[0], &tasks[2]];
    for expected in order {
        let got = lease(&client, &node, &agent, 5).await;
        assert_eq!(ids(&got), HashSet::from([expected.clone()]));
        complete(&client, &node, &got[0]).await;
    }
    assert!(lease(&client, &node, &agent, 0).await.is_empty());
}

/// A key is its owner's: two users' tasks with the same key do not share its slots.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn two_owners_keys_do_not_share_slots(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let node = app.address.clone();
    let mut users = Vec::new();
    for _ in 0..2 {
        let user = app.register_user().await;
        let agent = register_agent(&user.client, &node, 10).await;
        let tasks = [
            create_keyed(&user.client, &node, "shared", 1).await,
            create_keyed(&user.client, &node, "shared", 1).await,
        ];
        users.push((user, agent, tasks));
    }
    for (user, agent, tasks) in &users {
        let got = lease(&user.client, &node, agent, 5).await;
        assert_eq!(ids(&got), HashSet::from([tasks[0].clone()]));
    }
}

/// A bad key or limit is a 422 naming the field, and creates nothing.
#[rstest]
#[case::empty(json!({"concurrency_key": ""}), "concurrency_key")]
#[case::too_long(json!({"concurrency_key": "k".repeat(201)}), "concurrency_key")]
#[case::control(json!({"concurrency_key": "a\u{7}b"}), "concurrency_key")]
#[case::zero(json!({"concurrency_key": "k", "concurrency_limit": 0}), "concurrency_limit")]
#[case::too_many(json!({"concurrency_key": "k", "concurrency_limit": 1001}), "concurrency_limit")]
#[case::no_key(json!({"concurrency_limit": 2}), "concurrency_limit")]
#[tokio::test]
async fn bad_keys_and_limits_are_refused(#[case] extra: Value, #[case] field: &str) {
    let app = spawn_app(Backend::Sqlite).await.signed_in().await;
    let mut body = json!({"capability": "x.work"});
    for (name, value) in extra.as_object().unwrap() {
        body[name] = value.clone();
    }
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    let named: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(named, [field], "{problem:#}");
    let listed: Value = app
        .client
        .get(app.url("/api/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "{listed:#}"
    );
}

/// Leasers long-poll for one agent (`max_concurrency` 10) through both nodes at once
/// while keyed tasks (limit 2) arrive; each leased task is held a moment and completed.
/// A sampler reads the event store meanwhile: never more than 2 of the key held.
#[tokio::test]
async fn a_keys_limit_holds_across_two_nodes() {
    const TASKS: usize = 30;
    let app: TestApp = spawn_app(Backend::Postgres).await.signed_in().await;
    let (second, _stop) = app.second_node(|_| {}).await;
    let nodes = [app.address.clone(), second];
    let client = app.client.clone();
    let agent = register_agent(&client, &nodes[0], 10).await;
    let store = app.db.store(Default::default()).await;
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));

    let mut keyed = Vec::new();
    for i in 0..TASKS {
        keyed.push(create_keyed(&client, &nodes[i % 2], "example.com", 2).await);
    }
    let sampler = {
        let (store, done, keyed) = (store.clone(), done.clone(), keyed.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(held_of(&held_now(&store).await, &keyed));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        })
    };
    let mut leasers = Vec::new();
    for node in &nodes {
        for _ in 0..3 {
            let (client, node, agent) = (client.clone(), node.clone(), agent.clone());
            let (done, completed) = (done.clone(), completed.clone());
            leasers.push(tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    for task in lease(&client, &node, &agent, 1).await {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        complete(&client, &node, &task).await;
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while completed.load(Ordering::Relaxed) < TASKS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {TASKS} tasks completed",
            completed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);
    for leaser in leasers {
        leaser.await.unwrap();
    }
    let most = sampler.await.unwrap();
    assert!(most <= 2, "the key held {most} leases at once");
    assert_eq!(completed.load(Ordering::Relaxed), TASKS);
}

/// The store decides: a lease past its key's limit is refused in the lease's own
/// transaction (whatever the view said) and leaves the task ready; once the holder's task
/// ends, the next lease of the key fits.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_lease_refuses_a_full_key(#[case] backend: Backend) {
    use chronicle::bus::{CommandBus, CommandContext, CommandError};
    use chronicle::store::{KeySlot, LeaseSlot, StoreError};
    use chronicle_aggregates::agent::Agent;
    use chronicle_aggregates::task::{Task, TaskCommand, TaskError};
    use uuid::Uuid;

    let app = spawn_app(backend).await.signed_in().await;
    let (client, node) = (app.client.clone(), app.address.clone());
    let store = app.db.store(Default::default()).await;
    let bus = CommandBus::new(store.clone());
    let agent_id = register_agent(&client, &node, 4).await;
    let agent = store.aggregate::<Agent>().load(&agent_id).await.unwrap();
    let owner = agent.aggregate.state().unwrap().owner_id;
    let tasks = [
        create_keyed(&client, &node, "example.com", 1).await,
        create_keyed(&client, &node, "example.com", 1).await,
    ];
    let slot = LeaseSlot {
        agent_id: agent_id.clone(),
        agent_version: agent.version,
        max_concurrency: 4,
        key: Some(KeySlot {
            owner_id: owner.to_string(),
            key: "example.com".into(),
            limit: 1,
        }),
    };
    let lease = |task: String| {
        let (bus, slot) = (bus.clone(), slot.clone());
        let agent = Uuid::parse_str(&agent_id).unwrap();
        async move {
            bus.lease::<Task, CommandError<TaskError>>(
                &task,
                &CommandContext::default(),
                &slot,
                |_| {
                    Ok(TaskCommand::LeaseTask {
                        agent_id: agent,
                        lease_id: Uuid::now_v7(),
                        at: chrono::Utc::now(),
                    })
                },
            )
            .await
            .map(|_| ())
        }
    };
    let status = |id: &str| {
        let (client, url) = (client.clone(), format!("{node}/api/tasks/{id}"));
        async move {
            let task: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            task["status"].clone()
        }
    };
    lease(tasks[0].clone()).await.unwrap();
    let refused = lease(tasks[1].clone()).await;
    assert!(
        matches!(refused, Err(CommandError::Store(StoreError::KeyBusy))),
        "{refused:?}"
    );
    assert_eq!(status(&tasks[1]).await, "queued");
    let cancelled = client
        .delete(format!("{node}/api/tasks/{}", tasks[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    lease(tasks[1].clone()).await.unwrap();
    // The test's own bus writes no view: the event store says who holds what.
    assert_eq!(held_now(&store).await, HashSet::from([tasks[1].clone()]));
}
