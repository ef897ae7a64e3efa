//! Scoring a test set and computing its metrics.
use crate::data::{Sample, image_io::load_mask};
use crate::detector::Detector;
use crate::error::Result;
use crate::metrics::{self, Confusion, PixelAuroc, ProAccumulator, RocPoint};
use crate::models::scoring::{ScoreKind, Scored, image_score};
use crate::progress::{CancelToken, Progress, ProgressSink};
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageResult {
    pub path: PathBuf,
    pub kind: String,
    pub defect: Option<bool>,
    pub score: f32,
    pub map_max: f32,
    /// The flow's maximum (NaN, written as null, for methods without a flow).
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub flow_max: f32,
    /// Distance to the pooled-feature Gaussian (NaN, written as null, without one).
    #[serde(default = "nan", deserialize_with = "null_as_nan")]
    pub global: f32,
}

fn nan() -> f32 {
    f32::NAN
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}


#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
    /// Pixel AUROC of each defect kind: the pixels of that kind's images and of the
    /// good images. Shows which kind the pooled pixel AUROC loses on (kinds with large
    /// masks weigh most in it).
    #[serde(default)]
    pub pixel_auroc_by_kind: BTreeMap<String, f64>,
    /// Image AUROC of each defect kind against the good images.
    pub auroc_by_kind: BTreeMap<String, f64>,
    /// Image AUROC of the BMR map maximum and of the flow score alone.
    pub auroc_map_max: Option<f64>,
    pub auroc_flow: Option<f64>,
    pub auroc_fused: Option<f64>,
    /// Image AUROC of the pooled-feature distance alone and of `map-global`.
    #[serde(default)]
    pub auroc_global: Option<f64>,
    #[serde(default)]
    pub auroc_map_global: Option<f64>,
    pub f1_max: Option<f64>,
    /// The threshold reaching `f1_max`.
    pub threshold: Option<f32>,
    /// The model's own threshold and the counts at it.
    pub model_threshold: f32,
    pub confusion: Confusion,
    pub precision: f64,
    pub recall: f64,
    /// At the model's threshold: the share of good images rejected (false alarms) and
    /// of defective images accepted (escapes).
    #[serde(default)]
    pub false_alarm_rate: f64,
    #[serde(default)]
    pub escape_rate: f64,
    /// Peak resident memory of the scoring process in MB (set by the command line).
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
    pub n_good: usize,
    pub n_defect: usize,
    pub n_unlabeled: usize,
    pub n_without_mask: usize,
    pub skipped: Vec<(PathBuf, String)>,
    pub roc: Vec<RocPoint>,
    pub seconds: f64,
    pub ms_per_image: f64,
    pub images: Vec<ImageResult>,
}

