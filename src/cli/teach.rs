//! `flowspect teach`: good images join a trained model without retraining.
use super::progress::CliProgress;
use anyhow::{Context, Result, bail};
use clap::Args;
use flowspect::data;
use flowspect::detector::Detector;
use flowspect::device::DeviceChoice;
use flowspect::models::TeachConfig;
use flowspect::progress::CancelToken;
use std::path::PathBuf;

#[derive(Args)]
pub struct TeachArgs {
    /// The trained model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Good images to absorb: image files and/or folders (every image in a folder).
    #[arg(long, num_args = 1.., required = true)]
    pub good: Vec<PathBuf>,
    /// Model file to write (may be the same as --model; written atomically).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// NF-BMR: AdamW steps of the BMR on the taught images (0: none).
    #[arg(long, default_value_t = TeachConfig::default().fine_tune_steps)]
    pub fine_tune_steps: usize,
    /// NF-BMR: leave the image score's pooled-feature Gaussian as trained.
    #[arg(long)]
    pub no_global: bool,
    /// NF-BMR: how many training images each taught image counts as in that Gaussian.
    #[arg(long, default_value_t = TeachConfig::default().global_weight)]
    pub global_weight: usize,
    /// Keep the calibration and the threshold as they are instead of recalibrating on
    /// the held-out good images (faster for NF-BMR; the threshold then ignores the teach).
    #[arg(long)]
    pub keep_calibration: bool,
}

/// The image files named by `inputs` (files as given, folders listed).
pub fn image_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let v = data::list_images(p)?;
            if v.is_empty() {
                bail!("{}: no images found", p.display());
            }
            out.extend(v);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(out)
}

pub fn teach(a: TeachArgs) -> Result<()> {
    let dev = a.device.open()?;
    let mut det = Detector::load(&a.model, &dev)?;
    let paths = image_paths(&a.good)?;
    let progress = CliProgress::new();
    let how = TeachConfig { global: !a.no_global, global_weight: a.global_weight, fine_tune_steps: a.fine_tune_steps, recalibrate: !a.keep_calibration };
    let r = det.teach(&paths, &how, &progress, &CancelToken::new())?;
    progress.finish();
    for (p, why) in &r.skipped {
        eprintln!("skipped {}: {why}", p.display());
    }
    if !r.already.is_empty() {
        eprintln!("{} images were already taught (same path and bytes), left out", r.already.len());
    }
    if r.taught.is_empty() {
        bail!("nothing taught: none of the {} images could be read or all were taught before", paths.len());
    }
    det.save(&a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "taught {} images in {:.1} s: {}; {} taught in all; threshold {:.5}; written to {}",
        r.taught.len(),
        r.seconds,
        r.summary,
        det.meta.taught.len(),
        det.meta.threshold,
        a.out.display()
    );
    Ok(())
}
