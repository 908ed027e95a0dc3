//! Headers every answer carries, and production's HTTPS-only rule.
//!
//! Every profile: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, and on
//! HTML a strict `Content-Security-Policy` (same-origin scripts, styles and connections,
//! nothing inline, no framing). Production: `Strict-Transport-Security` on every answer,
//! and a request that did not come over HTTPS — Chronicle's own TLS, or a trusted proxy
//! saying `X-Forwarded-Proto: https` — is refused (400), except `/api/health`, which load
//! balancers probe over plain HTTP.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Response};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use super::client_ip::ViaHttps;
use super::error::ApiError;
use super::AppState;
use crate::config::{Profile, Settings};

/// For HTML answers (the console): its own scripts, styles and API, nothing else.
pub const HTML_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// Two years, subdomains included (what the HSTS preload list asks).
pub const HSTS: &str = "max-age=63072000; includeSubDomains";

fn is_html<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("text/html")
        })
}

/// `router` with the headers of every answer.
pub fn apply(router: Router, settings: &Settings) -> Router {
    let router = router
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            |response: &Response<_>| is_html(response).then(|| HeaderValue::from_static(HTML_CSP)),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ));
    if settings.profile == Profile::Production {
        router.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        ))
    } else {
        router
    }
}

/// Production answers only what came over HTTPS (see the module's doc).
pub async fn https_only(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    let https = request
        .extensions()
        .get::<ViaHttps>()
        .is_some_and(|via| via.0);
    if state.settings.profile != Profile::Production
        || https
        || request.uri().path() == "/api/health"
    {
        return next.run(request).await;
    }
    ApiError::BadRequest(
        "HTTPS only: this server answers requests over HTTPS (directly or through its trusted proxy)"
            .into(),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::response::Html;
    use axum::Json;
    use tower::ServiceExt;

    /// The headers of an answer that is HTML or JSON.
    async fn headers_of(settings: &Settings, html: bool) -> axum::http::HeaderMap {
        let router = if html {
            Router::new().fallback(|| async { Html("<p>hi</p>") })
        } else {
            Router::new().fallback(|| async { Json(1) })
        };
        let response = apply(router, settings)
            .oneshot(
                Request::builder()
                    .uri("/x")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        response.headers().clone()
    }

    #[tokio::test]
    async fn every_answer_is_hardened_and_html_gets_a_csp() {
        let settings = Settings::default();
        for html in [true, false] {
            let headers = headers_of(&settings, html).await;
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert_eq!(headers["referrer-policy"], "no-referrer");
            assert!(headers.get("strict-transport-security").is_none());
        }
        let page = headers_of(&settings, true).await;
        let csp = page["content-security-policy"].to_str().expect("text");
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"));
        assert!(headers_of(&settings, false)
            .await
            .get("content-security-policy")
            .is_none());
    }

    #[tokio::test]
    async fn production_adds_hsts() {
        let settings = Settings {
            profile: Profile::Production,
            ..Settings::default()
        };
        for html in [true, false] {
            assert_eq!(
                headers_of(&settings, html).await["strict-transport-security"],
                HSTS
            );
        }
    }
}
