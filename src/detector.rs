//! A trained detector as the CLI and GUI see it: the model, its threshold, and the
//! model file it is saved in. Every method lives behind this one type.
//!
//! The model file is one safetensors file: the weights (the backbone up to the tapped
//! stage included, so a model needs nothing beside it) and, in the metadata entry
//! `flowspect.model`, a JSON [`ModelMeta`] with the format version, the method's
//! config, the backbone's identity, calibration statistics and the threshold.
use crate::backbone::{BackboneMode, EfficientNet, EfficientNetConfig};
use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use crate::models::features::{self, FeatureTap};
use crate::models::global::GlobalGaussian;
use crate::models::memflow::{MemFlow, MemFlowConfig};
use crate::models::memory::MemoryBank;
use crate::models::region::RegionConfig;
use crate::models::nfbmr::{Calibration, NfBmr, NfBmrConfig, ScoreKind, Scored, TrainReport, default_threshold};
use crate::progress::Progress;
use crate::progress::{CancelToken, ProgressSink};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const MODEL_FORMAT: &str = "flowspect-model";
pub const MODEL_VERSION: u32 = 1;
const META_KEY: &str = "flowspect.model";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    NfBmr,
    #[serde(rename = "memflow")]
    MemFlow,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nf-bmr" | "nfbmr" => Ok(Method::NfBmr),
            "memflow" | "memflownet" => Ok(Method::MemFlow),
            _ => Err(Error::Config(format!("unknown method '{s}' (available: nf-bmr, memflow)"))),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::NfBmr => write!(f, "nf-bmr"),
            Method::MemFlow => write!(f, "memflow"),
        }
    }
}

/// A method's configuration (which also says which method it is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DetectorConfig {
    NfBmr(NfBmrConfig),
    MemFlow(MemFlowConfig),
}

impl DetectorConfig {
    /// The default configuration of `method`.
    pub fn default_for(method: Method) -> Self {
        match method {
            Method::NfBmr => Self::NfBmr(NfBmrConfig::default()),
            Method::MemFlow => Self::MemFlow(MemFlowConfig::default()),
        }
    }
    pub fn method(&self) -> Method {
        match self {
            Self::NfBmr(_) => Method::NfBmr,
            Self::MemFlow(_) => Method::MemFlow,
        }
    }
    pub fn tap(&self) -> &FeatureTap {
        match self {
            Self::NfBmr(c) => &c.tap,
            Self::MemFlow(c) => &c.tap,
        }
    }
    pub fn tap_mut(&mut self) -> &mut FeatureTap {
        match self {
            Self::NfBmr(c) => &mut c.tap,
            Self::MemFlow(c) => &mut c.tap,
        }
    }
    pub fn score(&self) -> ScoreKind {
        match self {
            Self::NfBmr(c) => c.score,
            Self::MemFlow(c) => c.score,
        }
    }
    pub fn set_score(&mut self, k: ScoreKind) {
        match self {
            Self::NfBmr(c) => c.score = k,
            Self::MemFlow(c) => c.score = k,
        }
    }
    /// Sets the maximum epochs of every training phase.
    pub fn set_epochs(&mut self, e: usize) {
        match self {
            Self::NfBmr(c) => {
                c.flow_optim.epochs = e;
                c.bmr_optim.epochs = e;
            }
            Self::MemFlow(c) => c.flow_optim.epochs = e,
        }
    }
    pub fn set_flow_hidden(&mut self, h: usize) {
        match self {
            Self::NfBmr(c) => c.flow.hidden = h,
            Self::MemFlow(c) => c.flow.hidden = h,
        }
    }
    pub fn set_seed(&mut self, s: u64) {
        match self {
            Self::NfBmr(c) => c.seed = s,
            Self::MemFlow(c) => c.seed = s,
        }
    }
}

impl From<NfBmrConfig> for DetectorConfig {
    fn from(c: NfBmrConfig) -> Self {
        Self::NfBmr(c)
    }
}

