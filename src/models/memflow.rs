//! MemFlowNet (Huang et al., ICONIP 2023): a memory bank of noise-insensitive patch
//! features for the pixel-level map, and normalizing flows on multi-scale features for
//! the image-level score.
//!
//! The paper publishes only an abstract; where it is silent this follows the closest
//! well-documented practice, and each choice is an option of [`MemFlowConfig`]:
//! - **Features**: one pass of the frozen backbone; the bank uses stages 4 and 5
//!   (stride 16, concatenated, standardised per channel with the training images'
//!   statistics so neither stage dominates the distance; bank stages of different
//!   strides all sit on the finest one's grid), the flows use stage 5
//!   (stride 16) and stage 6 (stride 32) as two scales (FastFlow / CS-Flow use
//!   several backbone scales). The input is mirrored at the border, as for NF-BMR.
//! - **Noise-insensitive averaging**: each bank feature is the mean over its 3x3
//!   neighbourhood (PatchCore's local aggregation), so a single noisy position neither
//!   enters the bank as a "good" outlier nor stands out at test time.
//! - **Bank size**: greedy k-center coreset (PatchCore) of `coreset_ratio` of all
//!   training patches, capped at `max_bank` rows, selected on a random projection to
//!   `projection` dimensions; the bank keeps the full features.
//! - **Pixel map**: distance of each test patch to its nearest bank entry, found by
//!   batched matrix products; upsampled to the input size and Gaussian-smoothed.
//! - **Flows**: one Real-NVP per scale (the same coupling blocks as NF-BMR's TNF),
//!   trained by negative log-likelihood on standardised features; per-position NLL
//!   maps, upsampled and smoothed.
//! - **Maps on a common scale**: as for NF-BMR, every map is normalised per position
//!   with held-out good images (every input is resized to the same square, so a
//!   position that is always high on good images is not an anomaly).
//! - **Score fusion**: the image score adds the memory map's maximum and the flows'
//!   maximum (the scales averaged), each standardised by the held-out good images'
//!   mean and deviation (`ScoreKind::Fused`, the default); `map-max` and `flow-nll`
//!   use one of them alone.
use super::features::{self, FeatureTap, ImageFeatures};
use super::flow::{FlowConfig, RealNvp};
use super::memory::{BankConfig, MemoryBank, TrainedBank, build_bank, teach_bank};
use super::scoring::{Calibration, ScoreKind, Scored, TrainReport, calibrate, image_score, loo_position_normalise, max_of, position_stats};
use super::training::{self, OptimConfig};
use super::{AnomalyModel, StoredTensors, TeachConfig, varmap_tensors};
use crate::detector::DetectorConfig;
use crate::backbone::EfficientNet;
use crate::backbone::config::STAGE_STRIDE;
use crate::error::{Error, Result};
use crate::postprocess;
use crate::progress::{CancelToken, Progress, ProgressSink};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemFlowConfig {
    /// Input size and every stage used (bank and flows), at the finest stride.
    pub tap: FeatureTap,
    /// Stages whose features make up the memory bank (concatenated).
    pub bank_stages: Vec<usize>,
    /// Stages each with its own flow (one per scale).
    pub flow_stages: Vec<usize>,
    /// Side of the local averaging window (1 = none).
    pub neighbourhood: usize,
    /// Fraction of the training patches kept in the bank.
    pub coreset_ratio: f64,
    /// Upper bound on the bank's rows, whatever the ratio.
    pub max_bank: usize,
    /// Dimensions of the random projection the coreset is selected on (0 = none).
    pub projection: usize,
    pub flow: FlowConfig,
    pub flow_optim: OptimConfig,
    pub val_fraction: f64,
    pub smoothing_sigma: f32,
    pub score: ScoreKind,
    pub position_norm: bool,
    pub seed: u64,
}

