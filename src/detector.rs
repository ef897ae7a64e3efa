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
use crate::models::features;
use crate::models::scoring::{Calibration, FileRecord, ScoreKind, Scored, ThresholdRule, TrainReport, default_threshold};
use crate::models::{StoredTensors, TeachConfig};
use crate::progress::Progress;
use crate::progress::{CancelToken, ProgressSink};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const MODEL_FORMAT: &str = "flowspect-model";
pub const MODEL_VERSION: u32 = 1;
const META_KEY: &str = "flowspect.model";

pub use crate::models::{DetectorConfig, Method, Model};

/// Trains the method `cfg` configures.
fn train_model(
    backbone: EfficientNet,
    cfg: &DetectorConfig,
    files: &[PathBuf],
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<(Model, TrainReport)> {
    cfg.get().train(backbone, files, progress, cancel)
}

/// Reads the method `meta` names from a model file's tensors.
fn load_model(backbone: EfficientNet, meta: &ModelMeta, st: &StoredTensors) -> Result<Model> {
    meta.config.get().load(backbone, &meta.calibration, st)
}

/// A model of `cfg` with untrained parts (random or zero weights, a bank of `bank_rows`
/// rows where the method has one), which costs the same arithmetic as a trained one:
/// `flowspect bench`.
pub fn untrained_model(backbone: EfficientNet, cfg: DetectorConfig, bank_rows: usize) -> Result<Model> {
    cfg.get().untrained(backbone, bank_rows)
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
    /// How training set the default threshold, with the false-alarm rate it expects
    /// (`None` in files written before it).
    #[serde(default)]
    pub threshold_rule: Option<ThresholdRule>,
    /// Optional upper threshold: between the two is "review".
    #[serde(default)]
    pub review_threshold: Option<f32>,
    /// Map value above which a pixel counts as defective (region outlines).
    pub pixel_threshold: f32,
    pub training: TrainReport,
    pub created_unix: u64,
    pub flowspect_version: String,
    /// Good images taught after training ([`Detector::teach`]), oldest first.
    #[serde(default)]
    pub taught: Vec<TaughtImage>,
}

/// A good image the model absorbed after training, as the model file records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaughtImage {
    pub path: String,
    /// SHA-256 of the file's bytes when it was taught.
    pub sha256: String,
    pub taught_unix: u64,
    /// How many training images it counts as in a pooled-feature Gaussian (NF-BMR's
    /// global score; 0: not absorbed there). Teaches before this option weighed 1.
    #[serde(default = "one")]
    pub global_weight: usize,
}

fn one() -> usize {
    1
}

/// What one [`Detector::teach`] did.
#[derive(Debug, Clone, Default)]
pub struct TeachReport {
    /// Images absorbed.
    pub taught: Vec<PathBuf>,
    /// Images already taught (same path and bytes), left out.
    pub already: Vec<PathBuf>,
    /// Images that could not be read, with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// What changed in the model, in words.
    pub summary: String,
    pub seconds: f64,
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

impl Detector {
    /// Trains a detector of the method `cfg` configures on good images.
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
        let (model, report) = train_model(backbone, &cfg, files, progress, cancel)?;
        let (threshold, rule) = default_threshold(model.calibration());
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
            threshold_rule: Some(rule),
            review_threshold: None,
            training: report,
            created_unix: crate::fsutil::unix_now(),
            flowspect_version: env!("CARGO_PKG_VERSION").into(),
            taught: Vec::new(),
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

    /// Scores images already decoded (in the order given).
    pub fn score_images(&self, images: &[(PathBuf, image::DynamicImage)]) -> Result<Vec<Scored>> {
        let f = features::extract_images(self.model.backbone(), self.model.tap(), images)?;
        self.model.score_features(&f.iter().collect::<Vec<_>>(), &CancelToken::new())
    }

    pub fn image_size(&self) -> usize {
        self.meta.config.tap().image_size
    }

    /// Switches the image score (map maximum, flow, fused, global) without retraining;
    /// refuses a score the model has no parts for.
    pub fn set_score(&mut self, k: ScoreKind) -> Result<()> {
        self.model.set_score(k)?;
        self.meta.config = self.model.config();
        Ok(())
    }

