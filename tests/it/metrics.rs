//! `GET /api/metrics` after a small workload: the Prometheus text parses, every family is
//! there, and the counts follow what was done; a configured token is required.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rstest::rstest;
use secrecy::SecretString;
use serde_json::{json, Value as Json};

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};

const FAMILIES: &[&str] = &[
    "chronicle_http_requests_total",
    "chronicle_http_request_duration_seconds",
    "chronicle_commands_total",
    "chronicle_command_duration_seconds",
    "chronicle_events_appended_total",
    "chronicle_queue_depth",
    "chronicle_dispatch_latency_seconds",
    "chronicle_task_duration_seconds",
    "chronicle_projection_position",
    "chronicle_projection_lag_events",
    "chronicle_projection_lag_seconds",
    "chronicle_projection_failures_total",
    "chronicle_agents_online",
    "chronicle_db_pool_connections",
    "chronicle_store_up",
    "chronicle_concurrency_conflicts_total",
];

/// One sample line of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: its samples and each family's `# TYPE`.
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

/// Parses the Prometheus text exposition format (0.0.4), panicking on any line that is not
/// a comment, a blank or a well-formed sample. Route templates hold `{…}` inside label
/// values, which a parser that stops labels at the first `}` gets wrong.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape {
        samples: Vec::new(),
        types: HashMap::new(),
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a TYPE line names a type");
            scrape.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices();
            loop {
                let (start, c) = chars.next().unwrap_or_else(|| panic!("unclosed: {line}"));
                if c == '}' {
                    rest = &after[start + 1..];
                    break;
                }
                if c == ',' {
                    continue;
                }
                let eq = after[start..]
                    .find("=\"")
                    .unwrap_or_else(|| panic!("label: {line}"));
                let key = after[start..start + eq].to_owned();
                for _ in 0..eq + 1 {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    match chars
                        .next()
                        .unwrap_or_else(|| panic!("unclosed value: {line}"))
                        .1
                    {
                        '"' => break,
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "a label twice: {line}");
            }
        }
        let value = rest.trim();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        scrape.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    scrape
}

async fn scrape_of(app: &TestApp) -> (String, Scrape) {
    let response = reqwest::get(app.url("/api/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let parsed = parse(&text);
    (text, parsed)
}

/// The sum of the samples named `name` that carry `labels`.
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0
}

/// Observations in the histogram `name`'s series that carry `labels`.
fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    assert_eq!(
        scrape.types.get(name).map(String::as_str),
        Some("histogram"),
        "{name} is a histogram"
    );
    total(scrape, &format!("{name}_count"), labels)
}