impl Default for MemFlowConfig {
    fn default() -> Self {
        Self {
            tap: FeatureTap { image_size: 256, stages: vec![4, 5, 6], reflect_cells: 2, global_stages: Vec::new() },
            bank_stages: vec![4, 5],
            flow_stages: vec![5, 6],
            neighbourhood: 3,
            coreset_ratio: 0.1,
            max_bank: 40_000,
            projection: 128,
            flow: FlowConfig { blocks: 4, hidden: 256, clamp: 1.9, seed: 7 },
            flow_optim: OptimConfig {
                epochs: 8,
                batch_size: 8,
                lr: 2e-4,
                weight_decay: 1e-5,
                patience: 3,
                min_delta: 1e-3,
            },
            val_fraction: 0.1,
            smoothing_sigma: 4.0,
            score: ScoreKind::Fused,
            position_norm: true,
            seed: 42,
        }
    }
}

/// Where each stage's channels sit in the tapped features, and its subsampling step.
#[derive(Debug, Clone)]
struct Slice {
    offset: usize,
    channels: usize,
    step: usize,
}

pub struct MemFlow {
    pub cfg: MemFlowConfig,
    pub backbone: EfficientNet,
    pub bank: MemoryBank,
    pub bank_mean: Tensor,
    pub bank_std: Tensor,
    pub flows: Vec<RealNvp>,
    pub flow_vars: Vec<VarMap>,
    pub flow_norm: Vec<(Tensor, Tensor)>,
    pub calibration: Calibration,
    /// What the calibration was computed from, kept so that a teach recalibrates
    /// without reading the held-out images again (`None`: an older model file, no
    /// held-out images, or more than [`HELD_OUT_KEEP_BYTES`] of them).
    pub held_out: Option<HeldOutMaps>,
}

/// The held-out good images as the calibration sees them: each bank query (averaged,
/// standardised patch feature) with its distance to the nearest bank row, and the
/// flows' maps. A teach only adds bank rows, so the distances are updated exactly by
/// searching the added rows alone, and the flows' maps do not change.
pub struct HeldOutMaps {
    /// `[n * h * w, D]` on the model's device.
    queries: Tensor,
    /// `[n, h, w]` on the CPU.
    distances: Tensor,
    /// Per flow stage: `[n, hs, ws]` on the CPU, and `hs`.
    flows: Vec<(Tensor, usize)>,
}

impl HeldOutMaps {
    fn bytes(&self) -> usize {
        4 * (self.queries.elem_count() + self.distances.elem_count() + self.flows.iter().map(|(t, _)| t.elem_count()).sum::<usize>())
    }

    fn tensors(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        out.push(("heldout.queries".into(), self.queries.to_device(&Device::Cpu)?));
        out.push(("heldout.distances".into(), self.distances.clone()));
        for (i, (t, _)) in self.flows.iter().enumerate() {
            out.push((format!("heldout.flow{i}"), t.clone()));
        }
        Ok(())
    }

    /// From a model file; `None` when it has none (older files), an error when they
    /// do not fit the model.
    fn load(st: &StoredTensors, dim: usize, flows: usize) -> Result<Option<Self>> {
        if !st.all.contains_key("heldout.queries") {
            return Ok(None);
        }
        let queries = st.get("heldout.queries")?;
        let distances = st.get("heldout.distances")?.to_device(&Device::Cpu)?;
        let (n, h, w) = distances.dims3()?;
        if queries.dims() != [n * h * w, dim] {
            return Err(st.bad(format!("held-out queries have shape {:?}, expected [{}, {dim}]", queries.dims(), n * h * w)));
        }
        let mut fl = Vec::with_capacity(flows);
        for i in 0..flows {
            let t = st.get(&format!("heldout.flow{i}"))?.to_device(&Device::Cpu)?;
            let (m, hs, _) = t.dims3()?;
            if m != n {
                return Err(st.bad(format!("held-out flow map {i} has {m} images, expected {n}")));
            }
            fl.push((t, hs));
        }
        Ok(Some(Self { queries, distances, flows: fl }))
    }
}

/// Held-out maps bigger than this are not kept in the model file (a teach then scores
/// the held-out images again). The default (256 px, 76 held-out images) needs 15 MB.
pub const HELD_OUT_KEEP_BYTES: usize = 64 << 20;

/// Raw per-image maps at the input size, before position normalisation.
struct RawMaps {
    memory: Vec<f32>,
    flows: Vec<Vec<f32>>,
}

