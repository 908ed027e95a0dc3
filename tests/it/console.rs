//! The web console's files at `/` and `/assets/…` against the running server: the page with
//! its strict CSP, every file it loads (and every module those import) with its media type,
//! 404 problems for anything else, and the API's answers unchanged beside it.

use std::collections::BTreeSet;

use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use reqwest::StatusCode;
use rstest::rstest;

use crate::helpers::{spawn_app, Backend, TestApp};

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(app.url(path))
        .send()
        .await
        .expect("request")
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The `/assets/…` paths a text names in `src="…"`, `href="…"` and `from '…'`/`import '…'`,
/// relative ones resolved against `base` (the directory of the file).
fn references(text: &str, base: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for quote in ['"', '\''] {
        for piece in text.split(quote).skip(1) {
            let target = if piece.starts_with("/assets/") {
                piece.to_owned()
            } else if (piece.starts_with("./") || piece.starts_with("../"))
                && piece.ends_with(".js")
            {
                resolve(base, piece)
            } else {
                continue;
            };
            found.insert(target);
        }
    }
    found
}

fn resolve(base: &str, relative: &str) -> String {
    let mut parts: Vec<&str> = base.trim_end_matches('/').split('/').collect();
    for segment in relative.split('/') {
        match segment {
            "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_console_page_and_every_file_it_loads_are_served(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let page = get(&app, "/").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(header(&page, CONTENT_TYPE), "text/html; charset=utf-8");
    let csp = header(&page, CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("script-src 'self'") && csp.contains("style-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = page.text().await.expect("page");
    assert!(html.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
    assert_eq!(get(&app, "/index.html").await.status(), StatusCode::OK);

    // Every file the page names, and every module those import, transitively.
    let mut pending: Vec<String> = references(&html, "/").into_iter().collect();
    let mut served = BTreeSet::new();
    while let Some(path) = pending.pop() {
        if !served.insert(path.clone()) {
            continue;
        }
        let response = get(&app, &path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let kind = header(&response, CONTENT_TYPE);
        let expected = match path.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            other => panic!("unexpected file type {other:?} in {path}"),
        };
        assert_eq!(kind, expected, "{path}");
        assert!(
            response.headers().get(CONTENT_SECURITY_POLICY).is_none(),
            "only HTML gets the page's CSP: {path}"
        );
        assert_eq!(
            header(&response, reqwest::header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        if expected.starts_with("text/javascript") {
            let base = path.rsplit_once('/').map_or("/", |(dir, _)| dir).to_owned();
            let text = response.text().await.expect("script");
            pending.extend(references(&text, &base));
        }
    }
    for expected in [
        "/assets/app.js",
        "/assets/pages/usage.js",
        "/assets/vendor/uPlot.esm.js",
    ] {
        assert!(served.contains(expected), "{expected} in {served:?}");
    }
    let licence = get(&app, "/assets/vendor/uPlot.LICENSE").await;
    assert_eq!(licence.status(), StatusCode::OK);
    assert!(licence
        .text()
        .await
        .expect("licence")
        .contains("MIT License"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn anything_else_is_a_404_problem_and_the_api_is_unchanged(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    for path in [
        "/assets/nope.js",
        "/assets/",
        "/assets/../Cargo.toml",
        "/nope",
        "/api/nope",
        "/api",
    ] {
        let response = get(&app, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            header(&response, CONTENT_TYPE),
            "application/problem+json",
            "{path}"
        );
    }
    let post = reqwest::Client::new()
        .post(app.url("/"))
        .send()
        .await
        .expect("request");
    assert_eq!(post.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&post, CONTENT_TYPE), "application/problem+json");

    let health = get(&app, "/api/health").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert!(header(&health, CONTENT_TYPE).starts_with("application/json"));
    assert!(health.headers().get(CONTENT_SECURITY_POLICY).is_none());
    assert_eq!(
        get(&app, "/api/tasks").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let user = app.register_user().await;
    let tasks = user
        .client
        .get(app.url("/api/tasks"))
        .send()
        .await
        .expect("list");
    assert_eq!(tasks.status(), StatusCode::OK);
    let document: serde_json::Value = get(&app, "/api/openapi.json")
        .await
        .json()
        .await
        .expect("document");
    let paths = document["paths"].as_object().expect("paths");
    assert!(
        paths.keys().all(|path| path.starts_with("/api/")),
        "the console is not part of the API's document"
    );
}
