//! The background worker: owns the detector, runs one job at a time (train, load,
//! save, score) and reports over a channel. The UI sends commands and polls events each
//! frame; every event wakes the UI with `request_repaint`.
use crossbeam_channel::{Receiver, Sender, unbounded};
use flowspect::backbone::{self, BackboneMode};
use flowspect::data::Sample;
use flowspect::detector::{Detector, DetectorConfig, Method, ModelMeta};
use flowspect::models::TrainOptions;
use flowspect::device::{self, DeviceChoice};
use flowspect::inspection::Thresholds;
use flowspect::postprocess::resize_bilinear;
use flowspect::progress::{CancelToken, Progress, ProgressSink};
use flowspect::report::{self, ReportOptions};
use std::path::PathBuf;
use std::thread::JoinHandle;

/// Side of the anomaly maps the UI keeps per image (the maps are smooth at this scale:
/// the features have a stride of 16 input pixels).
pub const MAP_SIDE: usize = 128;
/// Images scored per chunk: results reach the UI chunk by chunk.
const SCORE_CHUNK: usize = 16;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainSettings {
    pub method: Method,
    pub backbone: PathBuf,
    pub image_size: usize,
    pub epochs: usize,
    pub device: DeviceChoice,
    /// Train on at most this many images (evenly spaced); 0 = all.
    pub max_images: usize,
    pub flow_hidden: usize,
    pub bmr_hidden: usize,
}

impl Default for TrainSettings {
    fn default() -> Self {
        let mut s = Self {
            method: Method::NfBmr,
            backbone: backbone::default_backbone_path(),
            image_size: 0,
            epochs: 0,
            device: DeviceChoice::Auto,
            max_images: 0,
            flow_hidden: 0,
            bmr_hidden: 0,
        };
        s.use_method_defaults();
        s
    }
}

impl TrainSettings {
    /// Input size, epochs and widths of `self.method`'s default configuration.
    pub fn use_method_defaults(&mut self) {
        let cfg = DetectorConfig::default_for(self.method);
        let o = cfg.options();
        self.image_size = cfg.tap().image_size;
        self.epochs = o.epochs.unwrap_or(0);
        self.flow_hidden = o.flow_hidden.unwrap_or(0);
        self.bmr_hidden = o.hidden.unwrap_or(0);
    }

    pub fn config(&self) -> DetectorConfig {
        let mut cfg = DetectorConfig::default_for(self.method);
        cfg.tap_mut().image_size = self.image_size;
        // Only the options the method has (all of them: nothing is left over).
        let own = cfg.options();
        cfg.take_options(TrainOptions {
            epochs: own.epochs.map(|_| self.epochs),
            flow_hidden: own.flow_hidden.map(|_| self.flow_hidden),
            hidden: own.hidden.map(|_| self.bmr_hidden),
            ..Default::default()
        });
        cfg
    }
}

pub enum Command {
    Train {
        files: Vec<PathBuf>,
        settings: TrainSettings,
        cancel: CancelToken,
    },
    Load {
        path: PathBuf,
        device: DeviceChoice,
        /// Keep the UI's thresholds (restoring a session) instead of the model's.
        keep_thresholds: bool,
    },
    Save {
        path: PathBuf,
        thresholds: Thresholds,
        pixel_threshold: f32,
    },
    Score {
        samples: Vec<Sample>,
        cancel: CancelToken,
    },
    /// Good images join the model without retraining; the model before is kept for Undo.
    /// When `write_to` names the model's file, the taught model replaces it (atomically).
    Teach {
        paths: Vec<PathBuf>,
        write_to: Option<PathBuf>,
        cancel: CancelToken,
    },
    /// Back to the model before the last teach (written back to `write_to` if named).
    Undo { write_to: Option<PathBuf> },
    /// Scores `samples` again at full resolution and writes a report into `out`.
    Report {
        samples: Vec<Sample>,
        options: ReportOptions,
        out: PathBuf,
        cancel: CancelToken,
    },
}

