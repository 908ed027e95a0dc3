//! Dispatch limits that hold across nodes: an agent's `max_concurrency`, counted in the
//! lease's own transaction, and no lease for an agent that drained or left.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chronicle::bus::{CommandBus, CommandContext, CommandError};
use chronicle::process::dispatch::{lease_ready, DispatchError};
use chronicle::read_side::ReadSide;
use chronicle::store::{Backend as StoreBackend, LeaseSlot, Store, StoreError};
use chronicle_aggregates::agent::Agent;
use chronicle_aggregates::task::{Task, TaskCommand, TaskError};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, Backend, TestApp};

/// Tasks whose latest event leaves them held (leased or running), in one snapshot of the
/// event store: the truth at one moment, not a view that may lag.
async fn held_now(store: &Store) -> i64 {
    const SQL: &str = "SELECT count(*) FROM events e
         WHERE e.aggregate_type = 'task'
           AND e.event_type IN ('TaskLeased', 'TaskStarted', 'TaskProgressed', 'LeaseExtended')
           AND e.sequence = (SELECT max(sequence) FROM events l
                              WHERE l.aggregate_type = 'task' AND l.aggregate_id = e.aggregate_id)";
    match store.backend() {
        StoreBackend::Postgres(pg) => sqlx::query_scalar(SQL).fetch_one(pg.pool()).await,
        StoreBackend::Sqlite(lite) => sqlx::query_scalar(SQL).fetch_one(lite.reader()).await,
    }
    .unwrap()
}

