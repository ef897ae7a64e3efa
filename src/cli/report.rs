//! `flowspect report`: score a folder and write the CSV, JSON, HTML and PDF report.
use super::progress::CliProgress;
use anyhow::{Context, Result, bail};
use clap::Args;
use flowspect::data;
use flowspect::detector::Detector;
use flowspect::device::DeviceChoice;
use flowspect::inspection::Thresholds;
use flowspect::progress::CancelToken;
use flowspect::report::{self, ReportOptions};
use flowspect::line::log::{InspectionLog, Query};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReportArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Images to inspect: a folder (MVTec category, good/ + defect folders, or plain) or one image.
    #[arg(long, required_unless_present = "log", conflicts_with = "log")]
    pub input: Option<PathBuf>,
    /// Instead of a folder: the images an inspection log (`watch`) lists, where they are now.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// With --log: rows scored at or after this time (Unix seconds, or an age like 30m, 8h, 2d).
    #[arg(long, requires = "log")]
    pub since: Option<String>,
    /// With --log: only rows with this verdict (accept, review, reject).
    #[arg(long, requires = "log")]
    pub verdict: Option<String>,
    /// Report folder (created if missing; an earlier report there is replaced once the new one is complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Accept below this score (default: the model's threshold).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Reject from this score and send the band between the thresholds to review (default: the model's, if any).
    #[arg(long)]
    pub review_threshold: Option<f32>,
    /// Map value from which a pixel is defective (default: the model's).
    #[arg(long)]
    pub pixel_threshold: Option<f32>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let dev = a.device.open()?;
    let det = Detector::load(&a.model, &dev)?;
    let (samples, input) = match (&a.input, &a.log) {
        (Some(i), _) => (data::test_samples(i)?, i.display().to_string()),
        (None, Some(db)) => (log_samples(db, a.since.as_deref(), a.verdict.clone())?, format!("inspection log {}", db.display())),
        (None, None) => bail!("give --input DIR or --log FILE"),
    };
    let accept_below = a.threshold.unwrap_or(det.meta.threshold);
    let reject_from = a.review_threshold.or(det.meta.review_threshold.filter(|_| a.threshold.is_none()));
    if let Some(u) = reject_from
        && u < accept_below
    {
        bail!("--review-threshold {u} is below the accept threshold {accept_below}");
    }
    let opts = ReportOptions {
        thresholds: Thresholds { accept_below, reject_from },
        pixel_threshold: a.pixel_threshold.unwrap_or(det.meta.pixel_threshold),
        model_path: a.model.display().to_string(),
        input,
    };
    let progress = CliProgress::new();
    let rep = report::generate(&det, &samples, &opts, &a.out, &progress, &CancelToken::new())
        .with_context(|| format!("writing the report into {}", a.out.display()))?;
    progress.finish();
    let c = &rep.counts;
    println!(
        "{} images: {} accept, {} review, {} reject, {} unreadable",
        rep.dataset.images, c.accept, c.review, c.reject, rep.dataset.unreadable
    );
    if let Some(m) = &rep.metrics {
        println!(
            "image AUROC {:.4}; at these thresholds precision {:.4} recall {:.4}; false alarms {}, escapes {}",
            m.image_auroc, m.precision, m.recall, c.fp, c.fn_
        );
    }
    println!(
        "report written to {} ({}, {}, {}, {}, {}/)",
        a.out.display(),
        report::CSV_FILE,
        report::JSON_FILE,
        report::HTML_FILE,
        report::PDF_FILE,
        report::IMAGES_DIR
    );
    Ok(())
}

/// The scored images of a log, where they are now; what is left out is listed.
fn log_samples(db: &Path, since: Option<&str>, verdict: Option<String>) -> Result<Vec<data::Sample>> {
    if !db.is_file() {
        bail!("{}: no such inspection log", db.display());
    }
    let now = flowspect::line::arrivals::now_unix_ms();
    let since_unix_ms = since.map(|s| super::watch::parse_since(s, now)).transpose()?;
    let log = InspectionLog::open(db)?;
    let rows = log.query(&Query { since_unix_ms, verdict, limit: None })?;
    let (samples, left_out) = flowspect::line::log_samples(&rows);
    for (p, why) in &left_out {
        eprintln!("left out {p}: {why}");
    }
    if samples.is_empty() {
        bail!("{}: no scored image of the log is where the log says ({} rows, {} left out)", db.display(), rows.len(), left_out.len());
    }
    println!("{} images from the log ({} rows, {} left out)", samples.len(), rows.len(), left_out.len());
    Ok(samples)
}
