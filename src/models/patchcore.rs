//! PatchCore (Roth et al., CVPR 2022) as flowspect's reference baseline: the same
//! frozen backbone, a memory bank of locally aware patch features of good images,
//! nearest-neighbour distance as the anomaly map and its maximum as the image score.
//! No network is trained.
//!
//! Defaults follow PatchCore's paper and anomalib's implementation where the backbone
//! allows: two intermediate stages (stage 3, stride 8, 40 channels, and stage 5,
//! stride 16, 112 channels: the blocks anomalib taps as `blocks.2` + `blocks.4` of
//! `tf_efficientnet_lite0`), the coarser stage brought to the finer grid, 3x3 local
//! averaging, raw (not standardised) features, a greedy k-center coreset of 10 % of
//! the training patches on a 128-dimensional random projection, the map upsampled
//! bilinearly and smoothed with a Gaussian of sigma 4 px, 256 px input. Where this
//! differs: the coreset is capped at `max_bank` rows (the greedy selection costs rows
//! x patches, and 10 % of a 764-image stride-8 training set is 70,000 rows); a tenth of
//! the good images is held out of the bank to calibrate the threshold; the input is
//! mirrored at the border instead of zero-padded; the image score is the maximum of the
//! smoothed map rather than the re-weighted maximum patch distance.
use super::features::{self, FeatureTap, ImageFeatures};
use super::memory::{BankConfig, MemoryBank, TrainedBank, build_bank, teach_bank};
use super::scoring::{Calibration, ScoreKind, Scored, TrainReport, calibrate, max_of};
use super::{AnomalyModel, StoredTensors, TeachConfig};
use crate::backbone::EfficientNet;
use crate::detector::DetectorConfig;
use crate::error::{Error, Result};
use crate::postprocess;
use crate::progress::{CancelToken, Progress, ProgressSink};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchCoreConfig {
    /// Input size and the bank's stages (all on the finest one's grid).
    pub tap: FeatureTap,
    /// Side of the local averaging window (1 = none).
    pub neighbourhood: usize,
    /// Fraction of the training patches kept in the bank.
    pub coreset_ratio: f64,
    /// Upper bound on the bank's rows, whatever the ratio.
    pub max_bank: usize,
    /// Dimensions of the random projection the coreset is selected on (0 = none).
    pub projection: usize,
    /// Standardise each channel before the bank (PatchCore: no).
    pub standardise: bool,
    pub val_fraction: f64,
    pub smoothing_sigma: f32,
    pub seed: u64,
}

impl Default for PatchCoreConfig {
    fn default() -> Self {
        let mut tap = FeatureTap::new(256, vec![3, 5]);
        tap.reflect_cells = 2;
        Self {
            tap,
            neighbourhood: 3,
            coreset_ratio: 0.1,
            max_bank: 10_000,
            projection: 128,
            standardise: false,
            val_fraction: 0.1,
            smoothing_sigma: 4.0,
            seed: 42,
        }
    }
}

pub struct PatchCore {
    pub cfg: PatchCoreConfig,
    pub backbone: EfficientNet,
    pub bank: MemoryBank,
    pub bank_mean: Tensor,
    pub bank_std: Tensor,
    pub calibration: Calibration,
}

impl PatchCore {
    fn check(cfg: &PatchCoreConfig) -> Result<()> {
        if cfg.tap.stages.is_empty() {
            return Err(Error::Config("patchcore needs at least one bank stage".into()));
        }
        for &s in &cfg.tap.stages {
            crate::backbone::config::check_stage(s)?;
        }
        if !cfg.tap.global_stages.is_empty() {
            return Err(Error::Config("patchcore has no pooled-feature score".into()));
        }
        if !(cfg.coreset_ratio > 0.0 && cfg.coreset_ratio <= 1.0) {
            return Err(Error::Config(format!("coreset ratio {} must be in (0, 1]", cfg.coreset_ratio)));
        }
        Ok(())
    }

    /// A model with an all-zero bank of `bank_rows` rows (loading, benchmarks).
    pub fn untrained(backbone: EfficientNet, cfg: PatchCoreConfig, bank_rows: usize) -> Result<Self> {
        Self::check(&cfg)?;
        let device = backbone.device().clone();
        let dim = cfg.tap.stages.iter().map(|&s| backbone.config().stage_channels(s)).sum::<Result<usize>>()?;
        Ok(Self {
            bank: MemoryBank::new(Tensor::zeros((bank_rows, dim), DType::F32, &device)?)?,
            bank_mean: Tensor::zeros(dim, DType::F32, &device)?,
            bank_std: Tensor::ones(dim, DType::F32, &device)?,
            cfg,
            backbone,
            calibration: Calibration::default(),
        })
    }

