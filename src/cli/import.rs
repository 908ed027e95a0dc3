//! `chronicle events import`: an export (NDJSON on stdin) into an empty store, with a
//! progress bar on stderr when it is a terminal.

use std::io::{BufRead, IsTerminal};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use crate::app::connect_store_with_key;
use crate::config::Settings;
use crate::store::checkpoint::Recording;
use crate::store::import::{ExportedEvent, Importer, BATCH};

pub async fn import(settings: &Settings) -> anyhow::Result<()> {
    let store = connect_store_with_key(settings).await?;
    let mut importer = Importer::new(store.clone()).await?;
    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template(
            "{spinner} {pos} events {per_sec}",
        )?);
        bar
    } else {
        ProgressBar::hidden()
    };
    // Parsing runs on its own thread while the previous batch is written.
    let (sender, mut batches) = mpsc::channel::<anyhow::Result<Vec<ExportedEvent>>>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin().lock();
        let mut batch = Vec::with_capacity(BATCH);
        for (index, line) in stdin.lines().enumerate() {
            let parsed = line.context("cannot read stdin").and_then(|line| {
                if line.trim().is_empty() {
                    return Ok(None);
                }
                serde_json::from_str::<ExportedEvent>(&line)
                    .map(Some)
                    .with_context(|| format!("line {}: not an exported event", index + 1))
            });
            match parsed {
                Ok(Some(event)) => batch.push(event),
                Ok(None) => {}
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            }
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if sender.blocking_send(Ok(full)).is_err() {
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let _ = sender.blocking_send(Ok(batch));
        }
    });
    let started = Instant::now();
    while let Some(batch) = batches.recv().await {
        let batch = batch?;
        let count = batch.len() as u64;
        for event in batch {
            importer.push(event).await?;
        }
        progress.inc(count);
    }
    reader.await?;
    let imported = importer.finish().await?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {imported} events in {seconds:.1} s ({:.0} events/s)",
        imported as f64 / seconds.max(f64::EPSILON)
    );
    if store.audit_key().is_some() {
        if let Some(checkpoint) = store.record_checkpoint(Recording::Background).await? {
            eprintln!(
                "recorded a chain checkpoint at position {}",
                checkpoint.position
            );
        }
    }
    Ok(())
}
