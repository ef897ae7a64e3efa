//! Line mode: inspect parts as they arrive in a folder, with an inspection log that
//! survives a crash. `flowspect watch` and the app's Inspect tab run the same
//! [`LineEngine`]; `flowspect log` and the tab read the same [`log::InspectionLog`].
//!
//! Order of work for one file, chosen so that a kill at any moment loses nothing and
//! scores nothing twice: read the bytes once, hash them (SHA-256), look the path and
//! hash up in the log (found: only finish a sort the previous run did not), decode the
//! same bytes (a truncated or unreadable file waits until it has settled, then gets an
//! error row), score, write the heatmap, write the row (one transaction), and only then
//! move or copy the file into `accept/`, `review/` or `reject/`.
pub mod arrivals;
pub mod log;
pub mod stats;

use crate::data::image_io::decode_image;
use crate::detector::Detector;
use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use crate::inspection::{Thresholds, regions};
use crate::progress::CancelToken;
use arrivals::{Arrivals, Ready, now_unix_ms};
use log::{InspectionLog, LogRow};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where sorted images go.
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    /// `accept/`, `review/` and `reject/` are made below this folder.
    pub dir: PathBuf,
    /// Copy instead of move.
    pub copy: bool,
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub input: PathBuf,
    /// The log database (default `inspections.sqlite` in the input folder).
    pub db: PathBuf,
    pub sort: Option<Sort>,
    /// Write `<name>_heatmap.png` for every scored image here.
    pub heatmaps: Option<PathBuf>,
    pub thresholds: Thresholds,
    /// How long a file that does not decode must stay unchanged before its error is final.
    pub settle: Duration,
    /// Directory scan interval (the fallback when no file-system events arrive).
    pub poll: Duration,
    /// Listen to file-system events (false: poll only).
    pub events: bool,
}

impl WatchOptions {
    pub fn new(input: &Path, thresholds: Thresholds) -> Self {
        Self {
            input: input.into(),
            db: input.join(DEFAULT_DB),
            sort: None,
            heatmaps: None,
            thresholds,
            settle: Duration::from_millis(500),
            poll: Duration::from_millis(1000),
            events: true,
        }
    }
}

pub const DEFAULT_DB: &str = "inspections.sqlite";

/// One file dealt with: the row written, and for a scored image its picture and its
/// anomaly map at the picture's size (row-major), for the Inspect tab's large view.
pub struct Inspected {
    pub row: LogRow,
    pub map: Option<Vec<f32>>,
    pub image: Option<image::DynamicImage>,
}

/// What one file came to.
enum Outcome {
    Logged(Box<Inspected>),
    /// Already in the log (a restart): nothing new.
    Known,
    /// Not whole yet: try again once settled.
    Deferred,
}

pub struct LineEngine {
    det: Detector,
    model_fingerprint: String,
    opts: WatchOptions,
    log: InspectionLog,
    arrivals: Arrivals,
    station: String,
    pixel_threshold: f32,
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn station() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

impl LineEngine {
    /// Opens the log and starts watching. `model_path` is hashed for the rows' model
    /// fingerprint. Returns a note when file-system events are unavailable.
    pub fn new(det: Detector, model_path: &Path, mut opts: WatchOptions) -> Result<(Self, Option<String>)> {
        let model_bytes = std::fs::read(model_path).map_err(|e| Error::io(model_path, e))?;
        let model_fingerprint = sha256_hex(&model_bytes)[..16].to_string();
        drop(model_bytes);
        opts.input = std::fs::canonicalize(&opts.input).map_err(|e| Error::io(&opts.input, e))?;
        let log = InspectionLog::open(&opts.db)?;
        let mut exclude: Vec<OsString> = Vec::new();
        if let Some(name) = opts.db.file_name() {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut n = name.to_os_string();
                n.push(suffix);
                exclude.push(n);
            }
        }
        let (arrivals, note) = Arrivals::new(&opts.input, opts.settle, opts.poll, opts.events, exclude)?;
        let pixel_threshold = det.meta.pixel_threshold;
        Ok((
            Self {
                det,
                model_fingerprint,
                opts,
                log,
                arrivals,
                station: station(),
                pixel_threshold,
            },
            note,
        ))
    }

    pub fn log(&self) -> &InspectionLog {
        &self.log
    }

    pub fn options(&self) -> &WatchOptions {
        &self.opts
    }

    pub fn model_fingerprint(&self) -> &str {
        &self.model_fingerprint
    }

    /// Inspects what is in the folder and what arrives until `stop` is set; stops
    /// after the file in hand. `on_row` sees every new row. A folder that cannot be
    /// listed for a moment (a network share) is reported through `on_problem` and
    /// retried at the next poll.
    pub fn run(&mut self, stop: &CancelToken, on_row: &mut dyn FnMut(&Inspected), on_problem: &mut dyn FnMut(&Error)) -> Result<()> {
        while !stop.is_cancelled() {
            self.step(stop, on_row, on_problem)?;
            if stop.is_cancelled() {
                break;
            }
            self.arrivals.wait(stop);
        }
        Ok(())
    }

