//! Optional error tracking: with `sentry.dsn` set, panics and `error!` events go to Sentry
//! (or any server speaking its envelope protocol), tagged with the request id, route and
//! release; never a credential, a request body or headers.
//!
//! Panics reach Sentry as `error!` events too: [`crate::telemetry`] installs a panic hook
//! that logs them, so the JSON log and Sentry get one report each, with the request's tags.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use regex::Regex;
use secrecy::ExposeSecret;
use sentry::protocol::{Event, Map, User, Value};
use sentry::{Hub, SentryFutureExt};
use tracing::Level;

use crate::actor::Actor;
use crate::config::{Profile, Settings};

/// Keeps the client alive; dropping it sends what is still queued (for up to two seconds).
pub type Guard = sentry::ClientInitGuard;

/// Starts the client when a DSN is configured.
pub fn init(settings: &Settings) -> Option<Guard> {
    let sentry = &settings.sentry;
    let dsn = sentry.dsn.as_ref()?.expose_secret().parse().ok()?;
    let environment = sentry.environment.clone().unwrap_or_else(|| {
        match settings.profile {
            Profile::Development => "development",
            Profile::Production => "production",
        }
        .to_owned()
    });
    let release = sentry
        .release
        .clone()
        .unwrap_or_else(|| concat!("chronicle@", env!("CARGO_PKG_VERSION")).to_owned());
    let options = sentry::ClientOptions {
        dsn: Some(dsn),
        release: Some(release.into()),
        environment: Some(environment.into()),
        sample_rate: sentry.sample_rate,
        // Errors only: no transactions, no personal data.
        traces_sample_rate: 0.0,
        send_default_pii: false,
        max_request_body_size: sentry::MaxRequestBodySize::None,
        before_send: Some(Arc::new(|event| Some(scrub(event)))),
        before_breadcrumb: Some(Arc::new(|mut breadcrumb| {
            breadcrumb.message = breadcrumb.message.map(|m| redact_text(&m).into_owned());
            scrub_map(&mut breadcrumb.data);
            Some(breadcrumb)
        })),
        ..Default::default()
    };
    Some(sentry::init(options))
}

/// Whether events are being sent: a client was started.
pub fn enabled() -> bool {
    Hub::main()
        .client()
        .is_some_and(|client| client.is_enabled())
}

/// The layer that hands `tracing` events to Sentry: `error!` as events, `warn!` and `info!`
/// as breadcrumbs; spans are not sent (no performance data).
pub fn tracing_layer<S>() -> sentry_tracing::SentryLayer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    sentry_tracing::layer()
        .event_filter(|metadata| match *metadata.level() {
            Level::ERROR => sentry_tracing::EventFilter::Event,
            Level::WARN | Level::INFO => sentry_tracing::EventFilter::Breadcrumb,
            _ => sentry_tracing::EventFilter::Ignore,
        })
        .span_filter(|_| false)
}

