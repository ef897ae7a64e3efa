//! The project file (`.fsproj`, JSON): the folders, the model, the thresholds, the
//! view settings and where the test folder's labels are, so a piece of work can be
//! closed and reopened as it was. Written atomically, and again after every change
//! while a project is open (autosave); the labels themselves live in the sidecar of
//! each folder ([`flowspect::data::labels`]), written on every change.
use super::state::{Colormap, LabelFilter, Settings, SortBy, VerdictFilter};
use flowspect::data::Labels;
use flowspect::inspection::Thresholds;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const PROJECT_FORMAT: &str = "flowspect-project";
pub const PROJECT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub format: String,
    pub version: u32,
    pub train_dir: String,
    pub test_dir: String,
    pub model_path: String,
    /// Size and modification time of the model file when the project was saved.
    #[serde(default)]
    pub model_stamp: Option<(u64, u64)>,
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
    /// The label sidecar of the test folder.
    pub labels: String,
}

/// Size and modification time (seconds) of a file.
pub fn stamp(p: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some((m.len(), t))
}

impl Project {
    pub fn from_settings(s: &Settings) -> Self {
        let test = PathBuf::from(s.test_dir.trim());
        let root = if test.is_file() { test.parent().map(Path::to_path_buf).unwrap_or_default() } else { test };
        Self {
            format: PROJECT_FORMAT.into(),
            version: PROJECT_VERSION,
            train_dir: s.train_dir.clone(),
            test_dir: s.test_dir.clone(),
            model_path: s.model_path.clone(),
            model_stamp: (!s.model_path.is_empty()).then(|| stamp(Path::new(&s.model_path))).flatten(),
            thresholds: s.thresholds,
            two_thresholds: s.two_thresholds,
            pixel_threshold: s.pixel_threshold,
            overlay: s.overlay,
            opacity: s.opacity,
            colormap: s.colormap,
            show_regions: s.show_regions,
            show_mask: s.show_mask,
            verdict_filter: s.verdict_filter,
            label_filter: s.label_filter,
            sort: s.sort,
            labels: Labels::sidecar_path(&root).display().to_string(),
        }
    }

    /// Puts the project's choices into the app's settings.
    pub fn apply(&self, s: &mut Settings) {
        s.train_dir = self.train_dir.clone();
        s.test_dir = self.test_dir.clone();
        s.model_path = self.model_path.clone();
        s.thresholds = self.thresholds;
        s.two_thresholds = self.two_thresholds;
        s.pixel_threshold = self.pixel_threshold;
        s.overlay = self.overlay;
        s.opacity = self.opacity;
        s.colormap = self.colormap;
        s.show_regions = self.show_regions;
        s.show_mask = self.show_mask;
        s.verdict_filter = self.verdict_filter;
        s.label_filter = self.label_filter;
        s.sort = self.sort;
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> flowspect::Result<()> {
        flowspect::fsutil::atomic_write(path, self.to_json().as_bytes())
    }

    /// Reads a project file; the error names the file.
    pub fn open(path: &Path) -> flowspect::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| flowspect::Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| flowspect::Error::bad_file(path, format!("not a flowspect project (not JSON: {e})")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(PROJECT_FORMAT) {
            return Err(flowspect::Error::bad_file(path, "not a flowspect project file"));
        }
        let found = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        if found != PROJECT_VERSION {
            return Err(flowspect::Error::bad_file(path, format!("project version {found}, this flowspect reads version {PROJECT_VERSION}")));
        }
        serde_json::from_value(v).map_err(|e| flowspect::Error::bad_file(path, format!("corrupt project: {e}")))
    }
}
