//! Two real server processes on one PostgreSQL drive the same workflow runs: agents lease
//! on one node and report on the other, runs start on both, and both drivers (each
//! reacting to its own commits and sweeping every run) race for every step. Every run
//! still succeeds with every step's task created, started and run exactly once.

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use chronicle::process::workflows::step_task_id;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::crash::{free_port, start};
use crate::helpers::{bearer_client, Backend, TestDb, PASSWORD};

/// Runs started, all in flight at once.
const RUNS: usize = 24;
/// Parallel steps between the root and the join.
const WIDTH: usize = 4;

struct Node {
    base: String,
    process: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

async fn json_of(response: reqwest::Response, expected: StatusCode) -> Value {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, expected, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Root → `WIDTH` steps in parallel → join, each step's input naming it.
fn fan_out() -> Value {
    let step = |id: &str, depends_on: Vec<String>| {
        json!({"id": id, "capability": "nodes.step", "depends_on": depends_on,
               "input": {"step": id}})
    };
    let middle: Vec<String> = (0..WIDTH).map(|n| format!("p{n}")).collect();
    let mut steps = vec![step("root", vec![])];
    steps.extend(middle.iter().map(|id| step(id, vec!["root".into()])));
    steps.push(step("join", middle));
    json!({"name": "fan out on two nodes", "steps": steps})
}

fn step_ids() -> Vec<String> {
    let mut ids = vec!["root".to_owned(), "join".to_owned()];
    ids.extend((0..WIDTH).map(|n| format!("p{n}")));
    ids
}

/// Leases on `lease_on` and reports each task succeeded on `report_on`, until `stop`.
async fn agent(
    client: reqwest::Client,
    agent_id: String,
    lease_on: String,
    report_on: String,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let lease = client
            .post(format!("{lease_on}/api/agents/{agent_id}/lease"))
            .json(&json!({"max_tasks": 5, "wait_secs": 1}))
            .send();
        let response = tokio::select! {
            () = stop.cancelled() => return,
            response = lease => response.unwrap(),
        };
        let answer = json_of(response, StatusCode::OK).await;
        for task in answer["tasks"].as_array().unwrap() {
            let id = task["id"].as_str().unwrap();
            let response = client
                .patch(format!("{report_on}/api/tasks/{id}"))
                .json(&json!({"status": "succeeded", "lease_id": task["lease_id"],
                              "output": {"step": task["input"]["step"]}}))
                .send()
                .await
                .unwrap();
            json_of(response, StatusCode::OK).await;
        }
    }
}

#[tokio::test]
async fn two_nodes_driving_the_same_runs_start_every_step_exactly_once() {
    let db = TestDb::new(Backend::Postgres).await;
    // The second node starts once the first is up: it has written the signing key both
    // share (the data dir is one).
    let (port_a, port_b) = (free_port(), free_port());
    let a = Node {
        base: format!("http://127.0.0.1:{port_a}"),
        process: start(&db, port_a).await,
    };
    let b = Node {
        base: format!("http://127.0.0.1:{port_b}"),
        process: start(&db, port_b).await,
    };
    let registered = json_of(
        reqwest::Client::new()
            .post(format!("{}/api/auth/register", a.base))
            .json(&json!({"email": "nodes@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let client = bearer_client(registered["access_token"].as_str().unwrap());
    let workflow = json_of(
        client
            .post(format!("{}/api/workflows", a.base))
            .json(&fan_out())
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let workflow_id = workflow["id"].as_str().unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let mut agents = Vec::new();
    for n in 0..4 {
        let registration = json_of(
            client
                .post(format!("{}/api/agents/register", a.base))
                .json(&json!({"name": format!("agent {n}"), "kind": "remote",
                              "capabilities": ["nodes.step"], "max_concurrency": 5}))
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        let (lease_on, report_on) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        agents.push(tokio::spawn(agent(
            client.clone(),
            registration["id"].as_str().unwrap().to_owned(),
            lease_on.base.clone(),
            report_on.base.clone(),
            stop.clone(),
        )));
    }

    let mut runs = Vec::new();
    for n in 0..RUNS {
        let node = if n % 2 == 0 { &a } else { &b };
        let run = json_of(
            client
                .post(format!("{}/api/workflows/{workflow_id}/execute", node.base))
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
            StatusCode::ACCEPTED,
        )
        .await;
        runs.push(run["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    for run_id in &runs {
        loop {
            let run = json_of(
                client
                    .get(format!("{}/api/workflow-runs/{run_id}", b.base))
                    .send()
                    .await
                    .unwrap(),
                StatusCode::OK,
            )
            .await;
            if run["status"] != "running" {
                assert_eq!(run["status"], "succeeded", "{run}");
                for step in step_ids() {
                    assert_eq!(
                        run["steps"][&step]["task_id"],
                        step_task_id(*run_id, &step, 1).to_string(),
                        "{run}"
                    );
                }
                break;
            }
            assert!(Instant::now() < deadline, "run never ended: {run}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    for agent in agents {
        agent.await.unwrap();
    }

    for run_id in &runs {
        // One task per step, each the step's derived one.
        let tasks = json_of(
            client
                .get(format!("{}/api/tasks?workflow_run_id={run_id}", a.base))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let mut ids: Vec<String> = tasks["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|task| task["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        let mut expected: Vec<String> = step_ids()
            .iter()
            .map(|step| step_task_id(*run_id, step, 1).to_string())
            .collect();
        expected.sort();
        assert_eq!(ids, expected, "{tasks}");
        // Each task created once, leased once, succeeded once.
        for id in &ids {
            let events = json_of(
                client
                    .get(format!("{}/api/tasks/{id}/events", b.base))
                    .send()
                    .await
                    .unwrap(),
                StatusCode::OK,
            )
            .await;
            let mut counts = HashMap::<String, usize>::new();
            for event in events.as_array().unwrap() {
                *counts
                    .entry(event["event_type"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            assert_eq!(counts.get("TaskCreated"), Some(&1), "{events}");
            assert_eq!(counts.get("TaskSucceeded"), Some(&1), "{events}");
        }
        // The run started each step once and succeeded once. The feed serves what its
        // scope has caught up with, so the last event may take a moment to appear.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (feed, started, succeeded_runs) = loop {
            let feed = json_of(
                client
                    .get(format!(
                        "{}/api/events?aggregate_id={run_id}&limit=500",
                        a.base
                    ))
                    .send()
                    .await
                    .unwrap(),
                StatusCode::OK,
            )
            .await;
            let mut started = HashMap::<String, usize>::new();
            let mut succeeded_runs = 0;
            for event in feed["items"].as_array().unwrap() {
                match event["event_type"].as_str().unwrap() {
                    "WorkflowStepStarted" => {
                        let step = event["payload"]["step_id"].as_str().unwrap().to_owned();
                        *started.entry(step).or_default() += 1;
                    }
                    "WorkflowRunSucceeded" => succeeded_runs += 1,
                    _ => {}
                }
            }
            if succeeded_runs > 0 || Instant::now() > deadline {
                break (feed, started, succeeded_runs);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(succeeded_runs, 1, "{feed}");
        assert_eq!(started.len(), step_ids().len(), "{feed}");
        assert!(started.values().all(|&n| n == 1), "{started:?}");
    }
}