    /// Inspects what is in the folder now, waits for files still being written to
    /// settle, and returns (`watch --once`).
    pub fn run_until_idle(&mut self, stop: &CancelToken, on_row: &mut dyn FnMut(&Inspected), on_problem: &mut dyn FnMut(&Error)) -> Result<()> {
        while !stop.is_cancelled() {
            self.step(stop, on_row, on_problem)?;
            if !self.arrivals.has_pending() {
                break;
            }
            self.arrivals.wait(stop);
        }
        Ok(())
    }

    /// One scan of the folder and the files it made ready. Errors of one file become
    /// its error row; an `Err` here is the log itself failing (disk full, ...).
    pub fn step(&mut self, stop: &CancelToken, on_row: &mut dyn FnMut(&Inspected), on_problem: &mut dyn FnMut(&Error)) -> Result<usize> {
        let (ready, vanished) = match self.arrivals.scan() {
            Ok(r) => r,
            Err(e) => {
                on_problem(&e);
                return Ok(0);
            }
        };
        let mut logged = 0;
        for v in vanished {
            let row = self.error_row(&v.path, v.arrived_unix_ms, None, None, "the file vanished before it was complete".into());
            let row = self.log.insert(&row)?;
            logged += 1;
            on_row(&Inspected { row, map: None, image: None });
        }
        for r in ready {
            if stop.is_cancelled() {
                break;
            }
            match self.inspect(&r)? {
                Outcome::Logged(i) => {
                    logged += 1;
                    on_row(&i);
                }
                Outcome::Known => {}
                Outcome::Deferred => self.arrivals.defer(&r.path),
            }
        }
        Ok(logged)
    }

    fn error_row(&self, path: &Path, arrived: i64, size: Option<u64>, sha256: Option<String>, error: String) -> LogRow {
        LogRow {
            id: 0,
            path: path.display().to_string(),
            size_bytes: size,
            sha256,
            arrived_unix_ms: arrived,
            scored_unix_ms: now_unix_ms(),
            score: None,
            verdict: None,
            regions: None,
            largest_region_px: None,
            model_fingerprint: self.model_fingerprint.clone(),
            method: self.det.meta.method.to_string(),
            accept_below: self.opts.thresholds.accept_below,
            reject_from: self.opts.thresholds.reject_from,
            error: Some(error),
            sorted_to: None,
            station: self.station.clone(),
        }
    }

