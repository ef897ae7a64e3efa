//! Defect reports: what an inspection found, for people who were not there.
//!
//! [`generate`] scores a folder with a detector and writes, into one output folder:
//! `report.csv` and `report.json` (one row per image), `report.html` (one self-contained
//! file, images embedded) and `report.pdf` (the same content), and per image
//! `images/<name>_heatmap.png` and `images/<name>_mask.png`. Everything is first written
//! into a staging folder beside them and moved into place only when complete, so a
//! cancelled or failed run leaves the previous report untouched.
mod figures;
mod html;
mod pdf;
mod tables;

use crate::data::{Sample, load_image, load_mask};
use crate::detector::Detector;
use crate::error::{Error, Result};
use crate::inspection::{Thresholds, Verdict, VerdictCounts, regions};
use crate::metrics::{self, RocPoint};
use crate::progress::{CancelToken, Progress, ProgressSink};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use tables::CSV_HEADER;

/// What to report with.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub thresholds: Thresholds,
    /// Map value from which a pixel is defective (regions, masks).
    pub pixel_threshold: f32,
    /// The model file, as the header names it.
    pub model_path: String,
    /// The folder or file that was inspected, as the header names it.
    pub input: String,
}

/// One image's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRow {
    pub path: PathBuf,
    /// Sub-folder name in a labelled layout (`good`, `crack`, ...), else empty.
    pub kind: String,
    /// `Some(true)` defect, `Some(false)` good, `None` unlabeled.
    pub defect: Option<bool>,
    /// `None` when the image could not be read (see `error`).
    pub score: Option<f32>,
    /// accept / review / reject, or `None` for an unreadable image.
    pub verdict: Option<Verdict>,
    pub regions: usize,
    pub largest_region_px: usize,
    /// Largest region's share of the image in %, rounded to four decimals.
    pub largest_region_pct: f64,
    /// Bounding boxes of the defect regions in image pixels: `[x0, y0, x1, y1]`,
    /// inclusive, largest region first.
    pub boxes: Vec<[u32; 4]>,
    pub width: u32,
    pub height: u32,
    /// Paths of the heatmap and mask PNGs, relative to the report folder.
    pub heatmap: Option<String>,
    pub mask: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub path: String,
    pub method: String,
    pub backbone: String,
    pub backbone_fingerprint: String,
    pub image_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub input: String,
    pub images: usize,
    pub scored: usize,
    pub unreadable: usize,
    pub good: usize,
    pub defect: usize,
    pub unlabeled: usize,
}

/// Metrics when the input has both good and defect labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledMetrics {
    pub image_auroc: f64,
    pub f1_max: f64,
    pub f1_max_threshold: f32,
    /// At the report's thresholds (review counts as flagged).
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub roc: Vec<RocPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub created_utc: String,
    pub flowspect_version: String,
    pub model: ModelSummary,
    pub thresholds: Thresholds,
    pub pixel_threshold: f32,
    pub dataset: DatasetSummary,
    pub counts: VerdictCounts,
    pub metrics: Option<LabelledMetrics>,
    pub images: Vec<ImageRow>,
}

/// Names of the files a report consists of.
pub const CSV_FILE: &str = "report.csv";
pub const JSON_FILE: &str = "report.json";
pub const HTML_FILE: &str = "report.html";
pub const PDF_FILE: &str = "report.pdf";
pub const IMAGES_DIR: &str = "images";

