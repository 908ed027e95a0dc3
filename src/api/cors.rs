//! CORS from `settings.cors.origins`. An entry ending in `*` allows every origin that
//! starts with what precedes it (`chrome-extension://*`); an entry without a port allows
//! that scheme and host on any port (`http://localhost`); `*` alone allows any origin.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub fn layer(origins: &[String]) -> CorsLayer {
    let origins: Arc<[String]> = origins.into();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin
                .to_str()
                .is_ok_and(|origin| allowed(&origins, origin))
        }))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_MATCH,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(3600))
}

fn allowed(patterns: &[String], origin: &str) -> bool {
    patterns.iter().any(|pattern| {
        if pattern == "*" {
            return true;
        }
        if let Some(prefix) = pattern.strip_suffix('*') {
            return origin.len() > prefix.len() && origin.starts_with(prefix);
        }
        origin == pattern
            || origin
                .strip_prefix(pattern.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|port| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn patterns() {
        let patterns: Vec<String> = [
            "chrome-extension://*",
            "http://localhost",
            "https://app.example",
        ]
        .map(String::from)
        .into();
        for ok in [
            "chrome-extension://abcdefghijklmnop",
            "http://localhost",
            "http://localhost:5173",
            "https://app.example",
        ] {
            assert!(allowed(&patterns, ok), "{ok}");
        }
        for refused in [
            "chrome-extension://",
            "http://localhost.evil.com",
            "http://localhost:80x",
            "https://evil.example",
            "https://app.example.evil",
            "moz-extension://abc",
        ] {
            assert!(!allowed(&patterns, refused), "{refused}");
        }
    }
}
