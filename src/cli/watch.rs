//! `flowspect watch` (line mode) and `flowspect log` (query the inspection log).
use anyhow::{Context, Result, bail};
use clap::Args;
use flowspect::detector::Detector;
use flowspect::device::DeviceChoice;
use flowspect::inspection::Thresholds;
use flowspect::line::log::{InspectionLog, LogRow, Query};
use flowspect::line::stats::LineStats;
use flowspect::line::{DEFAULT_DB, LineEngine, Sort, WatchOptions};
use flowspect::progress::CancelToken;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct WatchArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// The folder the camera or PLC writes images into (its sub-folders are not watched).
    #[arg(long)]
    pub input: PathBuf,
    /// Inspection log (SQLite; default: inspections.sqlite in the input folder).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Move each image into accept/, review/ or reject/ below this folder once its row is written.
    #[arg(long)]
    pub sort: Option<PathBuf>,
    /// With --sort: copy instead of move.
    #[arg(long, requires = "sort")]
    pub copy: bool,
    /// Write a heatmap PNG per scored image into this folder.
    #[arg(long)]
    pub heatmaps: Option<PathBuf>,
    /// Accept below this score (default: the model's threshold).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Reject from this score and send the band between the thresholds to review (default: the model's, if any).
    #[arg(long, requires = "threshold")]
    pub review_threshold: Option<f32>,
    /// A file that does not decode is retried until unchanged for this long; then it gets an error row.
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
    /// Scan the folder this often (the fallback where file-system events do not arrive, e.g. network shares).
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Do not listen to file-system events; only scan every --poll-ms.
    #[arg(long)]
    pub poll_only: bool,
    /// Inspect what is in the folder, wait for files still being written, then exit.
    #[arg(long)]
    pub once: bool,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn watch(a: WatchArgs) -> Result<()> {
    let dev = a.device.open()?;
    let det = Detector::load(&a.model, &dev)?;
    let accept_below = a.threshold.unwrap_or(det.meta.threshold);
    let reject_from = a.review_threshold.or(det.meta.review_threshold.filter(|_| a.threshold.is_none()));
    if let Some(u) = reject_from
        && u < accept_below
    {
        bail!("--review-threshold {u} is below the accept threshold {accept_below}");
    }
    let mut opts = WatchOptions::new(&a.input, Thresholds { accept_below, reject_from });
    opts.db = a.db.clone().unwrap_or_else(|| a.input.join(DEFAULT_DB));
    opts.sort = a.sort.clone().map(|dir| Sort { dir, copy: a.copy });
    opts.heatmaps = a.heatmaps.clone();
    opts.settle = Duration::from_millis(a.settle_ms);
    opts.poll = Duration::from_millis(a.poll_ms.max(10));
    opts.events = !a.poll_only;
    let (mut engine, note) = LineEngine::new(det, &a.model, opts).with_context(|| format!("watching {}", a.input.display()))?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let stop = CancelToken::new();
    let presses = std::sync::Arc::new(AtomicUsize::new(0));
    {
        let stop = stop.clone();
        let presses = presses.clone();
        ctrlc::set_handler(move || {
            if presses.fetch_add(1, Ordering::SeqCst) == 0 {
                eprintln!("stopping after the image in hand (Ctrl-C again to quit at once)");
                stop.cancel();
            } else {
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    eprintln!(
        "watching {} with {} (model {}), accept below {:.5}{}; log {}",
        engine.options().input.display(),
        a.model.display(),
        engine.model_fingerprint(),
        accept_below,
        reject_from.map(|u| format!(", reject from {u:.5}")).unwrap_or_default(),
        engine.log().path().display()
    );
    let started = Instant::now();
    let mut stats = LineStats::default();
    let mut on_row = |i: &flowspect::line::Inspected| {
        print_row(&i.row);
        stats.push(&i.row);
    };
    let mut on_problem = |e: &flowspect::Error| eprintln!("warning: {e} (retrying)");
    if a.once {
        engine.run_until_idle(&stop, &mut on_row, &mut on_problem)?;
    } else {
        engine.run(&stop, &mut on_row, &mut on_problem)?;
    }
    let t = stats.tally;
    eprintln!(
        "{} rows in {:.1} s: {} accept, {} review, {} reject, {} errors; {:.2} images/s from first arrival to last row; latency arrival -> row median {} ms, p99 {} ms",
        t.total(),
        started.elapsed().as_secs_f64(),
        t.accept,
        t.review,
        t.reject,
        t.error,
        stats.images_per_second(),
        stats.latency_ms(0.5).unwrap_or(0),
        stats.latency_ms(0.99).unwrap_or(0)
    );
    Ok(())
}

fn print_row(r: &LogRow) {
    match &r.error {
        Some(e) => println!("error   {}: {e}", r.path),
        None => println!(
            "{:<7} {:>10.5} {} ({} regions, {} ms)",
            r.verdict_text(),
            r.score.unwrap_or(f32::NAN),
            r.path,
            r.regions.unwrap_or(0),
            r.latency_ms()
        ),
    }
}

#[derive(Args)]
pub struct LogArgs {
    /// The inspection log written by `watch`.
    #[arg(long)]
    pub db: PathBuf,
    /// Rows scored at or after this time: Unix seconds, or an age like 30m, 8h, 2d.
    #[arg(long)]
    pub since: Option<String>,
    /// accept, review, reject or error.
    #[arg(long)]
    pub verdict: Option<String>,
    /// Write the rows as CSV here instead of printing them.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Print the `PRAGMA integrity_check` result and the row count.
    #[arg(long)]
    pub check: bool,
}

/// `--since`: Unix seconds, or an age (`90s`, `30m`, `8h`, `2d`) before now.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let v: f64 = num.parse().with_context(|| format!("--since {s}: expected Unix seconds or an age like 30m, 8h, 2d"))?;
    let secs = match unit {
        "" => return Ok((v * 1000.0) as i64),
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86400.0,
        _ => bail!("--since {s}: unknown unit {unit:?} (s, m, h or d)"),
    };
    Ok(now_ms - (secs * 1000.0) as i64)
}

pub fn log(a: LogArgs) -> Result<()> {
    if !a.db.is_file() {
        bail!("{}: no inspection log there", a.db.display());
    }
    let log = InspectionLog::open(&a.db)?;
    if let Some(v) = &a.verdict
        && !["accept", "review", "reject", "error"].contains(&v.as_str())
    {
        bail!("--verdict {v}: expected accept, review, reject or error");
    }
    let since = a.since.as_deref().map(|s| parse_since(s, flowspect::line::arrivals::now_unix_ms())).transpose()?;
    let rows = log.query(&Query { since_unix_ms: since, verdict: a.verdict.clone(), limit: None })?;
    if a.check {
        println!("integrity_check: {}", log.integrity_check()?);
    }
    match &a.csv {
        Some(out) => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record([
                "id", "path", "size_bytes", "sha256", "arrived_unix_ms", "scored_unix_ms", "score", "verdict", "regions",
                "largest_region_px", "model_fingerprint", "method", "accept_below", "reject_from", "error", "sorted_to", "station",
            ])?;
            let opt = |v: Option<String>| v.unwrap_or_default();
            for r in &rows {
                w.write_record([
                    r.id.to_string(),
                    r.path.clone(),
                    opt(r.size_bytes.map(|v| v.to_string())),
                    opt(r.sha256.clone()),
                    r.arrived_unix_ms.to_string(),
                    r.scored_unix_ms.to_string(),
                    opt(r.score.map(|v| format!("{v:.6}"))),
                    r.verdict_text().into(),
                    opt(r.regions.map(|v| v.to_string())),
                    opt(r.largest_region_px.map(|v| v.to_string())),
                    r.model_fingerprint.clone(),
                    r.method.clone(),
                    format!("{:.6}", r.accept_below),
                    opt(r.reject_from.map(|v| format!("{v:.6}"))),
                    opt(r.error.clone()),
                    opt(r.sorted_to.clone()),
                    r.station.clone(),
                ])?;
            }
            flowspect::fsutil::atomic_write(out, &w.into_inner()?)?;
            println!("{} rows written to {}", rows.len(), out.display());
        }
        None => {
            for r in &rows {
                print_row(r);
            }
            let mut counts = std::collections::BTreeMap::new();
            for r in &rows {
                *counts.entry(r.verdict_text()).or_insert(0usize) += 1;
            }
            let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            println!("{} rows: {}", rows.len(), summary.join(", "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_takes_seconds_and_ages() {
        assert_eq!(super::parse_since("1700000000", 0).unwrap(), 1_700_000_000_000);
        assert_eq!(super::parse_since("30m", 10_000_000).unwrap(), 10_000_000 - 1_800_000);
        assert_eq!(super::parse_since("2d", 1_000_000_000).unwrap(), 1_000_000_000 - 172_800_000);
        assert!(super::parse_since("3w", 0).is_err());
        assert!(super::parse_since("soon", 0).is_err());
    }
}