fn slices(backbone: &EfficientNet, cfg: &MemFlowConfig, stages: &[usize]) -> Result<Vec<Slice>> {
    let finest = cfg.tap.stride();
    let mut out = Vec::new();
    for &s in stages {
        let pos = cfg
            .tap
            .stages
            .iter()
            .position(|&t| t == s)
            .ok_or_else(|| Error::Config(format!("stage {s} is not among the tapped stages {:?}", cfg.tap.stages)))?;
        let offset = cfg.tap.stages[..pos]
            .iter()
            .map(|&t| backbone.config().stage_channels(t))
            .sum::<Result<usize>>()?;
        out.push(Slice { offset, channels: backbone.config().stage_channels(s)?, step: STAGE_STRIDE[s - 1] / finest });
    }
    Ok(out)
}

/// `[.., h, w, C]` -> the channels of `s`, at that stage's own resolution.
fn take(f: &Tensor, s: &Slice) -> Result<Tensor> {
    let nd = f.rank();
    let mut t = f.narrow(nd - 1, s.offset, s.channels)?;
    if s.step > 1 {
        // The coarser stage was upsampled by repetition; every step-th position is it.
        let h = t.dim(nd - 3)?;
        let idx: Vec<u32> = (0..h).step_by(s.step).map(|i| i as u32).collect();
        let idx = Tensor::from_vec(idx.clone(), idx.len(), f.device())?;
        t = t.contiguous()?.index_select(&idx, nd - 3)?.index_select(&idx, nd - 2)?;
    }
    Ok(t.contiguous()?)
}

/// The bank stages' channels at the finest tapped stride (coarser stages repeated, as
/// PatchCore upsamples layer 3 to layer 2's grid).
fn bank_features(f: &Tensor, sl: &[Slice]) -> Result<Tensor> {
    let nd = f.rank();
    let parts: Vec<Tensor> = sl.iter().map(|s| f.narrow(nd - 1, s.offset, s.channels)).collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&parts, D::Minus1)?)
}

impl MemFlow {
    fn bank_slices(&self) -> Result<Vec<Slice>> {
        slices(&self.backbone, &self.cfg, &self.cfg.bank_stages)
    }
    fn flow_slices(&self) -> Result<Vec<Slice>> {
        slices(&self.backbone, &self.cfg, &self.cfg.flow_stages)
    }

    fn check(cfg: &MemFlowConfig) -> Result<()> {
        if cfg.bank_stages.is_empty() || cfg.flow_stages.is_empty() {
            return Err(Error::Config("memflow needs at least one bank stage and one flow stage".into()));
        }
        if cfg.score.needs_global() || !cfg.tap.global_stages.is_empty() {
            return Err(Error::Config("memflow has no pooled-feature score (global, map-global); use map-max, flow-nll or fused".into()));
        }
        let finest = cfg.tap.stride();
        for &s in cfg.bank_stages.iter().chain(&cfg.flow_stages) {
            crate::backbone::config::check_stage(s)?;
            if (cfg.tap.reflect_cells * finest) % STAGE_STRIDE[s - 1] != 0 {
                return Err(Error::Config(format!("the border padding must be a whole number of stage {s} cells")));
            }
        }
        if !(cfg.coreset_ratio > 0.0 && cfg.coreset_ratio <= 1.0) {
            return Err(Error::Config(format!("coreset ratio {} must be in (0, 1]", cfg.coreset_ratio)));
        }
        Ok(())
    }

    /// A model with an empty bank and untrained flows of the given sizes (loading).
    pub fn untrained(backbone: EfficientNet, cfg: MemFlowConfig, bank_rows: usize) -> Result<Self> {
        Self::check(&cfg)?;
        let device = backbone.device().clone();
        let bdim: usize = slices(&backbone, &cfg, &cfg.bank_stages)?.iter().map(|s| s.channels).sum();
        let fsl = slices(&backbone, &cfg, &cfg.flow_stages)?;
        let mut flows = Vec::new();
        let mut flow_vars = Vec::new();
        let mut flow_norm = Vec::new();
        for s in &fsl {
            let vm = VarMap::new();
            flows.push(RealNvp::new(VarBuilder::from_varmap(&vm, DType::F32, &device), s.channels, &cfg.flow, true)?);
            flow_vars.push(vm);
            flow_norm.push((Tensor::zeros(s.channels, DType::F32, &device)?, Tensor::ones(s.channels, DType::F32, &device)?));
        }
        Ok(Self {
            bank: MemoryBank::new(Tensor::zeros((bank_rows, bdim), DType::F32, &device)?)?,
            bank_mean: Tensor::zeros(bdim, DType::F32, &device)?,
            bank_std: Tensor::ones(bdim, DType::F32, &device)?,
            cfg,
            backbone,
            flows,
            flow_vars,
            flow_norm,
            calibration: Calibration::default(),
            held_out: None,
        })
    }

