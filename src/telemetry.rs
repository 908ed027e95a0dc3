//! Logging: pretty on a terminal, JSON lines otherwise; `RUST_LOG` filters. A JSON line
//! carries the fields of every span it is in at its top level: a request's `request_id`,
//! `route`, `method` and, once known, `actor`, `task_id`, `run_id` (see
//! [`crate::api::request_span`]). Panics are logged as `error!` events, and errors go to
//! Sentry too when [`crate::error_tracking`] is on.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// What `RUST_LOG` is when unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=info";

/// Installs the global subscriber once; later calls (tests starting several servers) are
/// no-ops. With `error_tracking`, error events also go to Sentry.
pub fn init(format: Option<LogFormat>, error_tracking: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let sentry = error_tracking.then(crate::error_tracking::tracing_layer);
    let registry = tracing_subscriber::registry().with(filter).with(sentry);
    let result = match format {
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                json_subscriber::fmt::layer()
                    .flatten_event(true)
                    .with_current_span(false)
                    .flatten_span_list_on_top_level(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Installed here: keep the first. A panic is then one JSON line (and one Sentry event),
    // inside the span of the request that panicked.
    if result.is_ok() {
        std::panic::set_hook(Box::new(tracing_panic::panic_hook));
    }
}