    fn inspect(&mut self, r: &Ready) -> Result<Outcome> {
        let key = r.path.display().to_string();
        let bytes = match std::fs::read(&r.path) {
            Ok(b) => b,
            Err(e) => {
                let size = std::fs::metadata(&r.path).ok().map(|m| m.len());
                if e.kind() != std::io::ErrorKind::NotFound && !r.settled {
                    return Ok(Outcome::Deferred);
                }
                if self.log.find(&key, None, size)?.is_some() {
                    self.arrivals.finish(&r.path);
                    return Ok(Outcome::Known);
                }
                let why = if e.kind() == std::io::ErrorKind::NotFound {
                    "the file vanished before it could be read".to_string()
                } else {
                    format!("cannot read the file: {e}")
                };
                let row = self.log.insert(&self.error_row(&r.path, r.arrived_unix_ms, size, None, why))?;
                self.arrivals.forget(&r.path);
                return Ok(Outcome::Logged(Box::new(Inspected { row, map: None, image: None })));
            }
        };
        let size = bytes.len() as u64;
        let hash = sha256_hex(&bytes);
        if let Some(row) = self.log.find(&key, Some(&hash), Some(size))? {
            // Scored by an earlier run (or another watcher); finish its sort if the
            // run was stopped between the row and the move.
            if let (Some(dest), Some(sort)) = (&row.sorted_to, &self.opts.sort) {
                let dest = PathBuf::from(dest);
                if !dest.exists() {
                    place(&r.path, &dest, sort.copy)?;
                } else if !sort.copy && std::fs::read(&dest).map(|b| sha256_hex(&b) == hash).unwrap_or(false) {
                    // Copied across file systems, killed before the original was removed.
                    std::fs::remove_file(&r.path).map_err(|e| Error::io(&r.path, e))?;
                }
            }
            self.arrivals.finish(&r.path);
            return Ok(Outcome::Known);
        }
        let img = match decode_image(&r.path, &bytes) {
            Ok(img) => img,
            Err(_) if !r.settled => return Ok(Outcome::Deferred),
            Err(e) => {
                let row = self.log.insert(&self.error_row(&r.path, r.arrived_unix_ms, Some(size), Some(hash), e.to_string()))?;
                self.arrivals.finish(&r.path);
                return Ok(Outcome::Logged(Box::new(Inspected { row, map: None, image: None })));
            }
        };
        drop(bytes);
        let mut items = vec![(r.path.clone(), img)];
        let mut scored = self.det.score_images(&items)?;
        let (Some(s), Some((_, img))) = (scored.pop(), items.pop()) else {
            return Err(Error::Data(format!("{}: the model returned no score", r.path.display())));
        };
        let (w, h) = (s.width as usize, s.height as usize);
        let map = s.map_at_original();
        let regs = regions(&map, w, h, self.pixel_threshold);
        let verdict = self.opts.thresholds.verdict(s.score);
        if let Some(dir) = &self.opts.heatmaps {
            let over = crate::render::overlay(&img, &map, self.pixel_threshold * 2.0, 0.5);
            let mut buf = std::io::Cursor::new(Vec::new());
            over.write_to(&mut buf, image::ImageFormat::Png)
                .map_err(|e| Error::Data(format!("{}: cannot encode heatmap: {e}", r.path.display())))?;
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            atomic_write(&dir.join(format!("{}_heatmap.png", stem(&r.path))), buf.get_ref())?;
        }
        let sorted_to = match &self.opts.sort {
            Some(sort) => Some(destination(&sort.dir.join(verdict.to_string()), &r.path)?),
            None => None,
        };
        let row = LogRow {
            id: 0,
            path: key,
            size_bytes: Some(size),
            sha256: Some(hash),
            arrived_unix_ms: r.arrived_unix_ms,
            scored_unix_ms: now_unix_ms(),
            score: Some(s.score),
            verdict: Some(verdict),
            regions: Some(regs.len() as u32),
            largest_region_px: Some(regs.first().map(|g| g.area as u64).unwrap_or(0)),
            model_fingerprint: self.model_fingerprint.clone(),
            method: self.det.meta.method.to_string(),
            accept_below: self.opts.thresholds.accept_below,
            reject_from: self.opts.thresholds.reject_from,
            error: None,
            sorted_to: sorted_to.as_ref().map(|p| p.display().to_string()),
            station: self.station.clone(),
        };
        let row = self.log.insert(&row)?;
        if let (Some(dest), Some(sort)) = (&sorted_to, &self.opts.sort) {
            place(&r.path, dest, sort.copy)?;
        }
        self.arrivals.finish(&r.path);
        Ok(Outcome::Logged(Box::new(Inspected { row, map: Some(map), image: Some(img) })))
    }
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}

/// A free name for `src` in `dir`: its own name, or `name-2.ext`, `name-3.ext`, ...
fn destination(dir: &Path, src: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = src.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "image".into());
    let first = dir.join(&name);
    if !first.exists() {
        return Ok(first);
    }
    let ext = src.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    for k in 2.. {
        let p = dir.join(format!("{}-{k}{ext}", stem(src)));
        if !p.exists() {
            return Ok(p);
        }
    }
    unreachable!("an unbounded counter always finds a free name")
}

/// Moves (rename; copy and delete across file systems) or copies `src` to `dest`.
fn place(src: &Path, dest: &Path, copy: bool) -> Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if !copy && std::fs::rename(src, dest).is_ok() {
        return Ok(());
    }
    // Copy under a temporary name, then rename: a kill leaves no half file at `dest`.
    let tmp = dest.with_extension("flowspect-tmp");
    std::fs::copy(src, &tmp).map_err(|e| Error::io(src, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
    if !copy {
        std::fs::remove_file(src).map_err(|e| Error::io(src, e))?;
    }
    Ok(())
}

/// The images a log's rows point at, for `flowspect report --log`: each scored row's
/// file where it is now (where `--sort` put it, else where it arrived), checked against
/// the logged content hash. Returns the samples and, per row left out, its path and why
/// (an error row, a file gone, or a file whose content changed since it was logged).
pub fn log_samples(rows: &[LogRow]) -> (Vec<crate::data::Sample>, Vec<(String, String)>) {
    let mut samples = Vec::new();
    let mut left_out = Vec::new();
    for r in rows {
        if let Some(e) = &r.error {
            left_out.push((r.path.clone(), format!("not inspected: {e}")));
            continue;
        }
        let here = r
            .sorted_to
            .as_ref()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(&r.path));
        match std::fs::read(&here) {
            Ok(bytes) if r.sha256.as_deref().is_some_and(|h| h != sha256_hex(&bytes)) => {
                left_out.push((here.display().to_string(), "its content changed since it was logged".into()))
            }
            Ok(_) => samples.push(crate::data::Sample { path: here, defect: None, kind: r.verdict_text().into(), mask: None }),
            Err(e) => left_out.push((here.display().to_string(), format!("cannot be read: {e}"))),
        }
    }
    (samples, left_out)
}