/// One scored image as the UI keeps it.
#[derive(Debug, Clone)]
pub struct ScoredImage {
    pub path: PathBuf,
    pub score: f32,
    pub width: u32,
    pub height: u32,
    /// Anomaly map, `MAP_SIDE x MAP_SIDE` (or smaller), row-major, covering the whole image
    /// (shared: the review, the reports and the kept scores clone results freely).
    pub map: std::sync::Arc<Vec<f32>>,
    pub map_side: usize,
}

pub enum Event {
    Progress(Progress),
    /// A model is ready (trained or loaded).
    Model {
        meta: Box<ModelMeta>,
        path: Option<PathBuf>,
        keep_thresholds: bool,
        device: String,
    },
    Scored(Vec<ScoredImage>),
    /// Images the scorer could not read, with the reason (which names the file).
    Unreadable(Vec<(PathBuf, String)>),
    Saved(PathBuf),
    /// Images were taught: the model's new metadata, what changed, and how many teaches
    /// Undo can take back.
    /// `written`: the model file the taught model replaced.
    Taught { meta: Box<ModelMeta>, taught: usize, summary: String, seconds: f64, undo: usize, written: Option<PathBuf> },
    /// The last teach was taken back (and the model file written back, if named).
    Untaught { meta: Box<ModelMeta>, undo: usize, written: Option<PathBuf> },
    /// A report was written into this folder.
    Reported { out: PathBuf, counts: flowspect::inspection::VerdictCounts, unreadable: usize },
    /// The current job failed; `what` names the job, the message names the file.
    Failed { what: String, message: String },
    /// The current job was cancelled; what it finished before is kept.
    Cancelled(String),
    /// The current job ended (after any of the above).
    Done,
}

pub struct Worker {
    tx: Sender<Command>,
    pub rx: Receiver<Event>,
    handle: Option<JoinHandle<()>>,
}

struct Sink {
    tx: Sender<Event>,
    ctx: egui::Context,
}

impl Sink {
    fn send(&self, e: Event) {
        // The UI may be gone when the app closes mid-job; nothing to do then.
        let _ = self.tx.send(e);
        self.ctx.request_repaint();
    }
}

impl ProgressSink for Sink {
    fn report(&self, p: Progress) {
        self.send(Event::Progress(p));
    }
}

/// Forwards the scoring of one chunk as steps of the whole job.
struct Offset<'a> {
    inner: &'a Sink,
    offset: usize,
}

impl ProgressSink for Offset<'_> {
    fn report(&self, p: Progress) {
        match p {
            Progress::Stage { .. } => {}
            Progress::Step { done } => self.inner.report(Progress::Step { done: self.offset + done }),
            other => self.inner.report(other),
        }
    }
}

impl Worker {
    pub fn spawn(ctx: egui::Context) -> Self {
        let (tx, crx) = unbounded::<Command>();
        let (etx, rx) = unbounded::<Event>();
        let sink = Sink { tx: etx, ctx };
        let handle = std::thread::Builder::new()
            .name("flowspect-worker".into())
            .spawn(move || run(crx, sink))
            .ok();
        Self { tx, rx, handle }
    }