impl From<MemFlowConfig> for DetectorConfig {
    fn from(c: MemFlowConfig) -> Self {
        Self::MemFlow(c)
    }
}

/// The trained networks of one method.
pub enum Model {
    NfBmr(NfBmr),
    MemFlow(MemFlow),
}

impl Model {
    pub fn backbone(&self) -> &EfficientNet {
        match self {
            Model::NfBmr(m) => &m.backbone,
            Model::MemFlow(m) => &m.backbone,
        }
    }
    pub fn tap(&self) -> &FeatureTap {
        match self {
            Model::NfBmr(m) => &m.cfg.tap,
            Model::MemFlow(m) => &m.cfg.tap,
        }
    }
    /// Seconds per stage for one batch of prepared inputs: backbone, flow,
    /// BMR or memory-bank search, map smoothing (`flowspect bench`).
    pub fn timed_stages(&self, x: &Tensor) -> Result<[f64; 4]> {
        match self {
            Model::NfBmr(m) => m.timed_stages(x),
            Model::MemFlow(m) => m.timed_stages(x),
        }
    }
    pub fn calibration(&self) -> &Calibration {
        match self {
            Model::NfBmr(m) => &m.calibration,
            Model::MemFlow(m) => &m.calibration,
        }
    }
    fn set_score(&mut self, k: ScoreKind) {
        match self {
            Model::NfBmr(m) => m.cfg.score = k,
            Model::MemFlow(m) => m.cfg.score = k,
        }
    }
    fn score_features(&self, f: &[&features::ImageFeatures], cancel: &CancelToken) -> Result<Vec<Scored>> {
        match self {
            Model::NfBmr(m) => m.score_features(f),
            Model::MemFlow(m) => m.score_features(f, cancel),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneInfo {
    pub config: EfficientNetConfig,
    /// FNV-1a hash of the backbone tensors the model was trained with.
    pub fingerprint: String,
    /// The file the backbone was read from at training time.
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format: String,
    pub version: u32,
    pub method: Method,
    pub config: DetectorConfig,
    pub backbone: BackboneInfo,
    pub calibration: Calibration,
    /// Image-level accept/reject threshold (score >= threshold is a reject).
    pub threshold: f32,
    /// Optional upper threshold: between the two is "review".
    #[serde(default)]
    pub review_threshold: Option<f32>,
    /// Map value above which a pixel counts as defective (region outlines).
    pub pixel_threshold: f32,
    pub training: TrainReport,
    pub created_unix: u64,
    pub flowspect_version: String,
}

pub struct Detector {
    pub meta: ModelMeta,
    pub model: Model,
}

/// FNV-1a over the tensors' names and bytes, in name order.
pub fn fingerprint(tensors: &HashMap<String, Tensor>) -> Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for n in names {
        eat(n.as_bytes());
        let v = tensors[n].to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        for x in v {
            eat(&x.to_le_bytes());
        }
    }
    Ok(format!("{h:016x}"))
}

fn varmap_tensors(prefix: &str, vm: &VarMap, out: &mut Vec<(String, Tensor)>) -> Result<()> {
    let data = vm.data().lock().map_err(|_| Error::Data("weights lock poisoned".into()))?;
    for (k, v) in data.iter() {
        out.push((format!("{prefix}.{k}"), v.as_tensor().to_device(&Device::Cpu)?));
    }
    Ok(())
}

fn fill_varmap(path: &Path, prefix: &str, vm: &VarMap, t: &HashMap<String, Tensor>) -> Result<()> {
    let data = vm.data().lock().map_err(|_| Error::Data("weights lock poisoned".into()))?;
    for (k, v) in data.iter() {
        let name = format!("{prefix}.{k}");
        let src = t
            .get(&name)
            .ok_or_else(|| Error::bad_file(path, format!("model file lacks tensor '{name}'")))?;
        if src.dims() != v.dims() {
            return Err(Error::bad_file(
                path,
                format!("tensor '{name}' has shape {:?}, expected {:?}", src.dims(), v.dims()),
            ));
        }
        v.set(&src.to_device(v.device())?)?;
    }
    Ok(())
}

impl Detector {
    /// Trains a detector on good images.
    /// Trains a detector of the method `cfg` configures.
    pub fn train(
        backbone: EfficientNet,
        backbone_source: &Path,
        cfg: impl Into<DetectorConfig>,
        files: &[PathBuf],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<Self> {
        let cfg: DetectorConfig = cfg.into();
        let method = cfg.method();
        let last = cfg.tap().last_stage().unwrap_or(7);
        let bb_tensors: HashMap<String, Tensor> = backbone
            .tensors()
            .into_iter()
            .filter(|(k, _)| keep_backbone_tensor(k, backbone.config(), last))
            .collect();
        let fp = fingerprint(&bb_tensors)?;
        let bcfg = backbone.config().clone();
        let (model, report) = match &cfg {
            DetectorConfig::NfBmr(c) => {
                let (m, r) = NfBmr::train(backbone, c.clone(), files, progress, cancel)?;
                (Model::NfBmr(m), r)
            }
            DetectorConfig::MemFlow(c) => {
                let (m, r) = MemFlow::train(backbone, c.clone(), files, progress, cancel)?;
                (Model::MemFlow(m), r)
            }
        };
        let threshold = default_threshold(model.calibration());
        let meta = ModelMeta {
            format: MODEL_FORMAT.into(),
            version: MODEL_VERSION,
            method,
            config: cfg,
            backbone: BackboneInfo {
                config: bcfg,
                fingerprint: fp,
                source: backbone_source.display().to_string(),
            },
            pixel_threshold: model.calibration().pixel_p999,
            calibration: model.calibration().clone(),
            threshold,
            review_threshold: None,
            training: report,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            flowspect_version: env!("CARGO_PKG_VERSION").into(),
        };
        Ok(Self { meta, model })
    }

    pub fn score_paths(
        &self,
        paths: &[PathBuf],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<(Vec<Scored>, Vec<(PathBuf, String)>)> {
        let mut scored = Vec::with_capacity(paths.len());
        let mut skipped = Vec::new();
        let mut done = 0;
        progress.report(Progress::Stage { name: "scoring".into(), total: paths.len() });
        for chunk in paths.chunks(16) {
            cancel.check()?;
            let (f, s) = features::extract_paths(
                self.model.backbone(),
                self.model.tap(),
                chunk,
                8,
                &crate::progress::NoProgress,
                cancel,
            )?;
            for (p, msg) in &s {
                progress.report(Progress::Skipped { message: msg.clone() });
                skipped.push((p.clone(), msg.clone()));
            }
            scored.extend(self.model.score_features(&f.iter().collect::<Vec<_>>(), cancel)?);
            done += chunk.len();
            progress.report(Progress::Step { done });
        }
        Ok((scored, skipped))
    }

    pub fn image_size(&self) -> usize {
        self.meta.config.tap().image_size
    }

    /// Switches the image score (map maximum, flow, fused, global) without retraining;
    /// refuses a score the model has no parts for.
    pub fn set_score(&mut self, k: ScoreKind) -> Result<()> {
        if k.needs_global() && !matches!(&self.model, Model::NfBmr(m) if m.global.is_some()) {
            return Err(Error::Config(format!(
                "this model has no pooled-feature Gaussian, so it cannot give the {k:?} score (train it with global stages)"
            )));
        }
        self.meta.config.set_score(k);
        self.model.set_score(k);
        Ok(())
    }

    /// Changes the weight of the region score in the map without retraining (0 gives
    /// the BMR map alone, standardised). For comparisons: the pixel threshold stays
    /// the one calibrated with the trained weight. Refused for a model without one.
    pub fn set_region_weight(&mut self, w: f32) -> Result<()> {
        let (Model::NfBmr(m), DetectorConfig::NfBmr(c)) = (&mut self.model, &mut self.meta.config) else {
            return Err(Error::Config("only nf-bmr models have a region score".into()));
        };
        if m.region.is_none() {
            return Err(Error::Config("this model has no region score (trained with --region-window 0 or before it existed)".into()));
        }
        let region = RegionConfig { weight: w, ..m.cfg.region };
        region.check()?;
        m.cfg.region = region;
        c.region = region;
        Ok(())
    }

    /// Size of the memory bank in bytes (MemFlowNet), or `None`.
    pub fn bank_bytes(&self) -> Option<usize> {
        match &self.model {
            Model::MemFlow(m) => Some(m.bank.bytes()),
            Model::NfBmr(_) => None,
        }
    }

    /// Writes the model file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let last = self.meta.config.tap().last_stage().unwrap_or(7);
        for (k, v) in self.model.backbone().tensors() {
            if keep_backbone_tensor(&k, &self.meta.backbone.config, last) {
                tensors.push((format!("backbone.{k}"), v.to_device(&Device::Cpu)?));
            }
        }
        match &self.model {
            Model::NfBmr(m) => {
                tensors.push(("norm.mean".into(), m.mean.to_device(&Device::Cpu)?));
                tensors.push(("norm.std".into(), m.std.to_device(&Device::Cpu)?));
                varmap_tensors("flow", &m.flow_vars, &mut tensors)?;
                varmap_tensors("bmr", &m.bmr_vars, &mut tensors)?;
                if let Some(g) = &m.global {
                    tensors.extend(g.tensors("global")?);
                }
                if let Some(r) = &m.region {
                    tensors.push(("region.bank".into(), r.bank.to_device(&Device::Cpu)?));
                }
            }
            Model::MemFlow(m) => {
                tensors.push(("memory.bank".into(), m.bank.bank.to_device(&Device::Cpu)?));
                tensors.push(("memory.mean".into(), m.bank_mean.to_device(&Device::Cpu)?));
                tensors.push(("memory.std".into(), m.bank_std.to_device(&Device::Cpu)?));
                for (i, (vm, (mean, std))) in m.flow_vars.iter().zip(&m.flow_norm).enumerate() {
                    varmap_tensors(&format!("flow{i}"), vm, &mut tensors)?;
                    tensors.push((format!("flownorm{i}.mean"), mean.to_device(&Device::Cpu)?));
                    tensors.push((format!("flownorm{i}.std"), std.to_device(&Device::Cpu)?));
                }
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let meta_json = serde_json::to_string(&self.meta).map_err(|e| Error::Data(e.to_string()))?;
        let meta: HashMap<String, String> = [(META_KEY.to_string(), meta_json)].into_iter().collect();
        let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))
            .map_err(|e| Error::Data(format!("cannot serialise model: {e}")))?;
        atomic_write(path, &bytes)
    }

    /// Reads only the metadata of a model file (cheap; checks the version).
    pub fn read_meta(path: &Path) -> Result<ModelMeta> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::meta_from_bytes(path, &bytes)
    }

    fn meta_from_bytes(path: &Path, bytes: &[u8]) -> Result<ModelMeta> {
        let (_, st) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::bad_file(path, format!("not a flowspect model (unreadable or corrupt file: {e})")))?;
        let meta = st
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| Error::bad_file(path, "not a flowspect model (no flowspect metadata; is it a backbone weight file?)"))?;
        let v: serde_json::Value = serde_json::from_str(meta)
            .map_err(|e| Error::bad_file(path, format!("corrupt model metadata: {e}")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(MODEL_FORMAT) {
            return Err(Error::bad_file(path, "not a flowspect model file"));
        }
        let found = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        if found != MODEL_VERSION {
            return Err(Error::Version {
                path: path.into(),
                found,
                expected: MODEL_VERSION,
            });
        }
        serde_json::from_value(v).map_err(|e| Error::bad_file(path, format!("corrupt model metadata: {e}")))
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let meta = Self::meta_from_bytes(path, &bytes)?;
        let all = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| Error::bad_file(path, format!("corrupt model weights: {e}")))?;
        let bb: HashMap<String, Tensor> = all
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("backbone.").map(|k| (k.to_string(), v.clone())))
            .collect();
        let last = meta.config.tap().last_stage().unwrap_or(7);
        let fp = fingerprint(&bb)?;
        if fp != meta.backbone.fingerprint {
            return Err(Error::bad_file(path, "backbone weights do not match their fingerprint (corrupt file)"));
        }
        let backbone = EfficientNet::from_tensors_upto(meta.backbone.config.clone(), &bb, device, BackboneMode::Fast, last)?;
        let get = |n: &str| -> Result<Tensor> {
            Ok(all
                .get(n)
                .ok_or_else(|| Error::bad_file(path, format!("model file lacks tensor '{n}'")))?
                .to_device(device)?)
        };
        if meta.config.method() != meta.method {
            return Err(Error::bad_file(path, format!("model says method {} but has a {} configuration", meta.method, meta.config.method())));
        }
        let model = match &meta.config {
            DetectorConfig::NfBmr(c) => {
                let mean = get("norm.mean")?;
                let std = get("norm.std")?;
                let mut model = NfBmr::untrained(backbone, c.clone(), mean.dim(0)?)?;
                fill_varmap(path, "flow", &model.flow_vars, &all)?;
                fill_varmap(path, "bmr", &model.bmr_vars, &all)?;
                model.mean = mean;
                model.std = std;
                if !c.tap.global_stages.is_empty() {
                    model.global = Some(GlobalGaussian::from_tensors("global", &c.tap.global_stages, &all, |n| {
                        Error::bad_file(path, format!("model file lacks tensor '{n}'"))
                    })?);
                }
                model.region = if c.region.enabled() {
                    let bank = get("region.bank")?;
                    let dim = model.mean.dim(0)?;
                    let ok = matches!(bank.dims(), &[n, d] if n > 0 && n <= c.region.bank_size && d == dim);
                    if !ok {
                        return Err(Error::bad_file(path, format!("region bank has shape {:?}, expected [1..={}, {dim}]", bank.dims(), c.region.bank_size)));
                    }
                    Some(MemoryBank::new(bank)?)
                } else {
                    None
                };
                model.calibration = meta.calibration.clone();
                Model::NfBmr(model)
            }
            DetectorConfig::MemFlow(c) => {
                let bank = get("memory.bank")?;
                let mut model = MemFlow::untrained(backbone, c.clone(), bank.dim(0)?)?;
                let want = model.bank.bank.dims().to_vec();
                if bank.dims() != want.as_slice() {
                    return Err(Error::bad_file(path, format!("memory bank has shape {:?}, expected {want:?}", bank.dims())));
                }
                model.bank = MemoryBank::new(bank)?;
                model.bank_mean = get("memory.mean")?;
                model.bank_std = get("memory.std")?;
                for i in 0..model.flows.len() {
                    fill_varmap(path, &format!("flow{i}"), &model.flow_vars[i], &all)?;
                    model.flow_norm[i] = (get(&format!("flownorm{i}.mean"))?, get(&format!("flownorm{i}.std"))?);
                }
                model.calibration = meta.calibration.clone();
                Model::MemFlow(model)
            }
        };
        Ok(Self { meta, model })
    }
}

/// Whether a canonical backbone tensor belongs to the stages up to `last`.
fn keep_backbone_tensor(name: &str, cfg: &EfficientNetConfig, last: usize) -> bool {
    if name.starts_with("stem.") {
        return true;
    }
    if let Some(rest) = name.strip_prefix("blocks.") {
        let idx: Option<usize> = rest.split('.').next().and_then(|i| i.parse().ok());
        return idx
            .and_then(|i| cfg.blocks().get(i).map(|b| b.stage <= last))
            .unwrap_or(false);
    }
    last == 7 && (name.starts_with("head.") || name.starts_with("classifier."))
}
