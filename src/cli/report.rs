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
use std::path::PathBuf;

#[derive(Args)]
pub struct ReportArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Images to inspect: a folder (MVTec category, good/ + defect folders, or plain) or one image.
    #[arg(long)]
    pub input: PathBuf,
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
    let samples = data::test_samples(&a.input)?;
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
        input: a.input.display().to_string(),
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