    /// Builds the bank from good images and calibrates on the held-out ones.
    pub fn train(
        backbone: EfficientNet,
        cfg: PatchCoreConfig,
        files: &[PathBuf],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<(Self, TrainReport)> {
        Self::check(&cfg)?;
        let t0 = std::time::Instant::now();
        let (feats, skipped) = features::extract_training(&backbone, &cfg.tap, files, progress, cancel)?;
        let feature_seconds = t0.elapsed().as_secs_f64();
        let (tr, va) = features::hold_out(&feats, cfg.val_fraction);
        let mut model = Self::untrained(backbone, cfg, 0)?;
        let raw: Vec<Tensor> = tr.iter().map(|f| f.features.clone()).collect();
        let bank_cfg = BankConfig {
            neighbourhood: model.cfg.neighbourhood,
            coreset_ratio: model.cfg.coreset_ratio,
            max_bank: model.cfg.max_bank,
            projection: model.cfg.projection,
            standardise: model.cfg.standardise,
            seed: model.cfg.seed,
        };
        let (bank, bank_report) = build_bank(raw, &bank_cfg, model.backbone.device(), progress, cancel)?;
        (model.bank, model.bank_mean, model.bank_std) = (bank.bank, bank.mean, bank.std);
        progress.report(Progress::Stage { name: "calibration".into(), total: 0 });
        let cal_set: Vec<&ImageFeatures> = if va.is_empty() { tr.clone() } else { va.clone() };
        model.calibrate_on(&cal_set, cancel)?;
        let report = TrainReport {
            n_train: tr.len(),
            n_val: va.len(),
            held_out: features::held_out_records(&va),
            skipped,
            feature_seconds,
            total_seconds: t0.elapsed().as_secs_f64(),
            bank: Some(bank_report),
            ..Default::default()
        };
        Ok((model, report))
    }

    /// The score statistics of good images the model did not train on (held out at
    /// training, and again after a teach).
    fn calibrate_on(&mut self, cal_set: &[&ImageFeatures], cancel: &CancelToken) -> Result<()> {
        let scored = self.score_features(cal_set, cancel)?;
        self.calibration = calibrate(&scored, ScoreKind::MapMax, Calibration::default());
        Ok(())
    }

    /// `[n, h, w, C]` features -> `[n, h, w]` distance to the nearest bank patch (on the CPU).
    fn distances(&self, f: &Tensor) -> Result<Tensor> {
        self.bank.patch_distances(f, &self.bank_mean, &self.bank_std, self.cfg.neighbourhood)
    }

    fn smooth(&self, m: &[f32], grid: usize) -> Vec<f32> {
        let s = self.cfg.tap.image_size;
        let up = postprocess::resize_bilinear(m, grid, grid, s, s);
        postprocess::gaussian_blur(&up, s, s, self.cfg.smoothing_sigma)
    }

    fn scored(&self, f: &ImageFeatures, map: Vec<f32>) -> Scored {
        let map_max = max_of(&map);
        Scored {
            path: f.path.clone(),
            width: f.width,
            height: f.height,
            map,
            flow_map: Vec::new(),
            region_map: Vec::new(),
            size: self.cfg.tap.image_size,
            map_max,
            flow_max: f32::NAN,
            global: f32::NAN,
            score: map_max,
        }
    }

    /// The model stored in a model file (the backbone already loaded).
    pub fn load(backbone: EfficientNet, cfg: &PatchCoreConfig, calibration: &Calibration, st: &StoredTensors) -> Result<Self> {
        let mut model = Self::untrained(backbone, cfg.clone(), 0)?;
        let bank = TrainedBank::load(st, model.bank_mean.dim(0)?)?;
        (model.bank, model.bank_mean, model.bank_std) = (bank.bank, bank.mean, bank.std);
        model.calibration = calibration.clone();
        Ok(model)
    }
}

impl AnomalyModel for PatchCore {
    fn backbone(&self) -> &EfficientNet {
        &self.backbone
    }
    fn tap(&self) -> &FeatureTap {
        &self.cfg.tap
    }
    fn calibration(&self) -> &Calibration {
        &self.calibration
    }
    fn score_features(&self, feats: &[&ImageFeatures], cancel: &CancelToken) -> Result<Vec<Scored>> {
        let mut out = Vec::with_capacity(feats.len());
        for chunk in feats.chunks(features::forward_batch(self.backbone.device())) {
            cancel.check()?;
            let f = Tensor::stack(&chunk.iter().map(|f| &f.features).collect::<Vec<_>>(), 0)?;
            let dist = self.distances(&f)?;
            let h = dist.dim(1)?;
            for (i, f) in chunk.iter().enumerate() {
                let m = dist.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                out.push(self.scored(f, self.smooth(&m, h)));
            }
        }
        Ok(out)
    }
    fn timed_stages(&self, x: &Tensor) -> Result<[f64; 4]> {
        let t0 = std::time::Instant::now();
        let f = features::extract(&self.backbone, &self.cfg.tap, x)?;
        f.device().synchronize()?;
        let t1 = std::time::Instant::now();
        let t2 = t1;
        let dist = self.distances(&f)?;
        let t3 = std::time::Instant::now();
        let h = dist.dim(1)?;
        for i in 0..dist.dim(0)? {
            let _ = self.smooth(&dist.get(i)?.flatten_all()?.to_vec1::<f32>()?, h);
        }
        let t4 = std::time::Instant::now();
        Ok(features::intervals([t0, t1, t2, t3, t4]))
    }
    fn map_stage_name(&self) -> &'static str {
        "bank"
    }
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        TrainedBank::tensors(&self.bank, &self.bank_mean, &self.bank_std)
    }
    fn set_score(&mut self, k: ScoreKind) -> Result<()> {
        if k != ScoreKind::MapMax {
            return Err(Error::Config(format!("patchcore's image score is the map maximum (map-max), not {k:?}")));
        }
        Ok(())
    }
    fn config(&self) -> DetectorConfig {
        self.cfg.clone().into()
    }
    fn bank_bytes(&self) -> Option<usize> {
        Some(self.bank.bytes())
    }
    fn recalibrate(&mut self, held_out: &[&ImageFeatures], cancel: &CancelToken) -> Result<()> {
        self.calibrate_on(held_out, cancel)
    }
    fn teach(&mut self, feats: &[&ImageFeatures], _prior: usize, _how: &TeachConfig, _progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<String> {
        let raw: Vec<&Tensor> = feats.iter().map(|f| &f.features).collect();
        let before = self.bank.len();
        let added = teach_bank(&mut self.bank, &raw, &self.bank_mean, &self.bank_std, self.cfg.neighbourhood, self.cfg.coreset_ratio, cancel)?;
        Ok(format!("memory bank {before} -> {} rows (+{added} patches of {} images)", self.bank.len(), feats.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{self, BackboneMode};
    use candle_core::Device;

    /// A bank of constant features: a test patch equal to them has distance 0, one that
    /// differs by `d` in every channel has distance `d * sqrt(C)` after local averaging
    /// (a constant image stays constant), and the image score is the map maximum.
    #[test]
    fn distance_map_of_a_constant_bank() {
        let net = backbone::load(&backbone::default_backbone_path(), &Device::Cpu, BackboneMode::Fast).unwrap();
        let pc = PatchCore::untrained(net, PatchCoreConfig::default(), 0).unwrap();
        let dim = 40 + 112;
        let bank = Tensor::ones((4, dim), DType::F32, &Device::Cpu).unwrap();
        let pc = PatchCore { bank: MemoryBank::new(bank).unwrap(), ..pc };
        let good = Tensor::ones((1, 6, 6, dim), DType::F32, &Device::Cpu).unwrap();
        let d = pc.distances(&good).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(d.iter().all(|v| v.abs() < 1e-2), "{d:?}");
        let off = (Tensor::ones((1, 6, 6, dim), DType::F32, &Device::Cpu).unwrap() * 1.5).unwrap();
        let d = pc.distances(&off).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = 0.5 * (dim as f32).sqrt();
        assert!(d.iter().all(|v| (v - want).abs() < 1e-2 * want), "{d:?} vs {want}");
    }
}

impl super::method::MethodInfo for PatchCoreConfig {
    const NAME: &'static str = "patchcore";
    const ALIASES: &'static [&'static str] = &[];
    const SUMMARY: &'static str = "patchcore (memory bank; the reference baseline)";
}

impl super::method::MethodConfig for PatchCoreConfig {
    fn tap(&self) -> &FeatureTap {
        &self.tap
    }
    fn tap_mut(&mut self) -> &mut FeatureTap {
        &mut self.tap
    }
    fn score(&self) -> ScoreKind {
        ScoreKind::MapMax
    }
    fn set_score(&mut self, k: ScoreKind) -> Result<()> {
        if k == ScoreKind::MapMax {
            Ok(())
        } else {
            Err(Error::Config(format!("patchcore's image score is the map maximum (map-max), not {k:?}")))
        }
    }
    fn set_seed(&mut self, s: u64) {
        self.seed = s;
    }
    /// PatchCore trains no network: no epochs, widths or learning rates.
    fn options(&self) -> super::TrainOptions {
        super::TrainOptions { stages: Some(self.tap.stages.clone()), coreset_ratio: Some(self.coreset_ratio), ..Default::default() }
    }
    fn take_options(&mut self, o: &mut super::TrainOptions) {
        if let Some(s) = o.stages.take() {
            self.tap.set_stages(s);
        }
        if let Some(r) = o.coreset_ratio.take() {
            self.coreset_ratio = r;
        }
    }
    fn train(&self, backbone: EfficientNet, files: &[PathBuf], progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<(super::Model, TrainReport)> {
        Ok(super::method::boxed(PatchCore::train(backbone, self.clone(), files, progress, cancel)?))
    }
    fn load(&self, backbone: EfficientNet, calibration: &Calibration, st: &StoredTensors) -> Result<super::Model> {
        Ok(Box::new(PatchCore::load(backbone, self, calibration, st)?))
    }
    fn untrained(&self, backbone: EfficientNet, bank_rows: usize) -> Result<super::Model> {
        Ok(Box::new(PatchCore::untrained(backbone, self.clone(), bank_rows)?))
    }
}