async fn register_agent(client: &reqwest::Client, node: &str, max_concurrency: u32) -> String {
    let response = client
        .post(format!("{node}/api/agents/register"))
        .json(&json!({
            "name": "limited", "kind": "remote",
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

async fn create_task(client: &reqwest::Client, node: &str) -> String {
    let response = client
        .post(format!("{node}/api/tasks"))
        .json(&json!({"capability": "x.work", "timeout_secs": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Leasers long-poll for one agent (`max_concurrency` 2) through every node at once while
/// tasks arrive in bursts; each leased task is held a moment and completed. A sampler
/// counts the held tasks in the event store meanwhile: never more than 2.
async fn limit_holds(app: &TestApp, nodes: &[String], leasers_per_node: usize) {
    const TASKS: usize = 40;
    let client = app.client.clone();
    let agent = register_agent(&client, &nodes[0], 2).await;
    let store = app.db.store(Default::default()).await;
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));

    let sampler = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(held_now(&store).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        })
    };
    let mut leasers = Vec::new();
    for node in nodes {
        for _ in 0..leasers_per_node {
            let (client, node, agent) = (client.clone(), node.clone(), agent.clone());
            let (done, completed) = (done.clone(), completed.clone());
            leasers.push(tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let response = client
                        .post(format!("{node}/api/agents/{agent}/lease"))
                        .json(&json!({"max_tasks": 2, "wait_secs": 1}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    let answer: Value = response.json().await.unwrap();
                    for task in answer["tasks"].as_array().unwrap() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let id = task["id"].as_str().unwrap();
                        let reported = client
                            .patch(format!("{node}/api/tasks/{id}"))
                            .json(&json!({
                                "status": "succeeded", "lease_id": task["lease_id"], "output": 1,
                            }))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(reported.status(), StatusCode::OK);
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    // Bursts, through every node, so that polls on both wake together.
    for burst in 0..TASKS / 10 {
        let creates = (0..10).map(|i| {
            let node = &nodes[(burst + i) % nodes.len()];
            create_task(&client, node)
        });
        futures::future::join_all(creates).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
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
    assert!(most <= 2, "the agent held {most} leases at once");
    assert_eq!(completed.load(Ordering::Relaxed), TASKS);
}

#[tokio::test]
async fn an_agents_limit_holds_across_two_nodes() {
    let app = spawn_app(Backend::Postgres).await.signed_in().await;
    let (second, _stop) = app.second_node(|_| {}).await;
    limit_holds(&app, &[app.address.clone(), second], 4).await;
}

#[tokio::test]
async fn an_agents_limit_holds_for_concurrent_leases_on_sqlite() {
    let app = spawn_app(Backend::Sqlite).await.signed_in().await;
    limit_holds(&app, std::slice::from_ref(&app.address), 6).await;
}

async fn lease_with(
    bus: &CommandBus,
    task: &str,
    agent: Uuid,
    slot: &LeaseSlot,
) -> Result<(), CommandError<TaskError>> {
    bus.lease::<Task, CommandError<TaskError>>(task, &CommandContext::default(), slot, |_| {
        Ok(TaskCommand::LeaseTask {
            agent_id: agent,
            lease_id: Uuid::now_v7(),
            at: chrono::Utc::now(),
        })
    })
    .await
    .map(|_| ())
}

/// The store decides: a lease past the agent's limit, or after the agent deregistered, is
/// refused in the lease's own transaction and leaves the task ready.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_lease_refuses_a_full_or_deregistered_agent(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let store = app.db.store(Default::default()).await;
    let bus = CommandBus::new(store.clone());
    let task = |id: &str| {
        let (client, url) = (app.client.clone(), app.url(&format!("/api/tasks/{id}")));
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    // One slot: the first lease takes it, the second is refused.
    let full_id = register_agent(&app.client, &app.address, 1).await;
    let full = store.aggregate::<Agent>().load(&full_id).await.unwrap();
    let slot = LeaseSlot {
        agent_id: full_id.clone(),
        agent_version: full.version,
        max_concurrency: 1,
        key: None,
    };
    let full_agent = Uuid::parse_str(&full_id).unwrap();
    let (first, second) = (
        create_task(&app.client, &app.address).await,
        create_task(&app.client, &app.address).await,
    );
    lease_with(&bus, &first, full_agent, &slot).await.unwrap();
    let refused = lease_with(&bus, &second, full_agent, &slot).await;
    assert!(
        matches!(refused, Err(CommandError::Store(StoreError::NoFreeSlot))),
        "{refused:?}"
    );
    assert_eq!(task(&second).await["status"], "queued");

    // Deregistered after the dispatcher loaded it: the store refuses, the tasks stay ready.
    let agent_id = register_agent(&app.client, &app.address, 4).await;
    let loaded = store.aggregate::<Agent>().load(&agent_id).await.unwrap();
    let state = loaded.aggregate.state().unwrap().clone();
    let ready = [
        create_task(&app.client, &app.address).await,
        create_task(&app.client, &app.address).await,
    ];
    let gone = app
        .client
        .delete(app.url(&format!("/api/agents/{agent_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let read = read_side(&store).await;
    let stale = lease_ready(
        &bus,
        &read,
        &state,
        loaded.version,
        4,
        &CommandContext::default(),
    )
    .await;
    assert!(
        matches!(stale, Err(DispatchError::AgentRetired)),
        "{:?}",
        stale.map(|granted| granted.len())
    );
    let slot = LeaseSlot {
        agent_id: agent_id.clone(),
        agent_version: loaded.version,
        max_concurrency: 4,
        key: None,
    };
    let refused = lease_with(&bus, &ready[0], state.id, &slot).await;
    assert!(
        matches!(refused, Err(CommandError::Store(StoreError::AgentRetired))),
        "{refused:?}"
    );
    for id in ready.iter().chain([&second]) {
        assert_eq!(task(id).await["status"], "queued", "{id}");
    }
    // Through HTTP, the deregistered agent's lease is a 409.
    let lease = app
        .client
        .post(app.url(&format!("/api/agents/{agent_id}/lease")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(lease.status(), StatusCode::CONFLICT);
}

/// The test's own read side beside the server's; on SQLite its set-up can lose the write
/// lock to the server, which is retried.
async fn read_side(store: &Store) -> ReadSide {
    for _ in 0..40 {
        match ReadSide::start(store).await {
            Ok(read) => return read,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    ReadSide::start(store).await.unwrap()
}

/// A long-poll whose client goes away after its lease was sent to be committed keeps no
/// task: the task is leasable by another agent well before the lease (600 s) runs out.
/// The test holds a lock on the lease slots, so the lease's transaction waits while the
/// client leaves and commits only after the server dropped the request (PostgreSQL: its
/// group commit writes a command whose caller is still waiting when the batch is taken).
#[tokio::test]
async fn a_lease_whose_answer_cannot_be_delivered_is_returned() {
    use tokio::io::AsyncWriteExt;

    let app = spawn_app(Backend::Postgres).await;
    let user = app.register_user().await;
    let token = user.body["access_token"].as_str().unwrap().to_owned();
    let gone = register_agent(&user.client, &app.address, 1).await;
    let other = register_agent(&user.client, &app.address, 1).await;
    let task = create_task(&user.client, &app.address).await;

    let store = app.db.store(Default::default()).await;
    let StoreBackend::Postgres(pg) = store.backend() else {
        unreachable!("a PostgreSQL test");
    };
    let mut blocker = pg.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE lease_slots IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let body = r#"{"wait_secs":30}"#;
    let request = format!(
        "POST /api/agents/{gone}/lease HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.flush().await.unwrap();
    // The lease waits on the lock; the client goes away; then the lease commits.
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.rollback().await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = user
            .client
            .post(app.url(&format!("/api/agents/{other}/lease")))
            .json(&json!({"wait_secs": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let answer: Value = response.json().await.unwrap();
        if let Some(leased) = answer["tasks"].as_array().unwrap().first() {
            assert_eq!(leased["id"], task.as_str());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task stayed with the agent that went away"
        );
    }
    // The agent that went away was granted it first, and it came back undelivered.
    let events: Value = user
        .client
        .get(app.url(&format!("/api/tasks/{task}/events")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failed = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "TaskAttemptFailed")
        .unwrap_or_else(|| panic!("no failed attempt: {events:#}"));
    assert_eq!(failed["payload"]["agent_id"], gone.as_str(), "{failed:#}");
    assert_eq!(failed["payload"]["error"]["code"], "delivery_failed");
}
