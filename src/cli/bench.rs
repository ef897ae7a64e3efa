//! `flowspect bench`: median milliseconds per image for each stage of the pipeline.
use anyhow::{Context, Result};
use clap::Args;
use flowspect::backbone::{self, BackboneMode};
use flowspect::data::{self, image_io};
use flowspect::device::{self, DeviceChoice};
use flowspect::models::features;
use flowspect::detector::{self, DetectorConfig, Method};
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// Input sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "256,512,768")]
    pub sizes: Vec<usize>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Timed repetitions per setting (after one warm-up).
    #[arg(long, default_value = "5")]
    pub repeats: usize,
    /// Images to decode (default: the magnetic-tile test set beside the checkout, else assets/photos).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Also time the plain candle backbone (batch 1 only) for comparison.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub reference: bool,
    /// The detector whose stages are timed: nf-bmr (flow + BMR), memflow (flows + memory-bank search) or patchcore (memory-bank search).
    #[arg(long, default_value = "nf-bmr")]
    pub method: Method,
    /// nf-bmr: stages pooled for the global score (default 4,5,6), or "none".
    #[arg(long)]
    pub global_stages: Option<String>,
    /// nf-bmr: window of the region score (default 13; 0 turns it off). Its search is
    /// timed with the BMR map (the "bmr+reg" column).
    #[arg(long)]
    pub region_window: Option<usize>,
    /// nf-bmr: search the region score's windows every N cells (default 2; 1: every cell).
    #[arg(long)]
    pub region_stride: Option<usize>,
    /// memflow, patchcore: patches in the memory bank searched per position (17,613 is
    /// memflow's bank of the full magnetic-tile training set at the default coreset ratio
    /// 0.1; patchcore's default bank there is capped at 10,000).
    #[arg(long, default_value = "17613")]
    pub bank_rows: usize,
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let dev = a.device.open()?;
    let bb_path = a.backbone.clone().unwrap_or_else(backbone::default_backbone_path);
    let net = backbone::load(&bb_path, &dev, BackboneMode::Fast).with_context(|| format!("loading {}", bb_path.display()))?;
    let reference = backbone::load(&bb_path, &dev, BackboneMode::Reference)?;
    let img_dir = a.images.clone().unwrap_or_else(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/magnetic_tile/test/crack");
        if p.is_dir() { p } else { PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/photos") }
    });
    let paths = data::list_images(&img_dir)?;
    anyhow::ensure!(!paths.is_empty(), "{}: no images to decode", img_dir.display());
    println!(
        "{} on device {}, {} threads, backbone {} ({}), images from {}; medians of {} runs, ms per image",
        a.method,
        device::describe(&dev),
        rayon::current_num_threads(),
        net.config().variant,
        bb_path.display(),
        img_dir.display(),
        a.repeats
    );
    let mut header_done = false;
    for &size in &a.sizes {
        let fast = backbone::load(&bb_path, &dev, BackboneMode::Fast)?;
        // Untrained weights and an all-zero bank cost the same arithmetic as trained ones.
        let mut cfg = DetectorConfig::default_for(a.method);
        cfg.tap_mut().image_size = size;
        cfg.apply_options(flowspect::models::TrainOptions {
            global_stages: a.global_stages.as_deref().map(super::inspect::parse_global_stages).transpose()?,
            region_window: a.region_window,
            region_stride: a.region_stride,
            ..Default::default()
        })?;
        let model = detector::untrained_model(fast, cfg, a.bank_rows)?;
        if !header_done {
            println!(
                "{:>5} {:>5} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>8} | {:>9} {:>7}",
                "size", "batch", "decode", "backbone", "flow", model.map_stage_name(), "post", "total", "img/s", "plain bb", "speedup"
            );
            header_done = true;
        }
        let tap = model.tap().clone();
        for &batch in &a.batches {
            let chosen: Vec<PathBuf> = (0..batch).map(|i| paths[i % paths.len()].clone()).collect();
            let norm = net.config().normalization;
            let mut dec = Vec::new();
            let mut stages = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            let mut plain = Vec::new();
            for rep in 0..=a.repeats {
                let t = Instant::now();
                let inputs: Vec<Vec<f32>> = chosen
                    .par_iter()
                    .map(|p| data::load_image(p).map(|img| image_io::to_input(&img, size, &norm)))
                    .collect::<flowspect::Result<_>>()?;
                let d = t.elapsed().as_secs_f64();
                let x = image_io::batch_tensor(&inputs, size, &dev)?;
                let s = model.timed_stages(&x)?;
                let p = if a.reference && batch == 1 {
                    let t = Instant::now();
                    let f = features::extract(&reference, &tap, &x)?;
                    f.device().synchronize()?;
                    Some(t.elapsed().as_secs_f64())
                } else {
                    None
                };
                if rep == 0 {
                    continue; // warm-up
                }
                dec.push(d * 1000.0 / batch as f64);
                for k in 0..4 {
                    stages[k].push(s[k] * 1000.0 / batch as f64);
                }
                if let Some(p) = p {
                    plain.push(p * 1000.0 / batch as f64);
                }
            }
            let dm = median(dec);
            let [b, f, m, po] = stages.map(median);
            let total = dm + b + f + m + po;
            let (pl, sp) = if plain.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                let pm = median(plain);
                (format!("{pm:.1}"), format!("{:.1}x", pm / b))
            };
            println!(
                "{size:>5} {batch:>5} | {dm:>9.1} {b:>9.1} {f:>9.1} {m:>9.1} {po:>9.1} {total:>9.1} | {:>8.2} | {pl:>9} {sp:>7}",
                1000.0 / total
            );
        }
    }
    Ok(())
}
