//! `chronicle events export`: the global feed as NDJSON on stdout, with a progress bar on
//! stderr when it is a terminal.

use std::io::{BufWriter, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::store::{AggregateFilter, Store};

const PAGE: u32 = 1_000;

pub async fn export(store: &Store, after: i64) -> anyhow::Result<()> {
    let mut cursor = store
        .cursor_after(after)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no event at position {after}"))?;
    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template(
            "{spinner} {pos} events {per_sec}",
        )?);
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let filter = AggregateFilter::default();
    // Everything committed before the export started is exported, even when an older
    // transaction elsewhere holds the feed's horizon back for a moment.
    let watermark = store.feed_watermark().await?;
    loop {
        let page = store.feed(cursor, PAGE, &filter).await?;
        let Some(last) = page.last() else {
            if store.feed_reached(watermark).await? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        cursor = last.cursor();
        for event in &page {
            serde_json::to_writer(&mut out, event)?;
            out.write_all(b"\n")?;
        }
        progress.inc(page.len() as u64);
    }
    out.flush()?;
    progress.finish_and_clear();
    Ok(())
}