async fn post(app: &TestApp, path: &str, body: Json) -> Json {
    let response = app
        .client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_scrape_after_a_workload_shows_every_family_and_its_counts(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let agent = post(
        &app,
        "/api/agents/register",
        json!({"name": "metered", "kind": "remote", "capabilities": ["metrics.test"],
               "max_concurrency": 1}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    const CREATED: usize = 3;
    let mut tasks = Vec::new();
    for _ in 0..CREATED {
        let task = post(
            &app,
            "/api/tasks",
            json!({"capability": "metrics.test", "input": {}}),
        )
        .await;
        tasks.push(task["id"].as_str().unwrap().to_owned());
    }
    for task in &tasks {
        let response = app
            .client
            .get(app.url(&format!("/api/tasks/{task}")))
            .send()
            .await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    let leased = post(&app, &format!("/api/agents/{agent}/lease"), json!({})).await;
    let granted = &leased["tasks"][0];
    let (task, lease_id) = (
        granted["id"].as_str().unwrap(),
        granted["lease_id"].as_str().unwrap(),
    );
    let done = app
        .client
        .patch(app.url(&format!("/api/tasks/{task}")))
        .json(&json!({"status": "succeeded", "lease_id": lease_id, "output": {"ok": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let missing = app
        .client
        .get(app.url("/api/no-such-route/123"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let (text, scrape) = scrape_of(&app).await;
    for family in FAMILIES {
        assert!(
            scrape.types.contains_key(*family),
            "{family} missing from:\n{text}"
        );
    }
    // Routes by template, never by id.
    let created = total(
        &scrape,
        "chronicle_http_requests_total",
        &[
            ("route", "/api/tasks"),
            ("method", "POST"),
            ("status", "201"),
        ],
    );
    assert!(created >= CREATED as f64, "{created}:\n{text}");
    let read = total(
        &scrape,
        "chronicle_http_requests_total",
        &[
            ("route", "/api/tasks/{id}"),
            ("method", "GET"),
            ("status", "200"),
        ],
    );
    assert!(read >= CREATED as f64, "{read}:\n{text}");
    for task in &tasks {
        assert!(
            !text.contains(task.as_str()),
            "an id became a label:\n{text}"
        );
    }
    assert!(
        total(
            &scrape,
            "chronicle_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    assert!(
        observations(
            &scrape,
            "chronicle_http_request_duration_seconds",
            &[("route", "/api/tasks"), ("method", "POST")]
        ) >= CREATED as f64
    );
    // The bus, the store and the dispatcher.
    let labels = [
        ("aggregate", "task"),
        ("command", "CreateTask"),
        ("outcome", "ok"),
    ];
    assert!(total(&scrape, "chronicle_commands_total", &labels) >= CREATED as f64);
    assert!(observations(&scrape, "chronicle_command_duration_seconds", &labels) >= CREATED as f64);
    assert!(
        total(
            &scrape,
            "chronicle_events_appended_total",
            &[("aggregate", "task")]
        ) >= (CREATED + 2) as f64
    );
    let capability = [("capability", "metrics.test")];
    assert!(observations(&scrape, "chronicle_dispatch_latency_seconds", &capability) >= 1.0);
    let succeeded = [("capability", "metrics.test"), ("outcome", "succeeded")];
    assert!(observations(&scrape, "chronicle_task_duration_seconds", &succeeded) >= 1.0);
    // Read from this server's store when scraped: two still wait.
    assert_eq!(
        total(&scrape, "chronicle_queue_depth", &capability),
        (CREATED - 1) as f64
    );
    assert_eq!(total(&scrape, "chronicle_agents_online", &[]), 1.0);
    assert_eq!(
        total(
            &scrape,
            "chronicle_projection_failures_total",
            &[("projection", "task_view")]
        ),
        0.0
    );
    // The projector checkpoints in the background: later scrapes see it move.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (text, later) = scrape_of(&app).await;
        let position = total(
            &later,
            "chronicle_projection_position",
            &[("projection", "task_view")],
        );
        let lag = total(
            &later,
            "chronicle_projection_lag_events",
            &[("projection", "task_view")],
        );
        if position > 0.0 && lag == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "task_view never caught up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(total(&scrape, "chronicle_db_pool_connections", &[]) >= 1.0);
    assert_eq!(total(&scrape, "chronicle_store_up", &[]), 1.0);
    // A series from the start, so "no conflicts" is a 0, not an absent series.
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.name == "chronicle_concurrency_conflicts_total"
                && s.labels.get("aggregate").map(String::as_str) == Some("task")),
        "no conflict series for tasks:\n{text}"
    );
}

#[tokio::test]
async fn a_metrics_token_is_required_once_configured() {
    let app = spawn_app_with(Backend::Sqlite, |settings| {
        settings.metrics.token = Some(SecretString::from("scrape-secret"));
    })
    .await;
    let url = app.url("/api/metrics");
    let client = reqwest::Client::new();
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["content-type"], "application/problem+json");
    let wrong = client
        .get(&url)
        .bearer_auth("scrape-secreT")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = client
        .get(&url)
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert!(right
        .text()
        .await
        .unwrap()
        .contains("# TYPE chronicle_http_requests_total counter"));
}
