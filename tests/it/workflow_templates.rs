//! The built-in workflow templates over HTTP: listed with their params and steps, each
//! instantiated into an ordinary workflow, bad templates and params refused by field, and
//! `monitor-page` run end to end on a schedule by the built-in HTTP agent against a local
//! page — it notifies only when the page changed since the previous run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::{Json, Router};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Backend};
use crate::schedules::send;

fn fields(problem: &Value) -> Vec<String> {
    let mut fields: Vec<String> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    fields.sort();
    fields
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn templates_are_listed_and_instantiated_as_ordinary_workflows(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let (status, list) = send(app.client.get(app.url("/api/workflow-templates"))).await;
    assert_eq!(status, StatusCode::OK);
    let templates = list["items"].as_array().unwrap();
    let names: Vec<&str> = templates
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["research-topic", "monitor-page", "form-fill-with-approval"]
    );
    let research = &templates[0];
    assert_eq!(research["params"]["topic"], json!({"type": "string"}));
    assert_eq!(research["params"]["max_results"]["default"], 3);
    let capabilities: Vec<&str> = research["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["capability"].as_str().unwrap())
        .collect();
    assert_eq!(
        capabilities,
        [
            "http.request",
            "browser.open_links",
            "browser.extract",
            "llm.chat"
        ]
    );
    let form = &templates[2];
    assert!(form["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["approval"]["prompt"].is_string()));

    let given = [
        json!({"topic": "event sourcing"}),
        json!({"url": "https://example.com/", "notify_url": "https://hooks.example.com/x"}),
        json!({"url": "https://example.com/signup", "fields": {"#email": "a@example.com"}}),
    ];
    for (template, params) in templates.iter().zip(given) {
        let (status, workflow) = send(app.client.post(app.url("/api/workflows")).json(&json!({
            "template": template["name"],
            "params": params,
        })))
        .await;
        assert_eq!(status, StatusCode::CREATED, "{workflow}");
        assert_eq!(workflow["name"], template["name"]);
        assert_eq!(workflow["version"], 1);
        assert_eq!(workflow["steps"], template["steps"]);
        for (name, value) in params.as_object().unwrap() {
            assert_eq!(workflow["params"][name]["default"], *value, "{name}");
        }
        // An ordinary workflow: listed, readable, executable.
        let id = workflow["id"].as_str().unwrap();
        let (status, read) = send(app.client.get(app.url(&format!("/api/workflows/{id}")))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read["steps"], template["steps"]);
    }
    let (_, mine) = send(app.client.get(app.url("/api/workflows"))).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 3);

    let (status, named) = send(app.client.post(app.url("/api/workflows")).json(&json!({
        "template": "monitor-page",
        "name": "Prices",
        "params": {"url": "https://example.com/prices", "notify_url": "https://hooks.example.com/p"},
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(named["name"], "Prices");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_unknown_template_or_bad_params_are_refused_by_field(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let refused = |body: Value| {
        let request = app.client.post(app.url("/api/workflows")).json(&body);
        async move {
            let (status, problem) = send(request).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
            fields(&problem)
        }
    };
    assert_eq!(refused(json!({"template": "nope"})).await, ["template"]);
    assert_eq!(
        refused(json!({"template": "research-topic", "params": {"topic": 1, "depth": 2}})).await,
        ["params.depth", "params.topic"]
    );
    assert_eq!(
        refused(json!({"template": "form-fill-with-approval", "params": {"fields": "x"}})).await,
        ["params.fields"]
    );
    // A template request is not also a definition.
    refused(json!({"template": "monitor-page", "steps": []})).await;
    assert_eq!(
        refused(json!({"template": "monitor-page", "name": ""})).await,
        ["name"],
        "the result is validated like any definition"
    );
    let (_, mine) = send(app.client.get(app.url("/api/workflows"))).await;
    assert_eq!(mine["items"], json!([]), "nothing was made");
}

/// A page whose body the test changes, and a hook that keeps what it is sent.
#[derive(Clone, Default)]
struct Site {
    page: Arc<Mutex<String>>,
    notified: Arc<Mutex<Vec<Value>>>,
}

impl Site {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        let (page, notified) = (self.page.clone(), self.notified.clone());
        let app = Router::new()
            .route(
                "/page",
                get(move || {
                    let page = page.clone();
                    async move { page.lock().unwrap().clone() }
                }),
            )
            .route(
                "/hook",
                post(move |Json(body): Json<Value>| {
                    let notified = notified.clone();
                    async move {
                        notified.lock().unwrap().push(body);
                        "ok"
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn monitor_page_on_a_schedule_notifies_only_when_the_page_changed(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.http_agent.enabled = true;
        s.http_agent.allow_private = true;
    })
    .await
    .signed_in()
    .await;
    let site = Site::default();
    *site.page.lock().unwrap() = "price: 10".into();
    let base = site.start().await;
    let (status, workflow) = send(app.client.post(app.url("/api/workflows")).json(&json!({
        "template": "monitor-page",
        "params": {"url": format!("{base}/page"), "notify_url": format!("{base}/hook")},
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{workflow}");
    let id = workflow["id"].as_str().unwrap();
    let (status, schedule) = send(
        app.client
            .post(app.url(&format!("/api/workflows/{id}/schedules")))
            .json(&json!({"cron": "*/1 * * * * *"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");

    let succeeded = || async {
        let (_, status) = send(
            app.client
                .get(app.url(&format!("/api/workflows/{id}/status?limit=500"))),
        )
        .await;
        status["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|run| run["status"] == "succeeded")
            .cloned()
            .collect::<Vec<Value>>()
    };
    // Unchanged page: runs fetch it and skip the notification.
    let deadline = Instant::now() + Duration::from_secs(60);
    while succeeded().await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the scheduled runs did not succeed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = succeeded().await;
    assert!(
        runs.iter()
            .all(|run| run["steps"]["notify"]["status"] == "skipped"),
        "{runs:?}"
    );
    assert!(runs
        .iter()
        .all(|run| run["steps"]["fetch"]["output"]["body"] == "price: 10"));
    assert!(site.notified.lock().unwrap().is_empty());

    *site.page.lock().unwrap() = "price: 12".into();
    let deadline = Instant::now() + Duration::from_secs(60);
    while site.notified.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the change was never notified");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let notified = site.notified.lock().unwrap()[0].clone();
    assert_eq!(notified["event"], "page.changed");
    assert_eq!(notified["body"], "price: 12");
    assert_eq!(notified["url"], format!("{base}/page"));
}