/// Scores `samples` and computes every metric their labels and masks allow.
pub fn evaluate(
    det: &Detector,
    samples: &[Sample],
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<(EvalReport, Vec<Scored>)> {
    let t0 = std::time::Instant::now();
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let (scored, skipped) = det.score_paths(&paths, progress, cancel)?;
    let seconds = t0.elapsed().as_secs_f64();
    let by_path: std::collections::HashMap<&PathBuf, &Sample> = samples.iter().map(|s| (&s.path, s)).collect();
    let mut images = Vec::new();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    // The labelled images' scorings, in the order of `labels`.
    let mut labelled: Vec<&Scored> = Vec::new();
    let mut n_unlabeled = 0;
    for s in &scored {
        let Some(sample) = by_path.get(&s.path) else { continue };
        images.push(ImageResult {
            path: s.path.clone(),
            kind: sample.kind.clone(),
            defect: sample.defect,
            score: s.score,
            map_max: s.map_max,
            flow_max: s.flow_max,
            global: s.global,
        });
        match sample.defect {
            Some(d) => {
                scores.push(s.score);
                labelled.push(s);
                labels.push(d);
            }
            None => n_unlabeled += 1,
        }
    }
    // Pixel metrics at the model's input resolution.
    progress.report(Progress::Stage { name: "pixel metrics".into(), total: 0 });
    let size = det.image_size();
    let mut pix = PixelAuroc::for_maps(scored.iter().map(|s| s.map.as_slice()), 100_000);
    let mut pix_good = pix.empty_like();
    let mut pix_kind: BTreeMap<String, PixelAuroc> = BTreeMap::new();
    let mut pro = ProAccumulator::default();
    let mut n_without_mask = 0;
    let mut any_mask = false;
    for s in &scored {
        cancel.check()?;
        let Some(sample) = by_path.get(&s.path) else { continue };
        let mask: Vec<bool> = match (sample.defect, &sample.mask) {
            (Some(false), _) => vec![false; size * size],
            (Some(true), Some(m)) => match load_mask(m, s.width, s.height) {
                Ok(m) => {
                    any_mask = true;
                    let r = image::imageops::resize(&m, size as u32, size as u32, FilterType::Nearest);
                    r.pixels().map(|p| p.0[0] > 127).collect()
                }
                Err(e) => {
                    progress.report(Progress::Skipped { message: format!("mask: {e}") });
                    n_without_mask += 1;
                    continue;
                }
            },
            (Some(true), None) => {
                n_without_mask += 1;
                continue;
            }
            (None, _) => continue,
        };
        pix.add(&s.map, &mask);
        if sample.defect == Some(true) {
            pix_kind.entry(sample.kind.clone()).or_insert_with(|| pix.empty_like()).add(&s.map, &mask);
        } else {
            pix_good.add(&s.map, &mask);
        }
        pro.add(&s.map, &mask, size, size);
    }
    let (pixel_auroc, aupro) = if any_mask {
        (pix.auroc(), pro.aupro(0.3, 3000))
    } else {
        (None, None)
    };
    let pixel_auroc_by_kind: BTreeMap<String, f64> = pix_kind
        .into_iter()
        .filter_map(|(k, mut acc)| {
            acc.merge(&pix_good);
            Some((k, acc.auroc()?))
        })
        .collect();
    let mut auroc_by_kind = BTreeMap::new();
    let kinds: std::collections::BTreeSet<&str> = images
        .iter()
        .filter(|i| i.defect == Some(true))
        .map(|i| i.kind.as_str())
        .collect();
    for k in kinds {
        let (s, l): (Vec<f32>, Vec<bool>) = images
            .iter()
            .filter(|i| i.defect == Some(false) || (i.defect == Some(true) && i.kind == k))
            .map(|i| (i.score, i.defect == Some(true)))
            .unzip();
        if let Some(a) = metrics::auroc(&s, &l) {
            auroc_by_kind.insert(k.to_string(), a);
        }
    }
    // The image AUROC any score kind would give (NaN parts: no AUROC).
    let auroc_of = |kind: ScoreKind| -> Option<f64> {
        let s: Vec<f32> = labelled.iter().map(|s| image_score(kind, s, &det.meta.calibration)).collect();
        if s.iter().any(|v| !v.is_finite()) {
            return None;
        }
        metrics::auroc(&s, &labels)
    };
    let f1 = metrics::f1_max(&scores, &labels);
    let model_threshold = det.meta.threshold;
    let confusion = Confusion::at(&scores, &labels, model_threshold);
    let report = EvalReport {
        image_auroc: metrics::auroc(&scores, &labels),
        pixel_auroc,
        aupro,
        pixel_auroc_by_kind,
        auroc_by_kind,
        auroc_map_max: auroc_of(ScoreKind::MapMax),
        auroc_flow: auroc_of(ScoreKind::FlowNll),
        auroc_fused: auroc_of(ScoreKind::Fused),
        auroc_global: auroc_of(ScoreKind::Global),
        auroc_map_global: auroc_of(ScoreKind::MapGlobal),
        f1_max: f1.map(|f| f.0),
        threshold: f1.map(|f| f.1),
        model_threshold,
        precision: confusion.precision(),
        recall: confusion.recall(),
        false_alarm_rate: confusion.fp as f64 / (confusion.fp + confusion.tn).max(1) as f64,
        escape_rate: confusion.fn_ as f64 / (confusion.fn_ + confusion.tp).max(1) as f64,
        peak_rss_mb: None,
        confusion,
        n_good: labels.iter().filter(|&&l| !l).count(),
        n_defect: labels.iter().filter(|&&l| l).count(),
        n_unlabeled,
        n_without_mask,
        skipped,
        roc: metrics::roc_curve(&scores, &labels),
        seconds,
        ms_per_image: 1000.0 * seconds / scored.len().max(1) as f64,
        images,
    };
    Ok((report, scored))
}
