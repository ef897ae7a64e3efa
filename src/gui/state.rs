//! Plain state of the app: what is persisted between runs, the images of the test set
//! with their results, and the running job. No egui widgets here.
use super::worker::{ScoredImage, TrainSettings};
use flowspect::data::Sample;
use flowspect::detector::ModelMeta;
use flowspect::inspection::{Thresholds, Verdict, VerdictCounts};
use flowspect::progress::CancelToken;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tab {
    Data,
    Train,
    Threshold,
    Review,
    Inspect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerdictFilter {
    All,
    Accept,
    Review,
    Reject,
    Unscored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelFilter {
    All,
    Good,
    Defect,
    Unlabeled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortBy {
    Name,
    ScoreHighFirst,
    ScoreLowFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Colormap {
    Jet,
    Inferno,
    Gray,
}

/// Rows the Inspect tab's log table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFilter {
    All,
    Accept,
    Review,
    Reject,
    Error,
}

impl LogFilter {
    pub const ALL: [LogFilter; 5] = [LogFilter::All, LogFilter::Accept, LogFilter::Review, LogFilter::Reject, LogFilter::Error];

    /// The verdict column's value, `None` for all rows.
    pub fn verdict(self) -> Option<&'static str> {
        match self {
            LogFilter::All => None,
            LogFilter::Accept => Some("accept"),
            LogFilter::Review => Some("review"),
            LogFilter::Reject => Some("reject"),
            LogFilter::Error => Some("error"),
        }
    }
}

/// The Inspect tab's choices, remembered between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InspectSettings {
    /// The model file the line runs (empty: the app's model file).
    pub model: String,
    /// The folder the camera writes into.
    pub input: String,
    /// Sort images into accept/, review/, reject/ below this folder (empty: leave them).
    pub sort: String,
    /// Flash a reject alarm until acknowledged.
    pub alarm: bool,
    pub filter: LogFilter,
}

impl Default for InspectSettings {
    fn default() -> Self {
        Self { model: String::new(), input: String::new(), sort: String::new(), alarm: true, filter: LogFilter::All }
    }
}

/// Everything remembered between runs (eframe storage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub tab: Tab,
    pub train_dir: String,
    pub test_dir: String,
    pub model_path: String,
    /// Folder the last report was exported to.
    pub report_dir: String,
    pub train: TrainSettings,
    pub thresholds: Thresholds,
    pub two_thresholds: bool,
    pub pixel_threshold: f32,
    pub overlay: bool,
    pub opacity: f32,
    pub colormap: Colormap,
    pub show_regions: bool,
    pub show_mask: bool,
    pub verdict_filter: VerdictFilter,
    pub label_filter: LabelFilter,
    pub sort: SortBy,
    pub inspect: InspectSettings,
    /// Project files opened or saved, newest first.
    pub recent_projects: Vec<String>,
}

/// The demo set shipped under `assets/demo` (source checkout), if present: what the
/// app opens on first run.
pub fn demo_dir() -> Option<PathBuf> {
    let rel = std::path::Path::new("assets/demo/magnetic_tile");
    [PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel), rel.to_path_buf()]
        .into_iter()
        .find(|p| p.join("train/good").is_dir())
}

impl Default for Settings {
    fn default() -> Self {
        let demo = demo_dir().map(|d| d.display().to_string()).unwrap_or_default();
        Self {
            tab: Tab::Data,
            train_dir: demo.clone(),
            test_dir: demo,
            model_path: String::new(),
            report_dir: String::new(),
            train: TrainSettings::default(),
            thresholds: Thresholds::single(1.0),
            two_thresholds: false,
            pixel_threshold: 1.0,
            overlay: true,
            opacity: 0.45,
            colormap: Colormap::Jet,
            show_regions: true,
            show_mask: true,
            verdict_filter: VerdictFilter::All,
            label_filter: LabelFilter::All,
            sort: SortBy::Name,
            inspect: InspectSettings::default(),
            recent_projects: Vec::new(),
        }
    }
}

impl Settings {
    /// The thresholds in force: the review band only when it is switched on.
    pub fn active_thresholds(&self) -> Thresholds {
        Thresholds {
            accept_below: self.thresholds.accept_below,
            reject_from: if self.two_thresholds {
                self.thresholds.reject_from.map(|u| u.max(self.thresholds.accept_below))
            } else {
                None
            },
        }
    }
}

