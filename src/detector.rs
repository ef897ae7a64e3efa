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
use crate::models::nfbmr::{Calibration, NfBmr, NfBmrConfig, Scored, TrainReport};
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
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nf-bmr" | "nfbmr" => Ok(Method::NfBmr),
            _ => Err(Error::Config(format!("unknown method '{s}' (available: nf-bmr)"))),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::NfBmr => write!(f, "nf-bmr"),
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
    pub config: NfBmrConfig,
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
    pub model: NfBmr,
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
    pub fn train(
        method: Method,
        backbone: EfficientNet,
        backbone_source: &Path,
        cfg: NfBmrConfig,
        files: &[PathBuf],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<Self> {
        let last = cfg.tap.stages.iter().copied().max().unwrap_or(7);
        let bb_tensors: HashMap<String, Tensor> = backbone
            .tensors()
            .into_iter()
            .filter(|(k, _)| keep_backbone_tensor(k, backbone.config(), last))
            .collect();
        let fp = fingerprint(&bb_tensors)?;
        let bcfg = backbone.config().clone();
        let (model, report) = match method {
            Method::NfBmr => NfBmr::train(backbone, cfg.clone(), files, progress, cancel)?,
        };
        let threshold = model.default_threshold();
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
            pixel_threshold: model.calibration.pixel_p999,
            calibration: model.calibration.clone(),
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
        self.model.score_paths(paths, progress, cancel)
    }

    pub fn image_size(&self) -> usize {
        self.meta.config.tap.image_size
    }

    /// Writes the model file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let last = self.meta.config.tap.stages.iter().copied().max().unwrap_or(7);
        for (k, v) in self.model.backbone.tensors() {
            if keep_backbone_tensor(&k, &self.meta.backbone.config, last) {
                tensors.push((format!("backbone.{k}"), v.to_device(&Device::Cpu)?));
            }
        }
        tensors.push(("norm.mean".into(), self.model.mean.to_device(&Device::Cpu)?));
        tensors.push(("norm.std".into(), self.model.std.to_device(&Device::Cpu)?));
        varmap_tensors("flow", &self.model.flow_vars, &mut tensors)?;
        varmap_tensors("bmr", &self.model.bmr_vars, &mut tensors)?;
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
        let last = meta.config.tap.stages.iter().copied().max().unwrap_or(7);
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
        let mean = get("norm.mean")?;
        let std = get("norm.std")?;
        let mut model = NfBmr::untrained(backbone, meta.config.clone(), mean.dim(0)?)?;
        fill_varmap(path, "flow", &model.flow_vars, &all)?;
        fill_varmap(path, "bmr", &model.bmr_vars, &all)?;
        model.mean = mean;
        model.std = std;
        model.calibration = meta.calibration.clone();
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
