//! Chronicle's runtime: configuration, telemetry, the event store backends, the command
//! bus, the HTTP API and the command line.
//!
//! Layout:
//! - [`config`]: settings from defaults, `chronicle.toml` and `CHRONICLE_*`.
//! - [`telemetry`]: pretty or JSON logs.
//! - [`error_tracking`]: panics and errors to Sentry, scrubbed of credentials (optional).
//! - [`meters`]: the Prometheus recorder and what Chronicle measures.
//! - [`store`]: the event store on PostgreSQL or SQLite — metadata, hash chain, global feed.
//! - [`bus`]: load → decide → append, with bounded retries on conflicts.
//! - [`actor`]: who is acting.
//! - [`teams`]: who belongs to which team, in memory on every node, fed from the events.
//! - [`authz`]: `can(actor, action, resource)`, the one authorisation decision.
//! - [`read_side`]: the projections at run time — start-up catch-up, background runs, lag.
//! - [`auth`]: passwords, access and refresh tokens, API keys, the server secret.
//! - [`process`]: the process manager — dispatch to agents, releasing work, lease timers.
//! - [`api`]: the axum routes, extractors and `problem+json` errors.
//! - [`app`]: start-up and graceful shutdown.
//! - [`tls`]: HTTPS served by Chronicle, its certificate reloaded on SIGHUP.
//! - [`cli`]: the `chronicle` subcommands, including the benchmark.

pub mod actor;
pub mod api;
pub mod app;
pub mod auth;
pub mod authz;
pub mod bus;
pub mod cli;
pub mod config;
pub mod error_tracking;
pub mod meters;
pub mod process;
pub mod read_side;
pub mod store;
pub mod teams;
pub mod telemetry;
pub mod tls;
pub mod wakeups;
