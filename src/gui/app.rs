//! The app: state, the worker and loaders, and the frame loop that polls them and draws
//! the panels. Each panel is a free `*_ui` function in its own file.
use super::dialogs::{DialogTarget, Dialogs};
use super::loader::{FullRequest, Loaded, Loader};
use super::review::ReviewView;
use super::state::{Entry, Job, ModelInfo, Settings, Tab};
use super::worker::{Command, Event, ScoredImage, Worker};
use super::inspect_panel::InspectState;
use super::{data_panel, inspect_panel, review, threshold_panel, train_panel};
use flowspect::data;
use flowspect::progress::Progress;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

const SETTINGS_KEY: &str = "flowspect.settings";

/// How the app starts: what the command line asked for (all optional).
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub train_dir: Option<PathBuf>,
    pub test_dir: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub tab: Option<Tab>,
    /// Score the test folder as soon as the model is ready.
    pub score: bool,
    /// Select this image (index in the test folder) once scored.
    pub select: Option<usize>,
    /// Training settings to use instead of the remembered ones.
    pub epochs: Option<usize>,
    pub image_size: Option<usize>,
    pub max_images: Option<usize>,
    /// Start training right away.
    pub train_now: bool,
    /// Folder for the Inspect tab.
    pub inspect_dir: Option<PathBuf>,
    /// Start inspecting it right away.
    pub inspect_now: bool,
    /// Project file to open (its folders, model, thresholds, labels and kept scores).
    pub project: Option<PathBuf>,
}

/// A project's kept scores being read on a thread.
pub struct ScoresReading {
    cache: PathBuf,
    generation: u64,
    rx: std::sync::mpsc::Receiver<flowspect::Result<(PathBuf, Option<super::project::Restored>)>>,
}

pub struct App {
    pub settings: Settings,
    pub entries: Vec<Entry>,
    /// Good images found in the training folder.
    pub train_files: Vec<PathBuf>,
    pub model: Option<ModelInfo>,
    pub job: Option<Job>,
    /// Loss per epoch of each training stage of the last training run.
    pub losses: Vec<(String, Vec<[f64; 2]>)>,
    pub log: Vec<String>,
    /// Errors not yet dismissed, shown in a banner.
    pub errors: Vec<String>,
    pub selected: Option<usize>,
    /// Images picked on the grid (click, shift-click, ctrl-click) for labels and teach.
    pub marked: BTreeSet<usize>,
    /// The test folder's labels given in the review (its sidecar file).
    pub labels: Option<data::Labels>,
    /// Teaches Undo can take back.
    pub undo_depth: usize,
    /// Verdict counts before the last teach, until the rescoring after it ends.
    /// and the taught images' scores before it (index, score).
    teach_before: Option<(flowspect::inspection::VerdictCounts, Vec<(usize, f32)>)>,
    /// What the last teach changed, in words.
    pub last_teach: Option<String>,
    /// The open project file, autosaved after every change.
    pub project: Option<PathBuf>,
    /// The project's JSON as last written (autosave compares against it).
    project_saved: String,
    /// Bumped whenever images' results change; the project's score file is written again
    /// when it differs from `scores_kept`.
    results_generation: u64,
    scores_kept: u64,
    /// The thread writing the project's scores (tens of MB: not on the UI thread), if one runs.
    pub scores_writing: Option<std::sync::mpsc::Receiver<flowspect::Result<usize>>>,
    /// The opened project's score file, restored once its model is loaded.
    pending_restore: Option<PathBuf>,
    /// The thread reading the project's score file (and hashing the model file), if one
    /// runs: the file, the results generation when it started, and its answer.
    pub scores_reading: Option<ScoresReading>,
    /// Bumped whenever scores change; plots cache their curves against it.
    pub scores_generation: u64,
    pub thumbs: HashMap<usize, egui::TextureHandle>,
    pub thumbs_requested: HashSet<usize>,
    pub view: Option<ReviewView>,
    pub roc_drag: Option<bool>,
    /// The Inspect tab: the running line, its latest parts and counts.
    pub inspect: InspectState,
    pub startup: Startup,
    pub(super) worker: Worker,
    pub(super) loader: Loader,
    pub(super) dialogs: Dialogs,
    /// Score the test folder once the current job ends (startup with `--score`).
    pending_score: bool,
    pub(super) ctx: egui::Context,
}

