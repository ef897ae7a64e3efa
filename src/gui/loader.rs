//! Image decoding off the UI thread: thumbnails for the grid (only those on screen are
//! queued, newest request first, so scrolling through thousands stays smooth) and the
//! full-size view of the selected image with its ground-truth mask.
use crossbeam_channel::{Receiver, Sender, unbounded};
use egui::ColorImage;
use flowspect::data::{load_image, load_mask};
use image::DynamicImage;
use image::imageops::FilterType;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

pub const THUMB_SIDE: u32 = 112;
/// Longest side of the review image (larger images are shown downscaled).
pub const VIEW_SIDE: u32 = 1024;

pub struct FullRequest {
    pub index: usize,
    pub path: PathBuf,
    pub mask: Option<PathBuf>,
}

pub enum Loaded {
    Thumb { index: usize, image: ColorImage },
    Full {
        index: usize,
        image: ColorImage,
        /// Ground-truth mask at the view size, when the image has one and it reads.
        mask: Option<Vec<bool>>,
        /// Why the mask could not be read.
        mask_error: Option<String>,
    },
    Failed { index: usize, full: bool, message: String },
}

#[derive(Default)]
struct Queue {
    full: Option<FullRequest>,
    thumbs: Vec<(usize, PathBuf)>,
    stop: bool,
}

pub struct Loader {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    pub rx: Receiver<Loaded>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Loader {
    pub fn spawn(ctx: egui::Context, threads: usize) -> Self {
        let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let (tx, rx) = unbounded();
        let threads = (0..threads.max(1))
            .filter_map(|i| {
                let (q, tx, ctx) = (queue.clone(), tx.clone(), ctx.clone());
                std::thread::Builder::new()
                    .name(format!("flowspect-loader-{i}"))
                    .spawn(move || work(q, tx, ctx))
                    .ok()
            })
            .collect();
        Self { queue, rx, threads }
    }

    /// Replaces the queued thumbnails with these (the ones on screen now).
    pub fn want_thumbs(&self, wanted: Vec<(usize, PathBuf)>) {
        if let Ok(mut q) = self.queue.0.lock() {
            q.thumbs = wanted;
            self.queue.1.notify_all();
        }
    }

    pub fn want_full(&self, r: FullRequest) {
        if let Ok(mut q) = self.queue.0.lock() {
            q.full = Some(r);
            self.queue.1.notify_all();
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Ok(mut q) = self.queue.0.lock() {
            q.stop = true;
            self.queue.1.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Job {
    Thumb(usize, PathBuf),
    Full(FullRequest),
}

fn work(queue: Arc<(Mutex<Queue>, Condvar)>, tx: Sender<Loaded>, ctx: egui::Context) {
    loop {
        let job = {
            let Ok(mut q) = queue.0.lock() else { return };
            loop {
                if q.stop {
                    return;
                }
                if let Some(f) = q.full.take() {
                    break Job::Full(f);
                }
                if let Some((i, p)) = q.thumbs.pop() {
                    break Job::Thumb(i, p);
                }
                q = match queue.1.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        let msg = match job {
            Job::Thumb(index, path) => match load_image(&path) {
                Ok(img) => Loaded::Thumb { index, image: to_color_image(&img.thumbnail(THUMB_SIDE, THUMB_SIDE)) },
                Err(e) => Loaded::Failed { index, full: false, message: e.to_string() },
            },
            Job::Full(r) => load_full(r),
        };
        if tx.send(msg).is_err() {
            return;
        }
        ctx.request_repaint();
    }
}

fn load_full(r: FullRequest) -> Loaded {
    let img = match load_image(&r.path) {
        Ok(i) => i,
        Err(e) => return Loaded::Failed { index: r.index, full: true, message: e.to_string() },
    };
    let (w, h) = (img.width(), img.height());
    let view = if w.max(h) > VIEW_SIDE { img.resize(VIEW_SIDE, VIEW_SIDE, FilterType::Triangle) } else { img };
    let (vw, vh) = (view.width(), view.height());
    let (mut mask, mut mask_error) = (None, None);
    if let Some(m) = &r.mask {
        match load_mask(m, w, h) {
            Ok(m) => {
                let m = image::imageops::resize(&m, vw, vh, FilterType::Nearest);
                mask = Some(m.pixels().map(|p| p.0[0] > 127).collect());
            }
            Err(e) => mask_error = Some(e.to_string()),
        }
    }
    Loaded::Full { index: r.index, image: to_color_image(&view), mask, mask_error }
}

pub fn to_color_image(img: &DynamicImage) -> ColorImage {
    let rgba = img.to_rgba8();
    ColorImage::from_rgba_unmultiplied([rgba.width() as usize, rgba.height() as usize], rgba.as_raw())
}
