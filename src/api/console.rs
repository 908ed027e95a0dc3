//! The web console: static files embedded in the binary, served at `/` and `/assets/…`.
//!
//! The console is only a client of the API (same auth, same answers); it is not part of
//! the OpenAPI document, which describes `/api` alone. Every other path outside `/api`
//! stays a 404 `problem+json`, as before. HTML answers get the strict CSP of
//! [`super::security_headers`], so the console has no inline script or style.

use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// One embedded file: its name under `/assets/`, media type and bytes.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $media_type:expr) => {
        Asset {
            name: $name,
            media_type: $media_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The console's page.
const INDEX: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/index.html"));

/// Every file the page loads.
const ASSETS: &[Asset] = &[
    asset!("console.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("live.js", JS),
    asset!("dom.js", JS),
    asset!("dag.js", JS),
    asset!("pages/signin.js", JS),
    asset!("pages/tasks.js", JS),
    asset!("pages/agents.js", JS),
    asset!("pages/workflows.js", JS),
    asset!("pages/search.js", JS),
    asset!("pages/usage.js", JS),
    asset!("pages/admin.js", JS),
    asset!("vendor/uPlot.esm.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
    asset!("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The fallback of the router: the console for `GET`/`HEAD` outside `/api`, else 404.
pub async fn serve(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::NotFound.into_response();
    }
    let path = uri.path();
    if path == "/" || path == "/index.html" {
        return file("text/html; charset=utf-8", INDEX);
    }
    match path
        .strip_prefix("/assets/")
        .and_then(|name| ASSETS.iter().find(|asset| asset.name == name))
    {
        Some(asset) => file(asset.media_type, asset.bytes),
        None => ApiError::NotFound.into_response(),
    }
}

fn file(media_type: &'static str, bytes: &'static [u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(media_type)),
            // Embedded in the binary: a new release brings new files, so look again.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_unique_name_and_a_known_type() {
        let mut names: Vec<_> = ASSETS.iter().map(|asset| asset.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        for asset in ASSETS {
            let expected = match asset.name.rsplit('.').next() {
                Some("js") => JS,
                Some("css") => CSS,
                Some("svg") => "image/svg+xml",
                _ => "text/plain; charset=utf-8",
            };
            assert_eq!(asset.media_type, expected, "{}", asset.name);
        }
    }

    /// The page and scripts carry nothing the CSP refuses: no inline script, style or handler.
    #[test]
    fn the_page_has_nothing_inline() {
        let index = std::str::from_utf8(INDEX).expect("UTF-8");
        assert!(!index.contains("<style"), "inline <style>");
        assert!(!index.contains(" style="), "style attribute");
        let handler = index.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "inline handler: on{handler:?}");
        for script in index.split("<script").skip(1) {
            assert!(script.contains("src="), "inline <script>: {script}");
        }
    }
}
