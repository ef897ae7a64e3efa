//! The project file (`.fsproj`, JSON): the folders, the model, the thresholds, the
//! view settings and where the test folder's labels are, so a piece of work can be
//! closed and reopened as it was. Written atomically, and again after every change
//! while a project is open (autosave); the labels themselves live in the sidecar of
//! each folder ([`flowspect::data::labels`]), written on every change, and the scores
//! beside the project ([`save_scores`]), restored while the model and images are unchanged.
use super::state::{Colormap, LabelFilter, Settings, SortBy, VerdictFilter};
use super::worker::ScoredImage;
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

/// The test folder's scores kept beside a project (`<project>.fsscores`), so reopening
/// it shows the scores and heatmaps without scoring again: the model file's SHA-256 and,
/// per image, its size and modification time with its score and map. A binary file:
/// a magic line, the JSON header's length (u64 LE), the header, then every map's
/// values (f32 LE) in the header's order. Written atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ScoreHeader {
    model_sha256: String,
    images: Vec<CachedImage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CachedImage {
    path: String,
    size: u64,
    mtime_ns: u128,
    score: f32,
    width: u32,
    height: u32,
    map_side: usize,
}

const SCORES_MAGIC: &[u8] = b"flowspect-scores 1\n";

/// Where a project's scores are kept.
pub fn scores_path(project: &Path) -> PathBuf {
    project.with_extension("fsscores")
}

fn file_stamp(p: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(p).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some((m.len(), t))
}

/// SHA-256 of a file's bytes (the model file's identity for the score cache).
pub fn file_sha256(p: &Path) -> flowspect::Result<String> {
    let bytes = std::fs::read(p).map_err(|e| flowspect::Error::io(p, e))?;
    Ok(flowspect::line::sha256_hex(&bytes))
}

/// Writes the scored images' results (those whose file can be stat'ed) for `model`.
pub fn save_scores(path: &Path, model: &Path, results: &[&ScoredImage]) -> flowspect::Result<usize> {
    let mut images = Vec::with_capacity(results.len());
    let mut data: Vec<u8> = Vec::new();
    for r in results {
        let Some((size, mtime_ns)) = file_stamp(&r.path) else { continue };
        images.push(CachedImage {
            path: r.path.display().to_string(),
            size,
            mtime_ns,
            score: r.score,
            width: r.width,
            height: r.height,
            map_side: r.map_side,
        });
        for v in r.map.iter() {
            data.extend_from_slice(&v.to_le_bytes());
        }
    }
    let n = images.len();
    let header = serde_json::to_vec(&ScoreHeader { model_sha256: file_sha256(model)?, images })
        .map_err(|e| flowspect::Error::Data(e.to_string()))?;
    let mut out = Vec::with_capacity(SCORES_MAGIC.len() + 8 + header.len() + data.len());
    out.extend_from_slice(SCORES_MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    flowspect::fsutil::atomic_write(path, &out)?;
    Ok(n)
}

/// What a score cache gave back for the images asked about.
#[derive(Debug)]
pub struct Restored {
    /// Results of the images unchanged since they were scored.
    pub results: Vec<ScoredImage>,
    /// Images changed, new or missing from the cache since it was written.
    pub stale: Vec<PathBuf>,
}

/// Reads the scores kept at `path` for the images `wanted`, if the model file is the one
/// they were scored with; `Ok(None)` when it is not (the scores are then all stale).
pub fn load_scores(path: &Path, model: &Path, wanted: &[PathBuf]) -> flowspect::Result<Option<Restored>> {
    let bad = |why: &str| flowspect::Error::bad_file(path, why.to_string());
    let bytes = std::fs::read(path).map_err(|e| flowspect::Error::io(path, e))?;
    let rest = bytes.strip_prefix(SCORES_MAGIC).ok_or_else(|| bad("not a flowspect score file"))?;
    let len = rest.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes).ok_or_else(|| bad("truncated"))? as usize;
    let header = rest.get(8..8 + len).ok_or_else(|| bad("truncated header"))?;
    let header: ScoreHeader = serde_json::from_slice(header).map_err(|e| bad(&format!("corrupt header: {e}")))?;
    let data = &rest[8 + len..];
    if header.model_sha256 != file_sha256(model)? {
        return Ok(None);
    }
    let mut by_path = std::collections::HashMap::new();
    let mut at = 0usize;
    for im in &header.images {
        let n = im.map_side * im.map_side;
        let raw = data.get(at..at + 4 * n).ok_or_else(|| bad("truncated maps"))?;
        at += 4 * n;
        by_path.insert(im.path.clone(), (im, raw));
    }
    let mut out = Restored { results: Vec::new(), stale: Vec::new() };
    for p in wanted {
        match (by_path.get(&p.display().to_string()), file_stamp(p)) {
            (Some((im, raw)), Some(st)) if st == (im.size, im.mtime_ns) => out.results.push(ScoredImage {
                path: p.clone(),
                score: im.score,
                width: im.width,
                height: im.height,
                map: raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<f32>>().into(),
                map_side: im.map_side,
            }),
            _ => out.stale.push(p.clone()),
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_scores_come_back_only_for_unchanged_images_and_model() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m.fsm");
        std::fs::write(&model, b"model one").unwrap();
        let imgs: Vec<PathBuf> = (0..3).map(|i| d.path().join(format!("{i}.png"))).collect();
        for p in &imgs {
            std::fs::write(p, p.display().to_string()).unwrap();
        }
        let results: Vec<ScoredImage> = imgs
            .iter()
            .enumerate()
            .map(|(i, p)| ScoredImage { path: p.clone(), score: i as f32 + 0.5, width: 10, height: 20, map: vec![i as f32; 4].into(), map_side: 2 })
            .collect();
        let cache = scores_path(&d.path().join("w.fsproj"));
        assert_eq!(cache.extension().unwrap(), "fsscores");
        assert_eq!(save_scores(&cache, &model, &results[..2].iter().collect::<Vec<_>>()).unwrap(), 2);
        // Image 1 rewritten, image 2 never scored.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&imgs[1], b"changed").unwrap();
        let r = load_scores(&cache, &model, &imgs).unwrap().unwrap();
        assert_eq!(r.results.len(), 1);
        assert_eq!((r.results[0].score, r.results[0].map.as_slice(), r.results[0].height), (0.5, &[0.0f32; 4][..], 20));
        assert_eq!(r.stale, imgs[1..].to_vec());
        // Another model: nothing comes back.
        std::fs::write(&model, b"model two").unwrap();
        assert!(load_scores(&cache, &model, &imgs).unwrap().is_none());
        // A file that is not a score file is an error naming it.
        std::fs::write(&cache, b"hello").unwrap();
        let e = load_scores(&cache, &model, &imgs).unwrap_err().to_string();
        assert!(e.contains("w.fsscores"), "{e}");
    }
}
