//! Turning images into backbone features: decoding and resizing on a thread pool,
//! the frozen backbone, and the feature tap (one or more stages, brought to the
//! finest tapped resolution and concatenated), returned channels-last `[h, w, C]`.
use crate::backbone::{EfficientNet, config::STAGE_STRIDE};
use crate::data::{image_io, load_image};
use crate::error::{Error, Result};
use crate::progress::{CancelToken, Progress, ProgressSink};
use candle_core::{D, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureTap {
    /// Input side length; images are resized to a square of this size.
    pub image_size: usize,
    /// Backbone stages (1..=7) whose outputs are used.
    pub stages: Vec<usize>,
    /// Reflection padding added around the input, in feature cells of the finest
    /// tapped stage, and cropped off the features again: positions near the border then
    /// see image content instead of the backbone's zero padding.
    #[serde(default)]
    pub reflect_cells: usize,
    /// Stages whose outputs are also pooled over the whole image (per channel mean and
    /// standard deviation) for an image-level score; empty for none.
    #[serde(default)]
    pub global_stages: Vec<usize>,
}

impl FeatureTap {
    /// A tap of `stages` at `image_size` with no border padding and no pooling.
    pub fn new(image_size: usize, stages: Vec<usize>) -> Self {
        Self { image_size, stages, reflect_cells: 0, global_stages: Vec::new() }
    }
    /// The last backbone stage that has to run (tapped or pooled).
    pub fn last_stage(&self) -> Option<usize> {
        self.stages.iter().chain(&self.global_stages).copied().max()
    }
    pub fn stride(&self) -> usize {
        self.stages.iter().map(|&s| STAGE_STRIDE[s - 1]).min().unwrap_or(16)
    }
    pub fn grid(&self) -> usize {
        self.image_size.div_ceil(self.stride())
    }
    /// Reflection padding in input pixels.
    pub fn pad_pixels(&self) -> usize {
        self.reflect_cells * self.stride()
    }
    /// Taps `stages`, widening the border padding where needed so that it stays a whole
    /// number of cells of the coarsest stage (unknown stages are left to the config check).
    pub fn set_stages(&mut self, stages: Vec<usize>) {
        self.stages = stages;
        let strides = self.stages.iter().filter_map(|&s| STAGE_STRIDE.get(s.wrapping_sub(1)).copied());
        let (fine, coarse) = strides.fold((usize::MAX, 0), |(f, c), s| (f.min(s), c.max(s)));
        if coarse > 0 {
            self.reflect_cells = self.reflect_cells.max(coarse / fine);
        }
    }
}

/// Pads `[B, C, H, W]` by `p` on every side, mirroring the image (without repeating
/// the edge pixel).
pub fn reflect_pad(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 0 {
        return Ok(x.clone());
    }
    let (_, _, h, w) = x.dims4()?;
    let p = p.min(h - 1).min(w - 1);
    let idx = |n: usize| -> Vec<u32> {
        (0..n + 2 * p)
            .map(|i| {
                let j = i as isize - p as isize;
                let j = if j < 0 { -j } else if j >= n as isize { 2 * (n as isize - 1) - j } else { j };
                j as u32
            })
            .collect()
    };
    let ih = Tensor::from_vec(idx(h), h + 2 * p, x.device())?;
    let iw = Tensor::from_vec(idx(w), w + 2 * p, x.device())?;
    Ok(x.index_select(&ih, 2)?.index_select(&iw, 3)?)
}

/// An image's features, with its original size.
pub struct ImageFeatures {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// `[h, w, C]`.
    pub features: Tensor,
    /// Per pooled stage (`FeatureTap::global_stages`): `[mean_1..mean_C, sd_1..sd_C]`.
    pub global: Vec<Vec<f32>>,
}

/// `[B, 3, S, S]` -> `[B, h, w, C]` of the tapped stages.
pub fn extract(net: &EfficientNet, tap: &FeatureTap, x: &Tensor) -> Result<Tensor> {
    Ok(extract_full(net, tap, x)?.0)
}

/// The tapped features `[B, h, w, C]` and, per pooled stage, `[B, 2 C]`: each
/// channel's mean and standard deviation over the image (border padding cropped off).
pub fn extract_full(net: &EfficientNet, tap: &FeatureTap, x: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
    let last = tap
        .last_stage()
        .filter(|_| !tap.stages.is_empty())
        .ok_or_else(|| Error::Config("no feature stage chosen".into()))?;
    let x = reflect_pad(x, tap.pad_pixels())?;
    let outs = net.forward_stages(&x, last)?;
    let mut picked: Vec<Tensor> = tap.stages.iter().map(|&s| outs[s - 1].clone()).collect();
    let (h, w) = picked
        .iter()
        .map(|t| (t.dim(2).unwrap_or(0), t.dim(3).unwrap_or(0)))
        .max()
        .unwrap_or((0, 0));
    for t in picked.iter_mut() {
        if t.dim(2)? != h {
            *t = t.upsample_nearest2d(h, w)?;
        }
    }
    let f = if picked.len() == 1 {
        picked.remove(0)
    } else {
        Tensor::cat(&picked, 1)?
    };
    let f = if tap.reflect_cells > 0 {
        let g = tap.grid();
        f.narrow(2, tap.reflect_cells, g)?.narrow(3, tap.reflect_cells, g)?
    } else {
        f
    };
    let mut pooled = Vec::with_capacity(tap.global_stages.len());
    for &s in &tap.global_stages {
        let t = &outs[s - 1];
        let (_, _, th, tw) = t.dims4()?;
        let cut = tap.pad_pixels() / STAGE_STRIDE[s - 1];
        let t = if cut > 0 && th > 2 * cut && tw > 2 * cut {
            t.narrow(2, cut, th - 2 * cut)?.narrow(3, cut, tw - 2 * cut)?
        } else {
            t.clone()
        };
        let t = t.flatten_from(2)?; // [B, C, n]
        let mean = t.mean_keepdim(2)?;
        let sd = t.broadcast_sub(&mean)?.sqr()?.mean(2)?.sqrt()?;
        pooled.push(Tensor::cat(&[mean.squeeze(2)?, sd], 1)?);
    }
    Ok((f.permute((0, 2, 3, 1))?.contiguous()?, pooled))
}

/// Seconds between consecutive instants (the stage times of `timed_stages`).
pub fn intervals(t: [std::time::Instant; 5]) -> [f64; 4] {
    std::array::from_fn(|i| (t[i + 1] - t[i]).as_secs_f64())
}

/// Images per forward pass on `device`. On the CPU one image at a time is faster per
/// image than a batch (`flowspect bench`, 512 px: BMR 38 ms at batch 1 against 90 ms
/// at batch 8): a single image's activations stay in the caches. A GPU wants batches.
pub fn forward_batch(device: &Device) -> usize {
    if device.is_cpu() { 1 } else { 8 }
}

/// Decodes and resizes `batch` images at a time on the thread pool and runs the
/// backbone over them ([`forward_batch`] images per forward pass). Files that cannot
/// be read are reported through `progress` and skipped; the rest are returned.
pub fn extract_paths(
    net: &EfficientNet,
    tap: &FeatureTap,
    paths: &[PathBuf],
    batch: usize,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<(Vec<ImageFeatures>, Vec<(PathBuf, String)>)> {
    let norm = net.config().normalization;
    let mut out = Vec::with_capacity(paths.len());
    let mut skipped = Vec::new();
    let mut done = 0;
    for chunk in paths.chunks(batch.max(1)) {
        cancel.check()?;
        let decoded: Vec<(PathBuf, Result<(u32, u32, Vec<f32>)>)> = chunk
            .par_iter()
            .map(|p| {
                let r = load_image(p).map(|img| {
                    (img.width(), img.height(), image_io::to_input(&img, tap.image_size, &norm))
                });
                (p.clone(), r)
            })
            .collect();
        let mut ok = Vec::new();
        for (p, r) in decoded {
            match r {
                Ok(v) => ok.push((p, v)),
                Err(e) => {
                    progress.report(Progress::Skipped { message: e.to_string() });
                    skipped.push((p, e.to_string()));
                }
            }
        }
        out.extend(extract_prepared(net, tap, &ok)?);
        done += chunk.len();
        progress.report(Progress::Step { done });
    }
    Ok((out, skipped))
}

/// Features of images already decoded (line mode reads, hashes and decodes each file
/// once): the same resize, normalisation and forward passes as [`extract_paths`].
pub fn extract_images(net: &EfficientNet, tap: &FeatureTap, images: &[(PathBuf, image::DynamicImage)]) -> Result<Vec<ImageFeatures>> {
    let norm = net.config().normalization;
    let prepared: Vec<(PathBuf, (u32, u32, Vec<f32>))> = images
        .par_iter()
        .map(|(p, img)| (p.clone(), (img.width(), img.height(), image_io::to_input(img, tap.image_size, &norm))))
        .collect();
    extract_prepared(net, tap, &prepared)
}

fn extract_prepared(net: &EfficientNet, tap: &FeatureTap, ok: &[(PathBuf, (u32, u32, Vec<f32>))]) -> Result<Vec<ImageFeatures>> {
    let mut out = Vec::with_capacity(ok.len());
    for group in ok.chunks(forward_batch(net.device())) {
        let inputs: Vec<&[f32]> = group.iter().map(|(_, v)| v.2.as_slice()).collect();
        let x = image_io::batch_tensor(&inputs, tap.image_size, net.device())?;
        let (f, pooled) = extract_full(net, tap, &x)?;
        let pooled: Vec<Vec<Vec<f32>>> = pooled.iter().map(|t| t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()).collect::<candle_core::Result<_>>()?;
        for (i, (p, (w, h, _))) in group.iter().enumerate() {
            out.push(ImageFeatures {
                path: p.clone(),
                width: *w,
                height: *h,
                features: f.get(i)?,
                global: pooled.iter().map(|st| st[i].clone()).collect(),
            });
        }
    }
    Ok(out)
}

/// Features of the training images: unreadable files are skipped (and reported);
/// fewer than two readable images is an error.
pub fn extract_training(
    net: &EfficientNet,
    tap: &FeatureTap,
    files: &[PathBuf],
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<(Vec<ImageFeatures>, Vec<(PathBuf, String)>)> {
    if files.is_empty() {
        return Err(Error::Data("no training images".into()));
    }
    progress.report(Progress::Stage { name: "features".into(), total: files.len() });
    let (feats, skipped) = extract_paths(net, tap, files, 8, progress, cancel)?;
    if feats.len() < 2 {
        return Err(Error::Data(format!(
            "only {} readable training image(s) of {}; at least 2 are needed",
            feats.len(),
            files.len()
        )));
    }
    Ok((feats, skipped))
}

/// Splits off `fraction` of the images (every k-th, deterministic) for early stopping
/// and calibration: `(train, held_out)`. At least one image stays for training.
pub fn hold_out(feats: &[ImageFeatures], fraction: f64) -> (Vec<&ImageFeatures>, Vec<&ImageFeatures>) {
    let n_val = ((feats.len() as f64 * fraction).round() as usize).min(feats.len().saturating_sub(1));
    let every = if n_val > 0 { feats.len() / n_val } else { usize::MAX };
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (i, f) in feats.iter().enumerate() {
        if n_val > 0 && i % every == every - 1 && va.len() < n_val {
            va.push(f)
        } else {
            tr.push(f)
        }
    }
    (tr, va)
}

/// The records (path, SHA-256) of the held-out images, for the training report; a file
/// gone since its features were read is left out.
pub fn held_out_records(va: &[&ImageFeatures]) -> Vec<super::scoring::FileRecord> {
    va.iter().filter_map(|f| super::scoring::FileRecord::of(&f.path).ok()).collect()
}

/// Per-channel mean and standard deviation of `[h, w, C]` feature maps.
pub fn channel_stats(feats: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let c = feats.first().map(|t| t.dim(D::Minus1)).transpose()?.unwrap_or(0);
    let flat: Vec<Tensor> = feats.iter().map(|t| t.reshape(((), c))).collect::<candle_core::Result<_>>()?;
    let all = Tensor::cat(&flat, 0)?;
    let mean = all.mean(0)?;
    let var = all.broadcast_sub(&mean)?.sqr()?.mean(0)?;
    Ok((mean, (var + 1e-6)?.sqrt()?))
}

pub fn display(p: &Path) -> String {
    p.display().to_string()
}