    /// Changes the weight of the region score in the map without retraining (0 gives
    /// the BMR map alone, standardised). For comparisons: the pixel threshold stays
    /// the one calibrated with the trained weight. Refused for a model without one.
    pub fn set_region_weight(&mut self, w: f32) -> Result<()> {
        self.model.set_region_weight(w)?;
        self.meta.config = self.model.config();
        Ok(())
    }

    /// Searches the region score every `s` cells (nf-bmr), for comparisons.
    pub fn set_region_stride(&mut self, s: usize) -> Result<()> {
        self.model.set_region_stride(s)?;
        self.meta.config = self.model.config();
        Ok(())
    }

    /// Size of the memory bank in bytes (methods with one), or `None`.
    pub fn bank_bytes(&self) -> Option<usize> {
        self.model.bank_bytes()
    }

    /// Absorbs good images without retraining: what the method can take cheaply (memory
    /// banks, NF-BMR's region bank and global Gaussian; see each method's `teach`). The
    /// images are recorded in `meta.taught` (path and SHA-256); an image already taught
    /// with the same bytes is left out. The model is then calibrated again on its
    /// held-out good images ([`Self::recalibrate`]), which sets the thresholds. Unreadable
    /// files are skipped and listed; nothing is taught if none can be read.
    pub fn teach(&mut self, paths: &[PathBuf], how: &TeachConfig, progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<TeachReport> {
        let t0 = std::time::Instant::now();
        let mut report = TeachReport::default();
        let mut fresh = Vec::new();
        let mut hashes = Vec::new();
        for p in paths {
            cancel.check()?;
            let bytes = match std::fs::read(p) {
                Ok(b) => b,
                Err(e) => {
                    let msg = Error::io(p, e).to_string();
                    progress.report(Progress::Skipped { message: msg.clone() });
                    report.skipped.push((p.clone(), msg));
                    continue;
                }
            };
            let h = crate::line::sha256_hex(&bytes);
            let shown = p.display().to_string();
            if self.meta.taught.iter().any(|t| t.path == shown && t.sha256 == h) || hashes.iter().any(|(q, g): &(PathBuf, String)| q == p && *g == h) {
                report.already.push(p.clone());
                continue;
            }
            hashes.push((p.clone(), h));
            fresh.push(p.clone());
        }
        progress.report(Progress::Stage { name: "teaching: features".into(), total: fresh.len() });
        let (feats, skipped) = features::extract_paths(self.model.backbone(), self.model.tap(), &fresh, 8, progress, cancel)?;
        report.skipped.extend(skipped);
        if feats.is_empty() {
            report.seconds = t0.elapsed().as_secs_f64();
            report.summary = "nothing taught".into();
            return Ok(report);
        }
        progress.report(Progress::Stage { name: "teaching: model".into(), total: 0 });
        let prior = self.meta.training.n_train + self.meta.taught.iter().map(|t| t.global_weight).sum::<usize>();
        report.summary = self.model.teach(&feats.iter().collect::<Vec<_>>(), prior, how, progress, cancel)?;
        let recal = if how.recalibrate {
            self.recalibrate(progress, cancel)?
        } else {
            format!("calibration and threshold {:.5} kept (not recalibrated)", self.meta.threshold)
        };
        report.summary = format!("{}; {recal}", report.summary);
        let now = crate::fsutil::unix_now();
        let global_weight = how.effective_global_weight();
        for f in &feats {
            if let Some((_, h)) = hashes.iter().find(|(q, _)| *q == f.path) {
                self.meta.taught.push(TaughtImage { path: f.path.display().to_string(), sha256: h.clone(), taught_unix: now, global_weight });
            }
            report.taught.push(f.path.clone());
        }
        self.meta.calibration = self.model.calibration().clone();
        report.seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    /// After a teach: recalibrates the taught model on the training's held-out good
    /// images and sets the default threshold again by the training's rule, so the
    /// threshold follows the model. A model that keeps its held-out images' maps
    /// (MemFlowNet) recalibrates from them; otherwise the images (the model file records
    /// them with their SHA-256) are scored again: they must be where they were,
    /// unchanged, and with fewer than half of them (or an older model file that does not
    /// list them) the calibration and the thresholds stay as they were. Returns what
    /// happened, in words.
    fn recalibrate(&mut self, progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<String> {
        let (old_default, _) = default_threshold(&self.meta.calibration);
        let old = self.meta.threshold;
        let by_hand = (old - old_default).abs() > 1e-6 * old_default.abs().max(1.0);
        let on = if let Some(n) = self.model.recalibrate_kept(cancel)? {
            format!("{n} held-out images (kept in the model file)")
        } else {
            let held = &self.meta.training.held_out;
            if held.is_empty() {
                return Ok(format!("threshold {:.5} kept (this model file does not list its held-out images)", self.meta.threshold));
            }
            let ok: Vec<PathBuf> = held
                .iter()
                .filter(|r| FileRecord::of(Path::new(&r.path)).is_ok_and(|now| now.sha256 == r.sha256))
                .map(|r| PathBuf::from(&r.path))
                .collect();
            if ok.len() * 2 < held.len() || ok.is_empty() {
                return Ok(format!(
                    "threshold {:.5} kept: only {} of the {} held-out images are where they were, unchanged",
                    self.meta.threshold,
                    ok.len(),
                    held.len()
                ));
            }
            progress.report(Progress::Stage { name: "teaching: recalibration".into(), total: ok.len() });
            let (feats, _) = features::extract_paths(self.model.backbone(), self.model.tap(), &ok, 8, progress, cancel)?;
            if feats.is_empty() {
                return Ok(format!("threshold {:.5} kept: none of the held-out images could be read", self.meta.threshold));
            }
            self.model.recalibrate(&feats.iter().collect::<Vec<_>>(), cancel)?;
            format!("{} held-out images", feats.len())
        };
        let (threshold, rule) = default_threshold(self.model.calibration());
        self.meta.calibration = self.model.calibration().clone();
        if by_hand {
            // A threshold someone set (and saved) stays theirs.
            return Ok(format!("recalibrated on {on}; threshold {old:.5} kept (set by hand; the default rule now gives {threshold:.5})"));
        }
        self.meta.pixel_threshold = self.model.calibration().pixel_p999;
        self.meta.threshold = threshold;
        self.meta.threshold_rule = Some(rule);
        // A review band keeps its width.
        if let Some(r) = &mut self.meta.review_threshold {
            *r += threshold - old;
        }
        Ok(format!("recalibrated on {on}: threshold {old:.5} -> {threshold:.5}"))
    }

    /// Writes the model file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic_write(path, &self.to_bytes()?)
    }

    /// The model file's bytes (what [`Self::save`] writes; [`Self::from_bytes`] reads them).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let last = self.meta.config.tap().last_stage().unwrap_or(7);
        for (k, v) in self.model.backbone().tensors() {
            if keep_backbone_tensor(&k, &self.meta.backbone.config, last) {
                tensors.push((format!("backbone.{k}"), v.to_device(&Device::Cpu)?));
            }
        }
        tensors.extend(self.model.tensors()?);
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let meta_json = serde_json::to_string(&self.meta).map_err(|e| Error::Data(e.to_string()))?;
        let meta: HashMap<String, String> = [(META_KEY.to_string(), meta_json)].into_iter().collect();
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))
            .map_err(|e| Error::Data(format!("cannot serialise model: {e}")))
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
        Self::from_bytes(path, &bytes, device)
    }

    /// A model from a model file's bytes; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8], device: &Device) -> Result<Self> {
        let bytes = bytes;
        let meta = Self::meta_from_bytes(path, bytes)?;
        let all = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
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
        if meta.config.method() != meta.method {
            return Err(Error::bad_file(path, format!("model says method {} but has a {} configuration", meta.method, meta.config.method())));
        }
        let model = load_model(backbone, &meta, &StoredTensors { path, all: &all, device })?;
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
