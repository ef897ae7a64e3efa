//! The scoring vocabulary every method shares: the image-score kinds, a scored image,
//! the held-out good images' calibration (per-position normalisation, score statistics,
//! pixel threshold), the training report and the default threshold. A method's file
//! imports these and nothing from another method.
use super::features::FeatureTap;
use super::memory::BankReport;
use super::training::History;
use crate::error::{Error, Result};
use crate::postprocess;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// Maximum of the smoothed BMR anomaly map.
    #[default]
    MapMax,
    /// Maximum of the smoothed flow negative log-likelihood map.
    FlowNll,
    /// Sum of both, each standardised on held-out good images.
    Fused,
    /// Distance of the image's pooled features to the good images' Gaussian.
    Global,
    /// The larger of the map maximum and the global distance, each standardised on
    /// held-out good images: a defect needs to stand out in one of them.
    MapGlobal,
}

impl ScoreKind {
    /// Whether this score needs the pooled-feature Gaussian.
    pub fn needs_global(self) -> bool {
        matches!(self, Self::Global | Self::MapGlobal)
    }
}

impl std::str::FromStr for ScoreKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "map-max" | "map" => Ok(Self::MapMax),
            "flow-nll" | "flow" => Ok(Self::FlowNll),
            "fused" => Ok(Self::Fused),
            "global" => Ok(Self::Global),
            "map-global" => Ok(Self::MapGlobal),
            _ => Err(Error::Config(format!("unknown score '{s}' (map-max, flow-nll, fused, global, map-global)"))),
        }
    }
}

/// Statistics of held-out good images, for score fusion and default thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub map_mean: f32,
    pub map_std: f32,
    pub flow_mean: f32,
    pub flow_std: f32,
    /// Image scores (of the configured kind) of the held-out good images.
    pub val_scores: Vec<f32>,
    /// 99.9th percentile of held-out good pixels' map values.
    pub pixel_p999: f32,
    /// Per-position mean and spread of the held-out good images' smoothed maps at the
    /// input resolution (empty when position normalisation is off).
    #[serde(default)]
    pub position_mean: Vec<f32>,
    #[serde(default)]
    pub position_scale: Vec<f32>,
    #[serde(default)]
    pub flow_position_mean: Vec<f32>,
    #[serde(default)]
    pub flow_position_scale: Vec<f32>,
    /// Mean and spread of the held-out good images' global distances (0 and 1 when the
    /// model has no pooled stages).
    #[serde(default)]
    pub global_mean: f32,
    #[serde(default)]
    pub global_std: f32,
    /// Pixel (mean, spread) of the held-out good images' BMR maps (after position
    /// normalisation, leaving each image out of its own statistics) and region maps,
    /// which standardise both before they are added ((0, 0) when not calibrated or
    /// there is no region score).
    #[serde(default)]
    pub local_pixel: (f32, f32),
    #[serde(default)]
    pub region_pixel: (f32, f32),
}

/// One scored image.
#[derive(Debug, Clone)]
pub struct Scored {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Smoothed anomaly map at the input resolution (`size x size`, row-major).
    pub map: Vec<f32>,
    /// The smoothed flow NLL map (kept only while calibrating; empty otherwise).
    pub flow_map: Vec<f32>,
    /// The smoothed region map (kept only while calibrating; empty otherwise).
    pub region_map: Vec<f32>,
    pub size: usize,
    pub map_max: f32,
    pub flow_max: f32,
    /// Distance of the pooled features to the good images' Gaussian (NaN without one).
    pub global: f32,
    /// The image score of the model's configured kind.
    pub score: f32,
}