/// The picture of a flagged image, for the HTML and PDF pages.
pub(crate) struct Figure {
    pub row: usize,
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Images scored per chunk (progress and cancellation granularity).
const CHUNK: usize = 16;

/// Scores `samples` and writes the report into `out` (created if missing).
pub fn generate(
    det: &Detector,
    samples: &[Sample],
    opts: &ReportOptions,
    out: &Path,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<Report> {
    if samples.is_empty() {
        return Err(Error::Data(format!("{}: no images to report on", opts.input)));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let staging = out.join(format!(".flowspect-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join(IMAGES_DIR)).map_err(|e| Error::io(&staging, e))?;
    let r = build(det, samples, opts, &staging, progress, cancel).and_then(|report| {
        progress.report(Progress::Stage { name: "moving the report into place".into(), total: 0 });
        commit(&staging, out)?;
        Ok(report)
    });
    // Nothing half-written stays behind, whatever happened.
    let _ = std::fs::remove_dir_all(&staging);
    r
}

fn build(
    det: &Detector,
    samples: &[Sample],
    opts: &ReportOptions,
    staging: &Path,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<Report> {
    let t = opts.thresholds;
    let mut rows: Vec<ImageRow> = Vec::with_capacity(samples.len());
    let mut figures: Vec<Figure> = Vec::new();
    let mut used_names = HashSet::new();
    progress.report(Progress::Stage { name: "report: scoring".into(), total: samples.len() });
    for (k, chunk) in samples.chunks(CHUNK).enumerate() {
        cancel.check()?;
        let paths: Vec<PathBuf> = chunk.iter().map(|s| s.path.clone()).collect();
        let (scored, skipped) = det.score_paths(&paths, &crate::progress::NoProgress, cancel)?;
        for (p, why) in &skipped {
            progress.report(Progress::Skipped { message: why.clone() });
            let s = chunk.iter().find(|s| &s.path == p);
            rows.push(ImageRow {
                path: p.clone(),
                kind: s.map(|s| s.kind.clone()).unwrap_or_default(),
                defect: s.and_then(|s| s.defect),
                score: None,
                verdict: None,
                regions: 0,
                largest_region_px: 0,
                largest_region_pct: 0.0,
                boxes: vec![],
                width: 0,
                height: 0,
                heatmap: None,
                mask: None,
                error: Some(why.clone()),
            });
        }
        for sc in scored {
            let Some(sample) = chunk.iter().find(|s| s.path == sc.path) else { continue };
            let (w, h) = (sc.width as usize, sc.height as usize);
            let map = sc.map_at_original();
            let regs = regions(&map, w, h, opts.pixel_threshold);
            let defect_mask: Vec<bool> = map.iter().map(|&v| v >= opts.pixel_threshold).collect();
            let img = load_image(&sc.path)?;
            let verdict = t.verdict(sc.score);
            // Heatmap and mask PNGs, named after the image (and its sub-folder).
            let name = unique_name(sample, &mut used_names);
            let heat_rel = format!("{IMAGES_DIR}/{name}_heatmap.png");
            let mask_rel = format!("{IMAGES_DIR}/{name}_mask.png");
            let hi = 2.0 * opts.pixel_threshold.max(1e-6);
            let overlay = crate::render::overlay(&img, &map, hi, 0.45);
            figures::write_png(&staging.join(&heat_rel), &image::DynamicImage::ImageRgb8(overlay.clone()))?;
            figures::write_png(&staging.join(&mask_rel), &figures::mask_image(&defect_mask, w, h))?;
            if verdict != Verdict::Accept {
                let truth = sample.mask.as_ref().and_then(|m| load_mask(m, sc.width, sc.height).ok());
                let fig = figures::flagged_figure(&overlay, &defect_mask, truth.as_ref())?;
                figures.push(Figure { row: rows.len(), jpeg: fig.0, width: fig.1, height: fig.2 });
            }
            let largest = regs.first().map(|r| r.area).unwrap_or(0);
            rows.push(ImageRow {
                path: sc.path.clone(),
                kind: sample.kind.clone(),
                defect: sample.defect,
                score: Some(sc.score),
                verdict: Some(verdict),
                regions: regs.len(),
                largest_region_px: largest,
                // Rounded to 1e-4 %, as the CSV writes it, so every file says the same.
                largest_region_pct: (1e6 * largest as f64 / (w * h).max(1) as f64).round() / 1e4,
                boxes: regs.iter().map(|r| [r.x0 as u32, r.y0 as u32, r.x1 as u32, r.y1 as u32]).collect(),
                width: sc.width,
                height: sc.height,
                heatmap: Some(heat_rel),
                mask: Some(mask_rel),
                error: None,
            });
        }
        progress.report(Progress::Step { done: (k * CHUNK + chunk.len()).min(samples.len()) });
    }
    cancel.check()?;
    progress.report(Progress::Stage { name: "report: writing".into(), total: 0 });
    let report = summarise(det, opts, rows);
    tables::write_csv(&staging.join(CSV_FILE), &report.images)?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Data(format!("cannot encode the report: {e}")))?;
    write(&staging.join(JSON_FILE), &json)?;
    let order = flagged_order(&report, &figures);
    cancel.check()?;
    write(&staging.join(HTML_FILE), html::render(&report, &figures, &order).as_bytes())?;
    cancel.check()?;
    write(&staging.join(PDF_FILE), &pdf::render(&report, &figures, &order))?;
    Ok(report)
}

/// Indices into `figures`, highest score first.
fn flagged_order(report: &Report, figures: &[Figure]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..figures.len()).collect();
    let score = |i: usize| report.images[figures[i].row].score.unwrap_or(f32::NEG_INFINITY);
    order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    order
}

fn summarise(det: &Detector, opts: &ReportOptions, images: Vec<ImageRow>) -> Report {
    let scored: Vec<&ImageRow> = images.iter().filter(|r| r.score.is_some()).collect();
    let scores: Vec<f32> = scored.iter().filter_map(|r| r.score).collect();
    let labels: Vec<Option<bool>> = scored.iter().map(|r| r.defect).collect();
    let counts = VerdictCounts::count(&scores, &labels, &opts.thresholds);
    let (ls, ll): (Vec<f32>, Vec<bool>) = scores
        .iter()
        .zip(&labels)
        .filter_map(|(&s, l)| l.map(|l| (s, l)))
        .unzip();
    let metrics = match (metrics::auroc(&ls, &ll), metrics::f1_max(&ls, &ll)) {
        (Some(a), Some((f1, thr))) => Some(LabelledMetrics {
            image_auroc: a,
            f1_max: f1,
            f1_max_threshold: thr,
            precision: counts.precision(),
            recall: counts.recall(),
            f1: counts.f1(),
            roc: metrics::roc_curve(&ls, &ll),
        }),
        _ => None,
    };
    let m = &det.meta;
    Report {
        created_utc: utc_now(),
        flowspect_version: env!("CARGO_PKG_VERSION").into(),
        model: ModelSummary {
            path: opts.model_path.clone(),
            method: m.method.to_string(),
            backbone: m.backbone.config.variant.to_string(),
            backbone_fingerprint: m.backbone.fingerprint.clone(),
            image_size: m.config.tap().image_size,
        },
        thresholds: opts.thresholds,
        pixel_threshold: opts.pixel_threshold,
        dataset: DatasetSummary {
            input: opts.input.clone(),
            images: images.len(),
            scored: scores.len(),
            unreadable: images.len() - scores.len(),
            good: images.iter().filter(|r| r.defect == Some(false)).count(),
            defect: images.iter().filter(|r| r.defect == Some(true)).count(),
            unlabeled: images.iter().filter(|r| r.defect.is_none()).count(),
        },
        counts,
        metrics,
        images,
    }
}

/// `<kind>_<stem>` (or `<stem>`), made unique with a counter: MVTec folders reuse
/// file names across defect kinds.
fn unique_name(s: &Sample, used: &mut HashSet<String>) -> String {
    let stem = s.path.file_stem().map(|x| x.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let base: String = if s.kind.is_empty() { stem } else { format!("{}_{stem}", s.kind) }
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    let mut name = base.clone();
    let mut k = 2;
    while !used.insert(name.clone()) {
        name = format!("{base}-{k}");
        k += 1;
    }
    name
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Moves a finished report from `staging` into `out`: the images folder is swapped in
/// whole, then each report file is renamed over its old version (a rename is atomic).
fn commit(staging: &Path, out: &Path) -> Result<()> {
    let new_images = staging.join(IMAGES_DIR);
    let images = out.join(IMAGES_DIR);
    let old = staging.join("old-images");
    if images.exists() {
        std::fs::rename(&images, &old).map_err(|e| Error::io(&images, e))?;
    }
    std::fs::rename(&new_images, &images).map_err(|e| Error::io(&images, e))?;
    for f in [CSV_FILE, JSON_FILE, HTML_FILE, PDF_FILE] {
        let dst = out.join(f);
        std::fs::rename(staging.join(f), &dst).map_err(|e| Error::io(&dst, e))?;
    }
    Ok(())
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    format_utc(crate::fsutil::unix_now())
}

/// Formats Unix seconds as a UTC date and time (proleptic Gregorian calendar).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_by_hand() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
    }

    #[test]
    fn json_numbers_read_back_bit_for_bit() {
        // 16/17 is the F1 a CI run produced; serde_json without `float_roundtrip`
        // reads it back one ULP low, so report.json disagreed with the report.
        let m = LabelledMetrics {
            image_auroc: 47.0 / 48.0,
            f1_max: 16.0 / 17.0,
            f1_max_threshold: 3.200_852_2,
            precision: 8.0 / 9.0,
            recall: 1.0,
            f1: 16.0 / 17.0,
            roc: vec![RocPoint { threshold: f32::INFINITY, fpr: 0.0, tpr: 0.0 }, RocPoint { threshold: 3.2, fpr: 1.0 / 6.0, tpr: 1.0 }],
        };
        let back: LabelledMetrics = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back.f1_max.to_bits(), m.f1_max.to_bits());
        assert_eq!(back, m);
    }

    #[test]
    fn names_are_unique_and_safe() {
        let mut used = HashSet::new();
        let s = |p: &str, k: &str| Sample { path: PathBuf::from(p), defect: None, kind: k.into(), mask: None };
        assert_eq!(unique_name(&s("a/000.png", "crack"), &mut used), "crack_000");
        assert_eq!(unique_name(&s("b/000.png", "good"), &mut used), "good_000");
        assert_eq!(unique_name(&s("c/000.png", "crack"), &mut used), "crack_000-2");
        assert_eq!(unique_name(&s("d/a b&c.jpg", ""), &mut used), "a_b_c");
    }
}
