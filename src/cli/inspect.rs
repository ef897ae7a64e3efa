//! `train`, `eval` and `predict`.
use super::progress::CliProgress;
use anyhow::{Context, Result, bail};
use clap::Args;
use flowspect::backbone::{self, BackboneMode};
use flowspect::data::{self, spread};
use flowspect::detector::{Detector, DetectorConfig, Method};
use flowspect::device::{self, DeviceChoice};
use flowspect::evaluate;
use flowspect::models::scoring::ScoreKind;
use flowspect::models::TrainOptions;
use flowspect::progress::CancelToken;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// Good images: an MVTec category folder (uses train/good), a folder with good/, or a plain folder.
    #[arg(long)]
    pub data: PathBuf,
    /// nf-bmr (normalizing flow + bidirectional mapping), memflow (memory bank + multi-scale flows) or patchcore (memory bank, the reference baseline).
    #[arg(long, default_value = "nf-bmr")]
    pub method: Method,
    /// Input side length in pixels.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Backbone stage(s) to tap, comma-separated (1..7); for memflow, the memory bank's stages.
    #[arg(long, value_delimiter = ',')]
    pub stage: Option<Vec<usize>>,
    /// memflow, patchcore: fraction of the training patches kept in the memory bank (greedy k-center coreset).
    #[arg(long)]
    pub coreset_ratio: Option<f64>,
    /// Maximum epochs of each training phase (flow, then BMR); early stopping may end sooner.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Hidden width of the BMR mapping networks (nf-bmr).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Hidden width of the flow's couplings.
    #[arg(long)]
    pub flow_hidden: Option<usize>,
    /// Learning rate of the flow (Adam).
    #[arg(long)]
    pub flow_lr: Option<f64>,
    /// Learning rate of the BMR mapping networks (Adam).
    #[arg(long)]
    pub bmr_lr: Option<f64>,
    /// Image score: map-global (nf-bmr default), map-max, flow-nll, fused or global (memflow default: fused).
    #[arg(long)]
    pub score: Option<ScoreKind>,
    /// nf-bmr: stages pooled over the whole image for the global score, comma-separated, or "none".
    #[arg(long)]
    pub global_stages: Option<String>,
    /// nf-bmr: window of the region score added to the map, in feature cells (0 turns it off).
    #[arg(long)]
    pub region_window: Option<usize>,
    /// nf-bmr: search the region score's windows every N cells, interpolating between (default 2; 1: every cell).
    #[arg(long)]
    pub region_stride: Option<usize>,
    /// nf-bmr: weight of the region score against the BMR map.
    #[arg(long)]
    pub region_weight: Option<f32>,
    /// Use at most this many training images (evenly spaced), for quick runs.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Backbone weights (default: the shipped EfficientNet-Lite0).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Model file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `--global-stages`: stage numbers like `4,5,6`, or `none`.
