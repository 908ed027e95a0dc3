//! `chronicle projections rebuild <name>|--all`: rebuild read models without downtime,
//! beside a running server (on the same database), with a progress bar on a terminal.

use std::io::IsTerminal;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use chronicle_projections::search::{OpenError, SearchIndex};

use crate::app::connect_store_for_command;
use crate::config::Settings;
use crate::read_side::ReadSide;

#[derive(Subcommand)]
pub enum ProjectionsCommand {
    /// Build a projection again from the first event beside the live one and switch to
    /// it once caught up; servers keep serving reads from the live one meanwhile.
    Rebuild {
        /// The projection, e.g. `task_view`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every projection, one after the other.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(command: ProjectionsCommand, settings: Settings) -> anyhow::Result<()> {
    let ProjectionsCommand::Rebuild { name, all } = command;
    let store = connect_store_for_command(&settings).await?;
    let mut read = ReadSide::start(&store)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the projections: {e}"))?;
    // The search index is this node's own files: rebuilt here only while no server holds
    // them (a running server's is rebuilt by POST /api/admin/projections/search/rebuild).
    if all || name.as_deref() == Some(chronicle_projections::search::NAME) {
        let embedder = crate::app::embedder_from_settings(&settings.embeddings).await?;
        let dir = settings.data_dir.join("search");
        match SearchIndex::open(&dir, embedder) {
            Ok(index) => read
                .attach_search(index)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the search index: {e}"))?,
            Err(OpenError::Busy(dir)) if !all => anyhow::bail!(
                "the search index in {} is held by a running server: rebuild it there with \
                 POST /api/admin/projections/search/rebuild",
                dir.display()
            ),
            Err(OpenError::Busy(dir)) => eprintln!(
                "search: skipped, {} is held by a running server (rebuild it there with \
                 POST /api/admin/projections/search/rebuild)",
                dir.display()
            ),
            Err(error) => anyhow::bail!("cannot open the search index: {error}"),
        }
    }
    let names: Vec<String> = if all {
        read.projection_names()
            .into_iter()
            .map(String::from)
            .collect()
    } else {
        name.into_iter().collect()
    };
    for name in names {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(ProgressStyle::with_template(
                "{prefix:>16} {bar:40} {pos}/{len} events {per_sec} {eta}",
            )?);
            bar.set_prefix(name.clone());
            bar
        } else {
            ProgressBar::hidden()
        };
        let progress = |applied: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(applied);
        };
        let report = read.rebuild(&name, &progress).await?;
        bar.finish_and_clear();
        eprintln!(
            "{}: rebuilt v{} from {} events in {:.2}s ({} in the switch)",
            report.name,
            report.version,
            report.applied,
            report.elapsed.as_secs_f64(),
            report.in_switch
        );
    }
    Ok(())
}