impl Scored {
    /// The map resized to the original image size.
    pub fn map_at_original(&self) -> Vec<f32> {
        postprocess::resize_bilinear(&self.map, self.size, self.size, self.width as usize, self.height as usize)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainReport {
    pub n_train: usize,
    pub n_val: usize,
    pub skipped: Vec<(PathBuf, String)>,
    pub feature_seconds: f64,
    pub flow: History,
    pub bmr: History,
    pub total_seconds: f64,
    /// MemFlowNet: one flow per scale (`flow` is the first of them).
    #[serde(default)]
    pub flows: Vec<History>,
    /// MemFlowNet: the memory bank.
    #[serde(default)]
    pub bank: Option<BankReport>,
    /// Peak resident memory of the training process in MB, where the OS tells it
    /// (set by the command line; `None` in the app and in older files).
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
    /// The held-out good images (path and SHA-256 of the bytes when trained), which
    /// calibrate the model again after a teach (empty in older files).
    #[serde(default)]
    pub held_out: Vec<FileRecord>,
}

/// A file by path and the SHA-256 of its bytes, as a model file records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub sha256: String,
}

impl FileRecord {
    /// The record of the file at `path` as it is now.
    pub fn of(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.display().to_string(), sha256: crate::line::sha256_hex(&bytes) })
    }
}

/// Refuses a configuration whose image score needs pooled stages it does not have.
pub(crate) fn check_global(tap: &FeatureTap, score: ScoreKind) -> Result<()> {
    for &s in &tap.global_stages {
        crate::backbone::config::check_stage(s)?;
    }
    if score.needs_global() && tap.global_stages.is_empty() {
        return Err(Error::Config(format!("the {score:?} score needs pooled stages (global_stages), and none are configured")));
    }
    Ok(())
}

/// Share of good parts the default threshold is meant to reject at most.
pub const TARGET_FALSE_ALARM_RATE: f64 = 0.005;
/// Confidence that the default threshold keeps to [`TARGET_FALSE_ALARM_RATE`].
pub const THRESHOLD_CONFIDENCE: f64 = 0.9;

/// How the default threshold was set: mean + `factor` sample standard deviations of
/// the `held_out` good images' scores, `factor` the one-sided normal tolerance factor
/// that puts at least `1 - false_alarm_rate` of good scores below the threshold with
/// probability `confidence` (if good scores are normal). Few held-out images give a
/// large factor: mean + 3 sd of 5 images rejected half the good parts of a real set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdRule {
    pub held_out: usize,
    pub factor: f32,
    pub false_alarm_rate: f64,
    pub confidence: f64,
}

impl ThresholdRule {
    pub fn describe(&self) -> String {
        if self.confidence > 0.0 {
            format!(
                "mean + {:.2} sd of {} held-out good scores: at most {:.1} % of good parts above it, with {:.0} % confidence if good scores are normal",
                self.factor,
                self.held_out,
                100.0 * self.false_alarm_rate,
                100.0 * self.confidence
            )
        } else {
            format!("mean + {:.0} sd of {} held-out good scores (too few for a tolerance bound)", self.factor, self.held_out)
        }
    }
}

/// The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.383577518672690e2, -3.066479806614716e1, 2.506628277459239];
    const B: [f64; 5] = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        let q = (-2.0 * q.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail(p)
    } else if p > 1.0 - 0.02425 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// One-sided normal tolerance factor for `n` samples (Natrella's approximation): mean +
/// k sd of the sample exceeds the `coverage` quantile with probability `confidence`.
pub fn tolerance_factor(n: usize, coverage: f64, confidence: f64) -> f64 {
    let (zp, zg) = (normal_quantile(coverage), normal_quantile(confidence));
    let n = n as f64;
    let a = 1.0 - zg * zg / (2.0 * (n - 1.0));
    let b = zp * zp - zg * zg / n;
    (zp + (zp * zp - a * b).max(0.0).sqrt()) / a
}