/// One image of the test set.
pub struct Entry {
    pub sample: Sample,
    pub result: Option<ScoredImage>,
    /// Why it could not be read or scored.
    pub error: Option<String>,
    /// The label a person gave in the review (`true` = defect), over the folder's.
    pub person: Option<bool>,
}

impl Entry {
    pub fn name(&self) -> String {
        self.sample
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    /// The label in force: the person's, else the folder's.
    pub fn label(&self) -> Option<bool> {
        self.person.or(self.sample.defect)
    }
    pub fn label_text(&self) -> &'static str {
        match (self.label(), self.person.is_some()) {
            (Some(true), true) => "defect (marked)",
            (Some(false), true) => "good (marked)",
            (Some(true), false) => "defect",
            (Some(false), false) => "good",
            (None, _) => "unlabeled",
        }
    }
}

/// The model the worker holds, as the UI knows it.
pub struct ModelInfo {
    pub meta: ModelMeta,
    /// Where it was loaded from or last saved to; `None` when trained and unsaved.
    pub path: Option<PathBuf>,
    pub device: String,
}

/// The job running in the worker.
pub struct Job {
    pub name: String,
    pub cancel: CancelToken,
    pub started: Instant,
    pub stage: String,
    pub stage_started: Instant,
    pub total: usize,
    pub done: usize,
    pub epoch: Option<(usize, usize)>,
    pub cancel_requested: Option<Instant>,
}

impl Job {
    pub fn new(name: &str) -> Self {
        let now = Instant::now();
        Self {
            name: name.into(),
            cancel: CancelToken::new(),
            started: now,
            stage: String::new(),
            stage_started: now,
            total: 0,
            done: 0,
            epoch: None,
            cancel_requested: None,
        }
    }

    pub fn fraction(&self) -> Option<f32> {
        (self.total > 0).then(|| (self.done as f32 / self.total as f32).clamp(0.0, 1.0))
    }

    /// Seconds left in the current stage, from its pace so far.
    pub fn eta_seconds(&self) -> Option<f64> {
        let f = self.fraction()? as f64;
        if f <= 0.0 || f >= 1.0 {
            return None;
        }
        let el = self.stage_started.elapsed().as_secs_f64();
        Some(el * (1.0 - f) / f)
    }
}

/// Scores and labels of the scored images, in entry order.
pub fn scored_labels(entries: &[Entry]) -> (Vec<f32>, Vec<Option<bool>>) {
    entries
        .iter()
        .filter_map(|e| e.result.as_ref().map(|r| (r.score, e.label())))
        .unzip()
}

pub fn counts(entries: &[Entry], t: &Thresholds) -> VerdictCounts {
    let (s, l) = scored_labels(entries);
    VerdictCounts::count(&s, &l, t)
}

/// Indices of the entries the grid shows, filtered and sorted.
pub fn view_order(entries: &[Entry], s: &Settings) -> Vec<usize> {
    let t = s.active_thresholds();
    let mut v: Vec<usize> = (0..entries.len())
        .filter(|&i| {
            let e = &entries[i];
            let verdict = e.result.as_ref().map(|r| t.verdict(r.score));
            let ok_v = match s.verdict_filter {
                VerdictFilter::All => true,
                VerdictFilter::Accept => verdict == Some(Verdict::Accept),
                VerdictFilter::Review => verdict == Some(Verdict::Review),
                VerdictFilter::Reject => verdict == Some(Verdict::Reject),
                VerdictFilter::Unscored => verdict.is_none(),
            };
            let ok_l = match s.label_filter {
                LabelFilter::All => true,
                LabelFilter::Good => e.label() == Some(false),
                LabelFilter::Defect => e.label() == Some(true),
                LabelFilter::Unlabeled => e.label().is_none(),
            };
            ok_v && ok_l
        })
        .collect();
    let score = |i: usize| entries[i].result.as_ref().map(|r| r.score);
    match s.sort {
        SortBy::Name => {}
        SortBy::ScoreHighFirst => v.sort_by(|&a, &b| {
            score(b)
                .unwrap_or(f32::NEG_INFINITY)
                .total_cmp(&score(a).unwrap_or(f32::NEG_INFINITY))
        }),
        SortBy::ScoreLowFirst => v.sort_by(|&a, &b| {
            score(a)
                .unwrap_or(f32::INFINITY)
                .total_cmp(&score(b).unwrap_or(f32::INFINITY))
        }),
    }
    v
}