    /// Trains on good images: features, bank with coreset, one flow per scale,
    /// calibration on held-out good images.
    pub fn train(
        backbone: EfficientNet,
        cfg: MemFlowConfig,
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
        let cfg = model.cfg.clone();
        // Seeded initial weights: the same config trains the same model, `--seed` another
        // (only here: a loaded model's weights are overwritten anyway).
        for (i, vm) in model.flow_vars.iter().enumerate() {
            training::seeded_init(vm, (cfg.seed ^ (cfg.flow.seed << 32)).wrapping_add(i as u64))?;
        }

        // The memory bank.
        let bsl = model.bank_slices()?;
        let raw: Vec<Tensor> = tr.iter().map(|f| bank_features(&f.features, &bsl)).collect::<Result<_>>()?;
        let bank_cfg = BankConfig {
            neighbourhood: cfg.neighbourhood,
            coreset_ratio: cfg.coreset_ratio,
            max_bank: cfg.max_bank,
            projection: cfg.projection,
            standardise: true,
            seed: cfg.seed,
        };
        let (bank, bank_report) = build_bank(raw, &bank_cfg, model.backbone.device(), progress, cancel)?;
        (model.bank, model.bank_mean, model.bank_std) = (bank.bank, bank.mean, bank.std);

        // One flow per scale.
        let mut histories = Vec::new();
        for (i, s) in model.flow_slices()?.iter().enumerate() {
            let ytr: Vec<Tensor> = tr.iter().map(|f| take(&f.features, s)).collect::<Result<_>>()?;
            let yva: Vec<Tensor> = va.iter().map(|f| take(&f.features, s)).collect::<Result<_>>()?;
            let (m, sd) = features::channel_stats(&ytr.iter().collect::<Vec<_>>())?;
            let norm = |v: Vec<Tensor>| -> Result<Vec<Tensor>> {
                v.into_iter().map(|t| Ok(t.broadcast_sub(&m)?.broadcast_div(&sd)?)).collect()
            };
            let (ytr, yva) = (norm(ytr)?, norm(yva)?);
            let flow = &model.flows[i];
            let c = s.channels;
            let loss = |set: &[Tensor], idx: &[usize]| -> Result<Tensor> {
                let sel: Vec<&Tensor> = idx.iter().map(|&i| &set[i]).collect();
                let y = Tensor::stack(&sel, 0)?.reshape(((), c))?;
                let (z, ld) = flow.forward(&y)?;
                Ok(RealNvp::nll(&z, &ld)?.mean_all()?)
            };
            let stage = format!("flow (stage {})", cfg.flow_stages[i]);
            let h = training::fit(
                &stage,
                &model.flow_vars[i],
                &cfg.flow_optim,
                ytr.len(),
                yva.len(),
                cfg.seed + i as u64,
                &|b| loss(&ytr, b),
                &|b| loss(&yva, b),
                progress,
                cancel,
            )?;
            model.flow_norm[i] = (m, sd);
            histories.push(h);
        }

        // Calibration on the held-out good images (training ones if none held out).
        progress.report(Progress::Stage { name: "calibration".into(), total: 0 });
        let cal_set: Vec<&ImageFeatures> = if va.is_empty() { tr.clone() } else { va.clone() };
        let held = model.held_out_maps(&cal_set, cancel)?;
        model.calibrate_from(&held)?;
        if !va.is_empty() {
            model.keep_held_out(held);
        }
        let report = TrainReport {
            n_train: tr.len(),
            n_val: va.len(),
            held_out: features::held_out_records(&va),
            skipped,
            feature_seconds,
            flow: histories.first().cloned().unwrap_or_default(),
            bmr: Default::default(),
            total_seconds: t0.elapsed().as_secs_f64(),
            flows: histories,
            bank: Some(bank_report),
            peak_rss_mb: None,
        };
        Ok((model, report))
    }