/// The default accept/reject threshold from the held-out good images' scores, and how
/// it was set ([`ThresholdRule`]). Fewer than 4 scores: mean + 3 sd.
pub fn default_threshold(cal: &Calibration) -> (f32, ThresholdRule) {
    let v = &cal.val_scores;
    let n = v.len();
    if n == 0 {
        return (f32::INFINITY, ThresholdRule { held_out: 0, factor: f32::INFINITY, false_alarm_rate: 0.0, confidence: 0.0 });
    }
    let m = v.iter().sum::<f32>() / n as f32;
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / (n.max(2) - 1) as f32).sqrt();
    let rule = if n >= 4 {
        let k = tolerance_factor(n, 1.0 - TARGET_FALSE_ALARM_RATE, THRESHOLD_CONFIDENCE) as f32;
        ThresholdRule { held_out: n, factor: k, false_alarm_rate: TARGET_FALSE_ALARM_RATE, confidence: THRESHOLD_CONFIDENCE }
    } else {
        ThresholdRule { held_out: n, factor: 3.0, false_alarm_rate: 0.0, confidence: 0.0 }
    };
    (m + rule.factor * sd, rule)
}

/// Per-position mean, and a scale that blends the per-position and the global
/// standard deviation (a few dozen images give a noisy per-position estimate).
pub fn position_stats<'a>(maps: impl Iterator<Item = &'a Vec<f32>>) -> (Vec<f32>, Vec<f32>) {
    let maps: Vec<&Vec<f32>> = maps.collect();
    let Some(first) = maps.first() else { return (Vec::new(), Vec::new()) };
    let n = maps.len() as f32;
    let len = first.len();
    let mut mean = vec![0f32; len];
    for m in &maps {
        for (a, v) in mean.iter_mut().zip(m.iter()) {
            *a += v / n;
        }
    }
    let mut var = vec![0f32; len];
    for m in &maps {
        for ((a, v), mu) in var.iter_mut().zip(m.iter()).zip(&mean) {
            *a += (v - mu).powi(2) / n;
        }
    }
    let global = var.iter().sum::<f32>() / len as f32;
    let scale = var.iter().map(|v| (0.5 * v + 0.5 * global).sqrt().max(1e-6)).collect();
    (mean, scale)
}

/// Each map after position normalisation ([`position_stats`]) with the statistics of
/// all the other maps (leave one out); fewer than three maps come back as they are.
pub fn loo_position_normalise(maps: &[&[f32]]) -> Vec<Vec<f32>> {
    let n = maps.len();
    if n < 3 {
        return maps.iter().map(|m| m.to_vec()).collect();
    }
    let len = maps[0].len();
    let (mut s1, mut s2) = (vec![0f64; len], vec![0f64; len]);
    for m in maps {
        for ((a, b), &v) in s1.iter_mut().zip(s2.iter_mut()).zip(m.iter()) {
            *a += v as f64;
            *b += (v as f64) * (v as f64);
        }
    }
    let k = (n - 1) as f64;
    maps.iter()
        .map(|m| {
            let stats: Vec<(f64, f64)> = m
                .iter()
                .enumerate()
                .map(|(p, &v)| {
                    let mean = (s1[p] - v as f64) / k;
                    let var = ((s2[p] - (v as f64).powi(2)) / k - mean * mean).max(0.0);
                    (mean, var)
                })
                .collect();
            let global = stats.iter().map(|s| s.1).sum::<f64>() / len as f64;
            m.iter()
                .zip(&stats)
                .map(|(&v, &(mean, var))| ((v as f64 - mean) / (0.5 * var + 0.5 * global).sqrt().max(1e-6)) as f32)
                .collect()
        })
        .collect()
}

/// The largest value (negative infinity for none).
pub(crate) fn max_of(v: &[f32]) -> f32 {
    v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

fn mean_std(v: &[f32]) -> (f32, f32) {
    let n = v.len().max(1) as f32;
    let m = v.iter().sum::<f32>() / n;
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / n).sqrt();
    (m, sd.max(1e-6))
}

