//! The Inspect tab's background side: the library's line engine (the same one
//! `flowspect watch` runs) in a thread of its own, so a training or scoring job on the
//! main worker does not stop the line and the UI never waits on the engine or the
//! database; and a reader thread that refreshes the log table from the database.
use super::loader::to_color_image;
use crossbeam_channel::{Receiver, Sender, unbounded};
use flowspect::detector::Detector;
use flowspect::device::DeviceChoice;
use flowspect::inspection::Thresholds;
use flowspect::line::log::{InspectionLog, LogRow, Query};
use flowspect::line::stats::LineStats;
use flowspect::line::{DEFAULT_DB, Inspected, LineEngine, Sort, WatchOptions};
use flowspect::progress::CancelToken;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest side of the large picture sent to the tab.
const PICTURE_SIDE: u32 = 720;
/// Side of a thumbnail in the strip.
const THUMB_SIDE: u32 = 96;
/// Rows the log table holds.
pub const TABLE_ROWS: usize = 300;

/// What the Start button asks for.
#[derive(Debug, Clone)]
pub struct LineRequest {
    pub model: PathBuf,
    pub input: PathBuf,
    /// `None`: `inspections.sqlite` in the input folder.
    pub db: Option<PathBuf>,
    /// Move images into accept/, review/, reject/ below this folder.
    pub sort: Option<PathBuf>,
    pub device: DeviceChoice,
    pub settle: Duration,
    pub poll: Duration,
}

pub enum LineEvent {
    Started {
        input: PathBuf,
        db: PathBuf,
        thresholds: Thresholds,
        model_fingerprint: String,
        note: Option<String>,
    },
    /// A new row, with the heatmap overlay and a thumbnail for a scored image.
    Row {
        row: Box<LogRow>,
        picture: Option<egui::ColorImage>,
        thumb: Option<egui::ColorImage>,
    },
    /// Something to tell the user that does not stop the line (a folder unreadable for a moment).
    Problem(String),
    /// The log table under the current filter, and the last hour's statistics.
    Table { rows: Vec<LogRow>, last_hour: LineStats },
    /// The engine ended: `None` after Stop, the error otherwise.
    Stopped(Option<String>),
}

/// A running line: Stop with [`LineRun::stop`], events on `rx`.
pub struct LineRun {
    pub rx: Receiver<LineEvent>,
    stop: CancelToken,
    filter: Arc<Mutex<Query>>,
    /// Asks the reader for a refresh now (a filter change).
    refresh: Arc<AtomicBool>,
}

impl LineRun {
    pub fn start(ctx: egui::Context, req: LineRequest, filter: Query) -> Self {
        let (tx, rx) = unbounded();
        let stop = CancelToken::new();
        let filter = Arc::new(Mutex::new(filter));
        let refresh = Arc::new(AtomicBool::new(true));
        let run = Self { rx, stop: stop.clone(), filter: filter.clone(), refresh: refresh.clone() };
        let (tx2, ctx2) = (tx.clone(), ctx.clone());
        let spawned = std::thread::Builder::new().name("flowspect-line".into()).spawn(move || {
            let end = match engine_thread(&ctx, &tx, req, &stop, filter, refresh) {
                Ok(()) => None,
                Err(e) => Some(e),
            };
            let _ = tx.send(LineEvent::Stopped(end));
            ctx.request_repaint();
        });
        if let Err(e) = spawned {
            let _ = tx2.send(LineEvent::Stopped(Some(format!("cannot start the line thread: {e}"))));
            ctx2.request_repaint();
        }
        run
    }

    /// Stops after the image in hand.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub fn set_filter(&self, q: Query) {
        if let Ok(mut f) = self.filter.lock() {
            *f = q;
        }
        self.refresh.store(true, Ordering::SeqCst);
    }
}