    fn smooth(&self, m: &[f32], grid: usize) -> Vec<f32> {
        let s = self.cfg.tap.image_size;
        let up = postprocess::resize_bilinear(m, grid, grid, s, s);
        postprocess::gaussian_blur(&up, s, s, self.cfg.smoothing_sigma)
    }

    /// The held-out images' bank queries, nearest distances and flow maps.
    fn held_out_maps(&self, set: &[&ImageFeatures], cancel: &CancelToken) -> Result<HeldOutMaps> {
        let bsl = self.bank_slices()?;
        let fsl = self.flow_slices()?;
        let (mut queries, mut distances, mut flows) = (Vec::new(), Vec::new(), vec![Vec::new(); fsl.len()]);
        for chunk in set.chunks(features::forward_batch(self.backbone.device())) {
            cancel.check()?;
            let f = Tensor::stack(&chunk.iter().map(|f| &f.features).collect::<Vec<_>>(), 0)?;
            let (q, d) = self.memory_search(&f, &bsl)?;
            queries.push(q);
            distances.push(d);
            for (all, (t, _)) in flows.iter_mut().zip(self.flow_nlls(&f, &fsl)?) {
                all.push(t);
            }
        }
        if queries.is_empty() {
            return Err(Error::Data("no held-out images to calibrate on".into()));
        }
        let flows = flows
            .into_iter()
            .map(|parts| {
                let t = Tensor::cat(&parts, 0)?;
                let hs = t.dim(1)?;
                Ok((t, hs))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HeldOutMaps { queries: Tensor::cat(&queries, 0)?, distances: Tensor::cat(&distances, 0)?, flows })
    }

    /// Sets the calibration (position statistics of the memory and flow maps, score
    /// statistics) from good images the model did not train on: the held-out images at
    /// training, and again after a teach.
    fn calibrate_from(&mut self, held: &HeldOutMaps) -> Result<()> {
        let raw = self.smooth_all(&held.distances, &held.flows)?;
        let n = raw.len();
        self.calibration = Calibration::default();
        if self.cfg.position_norm {
            let (pm, ps) = position_stats(raw.iter().map(|r| &r.memory));
            let mut fm = Vec::new();
            let mut fs = Vec::new();
            for i in 0..self.flows.len() {
                let (m, s) = position_stats(raw.iter().map(|r| &r.flows[i]));
                fm.extend(m);
                fs.extend(s);
            }
            self.calibration = Calibration {
                position_mean: pm,
                position_scale: ps,
                flow_position_mean: fm,
                flow_position_scale: fs,
                ..Default::default()
            };
        }
        // A held-out map normalised by statistics that include it looks more normal than
        // any new image's (its maximum is pulled towards the mean), which set the threshold
        // too low: normalise each with the other held-out maps' statistics (as NF-BMR does).
        let positions = std::mem::take(&mut self.calibration);
        let raw = if self.cfg.position_norm && raw.len() > 2 {
            let memory = loo_position_normalise(&raw.iter().map(|r| r.memory.as_slice()).collect::<Vec<_>>());
            let mut flows: Vec<Vec<Vec<f32>>> = vec![Vec::new(); raw.len()];
            for i in 0..self.flows.len() {
                let scale = loo_position_normalise(&raw.iter().map(|r| r.flows[i].as_slice()).collect::<Vec<_>>());
                for (f, m) in flows.iter_mut().zip(scale) {
                    f.push(m);
                }
            }
            // Already normalised: `finish` runs without position statistics.
            memory.into_iter().zip(flows).map(|(memory, flows)| RawMaps { memory, flows }).collect()
        } else {
            self.calibration = positions.clone();
            raw
        };
        let size = self.cfg.tap.image_size as u32;
        let scored = self.finish(vec![(PathBuf::new(), size, size); n], raw);
        self.calibration = calibrate(&scored, self.cfg.score, positions);
        Ok(())
    }

    /// Memory and per-scale flow maps at the input size, smoothed, not yet normalised.
    fn raw_maps(&self, feats: &[&ImageFeatures], cancel: &CancelToken) -> Result<Vec<RawMaps>> {
        let bsl = self.bank_slices()?;
        let fsl = self.flow_slices()?;
        let mut out = Vec::with_capacity(feats.len());
        for chunk in feats.chunks(features::forward_batch(self.backbone.device())) {
            cancel.check()?;
            let f = Tensor::stack(&chunk.iter().map(|f| &f.features).collect::<Vec<_>>(), 0)?;
            let dist = self.memory_distances(&f, &bsl)?;
            let nlls = self.flow_nlls(&f, &fsl)?;
            out.extend(self.smooth_all(&dist, &nlls)?);
        }
        Ok(out)
    }

    /// `[n, h, w, C]` features -> `[n, h, w]` distance to the nearest bank patch (on the CPU).
    fn memory_distances(&self, f: &Tensor, bsl: &[Slice]) -> Result<Tensor> {
        Ok(self.memory_search(f, bsl)?.1)
    }

    /// `[n, h, w, C]` features -> the bank queries `[n * h * w, D]` and their distances
    /// to the nearest bank row `[n, h, w]` (on the CPU).
    fn memory_search(&self, f: &Tensor, bsl: &[Slice]) -> Result<(Tensor, Tensor)> {
        self.bank.patch_search(&bank_features(f, bsl)?, &self.bank_mean, &self.bank_std, self.cfg.neighbourhood)
    }

    /// Keeps the held-out maps in the model (and its file) unless they are too big.
    fn keep_held_out(&mut self, held: HeldOutMaps) {
        if held.bytes() <= HELD_OUT_KEEP_BYTES {
            self.held_out = Some(held);
        }
    }

    /// Per flow stage: `[n, hs, ws]` negative log-likelihoods (on the CPU) and `hs`.
    fn flow_nlls(&self, f: &Tensor, fsl: &[Slice]) -> Result<Vec<(Tensor, usize)>> {
        let mut nlls = Vec::new();
        for (i, s) in fsl.iter().enumerate() {
            let y = take(f, s)?;
            let (m, sd) = &self.flow_norm[i];
            let y = y.broadcast_sub(m)?.broadcast_div(sd)?;
            let (n, hs, ws, cs) = y.dims4()?;
            let (z, ld) = self.flows[i].forward(&y.reshape((n * hs * ws, cs))?)?;
            nlls.push((RealNvp::nll(&z, &ld)?.reshape((n, hs, ws))?.to_device(&Device::Cpu)?, hs));
        }
        Ok(nlls)
    }

    fn smooth_all(&self, dist: &Tensor, nlls: &[(Tensor, usize)]) -> Result<Vec<RawMaps>> {
        let (n, h, _) = dist.dims3()?;
        (0..n)
            .map(|i| {
                let m = dist.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                let flows = nlls
                    .iter()
                    .map(|(t, hs)| Ok(self.smooth(&t.get(i)?.flatten_all()?.to_vec1::<f32>()?, *hs)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(RawMaps { memory: self.smooth(&m, h), flows })
            })
            .collect()
    }

    /// Seconds spent on backbone, flows, memory-bank search and map smoothing for
    /// one batch of prepared inputs `[n, 3, s, s]` (`flowspect bench`).
    pub fn timed_stages(&self, x: &Tensor) -> Result<[f64; 4]> {
        let t0 = std::time::Instant::now();
        let f = features::extract(&self.backbone, &self.cfg.tap, x)?;
        f.device().synchronize()?;
        let t1 = std::time::Instant::now();
        let nlls = self.flow_nlls(&f, &self.flow_slices()?)?;
        let t2 = std::time::Instant::now();
        let dist = self.memory_distances(&f, &self.bank_slices()?)?;
        let t3 = std::time::Instant::now();
        let _ = self.smooth_all(&dist, &nlls)?;
        let t4 = std::time::Instant::now();
        Ok(features::intervals([t0, t1, t2, t3, t4]))
    }

    /// Normalises raw maps per position (when calibrated) and scores them.
    fn finish(&self, images: Vec<(PathBuf, u32, u32)>, raw: Vec<RawMaps>) -> Vec<Scored> {
        let cal = &self.calibration;
        let size = self.cfg.tap.image_size;
        let px = size * size;
        let mut out = Vec::with_capacity(raw.len());
        for ((path, width, height), r) in images.into_iter().zip(raw) {
            let mut map = r.memory;
            if cal.position_mean.len() == map.len() {
                for ((v, mu), sc) in map.iter_mut().zip(&cal.position_mean).zip(&cal.position_scale) {
                    *v = (*v - mu) / sc;
                }
            }
            let mut flow = vec![0f32; px];
            let k = r.flows.len().max(1) as f32;
            for (i, mut fm) in r.flows.into_iter().enumerate() {
                if cal.flow_position_mean.len() == px * k as usize {
                    let (mu, sc) = (&cal.flow_position_mean[i * px..(i + 1) * px], &cal.flow_position_scale[i * px..(i + 1) * px]);
                    for ((v, mu), sc) in fm.iter_mut().zip(mu).zip(sc) {
                        *v = (*v - mu) / sc;
                    }
                }
                for (a, v) in flow.iter_mut().zip(&fm) {
                    *a += v / k;
                }
            }
            let map_max = max_of(&map);
            let flow_max = max_of(&flow);
            let mut s = Scored {
                path,
                width,
                height,
                map,
                flow_map: Vec::new(),
                region_map: Vec::new(),
                size,
                map_max,
                flow_max,
                global: f32::NAN,
                score: 0.0,
            };
            s.score = image_score(self.cfg.score, &s, cal);
            out.push(s);
        }
        out
    }

    pub fn score_features(&self, feats: &[&ImageFeatures], cancel: &CancelToken) -> Result<Vec<Scored>> {
        let raw = self.raw_maps(feats, cancel)?;
        Ok(self.finish(feats.iter().map(|f| (f.path.clone(), f.width, f.height)).collect(), raw))
    }
}

impl MemFlow {
    /// The model stored in a model file (the backbone already loaded).
    pub fn load(backbone: EfficientNet, cfg: &MemFlowConfig, calibration: &Calibration, st: &StoredTensors) -> Result<Self> {
        let mut model = MemFlow::untrained(backbone, cfg.clone(), 0)?;
        let bank = TrainedBank::load(st, model.bank_mean.dim(0)?)?;
        (model.bank, model.bank_mean, model.bank_std) = (bank.bank, bank.mean, bank.std);
        for i in 0..model.flows.len() {
            st.fill_varmap(&format!("flow{i}"), &model.flow_vars[i])?;
            model.flow_norm[i] = (st.get(&format!("flownorm{i}.mean"))?, st.get(&format!("flownorm{i}.std"))?);
        }
        model.calibration = calibration.clone();
        model.held_out = HeldOutMaps::load(st, model.bank_mean.dim(0)?, model.flows.len())?;
        Ok(model)
    }
}

impl AnomalyModel for MemFlow {
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
        MemFlow::score_features(self, feats, cancel)
    }
    fn timed_stages(&self, x: &Tensor) -> Result<[f64; 4]> {
        MemFlow::timed_stages(self, x)
    }
    fn map_stage_name(&self) -> &'static str {
        "bank"
    }
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut t = TrainedBank::tensors(&self.bank, &self.bank_mean, &self.bank_std)?;
        for (i, (vm, (mean, std))) in self.flow_vars.iter().zip(&self.flow_norm).enumerate() {
            varmap_tensors(&format!("flow{i}"), vm, &mut t)?;
            t.push((format!("flownorm{i}.mean"), mean.to_device(&Device::Cpu)?));
            t.push((format!("flownorm{i}.std"), std.to_device(&Device::Cpu)?));
        }
        if let Some(h) = &self.held_out {
            h.tensors(&mut t)?;
        }
        Ok(t)
    }
    fn set_score(&mut self, k: ScoreKind) -> Result<()> {
        if k.needs_global() {
            return Err(Error::Config(format!("this model has no pooled-feature Gaussian, so it cannot give the {k:?} score")));
        }
        self.cfg.score = k;
        Ok(())
    }
    fn config(&self) -> DetectorConfig {
        self.cfg.clone().into()
    }
    fn bank_bytes(&self) -> Option<usize> {
        Some(self.bank.bytes())
    }
    fn recalibrate(&mut self, held_out: &[&ImageFeatures], cancel: &CancelToken) -> Result<()> {
        let held = self.held_out_maps(held_out, cancel)?;
        self.calibrate_from(&held)?;
        self.keep_held_out(held);
        Ok(())
    }
    fn recalibrate_kept(&mut self, _cancel: &CancelToken) -> Result<Option<usize>> {
        let Some(held) = self.held_out.take() else { return Ok(None) };
        let r = self.calibrate_from(&held);
        let n = held.distances.dim(0)?;
        self.held_out = Some(held);
        r.map(|_| Some(n))
    }
    /// The images' patches join the memory bank (the flows stay as trained).
    fn teach(&mut self, feats: &[&ImageFeatures], _prior: usize, _how: &TeachConfig, _progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<String> {
        let bsl = self.bank_slices()?;
        let raw: Vec<Tensor> = feats.iter().map(|f| bank_features(&f.features, &bsl)).collect::<Result<_>>()?;
        let before = self.bank.len();
        let added = teach_bank(&mut self.bank, &raw.iter().collect::<Vec<_>>(), &self.bank_mean, &self.bank_std, self.cfg.neighbourhood, self.cfg.coreset_ratio, cancel)?;
        // The held-out queries' nearest distances, exactly: the old nearest row or one of
        // the added rows, whichever is nearer.
        if let Some(h) = &mut self.held_out
            && added > 0
        {
            let rows = MemoryBank::new(self.bank.bank.narrow(0, before, added)?)?;
            let d = rows.nearest_distance(&h.queries)?.to_device(&Device::Cpu)?.reshape(h.distances.shape())?;
            h.distances = h.distances.minimum(&d)?;
        }
        Ok(format!("memory bank {before} -> {} rows (+{added} patches of {} images)", self.bank.len(), feats.len()))
    }
}

impl super::method::MethodInfo for MemFlowConfig {
    const NAME: &'static str = "memflow";
    const ALIASES: &'static [&'static str] = &["memflownet"];
    const SUMMARY: &'static str = "memflow (memory bank + multi-scale flows)";
}