impl App {
    pub fn new(cc: &eframe::CreationContext<'_>, startup: Startup) -> Self {
        let settings: Settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, SETTINGS_KEY))
            .unwrap_or_default();
        Self::with_settings(cc.egui_ctx.clone(), settings, startup)
    }

    pub fn with_settings(ctx: egui::Context, settings: Settings, startup: Startup) -> Self {
        let mut app = Self {
            settings,
            entries: Vec::new(),
            train_files: Vec::new(),
            model: None,
            job: None,
            losses: Vec::new(),
            log: Vec::new(),
            errors: Vec::new(),
            selected: None,
            marked: BTreeSet::new(),
            labels: None,
            undo_depth: 0,
            teach_before: None,
            last_teach: None,
            project: None,
            project_saved: String::new(),
            results_generation: 0,
            scores_kept: 0,
            scores_writing: None,
            pending_restore: None,
            scores_reading: None,
            scores_generation: 0,
            thumbs: HashMap::new(),
            thumbs_requested: HashSet::new(),
            view: None,
            roc_drag: None,
            inspect: InspectState::default(),
            worker: Worker::spawn(ctx.clone()),
            loader: Loader::spawn(ctx.clone(), 2),
            dialogs: Dialogs::new(ctx.clone()),
            startup: startup.clone(),
            pending_score: false,
            ctx,
        };
        if let Some(p) = &startup.train_dir {
            app.settings.train_dir = p.display().to_string();
        }
        if let Some(p) = &startup.test_dir {
            app.settings.test_dir = p.display().to_string();
        }
        if let Some(t) = startup.tab {
            app.settings.tab = t;
        }
        if let Some(e) = startup.epochs {
            app.settings.train.epochs = e;
        }
        if let Some(s) = startup.image_size {
            app.settings.train.image_size = s;
        }
        if let Some(m) = startup.max_images {
            app.settings.train.max_images = m;
        }
        // Restore the last session quietly: folders that no longer exist are skipped.
        if !app.settings.train_dir.is_empty() && Path::new(&app.settings.train_dir).is_dir() {
            app.scan_train_dir();
        }
        if !app.settings.test_dir.is_empty() && Path::new(&app.settings.test_dir).exists() {
            app.open_test_dir();
        }
        let model = startup
            .model
            .clone()
            .or_else(|| (!app.settings.model_path.is_empty()).then(|| PathBuf::from(&app.settings.model_path)));
        if let Some(p) = &startup.project {
            app.open_project(p.clone());
        } else if let Some(m) = model.filter(|m| m.is_file()) {
            let keep = startup.model.is_none();
            app.open_model(m, keep);
        }
        if startup.train_now {
            app.start_training();
        }
        if let Some(d) = &startup.inspect_dir {
            app.settings.inspect.input = d.display().to_string();
            if let Some(m) = &startup.model {
                app.settings.inspect.model = m.display().to_string();
            }
            if startup.inspect_now {
                app.settings.tab = Tab::Inspect;
                app.start_inspecting();
            }
        }
        app
    }

    pub fn busy(&self) -> bool {
        self.job.is_some()
    }

    /// Adds a line to the log panel (and to stderr, for scripts and bug reports).
    pub fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("{line}");
        self.log.push(line);
    }

    pub fn report_error(&mut self, what: &str, message: impl std::fmt::Display) {
        let m = format!("{what}: {message}");
        self.say(format!("error: {m}"));
        self.errors.push(m);
    }

    pub fn scan_train_dir(&mut self) {
        let dir = PathBuf::from(self.settings.train_dir.trim());
        match data::training_images(&dir) {
            Ok(f) => {
                self.say(format!("{} good images for training in {}", f.len(), dir.display()));
                self.train_files = f;
            }
            Err(e) => {
                self.train_files.clear();
                self.report_error("training folder", e);
            }
        }
    }

    pub fn open_test_dir(&mut self) {
        let dir = PathBuf::from(self.settings.test_dir.trim());
        match data::test_samples(&dir) {
            Ok(samples) => {
                let labelled = samples.iter().filter(|s| s.defect.is_some()).count();
                self.say(format!(
                    "{} test images in {} ({} labelled)",
                    samples.len(),
                    dir.display(),
                    labelled
                ));
                let root = if dir.is_dir() { dir.clone() } else { dir.parent().map(Path::to_path_buf).unwrap_or_default() };
                let labels = match data::Labels::open(&root) {
                    Ok(l) => l,
                    Err(e) => {
                        // Kept aside, not overwritten: the next label written starts a new file.
                        let side = data::Labels::sidecar_path(&root);
                        let aside = side.with_extension(format!("csv.unreadable-{}", flowspect::fsutil::unix_now()));
                        let kept = match std::fs::rename(&side, &aside) {
                            Ok(()) => format!("moved to {}", aside.display()),
                            Err(r) => format!("could not move it aside: {r}"),
                        };
                        self.report_error("labels", format!("{e} (labels not loaded; the file was {kept})"));
                        data::Labels { dir: root.clone(), by_path: Default::default() }
                    }
                };
                self.entries = samples
                    .into_iter()
                    .map(|sample| Entry { person: labels.get(&sample.path), sample, result: None, error: None })
                    .collect();
                let marked = self.entries.iter().filter(|e| e.person.is_some()).count();
                if marked > 0 {
                    self.say(format!("{marked} labels read from {}", data::Labels::sidecar_path(&root).display()));
                }
                self.labels = Some(labels);
                self.marked.clear();
                self.thumbs.clear();
                self.thumbs_requested.clear();
                self.selected = None;
                self.view = None;
                self.scores_generation += 1;
            }
            Err(e) => self.report_error("test folder", e),
        }
    }

    pub fn start_training(&mut self) {
        if self.busy() {
            return;
        }
        if self.train_files.is_empty() {
            self.scan_train_dir();
            if self.train_files.is_empty() {
                return;
            }
        }
        let job = Job::new("training");
        self.losses.clear();
        let cmd = Command::Train {
            files: self.train_files.clone(),
            settings: self.settings.train.clone(),
            cancel: job.cancel.clone(),
        };
        self.send(cmd, job);
    }

    pub fn start_scoring(&mut self) {
        if self.busy() {
            return;
        }
        if self.model.is_none() {
            self.report_error("scoring", "no model: train or open one first");
            return;
        }
        if self.entries.is_empty() {
            self.open_test_dir();
            if self.entries.is_empty() {
                return;
            }
        }
        // Score what has no score yet (everything after a new model).
        let samples: Vec<_> = self
            .entries
            .iter()
            .filter(|e| e.result.is_none())
            .map(|e| e.sample.clone())
            .collect();
        if samples.is_empty() {
            self.say("every test image already has a score");
            return;
        }
        let job = Job::new("scoring");
        let cmd = Command::Score { samples, cancel: job.cancel.clone() };
        self.send(cmd, job);
    }

    /// Writes the project file (atomically) and keeps it open for autosave.
    pub fn save_project(&mut self, path: PathBuf) {
        let p = super::project::Project::from_settings(&self.settings);
        match p.save(&path) {
            Ok(()) => {
                self.project_saved = p.to_json();
                // The scores are written beside it at the next autosave.
                self.scores_kept = self.results_generation.wrapping_sub(1);
                self.say(format!("project saved to {}", path.display()));
                self.remember_project(&path);
                self.project = Some(path);
            }
            Err(e) => self.report_error("saving the project", e),
        }
    }

    /// Opens a project: its folders (with their labels), model and thresholds.
    pub fn open_project(&mut self, path: PathBuf) {
        if self.busy() {
            self.report_error("opening the project", "wait for the running job to end (or cancel it) first");
            return;
        }
        let p = match super::project::Project::open(&path) {
            Ok(p) => p,
            Err(e) => return self.report_error("opening the project", e),
        };
        p.apply(&mut self.settings);
        self.project_saved = p.to_json();
        self.remember_project(&path);
        self.project = Some(path.clone());
        self.say(format!("project {} opened", path.display()));
        if !p.train_dir.trim().is_empty() {
            self.scan_train_dir();
        }
        if !p.test_dir.trim().is_empty() {
            self.open_test_dir();
        }
        let model = PathBuf::from(&p.model_path);
        if !p.model_path.is_empty() {
            if !model.is_file() {
                self.report_error("the project's model", format!("{}: no such file", model.display()));
            } else {
                if p.model_stamp.is_some() && super::project::stamp(&model) != p.model_stamp {
                    self.say(format!("the model file {} changed since the project was saved", model.display()));
                }
                let cache = super::project::scores_path(&path);
                self.pending_restore = cache.is_file().then_some(cache);
                self.open_model(model, true);
            }
        }
    }

    fn remember_project(&mut self, path: &Path) {
        let s = path.display().to_string();
        self.settings.recent_projects.retain(|p| *p != s);
        self.settings.recent_projects.insert(0, s);
        self.settings.recent_projects.truncate(8);
    }

    /// Writes the open project again if anything it holds changed (every frame), and its
    /// scores once a job that changed them has ended.
    pub fn autosave_project(&mut self) {
        let Some(path) = self.project.clone() else { return };
        if let Some(rx) = &self.scores_writing {
            match rx.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Ok(Ok(_)) | Err(std::sync::mpsc::TryRecvError::Disconnected) => self.scores_writing = None,
                Ok(Err(e)) => {
                    self.scores_writing = None;
                    self.report_error("keeping the scores with the project", e);
                }
            }
        }
        if self.results_generation != self.scores_kept && !self.busy() && self.pending_restore.is_none() && self.scores_reading.is_none() && self.scores_writing.is_none() {
            self.scores_kept = self.results_generation;
            let results: Vec<ScoredImage> = self.entries.iter().filter_map(|e| e.result.clone()).collect();
            if let Some(model) = self.model.as_ref().and_then(|m| m.path.clone())
                && !results.is_empty()
            {
                let (tx, rx) = std::sync::mpsc::channel();
                let file = super::project::scores_path(&path);
                let ctx = self.ctx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(super::project::save_scores(&file, &model, &results.iter().collect::<Vec<_>>()));
                    ctx.request_repaint();
                });
                self.scores_writing = Some(rx);
            }
        }
        let p = super::project::Project::from_settings(&self.settings);
        let json = p.to_json();
        if json != self.project_saved {
            match p.save(&path) {
                Ok(()) => self.project_saved = json,
                Err(e) => {
                    self.report_error("autosaving the project", e);
                    // Once per change, not every frame.
                    self.project_saved = json;
                }
            }
        }
    }

    /// The images labels and teach act on: the grid's marked images, else the one under review.
    pub fn targets(&self) -> Vec<usize> {
        if self.marked.is_empty() { self.selected.into_iter().collect() } else { self.marked.iter().copied().collect() }
    }

    /// Gives `indices` a person's label (`None` clears it) and writes the sidecar.
    pub fn set_label(&mut self, indices: &[usize], label: Option<bool>) {
        let paths: Vec<PathBuf> = indices.iter().filter_map(|&i| self.entries.get(i).map(|e| e.sample.path.clone())).collect();
        if paths.is_empty() {
            return;
        }
        let Some(labels) = &mut self.labels else { return };
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        match labels.set(&refs, label) {
            Ok(()) => {
                for &i in indices {
                    if let Some(e) = self.entries.get_mut(i) {
                        e.person = label;
                    }
                }
                self.scores_generation += 1;
                let what = match label {
                    Some(true) => "defect",
                    Some(false) => "good",
                    None => "cleared",
                };
                self.say(format!("{} images marked {what}", paths.len()));
            }
            Err(e) => self.report_error("saving labels", e),
        }
    }

    /// Teaches the target images to the model as good, then rescores the test folder.
    pub fn teach_targets(&mut self) {
        if self.busy() || self.model.is_none() {
            return;
        }
        let paths: Vec<PathBuf> = self.targets().iter().filter_map(|&i| self.entries.get(i).map(|e| e.sample.path.clone())).collect();
        if paths.is_empty() {
            self.report_error("teaching", "pick the images to add first (click, ctrl-click or shift-click on the grid)");
            return;
        }
        let taught: Vec<(usize, f32)> =
            self.targets().into_iter().filter_map(|i| self.entries.get(i)?.result.as_ref().map(|r| (i, r.score))).collect();
        self.teach_before = Some((super::state::counts(&self.entries, &self.settings.active_thresholds()), taught));
        let job = Job::new("teaching");
        let write_to = self.model.as_ref().and_then(|m| m.path.clone());
        let cmd = Command::Teach { paths, write_to, cancel: job.cancel.clone() };
        self.send(cmd, job);
    }

    pub fn undo_teach(&mut self) {
        if self.busy() || self.undo_depth == 0 {
            return;
        }
        self.teach_before = Some((super::state::counts(&self.entries, &self.settings.active_thresholds()), Vec::new()));
        let write_to = self.model.as_ref().and_then(|m| m.path.clone());
        self.send(Command::Undo { write_to }, Job::new("undo"));
    }

    pub fn open_model(&mut self, path: PathBuf, keep_thresholds: bool) {
        if self.busy() {
            return;
        }
        let cmd = Command::Load { path, device: self.settings.train.device, keep_thresholds };
        self.send(cmd, Job::new("opening the model"));
    }

    pub fn save_model(&mut self, path: PathBuf) {
        if self.busy() {
            return;
        }
        let cmd = Command::Save {
            path,
            thresholds: self.settings.active_thresholds(),
            pixel_threshold: self.settings.pixel_threshold,
        };
        self.send(cmd, Job::new("saving the model"));
    }

    /// Writes a report of the test folder into `settings.report_dir` at the thresholds in force.
    pub fn export_report(&mut self) {
        if self.busy() {
            return;
        }
        let Some(m) = &self.model else {
            self.report_error("the report", "no model: train or open one first");
            return;
        };
        let out = PathBuf::from(self.settings.report_dir.trim());
        if out.as_os_str().is_empty() {
            self.report_error("the report", "choose a folder for the report first");
            return;
        }
        if self.entries.is_empty() {
            self.report_error("the report", "no test images: open a test folder first");
            return;
        }
        let options = flowspect::report::ReportOptions {
            thresholds: self.settings.active_thresholds(),
            pixel_threshold: self.settings.pixel_threshold,
            model_path: m.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "unsaved model (trained in this session)".into()),
            input: self.settings.test_dir.trim().to_string(),
        };
        let job = Job::new("the report");
        let cmd = Command::Report {
            // The labels in force: a person's from the review over the folder's.
            samples: self.entries.iter().map(|e| data::Sample { defect: e.label(), ..e.sample.clone() }).collect(),
            options,
            out,
            cancel: job.cancel.clone(),
        };
        self.send(cmd, job);
    }

    pub fn cancel_job(&mut self) {
        if let Some(j) = &mut self.job {
            j.cancel.cancel();
            j.cancel_requested.get_or_insert_with(std::time::Instant::now);
        }
    }

    fn send(&mut self, cmd: Command, job: Job) {
        if self.worker.send(cmd) {
            self.say(format!("{} started", job.name));
            self.job = Some(job);
        } else {
            self.report_error(&job.name, "the background worker is not running; restart flowspect");
        }
    }

    /// The model changed in the worker (teach, undo): take its thresholds where the app
    /// still used the model's own, and rescore the test folder.
    fn after_model_change(&mut self, meta: flowspect::detector::ModelMeta, undo: usize) {
        self.undo_depth = undo;
        let mut kept = None;
        if let Some(m) = &mut self.model {
            let t = &mut self.settings.thresholds;
            if t.accept_below == m.meta.threshold && t.reject_from == m.meta.review_threshold {
                (t.accept_below, t.reject_from) = (meta.threshold, meta.review_threshold);
                self.settings.pixel_threshold = meta.pixel_threshold;
            } else if meta.threshold != m.meta.threshold {
                kept = Some(format!(
                    "the model's own threshold is now {:.5}; the threshold set here ({:.5}) is kept",
                    meta.threshold, t.accept_below
                ));
            }
            m.meta = meta;
        }
        if let Some(line) = kept {
            self.say(line);
        }
        self.clear_scores();
        if !self.entries.is_empty() {
            self.pending_score = true;
        } else {
            self.teach_before = None;
        }
    }

    /// Starts reading the scores kept with the opened project (on a thread: the file is
    /// tens of MB and the model file is hashed); [`Self::poll_restore`] puts them back.
    fn restore_scores(&mut self, cache: &Path) {
        let Some(model) = self.model.as_ref().and_then(|m| m.path.clone()) else { return };
        let wanted: Vec<PathBuf> = self.entries.iter().map(|e| e.sample.path.clone()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let ctx = self.ctx.clone();
        let file = cache.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(super::project::load_scores(&file, &model, &wanted).map(|r| (model, r)));
            ctx.request_repaint();
        });
        self.scores_reading = Some(ScoresReading { cache: cache.to_path_buf(), generation: self.results_generation, rx });
    }

    /// Puts back the kept scores once read, for the images unchanged since, unless the
    /// images' results changed meanwhile (a scoring job started: its scores win).
    fn poll_restore(&mut self) {
        let Some(reading) = &self.scores_reading else { return };
        let answer = match reading.rx.try_recv() {
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(flowspect::Error::Data("the thread reading the kept scores stopped".into())),
            Ok(a) => a,
        };
        let Some(ScoresReading { cache, generation, .. }) = self.scores_reading.take() else { return };
        if generation != self.results_generation {
            self.say(format!("the scores kept in {} were not restored: the images were scored meanwhile", cache.display()));
            return;
        }
        match answer {
            Ok((model, None)) => self.say(format!(
                "the model file {} changed since the project's scores were kept: press \"Score test images\" to score the folder again",
                model.display()
            )),
            Ok((_, Some(r))) => {
                let n = r.results.len();
                let idx: HashMap<PathBuf, usize> = self.entries.iter().enumerate().map(|(i, e)| (e.sample.path.clone(), i)).collect();
                for res in r.results {
                    if let Some(&i) = idx.get(&res.path) {
                        self.entries[i].result = Some(res);
                    }
                }
                self.scores_generation += 1;
                self.results_generation += 1;
                self.scores_kept = self.results_generation;
                // The image under review is shown again with its restored heatmap.
                self.reload_view();
                if r.stale.is_empty() {
                    self.say(format!("scores of {n} images restored from {}", cache.display()));
                } else {
                    let names: Vec<String> =
                        r.stale.iter().take(5).map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()).collect();
                    let line = format!(
                        "scores of {n} images restored; {} images changed or new since they were kept ({}{}): press \"Score test images\" to score the folder again",
                        r.stale.len(),
                        names.join(", "),
                        if r.stale.len() > 5 { ", ..." } else { "" }
                    );
                    self.say(line);
                }
            }
            Err(e) => self.report_error("restoring the project's scores", e),
        }
    }

    pub fn clear_scores(&mut self) {
        for e in &mut self.entries {
            e.result = None;
        }
        self.results_generation += 1;
        self.scores_generation += 1;
        // The image under review is loaded again (its view held the old scores' heatmap).
        self.reload_view();
    }

    /// Drops the view of the image under review and asks the loader for it again.
    fn reload_view(&mut self) {
        self.view = None;
        if let Some(i) = self.selected.take() {
            self.select(i);
        }
    }

    /// Handles everything the worker, the loaders and the dialogs sent since last frame.
    pub fn poll(&mut self) {
        while let Ok(ev) = self.worker.rx.try_recv() {
            self.on_event(ev);
        }
        while let Ok(l) = self.loader.rx.try_recv() {
            self.on_loaded(l);
        }
        while let Some((target, path)) = self.dialogs.poll() {
            self.on_dialog(target, path);
        }
        self.poll_restore();
        let line: Vec<_> = self.inspect.run.as_ref().map(|r| r.rx.try_iter().collect()).unwrap_or_default();
        for ev in line {
            self.on_line_event(ev);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Progress(p) => self.on_progress(p),
            Event::Model { meta, path, keep_thresholds, device } => {
                if !keep_thresholds {
                    self.settings.thresholds.accept_below = meta.threshold;
                    self.settings.two_thresholds = meta.review_threshold.is_some();
                    self.settings.thresholds.reject_from = meta.review_threshold;
                    self.settings.pixel_threshold = meta.pixel_threshold;
                }
                if let Some(p) = &path {
                    self.settings.model_path = p.display().to_string();
                    self.say(format!("opened model {} ({}, {} px, device {device})", p.display(), meta.method, meta.config.tap().image_size));
                } else {
                    let t = &meta.training;
                    self.say(format!(
                        "trained on {} images ({} held out, {} skipped) in {:.0} s; threshold {:.4}",
                        t.n_train,
                        t.n_val,
                        t.skipped.len(),
                        t.total_seconds,
                        meta.threshold
                    ));
                }
                self.model = Some(ModelInfo { meta: *meta, path, device });
                self.undo_depth = 0;
                self.last_teach = None;
                self.clear_scores();
                if let Some(cache) = self.pending_restore.take() {
                    self.restore_scores(&cache);
                }
                if self.startup.score && !self.entries.is_empty() {
                    self.startup.score = false;
                    // Started once this job's Done arrives.
                    self.pending_score = true;
                }
            }
            Event::Scored(v) => {
                let idx: HashMap<&Path, usize> =
                    self.entries.iter().enumerate().map(|(i, e)| (e.sample.path.as_path(), i)).collect();
                let mut hits = Vec::new();
                for r in v {
                    if let Some(&i) = idx.get(r.path.as_path()) {
                        hits.push((i, r));
                    }
                }
                for (i, r) in hits {
                    self.entries[i].result = Some(r);
                    self.entries[i].error = None;
                }
                self.scores_generation += 1;
                self.results_generation += 1;
            }
            Event::Unreadable(v) => {
                for (p, why) in v {
                    if let Some(e) = self.entries.iter_mut().find(|e| e.sample.path == p) {
                        e.error = Some(why);
                    }
                }
            }
            Event::Saved(p) => {
                self.say(format!("model saved to {}", p.display()));
                self.settings.model_path = p.display().to_string();
                if let Some(m) = &mut self.model {
                    m.path = Some(p);
                    let t = self.settings.active_thresholds();
                    m.meta.threshold = t.accept_below;
                    m.meta.review_threshold = t.reject_from;
                    m.meta.pixel_threshold = self.settings.pixel_threshold;
                }
            }
            Event::Reported { out, counts, unreadable } => {
                let skipped = if unreadable > 0 { format!(", {unreadable} unreadable (listed in it)") } else { String::new() };
                self.say(format!(
                    "report written to {}: accept {}, review {}, reject {}{skipped}",
                    out.display(),
                    counts.accept,
                    counts.review,
                    counts.reject
                ));
                self.settings.report_dir = out.display().to_string();
            }
            Event::Taught { meta, taught, summary, seconds, undo, written } => {
                let kept = match written {
                    Some(p) => format!("model file {} updated", p.display()),
                    None => "save the model to keep it".into(),
                };
                self.say(format!("taught {taught} images in {seconds:.1} s: {summary} ({kept})"));
                self.after_model_change(*meta, undo);
            }
            Event::Untaught { meta, undo, written } => {
                let kept = written.map(|p| format!(" (model file {} written back)", p.display())).unwrap_or_default();
                self.say(format!("undo: back to the model before the last teach{kept}"));
                self.after_model_change(*meta, undo);
            }
            Event::Failed { what, message } => {
                self.teach_before = None;
                self.pending_restore = None;
                self.report_error(&what, message)
            }
            Event::Cancelled(what) => {
                self.teach_before = None;
                let secs = self
                    .job
                    .as_ref()
                    .and_then(|j| j.cancel_requested)
                    .map(|t| t.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                let kept = match what.as_str() {
                    "scoring" => "the scores so far are kept",
                    "the report" => "nothing was written; a previous report in that folder is untouched",
                    _ => "the previous model, folders and scores are unchanged",
                };
                self.say(format!("{what} cancelled (stopped {secs:.1} s after Cancel); {kept}"));
            }
            Event::Done => {
                if let Some(j) = self.job.take() {
                    let scored = self.entries.iter().filter(|e| e.result.is_some()).count();
                    let what = if j.name == "scoring" { format!(" ({scored} of {} images scored)", self.entries.len()) } else { String::new() };
                    self.say(format!("{} ended after {:.1} s{what}", j.name, j.started.elapsed().as_secs_f64()));
                }
                if std::mem::take(&mut self.pending_score) {
                    self.start_scoring();
                } else if self.job.is_none()
                    && let Some((b, taught)) = self.teach_before.take()
                {
                    let a = super::state::counts(&self.entries, &self.settings.active_thresholds());
                    let mut line = format!(
                        "false alarms {} -> {}, escapes {} -> {}, rejects {} -> {}",
                        b.fp, a.fp, b.fn_, a.fn_, b.reject, a.reject
                    );
                    let changed: Vec<String> = taught
                        .iter()
                        .filter_map(|&(i, before)| {
                            let e = self.entries.get(i)?;
                            Some(format!("{} {before:.4} -> {:.4}", e.name(), e.result.as_ref()?.score))
                        })
                        .collect();
                    if !changed.is_empty() {
                        let more = if changed.len() > 3 { format!(" and {} more", changed.len() - 3) } else { String::new() };
                        line = format!("{}{more}; {line}", changed[..changed.len().min(3)].join(", "));
                    }
                    self.say(line.clone());
                    self.last_teach = Some(line);
                }
            }
        }
    }

    fn on_progress(&mut self, p: Progress) {
        match p {
            Progress::Stage { name, total } => {
                if let Some(j) = &mut self.job {
                    j.stage = name;
                    j.total = total;
                    j.done = 0;
                    j.epoch = None;
                    j.stage_started = std::time::Instant::now();
                }
            }
            Progress::Step { done } => {
                if let Some(j) = &mut self.job {
                    j.done = done;
                }
            }
            Progress::Epoch { stage, epoch, epochs, loss } => {
                if let Some(j) = &mut self.job {
                    j.epoch = Some((epoch, epochs));
                }
                match self.losses.iter_mut().find(|(s, _)| *s == stage) {
                    Some((_, v)) => v.push([epoch as f64, loss]),
                    None => self.losses.push((stage, vec![[epoch as f64, loss]])),
                }
            }
            Progress::Skipped { message } => self.say(format!("skipped {message}")),
            Progress::Info(m) => self.say(m),
        }
    }

    fn on_loaded(&mut self, l: Loaded) {
        match l {
            Loaded::Thumb { index, image } => {
                let tex = self.ctx.load_texture(format!("thumb-{index}"), image, egui::TextureOptions::LINEAR);
                self.thumbs.insert(index, tex);
            }
            Loaded::Full { index, image, mask, mask_error } => {
                if let Some(e) = mask_error {
                    self.say(format!("mask not shown: {e}"));
                }
                if self.selected == Some(index) {
                    self.view = Some(ReviewView::new(&self.ctx, index, image, mask));
                }
            }
            Loaded::Failed { index, full, message } => {
                if let Some(e) = self.entries.get_mut(index) {
                    e.error = Some(message.clone());
                }
                if full && self.selected == Some(index) {
                    self.report_error("opening the image", message);
                }
            }
        }
    }

    fn on_dialog(&mut self, target: DialogTarget, path: PathBuf) {
        match target {
            DialogTarget::TrainDir => {
                self.settings.train_dir = path.display().to_string();
                self.scan_train_dir();
            }
            DialogTarget::TestDir => {
                self.settings.test_dir = path.display().to_string();
                self.open_test_dir();
            }
            DialogTarget::Backbone => self.settings.train.backbone = path,
            DialogTarget::OpenModel => self.open_model(path, false),
            DialogTarget::SaveModel => self.save_model(path),
            DialogTarget::ReportDir => {
                self.settings.report_dir = path.display().to_string();
                self.export_report();
            }
            DialogTarget::InspectModel => self.settings.inspect.model = path.display().to_string(),
            DialogTarget::InspectDir => self.settings.inspect.input = path.display().to_string(),
            DialogTarget::InspectSortDir => self.settings.inspect.sort = path.display().to_string(),
            DialogTarget::OpenProject => self.open_project(path),
            DialogTarget::SaveProject => self.save_project(path),
        }
    }

    /// Selects an image for review and asks the loader for it.
    pub fn select(&mut self, index: usize) {
        if self.selected == Some(index) && self.view.is_some() {
            return;
        }
        let Some(e) = self.entries.get(index) else { return };
        self.selected = Some(index);
        self.view = None;
        self.loader.want_full(FullRequest {
            index,
            path: e.sample.path.clone(),
            mask: e.sample.mask.clone(),
        });
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        // Ctrl+1..5 switch tabs.
        let tabs = [Tab::Data, Tab::Train, Tab::Threshold, Tab::Review, Tab::Inspect];
        let keys = [egui::Key::Num1, egui::Key::Num2, egui::Key::Num3, egui::Key::Num4, egui::Key::Num5];
        for (k, t) in keys.into_iter().zip(tabs) {
            if ui.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, k)) {
                self.settings.tab = t;
            }
        }
        ui.horizontal(|ui| {
            ui.heading("flowspect");
            ui.separator();
            for (tab, name) in [
                (Tab::Data, "Data"),
                (Tab::Train, "Train"),
                (Tab::Threshold, "Threshold"),
                (Tab::Review, "Review"),
                (Tab::Inspect, "Inspect"),
            ] {
                ui.selectable_value(&mut self.settings.tab, tab, name)
                    .on_hover_text(format!("Ctrl+{}", tab as usize + 1));
            }
            ui.separator();
            ui.menu_button("Project", |ui| {
                if ui.button("Open project...").clicked() {
                    self.dialogs.open(DialogTarget::OpenProject, self.project.clone());
                }
                if ui.button("Save project as...").clicked() {
                    self.dialogs.open(DialogTarget::SaveProject, self.project.clone());
                }
                if let Some(p) = self.project.clone()
                    && ui.button("Save project").clicked()
                {
                    self.save_project(p);
                }
                ui.separator();
                ui.weak("Recent projects");
                for r in self.settings.recent_projects.clone() {
                    if ui.button(&r).clicked() {
                        self.open_project(PathBuf::from(r));
                    }
                }
            });
            if let Some(p) = &self.project {
                ui.label(format!("Project: {}", p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()))
                    .on_hover_text(format!("{} (saved after every change)", p.display()));
            }
            ui.separator();
            match &self.model {
                Some(m) => {
                    let name = m
                        .path
                        .as_ref()
                        .and_then(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "unsaved model".into());
                    ui.label(format!("Model: {name} ({}, {} px)", m.meta.method, m.meta.config.tap().image_size));
                }
                None => {
                    ui.weak("No model yet");
                }
            }
        });
    }

    fn error_banner(&mut self, ui: &mut egui::Ui) {
        if self.errors.is_empty() {
            return;
        }
        let mut dismiss = false;
        egui::Frame::new()
            .fill(ui.visuals().error_fg_color.gamma_multiply(0.15))
            .inner_margin(6.0)
            .show(ui, |ui| {
                for e in self.errors.iter().rev().take(3) {
                    ui.colored_label(ui.visuals().error_fg_color, e);
                }
                if self.errors.len() > 3 {
                    ui.label(format!("and {} more (see the log)", self.errors.len() - 3));
                }
                dismiss = ui.button("Dismiss").clicked();
            });
        if dismiss {
            self.errors.clear();
        }
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        let mut cancel = false;
        if let Some(j) = &self.job {
            ui.horizontal(|ui| {
                let mut text = format!("{}: {}", j.name, j.stage);
                if let Some((e, n)) = j.epoch {
                    text += &format!(" (epoch {e}/{n} done)");
                }
                if j.total > 0 {
                    text += &format!(" {}/{}", j.done, j.total);
                }
                if let Some(eta) = j.eta_seconds() {
                    text += &format!(", {} left", fmt_secs(eta));
                }
                text += &format!(", {} elapsed", fmt_secs(j.started.elapsed().as_secs_f64()));
                let bar = match j.fraction() {
                    Some(f) => egui::ProgressBar::new(f).show_percentage(),
                    None => egui::ProgressBar::new(0.0).animate(true),
                };
                ui.add(bar.desired_width(240.0));
                ui.label(text);
                if j.cancel_requested.is_some() {
                    ui.spinner();
                    ui.label("cancelling...");
                } else {
                    cancel = ui.button("Cancel").clicked();
                }
            });
        }
        if cancel {
            self.cancel_job();
        }
        egui::CollapsingHeader::new(format!("Log ({} lines)", self.log.len()))
            .id_salt("log")
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .max_height(140.0)
                    .stick_to_bottom(true)
                    .show(ui, |ui| {
                        for l in &self.log {
                            ui.monospace(l);
                        }
                    });
            });
    }
}

pub fn fmt_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    } else if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.0}s")
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.poll();
        self.autosave_project();
        egui::Panel::top("top").show(ui, |ui| {
            self.top_bar(ui);
            self.error_banner(ui);
        });
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::CentralPanel::default().show(ui, |ui| match self.settings.tab {
            Tab::Data => data_panel::data_ui(ui, self),
            Tab::Train => train_panel::train_ui(ui, self),
            Tab::Threshold => threshold_panel::threshold_ui(ui, self),
            Tab::Review => review::review_ui(ui, self),
            Tab::Inspect => inspect_panel::inspect_ui(ui, self),
        });
        if let Some(i) = self.startup.select
            && self.entries.get(i).is_some_and(|e| e.result.is_some())
            && !self.busy()
        {
            self.startup.select = None;
            self.select(i);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings);
    }
}