impl Drop for LineRun {
    /// Closing the app (or the tab's state) stops the line after the image in hand.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn engine_thread(
    ctx: &egui::Context,
    tx: &Sender<LineEvent>,
    req: LineRequest,
    stop: &CancelToken,
    filter: Arc<Mutex<Query>>,
    refresh: Arc<AtomicBool>,
) -> Result<(), String> {
    let dev = req.device.open().map_err(|e| e.to_string())?;
    let det = Detector::load(&req.model, &dev).map_err(|e| e.to_string())?;
    let thresholds = Thresholds { accept_below: det.meta.threshold, reject_from: det.meta.review_threshold };
    let pixel_threshold = det.meta.pixel_threshold;
    let mut opts = WatchOptions::new(&req.input, thresholds);
    opts.db = req.db.clone().unwrap_or_else(|| req.input.join(DEFAULT_DB));
    opts.sort = req.sort.clone().map(|dir| Sort { dir, copy: false });
    opts.settle = req.settle;
    opts.poll = req.poll;
    let (mut engine, note) =
        LineEngine::new(det, &req.model, opts).map_err(|e| format!("watching {}: {e}", req.input.display()))?;
    let db = engine.log().path().to_path_buf();
    let _ = tx.send(LineEvent::Started {
        input: engine.options().input.clone(),
        db: db.clone(),
        thresholds,
        model_fingerprint: engine.model_fingerprint().to_string(),
        note,
    });
    ctx.request_repaint();

    // The reader: its own connection (WAL lets it read while the engine writes).
    let finished = Arc::new(AtomicBool::new(false));
    let reader = {
        let (tx, ctx, finished) = (tx.clone(), ctx.clone(), finished.clone());
        std::thread::Builder::new()
            .name("flowspect-line-log".into())
            .spawn(move || reader_thread(&ctx, &tx, &db, &filter, &refresh, &finished))
            .ok()
    };

    let mut on_row = |i: &Inspected| {
        let (picture, thumb) = pictures(i, pixel_threshold);
        let _ = tx.send(LineEvent::Row { row: Box::new(i.row.clone()), picture, thumb });
        ctx.request_repaint();
    };
    let mut on_problem = |e: &flowspect::Error| {
        let _ = tx.send(LineEvent::Problem(format!("{e} (retrying)")));
        ctx.request_repaint();
    };
    let result = engine.run(stop, &mut on_row, &mut on_problem).map_err(|e| e.to_string());
    finished.store(true, Ordering::SeqCst);
    if let Some(r) = reader {
        let _ = r.join();
    }
    result
}

/// Refreshes the table every second (and at once on a filter change), and once more
/// after the engine has stopped.
fn reader_thread(
    ctx: &egui::Context,
    tx: &Sender<LineEvent>,
    db: &std::path::Path,
    filter: &Mutex<Query>,
    refresh: &AtomicBool,
    finished: &AtomicBool,
) {
    let log = match InspectionLog::open(db) {
        Ok(l) => l,
        Err(e) => {
            let _ = tx.send(LineEvent::Problem(format!("the log table cannot be shown: {e}")));
            return;
        }
    };
    loop {
        let last = finished.load(Ordering::SeqCst);
        refresh.store(false, Ordering::SeqCst);
        let q = filter.lock().map(|q| q.clone()).unwrap_or_default();
        let hour = Query { since_unix_ms: Some(flowspect::line::arrivals::now_unix_ms() - 3_600_000), ..Query::default() };
        match (log.query(&q), log.query(&hour)) {
            (Ok(rows), Ok(h)) => {
                let _ = tx.send(LineEvent::Table { rows, last_hour: LineStats::from_rows(&h) });
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = tx.send(LineEvent::Problem(format!("reading the log: {e}")));
            }
        }
        ctx.request_repaint();
        if last {
            return;
        }
        for _ in 0..10 {
            if refresh.load(Ordering::SeqCst) || finished.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The heatmap overlay (as the reports draw it: jet from 0 to twice the pixel
/// threshold, 45 % opacity) scaled for the large view, and a thumbnail.
fn pictures(i: &Inspected, pixel_threshold: f32) -> (Option<egui::ColorImage>, Option<egui::ColorImage>) {
    let Some(img) = &i.image else { return (None, None) };
    let shown = match &i.map {
        Some(map) if map.len() == (img.width() * img.height()) as usize => {
            image::DynamicImage::ImageRgb8(flowspect::render::overlay(img, map, 2.0 * pixel_threshold, 0.45))
        }
        _ => img.clone(),
    };
    let fit = |side: u32| to_color_image(&shown.thumbnail(side, side));
    (Some(fit(PICTURE_SIDE)), Some(fit(THUMB_SIDE)))
}
