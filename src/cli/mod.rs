//! The `chronicle` command line: serve (the default), migrate, health, audit, export and
//! import, user, projections, bench.

mod audit;
mod bench;
mod bench_auth;
mod bench_projections;
mod bench_search;
mod bench_target;
mod bench_tasks;
mod bench_workflows;
mod export;
mod health;
mod import;
pub mod live_client;
mod projections;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{connect_store_for_command, Application};
use crate::config::Settings;
use crate::store::AggregateFilter;

#[derive(Parser)]
#[command(
    name = "chronicle",
    version,
    about = "Event-sourced orchestration engine"
)]
struct Cli {
    /// Configuration file, TOML or (named .yaml/.yml) YAML (default: ./chronicle.toml or
    /// ./chronicle.yaml if present).
    #[arg(long, global = true, env = "CHRONICLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply the database migrations and exit (a release step: run it before the new
    /// version serves).
    Migrate,
    /// Ask a running server's /api/health; exit 0 when it answers ok (a container's
    /// HEALTHCHECK).
    Health {
        /// The health URL to ask (default: this configuration's server on loopback).
        #[arg(long)]
        url: Option<url::Url>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Check the tamper-evident history.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Move events in and out.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Rebuild read models.
    Projections {
        #[command(subcommand)]
        command: projections::ProjectionsCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Measure throughput and latency.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every hash chain; exit 1 and name the first broken link of each aggregate.
    Verify {
        #[arg(long)]
        aggregate_type: Option<String>,
        #[arg(long)]
        aggregate_id: Option<String>,
        /// Check the heads against this published checkpoint (the JSON line `audit
        /// checkpoint` printed) instead of the latest stored one.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
    },
    /// Record a chain checkpoint now and print it as one JSON line to publish elsewhere.
    Checkpoint,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Write the global feed as NDJSON to stdout.
    Export {
        /// Start after this position.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Read an export (NDJSON) from stdin into an empty store.
    Import,
}

/// Parses arguments, runs the command, and turns any error into one line on stderr.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("chronicle: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    // Held to the end: dropping it sends what is still queued.
    let error_tracking = crate::error_tracking::init(&settings);
    crate::telemetry::init(settings.log.format, error_tracking.is_some());
    match run(cli.command.unwrap_or(Command::Serve), settings).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chronicle: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => {
            Application::build(settings)
                .await?
                .run_until_stopped()
                .await?;
        }
        Command::Migrate => {
            connect_store_for_command(&settings).await?;
            eprintln!("migrations applied");
        }
        Command::Health { url, timeout_secs } => {
            let timeout = std::time::Duration::from_secs(timeout_secs);
            return health::check(&settings, url, timeout).await;
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    aggregate_type,
                    aggregate_id,
                    against,
                },
        } => {
            let filter = AggregateFilter {
                aggregate_type,
                aggregate_id,
            };
            return audit::verify(&settings, &filter, against.as_deref()).await;
        }
        Command::Audit {
            command: AuditCommand::Checkpoint,
        } => audit::checkpoint(&settings).await?,
        Command::Events {
            command: EventsCommand::Export { after },
        } => {
            let store = connect_store_for_command(&settings).await?;
            export::export(&store, after).await?;
        }
        Command::Events {
            command: EventsCommand::Import,
        } => import::import(&settings).await?,
        Command::Projections { command } => projections::run(command, settings).await?,
        Command::User { command } => user::run(command, settings).await?,
        Command::Bench { command } => bench::run(command, settings).await?,
    }
    Ok(ExitCode::SUCCESS)
}