impl super::method::MethodConfig for MemFlowConfig {
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
            stages: Some(self.bank_stages.clone()),
            flow_hidden: Some(self.flow.hidden),
            flow_lr: Some(self.flow_optim.lr),
            coreset_ratio: Some(self.coreset_ratio),
            ..Default::default()
        }
    }
    fn take_options(&mut self, o: &mut super::TrainOptions) {
        if let Some(e) = o.epochs.take() {
            self.flow_optim.epochs = e;
        }
        if let Some(s) = o.stages.take() {
            // The tap runs every stage the bank and the flows use.
            let mut all: Vec<usize> = s.iter().chain(&self.flow_stages).copied().collect();
            all.sort();
            all.dedup();
            self.bank_stages = s;
            self.tap.set_stages(all);
        }
        if let Some(h) = o.flow_hidden.take() {
            self.flow.hidden = h;
        }
        if let Some(l) = o.flow_lr.take() {
            self.flow_optim.lr = l;
        }
        if let Some(r) = o.coreset_ratio.take() {
            self.coreset_ratio = r;
        }
    }
    fn train(&self, backbone: EfficientNet, files: &[PathBuf], progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<(super::Model, TrainReport)> {
        Ok(super::method::boxed(MemFlow::train(backbone, self.clone(), files, progress, cancel)?))
    }
    fn load(&self, backbone: EfficientNet, calibration: &Calibration, st: &StoredTensors) -> Result<super::Model> {
        Ok(Box::new(MemFlow::load(backbone, self, calibration, st)?))
    }
    fn untrained(&self, backbone: EfficientNet, bank_rows: usize) -> Result<super::Model> {
        Ok(Box::new(MemFlow::untrained(backbone, self.clone(), bank_rows)?))
    }
}