/// The image score of `kind` from an image's parts (map maximum, flow maximum, global
/// distance) and the held-out good images' statistics.
pub fn image_score(kind: ScoreKind, s: &Scored, cal: &Calibration) -> f32 {
    let z_map = (s.map_max - cal.map_mean) / cal.map_std.max(1e-6);
    let z_global = (s.global - cal.global_mean) / cal.global_std.max(1e-6);
    match kind {
        ScoreKind::MapMax => s.map_max,
        ScoreKind::FlowNll => s.flow_max,
        ScoreKind::Fused => z_map + (s.flow_max - cal.flow_mean) / cal.flow_std.max(1e-6),
        ScoreKind::Global => s.global,
        // `f32::max` would drop a NaN part: without a global distance there is no score.
        ScoreKind::MapGlobal if z_global.is_nan() => f32::NAN,
        ScoreKind::MapGlobal => z_map.max(z_global),
    }
}

/// Score statistics of held-out good images; the per-position statistics are taken
/// from `positions` (computed beforehand from the raw maps).
pub(crate) fn calibrate(scored: &[Scored], kind: ScoreKind, positions: Calibration) -> Calibration {
    let maps: Vec<f32> = scored.iter().map(|s| s.map_max).collect();
    let flows: Vec<f32> = scored.iter().map(|s| s.flow_max).collect();
    let (map_mean, map_std) = mean_std(&maps);
    // Methods without a flow give NaN flow maxima: no statistics (0, 1) for them.
    let flows: Vec<f32> = flows.into_iter().filter(|f| f.is_finite()).collect();
    let (flow_mean, flow_std) = if flows.is_empty() { (0.0, 1.0) } else { mean_std(&flows) };
    let globals: Vec<f32> = scored.iter().map(|s| s.global).filter(|g| g.is_finite()).collect();
    let (global_mean, global_std) = if globals.is_empty() { (0.0, 1.0) } else { mean_std(&globals) };
    let mut c = Calibration {
        map_mean,
        map_std,
        flow_mean,
        flow_std,
        global_mean,
        global_std,
        val_scores: Vec::new(),
        pixel_p999: 0.0,
        position_mean: positions.position_mean,
        position_scale: positions.position_scale,
        flow_position_mean: positions.flow_position_mean,
        flow_position_scale: positions.flow_position_scale,
        local_pixel: positions.local_pixel,
        region_pixel: positions.region_pixel,
    };
    c.val_scores = scored.iter().map(|s| image_score(kind, s, &c)).collect();
    let mut px: Vec<f32> = scored.iter().flat_map(|s| s.map.iter().step_by(7).copied()).collect();
    px.sort_by(f32::total_cmp);
    if !px.is_empty() {
        c.pixel_p999 = px[((px.len() as f64 * 0.999) as usize).min(px.len() - 1)];
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn leave_one_out_maxima_equal_statistics_of_the_other_maps() {
        let mut rng = Rng::new(11);
        let maps: Vec<Vec<f32>> = (0..7).map(|i| (0..50).map(|p| (p % 5) as f32 + i as f32 * 0.1 + rng.normal() as f32).collect()).collect();
        let refs: Vec<&[f32]> = maps.iter().map(|m| m.as_slice()).collect();
        let loo: Vec<f32> = loo_position_normalise(&refs).iter().map(|m| max_of(m)).collect();
        for i in 0..maps.len() {
            let others = maps.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, m)| m);
            let (mean, scale) = position_stats(others);
            let direct = maps[i].iter().zip(&mean).zip(&scale).map(|((v, m), s)| (v - m) / s).fold(f32::NEG_INFINITY, f32::max);
            assert!((loo[i] - direct).abs() < 1e-4 * direct.abs().max(1.0), "{i}: {} vs {direct}", loo[i]);
            // An image inside its own statistics looks more normal than outside them.
            let (mean, scale) = position_stats(maps.iter());
            let inside = maps[i].iter().zip(&mean).zip(&scale).map(|((v, m), s)| (v - m) / s).fold(f32::NEG_INFINITY, f32::max);
            assert!(inside < loo[i], "{i}: {inside} vs {}", loo[i]);
        }
    }

    #[test]
    fn tolerance_factor_matches_tables() {
        // Normal quantiles.
        assert!((normal_quantile(0.995) - 2.5758).abs() < 1e-3);
        assert!((normal_quantile(0.9) - 1.2816).abs() < 1e-3);
        assert!((normal_quantile(0.01) + 2.3263).abs() < 1e-3);
        // One-sided tolerance factors, coverage 0.99 / confidence 0.95 (NIST/SEMATECH
        // handbook tables: n = 10: 3.981, n = 20: 3.295, n = 50: 2.862).
        for (n, want) in [(10, 3.981), (20, 3.295), (50, 2.862)] {
            let k = tolerance_factor(n, 0.99, 0.95);
            assert!((k - want).abs() < 0.06 * want, "n = {n}: {k} vs {want}");
        }
        // More held-out images, a smaller factor, towards the plain quantile.
        let ks: Vec<f64> = [5, 10, 76, 1000].iter().map(|&n| tolerance_factor(n, 0.995, 0.9)).collect();
        assert!(ks.windows(2).all(|w| w[0] > w[1]) && ks[3] > 2.5758, "{ks:?}");
    }

    #[test]
    fn default_threshold_holds_on_normal_scores() {
        // With 5 held-out scores, the threshold keeps at least 99.5 % of good scores
        // below it in about 90 % of the draws; mean + 3 sd does so in far fewer.
        let mut rng = Rng::new(3);
        let (mut ok, mut ok3, trials) = (0, 0, 2000);
        let q = normal_quantile(0.995) as f32;
        for _ in 0..trials {
            let v: Vec<f32> = (0..5).map(|_| rng.normal() as f32).collect();
            let cal = Calibration { val_scores: v.clone(), ..Default::default() };
            let (t, rule) = default_threshold(&cal);
            assert_eq!(rule.held_out, 5);
            ok += (t >= q) as usize;
            let m = v.iter().sum::<f32>() / 5.0;
            let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / 5.0).sqrt();
            ok3 += (m + 3.0 * sd >= q) as usize;
        }
        let share = ok as f64 / trials as f64;
        assert!((0.86..0.94).contains(&share), "{share}");
        assert!((ok3 as f64 / trials as f64) < 0.75, "{ok3}");
    }

    #[test]
    fn map_global_takes_the_larger_standardised_part() {
        let cal = Calibration { map_mean: 2.0, map_std: 0.5, global_mean: 10.0, global_std: 5.0, ..Default::default() };
        let s = |m: f32, g: f32| Scored {
            path: PathBuf::new(),
            width: 1,
            height: 1,
            map: vec![],
            flow_map: vec![],
            region_map: vec![],
            size: 1,
            map_max: m,
            flow_max: 0.0,
            global: g,
            score: 0.0,
        };
        assert_eq!(image_score(ScoreKind::MapGlobal, &s(3.0, 10.0), &cal), 2.0);
        assert_eq!(image_score(ScoreKind::MapGlobal, &s(2.0, 25.0), &cal), 3.0);
        assert_eq!(image_score(ScoreKind::Global, &s(2.0, 25.0), &cal), 25.0);
        // A model without the Gaussian has no map-global score (the evaluation then
        // reports no AUROC for it instead of the map's).
        assert!(image_score(ScoreKind::MapGlobal, &s(3.0, f32::NAN), &cal).is_nan());
        assert!(ScoreKind::MapGlobal.needs_global() && !ScoreKind::Fused.needs_global());
        let tap = FeatureTap::new(64, vec![5]);
        assert!(check_global(&tap, ScoreKind::MapGlobal).is_err());
        assert!(check_global(&tap, ScoreKind::MapMax).is_ok());
        let tap = FeatureTap { global_stages: vec![8], ..tap };
        assert!(check_global(&tap, ScoreKind::MapMax).is_err());
    }
}