pub fn parse_global_stages(g: &str) -> Result<Vec<usize>> {
    if g == "none" {
        return Ok(Vec::new());
    }
    g.split(',')
        .map(|v| v.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--global-stages {g}: expected stage numbers like 4,5,6 or none"))
}

pub fn config_from(a: &TrainArgs) -> Result<DetectorConfig> {
    let mut cfg = DetectorConfig::default_for(a.method);
    if let Some(s) = a.image_size {
        cfg.tap_mut().image_size = s;
    }
    if let Some(s) = a.seed {
        cfg.set_seed(s);
    }
    let global_stages = a.global_stages.as_deref().map(parse_global_stages).transpose()?;
    cfg.apply_options(TrainOptions {
        epochs: a.epochs,
        stages: a.stage.clone(),
        hidden: a.hidden,
        flow_hidden: a.flow_hidden,
        flow_lr: a.flow_lr,
        bmr_lr: a.bmr_lr,
        global_stages,
        region_window: a.region_window,
        region_stride: a.region_stride,
        region_weight: a.region_weight,
        coreset_ratio: a.coreset_ratio,
    })?;
    // After the options: a score asked for by name wins over a method's fallback.
    if let Some(s) = a.score {
        cfg.set_score(s)?;
    }
    Ok(cfg)
}

pub fn train(a: TrainArgs) -> Result<()> {
    let dev = a.device.open()?;
    let files = spread(&data::training_images(&a.data)?, a.limit);
    let bb_path = a.backbone.clone().unwrap_or_else(backbone::default_backbone_path);
    let net = backbone::load(&bb_path, &dev, BackboneMode::Fast)
        .with_context(|| format!("loading backbone {}", bb_path.display()))?;
    let cfg = config_from(&a)?;
    for &s in &cfg.tap().stages {
        backbone::config::check_stage(s)?;
    }
    eprintln!(
        "training {} on {} images from {} ({} stage {:?}, {} px, device {})",
        a.method,
        files.len(),
        a.data.display(),
        net.config().variant,
        cfg.tap().stages,
        cfg.tap().image_size,
        device::describe(&dev)
    );
    let progress = CliProgress::new();
    let mut det = Detector::train(net, &bb_path, cfg, &files, &progress, &CancelToken::new())?;
    progress.finish();
    det.meta.training.peak_rss_mb = flowspect::resources::peak_rss_mb();
    det.save(&a.out)?;
    let r = &det.meta.training;
    let stages = match &r.bank {
        None => format!(
            "flow {} epochs {:.1} s, bmr {} epochs {:.1} s",
            r.flow.train_loss.len(),
            r.flow.seconds,
            r.bmr.train_loss.len(),
            r.bmr.seconds
        ),
        Some(b) => {
            let flows: Vec<String> = r.flows.iter().map(|h| format!("{} epochs {:.1} s", h.train_loss.len(), h.seconds)).collect();
            let flows = if flows.is_empty() { String::new() } else { format!("; flows {}", flows.join(", ")) };
            format!("memory bank {} of {} patches, {:.1} MB, coreset {:.1} s{flows}", b.rows, b.patches, b.megabytes, b.coreset_seconds)
        }
    };
    println!(
        "trained {} on {} images ({} held out, {} skipped) in {:.1} s (features {:.1} s, {stages})",
        det.meta.method,
        r.n_train,
        r.n_val,
        r.skipped.len(),
        r.total_seconds,
        r.feature_seconds,
    );
    for (p, why) in &r.skipped {
        println!("skipped {}: {why}", p.display());
    }
    println!("threshold {:.5}; model written to {}", det.meta.threshold, a.out.display());
    if let Some(r) = &det.meta.threshold_rule {
        println!("  {}", r.describe());
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Test images: an MVTec category folder (uses test/ and ground_truth/), or a folder with good/ and defect folders.
    #[arg(long)]
    pub data: PathBuf,
    /// Write the metrics (and per-image scores) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use at most this many test images (evenly spaced), for quick runs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Override the image score kind stored in the model.
    #[arg(long)]
    pub score: Option<ScoreKind>,
    /// nf-bmr: override the region score's weight in the map (0: the BMR map alone), to
    /// compare; the pixel threshold stays the trained one.
    #[arg(long)]
    pub region_weight: Option<f32>,
    /// nf-bmr: override the region score's search stride (1: every window centre), to compare.
    #[arg(long)]
    pub region_stride: Option<usize>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let dev = a.device.open()?;
    let mut det = Detector::load(&a.model, &dev)?;
    if let Some(s) = a.score {
        det.set_score(s)?;
    }
    if let Some(w) = a.region_weight {
        det.set_region_weight(w)?;
    }
    if let Some(s) = a.region_stride {
        det.set_region_stride(s)?;
    }
    let samples = spread(&data::test_samples(&a.data)?, a.limit);
    if samples.iter().all(|s| s.defect.is_none()) {
        bail!("{}: no labels found (expected test/good and defect folders); use `predict` for unlabeled images", a.data.display());
    }
    let progress = CliProgress::new();
    let (mut rep, _) = evaluate::evaluate(&det, &samples, &progress, &CancelToken::new())?;
    progress.finish();
    rep.peak_rss_mb = flowspect::resources::peak_rss_mb();
    println!("images: {} good, {} defect, {} skipped", rep.n_good, rep.n_defect, rep.skipped.len());
    for (p, why) in &rep.skipped {
        println!("skipped {}: {why}", p.display());
    }
    if rep.n_without_mask > 0 {
        println!("{} defect images have no mask and are left out of the pixel metrics", rep.n_without_mask);
    }
    println!("image AUROC  {}", fmt(rep.image_auroc));
    println!("pixel AUROC  {}", fmt(rep.pixel_auroc));
    println!("AUPRO@0.3    {}", fmt(rep.aupro));
    println!("F1-max       {} at threshold {}", fmt(rep.f1_max), rep.threshold.map(|t| format!("{t:.5}")).unwrap_or("n/a".into()));
    println!(
        "  image AUROC of map max {}, of flow NLL {}, fused {}, global {}, map-global {}",
        fmt(rep.auroc_map_max),
        fmt(rep.auroc_flow),
        fmt(rep.auroc_fused),
        fmt(rep.auroc_global),
        fmt(rep.auroc_map_global)
    );
    for (k, v) in &rep.auroc_by_kind {
        let pixel = rep.pixel_auroc_by_kind.get(k).map(|p| format!(", pixel AUROC {p:.4}")).unwrap_or_default();
        println!("  {k:>12}: image AUROC {v:.4}{pixel}");
    }
    let c = &rep.confusion;
    println!(
        "at the model threshold {:.5}: TP {} FP {} TN {} FN {}; precision {:.3} recall {:.3}",
        rep.model_threshold, c.tp, c.fp, c.tn, c.fn_, rep.precision, rep.recall
    );
    println!(
        "  false alarms {:.1} % of good images, escapes {:.1} % of defective images",
        100.0 * rep.false_alarm_rate,
        100.0 * rep.escape_rate
    );
    println!("scoring took {:.1} s ({:.0} ms per image)", rep.seconds, rep.ms_per_image);
    if let Some(j) = &a.json {
        let s = serde_json::to_vec_pretty(&rep)?;
        flowspect::fsutil::atomic_write(j, &s)?;
        println!("metrics written to {}", j.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// An image file or a folder of images.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder: scores.csv and one heatmap PNG per image.
    #[arg(long)]
    pub out: PathBuf,
    /// Override the model's threshold.
    #[arg(long)]
    pub threshold: Option<f32>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn predict(a: PredictArgs) -> Result<()> {
    let dev = a.device.open()?;
    let det = Detector::load(&a.model, &dev)?;
    let threshold = a.threshold.unwrap_or(det.meta.threshold);
    let paths: Vec<PathBuf> = if a.input.is_file() {
        vec![a.input.clone()]
    } else {
        let p = data::list_images(&a.input)?;
        if p.is_empty() {
            bail!("{}: no images found", a.input.display());
        }
        p
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let progress = CliProgress::new();
    let (scored, skipped) = det.score_paths(&paths, &progress, &CancelToken::new())?;
    progress.finish();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["path", "score", "verdict", "heatmap"])?;
    let mut rejects = 0;
    for s in &scored {
        let verdict = if s.score >= threshold { "reject" } else { "accept" };
        rejects += (verdict == "reject") as usize;
        let stem = s.path.file_stem().map(|x| x.to_string_lossy().into_owned()).unwrap_or_default();
        let heat = a.out.join(format!("{stem}_heatmap.png"));
        let img = data::load_image(&s.path)?;
        let over = flowspect::render::overlay(&img, &s.map_at_original(), det.meta.pixel_threshold * 2.0, 0.5);
        let mut buf = std::io::Cursor::new(Vec::new());
        over.write_to(&mut buf, image::ImageFormat::Png)?;
        flowspect::fsutil::atomic_write(&heat, buf.get_ref())?;
        w.write_record([s.path.display().to_string(), format!("{:.6}", s.score), verdict.into(), heat.display().to_string()])?;
    }
    for (p, why) in &skipped {
        w.write_record([p.display().to_string(), String::new(), "error".into(), why.clone()])?;
        println!("skipped {}: {why}", p.display());
    }
    let csv_path = a.out.join("scores.csv");
    flowspect::fsutil::atomic_write(&csv_path, &w.into_inner()?)?;
    println!(
        "{} images scored: {} reject, {} accept, {} skipped (threshold {threshold:.5}); {}",
        scored.len(),
        rejects,
        scored.len() - rejects,
        skipped.len(),
        csv_path.display()
    );
    Ok(())
}