/// Runs each request with a hub of its own whose scope carries the request id, the route
/// template and the method, so whatever the request reports is tagged with them.
pub async fn per_request(request: Request, next: Next) -> Response {
    let hub = Arc::new(Hub::new_from_top(Hub::main()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let request_id = request
        .headers()
        .get(crate::api::REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let method = request.method().to_string();
    hub.configure_scope(|scope| {
        scope.set_tag("request_id", request_id);
        scope.set_tag("method", method);
        scope.set_transaction(Some(&route));
        scope.set_tag("route", route);
    });
    next.run(request).bind_hub(hub).await
}

/// Names the caller (by id only) on the request's hub.
pub fn set_actor(actor: &Actor) {
    let hub = Hub::current();
    if hub.client().is_none() {
        return;
    }
    hub.configure_scope(|scope| {
        scope.set_user(Some(User {
            id: Some(actor.id.to_string()),
            ..Default::default()
        }));
    });
}

/// `event` without anything that could be a credential or a caller's data: no request
/// (body, headers, cookies, query), a user named by id alone, and every message, tag and
/// field with tokens, keys and passwords in URLs masked, fields named like secrets dropped.
pub fn scrub(mut event: Event<'static>) -> Event<'static> {
    event.request = None;
    event.user = event.user.take().map(|user| User {
        id: user.id,
        ..Default::default()
    });
    event.server_name = None;
    event.message = event.message.map(|m| redact_text(&m).into_owned());
    if let Some(entry) = event.logentry.as_mut() {
        entry.message = redact_text(&entry.message).into_owned();
        entry.params.iter_mut().for_each(scrub_value);
    }
    for exception in event.exception.values.iter_mut() {
        exception.value = exception.value.take().map(|v| redact_text(&v).into_owned());
    }
    for (key, value) in event.tags.iter_mut() {
        if secret_name(key) {
            *value = REDACTED.to_owned();
        } else {
            *value = redact_text(value).into_owned();
        }
    }
    scrub_map(&mut event.extra);
    for context in event.contexts.values_mut() {
        if let sentry::protocol::Context::Other(map) = context {
            scrub_map(map);
        }
    }
    for breadcrumb in event.breadcrumbs.values.iter_mut() {
        breadcrumb.message = breadcrumb
            .message
            .take()
            .map(|m| redact_text(&m).into_owned());
        scrub_map(&mut breadcrumb.data);
    }
    event
}

const REDACTED: &str = "[redacted]";

/// A field whose name says it holds a credential.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "authorization",
        "cookie",
        "api_key",
        "apikey",
        "x-api-key",
        "dsn",
        "credential",
    ]
    .iter()
    .any(|word| name.contains(word))
}

fn scrub_map(map: &mut Map<String, Value>) {
    scrub_entries(map.iter_mut());
}

fn scrub_entries<'a>(entries: impl Iterator<Item = (&'a String, &'a mut Value)>) {
    for (key, value) in entries {
        if secret_name(key) {
            *value = Value::String(REDACTED.to_owned());
        } else {
            scrub_value(value);
        }
    }
}

fn scrub_value(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(redacted) = redact_text(text) {
                *text = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(map) => scrub_entries(map.iter_mut()),
        _ => {}
    }
}

/// Credentials Chronicle issues or reads, wherever they appear in a text: access tokens
/// (JWTs), refresh tokens, API keys, `Bearer …` values and passwords in URLs.
static CREDENTIALS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (
            r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
            REDACTED,
        ),
        (r"rt1\.[0-9A-Za-z]+\.[0-9A-Za-z]+\.[0-9A-Za-z]+", REDACTED),
        (r"chr_[0-9A-Za-z]+_[0-9A-Za-z]+", REDACTED),
        (r"(?i)(bearer\s+)\S+", "${1}[redacted]"),
        (r"(://[^:/@\s]+):[^@\s]+@", "${1}:[redacted]@"),
    ]
    .into_iter()
    .filter_map(|(pattern, replacement)| Some((Regex::new(pattern).ok()?, replacement)))
    .collect()
});

fn redact_text(text: &str) -> Cow<'_, str> {
    let mut text = Cow::Borrowed(text);
    for (pattern, replacement) in CREDENTIALS.iter() {
        if let Cow::Owned(replaced) = pattern.replace_all(&text, *replacement) {
            text = Cow::Owned(replaced);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry::protocol::{Breadcrumb, Exception, Request as SentryRequest};

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
    const KEY: &str = "chr_0123456789abcdef0123456789abcdef_00112233445566778899aabbccddeeff";
    const REFRESH: &str = "rt1.0123456789abcdef.0123456789abcdef.a1b2c3";

    #[test]
    fn scrubbing_leaves_no_credential_request_or_personal_data() {
        let mut event = Event {
            message: Some(format!("login failed for {JWT} with {KEY}")),
            request: Some(SentryRequest {
                data: Some("{\"password\":\"hunter2\"}".into()),
                ..Default::default()
            }),
            user: Some(User {
                id: Some("u1".into()),
                email: Some("ada@example.com".into()),
                ip_address: Some(sentry::protocol::IpAddress::Auto),
                ..Default::default()
            }),
            ..Default::default()
        };
        event.exception.values.push(Exception {
            value: Some(format!("refresh {REFRESH} and Bearer s3cr3t")),
            ..Default::default()
        });
        event.tags.insert("route".into(), "/api/tasks/{id}".into());
        event.tags.insert("x-api-key".into(), "plain".into());
        event.extra.insert("password".into(), "hunter2".into());
        event.extra.insert(
            "url".into(),
            "postgres://chronicle:dbpass@db:5432/chronicle".into(),
        );
        event.extra.insert(
            "nested".into(),
            serde_json::json!({"refresh_token": REFRESH, "list": [KEY]}),
        );
        event.breadcrumbs.values.push(Breadcrumb {
            message: Some(format!("used {KEY}")),
            ..Default::default()
        });

        let scrubbed = scrub(event);
        let text = serde_json::to_string(&scrubbed).unwrap();
        for secret in [
            JWT,
            KEY,
            REFRESH,
            "hunter2",
            "dbpass",
            "s3cr3t",
            "ada@example.com",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(scrubbed.request.is_none());
        assert_eq!(scrubbed.user.unwrap().id.as_deref(), Some("u1"));
        assert_eq!(scrubbed.tags["route"], "/api/tasks/{id}");
        assert_eq!(
            scrubbed.extra["url"],
            "postgres://chronicle:[redacted]@db:5432/chronicle"
        );
    }
}
