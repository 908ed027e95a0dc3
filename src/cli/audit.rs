//! `chronicle audit verify [--against FILE]` and `chronicle audit checkpoint`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::app::connect_store_with_key;
use crate::config::Settings;
use crate::store::checkpoint::Recording;
use crate::store::{AggregateFilter, Checkpoint};

/// Prints the report; exit 1 when anything is broken.
pub async fn verify(
    settings: &Settings,
    filter: &AggregateFilter,
    against: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let published = against.map(read_checkpoint).transpose()?;
    let store = connect_store_with_key(settings).await?;
    let report = match &published {
        Some(checkpoint) => store.verify_against(filter, checkpoint).await?,
        None => store.verify(filter).await?,
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &report)?;
    writeln!(stdout)?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Records a checkpoint and prints it as one JSON line.
pub async fn checkpoint(settings: &Settings) -> anyhow::Result<()> {
    let store = connect_store_with_key(settings).await?;
    let checkpoint = store
        .record_checkpoint(Recording::Published)
        .await?
        .context("no checkpoint was recorded")?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &checkpoint)?;
    writeln!(stdout)?;
    Ok(())
}

/// The last non-empty line of `path`: a file of published checkpoints works too.
fn read_checkpoint(path: &Path) -> anyhow::Result<Checkpoint> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let line = text
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .with_context(|| format!("{} holds no checkpoint", path.display()))?;
    serde_json::from_str(line)
        .with_context(|| format!("{} is not a checkpoint line", path.display()))
}