    /// Sends a command; false when the worker is gone (it never panics on its own,
    /// but a failed spawn leaves no thread).
    pub fn send(&self, c: Command) -> bool {
        self.handle.is_some() && self.tx.send(c).is_ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the worker loop after its current job.
        let (dead, _) = unbounded();
        self.tx = dead;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(rx: Receiver<Command>, sink: Sink) {
    let mut det: Option<Detector> = None;
    // Model files' bytes before each teach, newest last (Undo).
    let mut undo: Vec<Vec<u8>> = Vec::new();
    while let Ok(cmd) = rx.recv() {
        if matches!(cmd, Command::Train { .. } | Command::Load { .. }) {
            undo.clear();
        }
        match cmd {
            Command::Teach { paths, write_to, cancel } => match det.as_mut() {
                None => sink.send(Event::Failed { what: "teaching".into(), message: "no model: train or open one first".into() }),
                Some(d) => teach(d, &paths, write_to.as_deref(), &mut undo, &sink, &cancel),
            },
            Command::Undo { write_to } => match (det.as_ref(), undo.pop()) {
                (Some(d), Some(bytes)) => {
                    let dev = d.model.backbone().device().clone();
                    let old = Detector::from_bytes(std::path::Path::new("the model before the last teach"), &bytes, &dev);
                    let written = match (&old, &write_to) {
                        (Ok(_), Some(p)) => flowspect::fsutil::atomic_write(p, &bytes).map(|()| Some(p.clone())),
                        _ => Ok(None),
                    };
                    match (old, written) {
                        (Ok(old), Ok(written)) => {
                            sink.send(Event::Untaught { meta: Box::new(old.meta.clone()), undo: undo.len(), written });
                            det = Some(old);
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            undo.push(bytes);
                            sink.send(Event::Failed { what: "undo".into(), message: e.to_string() })
                        }
                    }
                }
                _ => sink.send(Event::Failed { what: "undo".into(), message: "nothing to undo: no teach since the model was opened".into() }),
            },
            Command::Train { files, settings, cancel } => {
                match train(&files, &settings, &sink, &cancel) {
                    Ok((d, dev)) => {
                        sink.send(Event::Model {
                            meta: Box::new(d.meta.clone()),
                            path: None,
                            keep_thresholds: false,
                            device: dev,
                        });
                        det = Some(d);
                    }
                    Err(flowspect::Error::Cancelled) => sink.send(Event::Cancelled("training".into())),
                    Err(e) => sink.send(Event::Failed { what: "training".into(), message: e.to_string() }),
                }
            }
            Command::Load { path, device, keep_thresholds } => {
                let r = device
                    .open()
                    .and_then(|dev| Detector::load(&path, &dev).map(|d| (d, device::describe(&dev))));
                match r {
                    Ok((d, dev)) => {
                        sink.send(Event::Model {
                            meta: Box::new(d.meta.clone()),
                            path: Some(path),
                            keep_thresholds,
                            device: dev,
                        });
                        det = Some(d);
                    }
                    Err(e) => sink.send(Event::Failed { what: "opening the model".into(), message: e.to_string() }),
                }
            }
            Command::Save { path, thresholds, pixel_threshold } => match det.as_mut() {
                None => sink.send(Event::Failed { what: "saving".into(), message: "no model to save: train or open one first".into() }),
                Some(d) => {
                    d.meta.threshold = thresholds.accept_below;
                    d.meta.review_threshold = thresholds.reject_from;
                    d.meta.pixel_threshold = pixel_threshold;
                    match d.save(&path) {
                        Ok(()) => sink.send(Event::Saved(path)),
                        Err(e) => sink.send(Event::Failed { what: "saving the model".into(), message: e.to_string() }),
                    }
                }
            },
            Command::Score { samples, cancel } => match det.as_ref() {
                None => sink.send(Event::Failed { what: "scoring".into(), message: "no model: train or open one first".into() }),
                Some(d) => match score(d, &samples, &sink, &cancel) {
                    Ok(()) => {}
                    Err(flowspect::Error::Cancelled) => sink.send(Event::Cancelled("scoring".into())),
                    Err(e) => sink.send(Event::Failed { what: "scoring".into(), message: e.to_string() }),
                },
            },
            Command::Report { samples, options, out, cancel } => match det.as_ref() {
                None => sink.send(Event::Failed { what: "the report".into(), message: "no model: train or open one first".into() }),
                Some(d) => match report::generate(d, &samples, &options, &out, &sink, &cancel) {
                    Ok(r) => sink.send(Event::Reported { out, counts: r.counts, unreadable: r.dataset.unreadable }),
                    Err(flowspect::Error::Cancelled) => sink.send(Event::Cancelled("the report".into())),
                    Err(e) => sink.send(Event::Failed { what: "the report".into(), message: e.to_string() }),
                },
            },
        }
        sink.send(Event::Done);
    }
}

/// Teaches `paths` to `d`; the model before goes on the undo stack, and a teach that
/// fails or is cancelled half-way leaves the model as it was. With `write_to`, the taught
/// model replaces that file (atomically: a crash leaves the old or the new file whole).
fn teach(d: &mut Detector, paths: &[PathBuf], write_to: Option<&std::path::Path>, undo: &mut Vec<Vec<u8>>, sink: &Sink, cancel: &CancelToken) {
    let before = match d.to_bytes() {
        Ok(b) => b,
        Err(e) => return sink.send(Event::Failed { what: "teaching".into(), message: e.to_string() }),
    };
    let taught = d.teach(paths, &flowspect::models::TeachConfig::default(), sink, cancel).and_then(|r| {
        match write_to {
            Some(p) if !r.taught.is_empty() => d.save(p).map(|()| (r, Some(p.to_path_buf()))),
            _ => Ok((r, None)),
        }
    });
    match taught {
        Ok((r, written)) => {
            for (p, why) in &r.skipped {
                sink.report(Progress::Info(format!("not taught {}: {why}", p.display())));
            }
            if !r.taught.is_empty() {
                undo.push(before);
            }
            let summary = match r.already.len() {
                0 => r.summary.clone(),
                n => format!("{}; {n} already taught", r.summary),
            };
            sink.send(Event::Taught { meta: Box::new(d.meta.clone()), taught: r.taught.len(), summary, seconds: r.seconds, undo: undo.len(), written });
        }
        Err(e) => {
            let dev = d.model.backbone().device().clone();
            if let Ok(old) = Detector::from_bytes(std::path::Path::new("the model before teaching"), &before, &dev) {
                *d = old;
            }
            sink.send(match e {
                flowspect::Error::Cancelled => Event::Cancelled("teaching".into()),
                e => Event::Failed { what: "teaching".into(), message: e.to_string() },
            });
        }
    }
}

fn train(
    files: &[PathBuf],
    s: &TrainSettings,
    sink: &Sink,
    cancel: &CancelToken,
) -> flowspect::Result<(Detector, String)> {
    let dev = s.device.open()?;
    sink.report(Progress::Info(format!("device: {}", device::describe(&dev))));
    let net = backbone::load(&s.backbone, &dev, BackboneMode::Fast)?;
    let cfg = s.config();
    let files = flowspect::data::spread(files, (s.max_images > 0).then_some(s.max_images));
    let det = Detector::train(net, &s.backbone, cfg, &files, sink, cancel)?;
    Ok((det, device::describe(&dev)))
}

fn score(det: &Detector, samples: &[Sample], sink: &Sink, cancel: &CancelToken) -> flowspect::Result<()> {
    sink.report(Progress::Stage { name: "scoring".into(), total: samples.len() });
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    for (k, chunk) in paths.chunks(SCORE_CHUNK).enumerate() {
        cancel.check()?;
        let off = Offset { inner: sink, offset: k * SCORE_CHUNK };
        let (scored, skipped) = det.score_paths(chunk, &off, cancel)?;
        if !skipped.is_empty() {
            // Already logged through the progress sink; this marks the thumbnails.
            sink.send(Event::Unreadable(skipped));
        }
        let out = scored
            .into_iter()
            .map(|s| {
                let side = s.size.min(MAP_SIDE);
                let map = if side == s.size { s.map } else { resize_bilinear(&s.map, s.size, s.size, side, side) };
                ScoredImage {
                    path: s.path,
                    score: s.score,
                    width: s.width,
                    height: s.height,
                    map: map.into(),
                    map_side: side,
                }
            })
            .collect();
        sink.send(Event::Scored(out));
    }
    Ok(())
}
