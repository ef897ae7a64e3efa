//! A region-level anomaly score for NF-BMR's map: defects that change the surface
//! finish of a whole band of a part ("uneven" on magnetic tiles) look, patch by
//! patch, like the finish of some good part, so no per-position score finds them
//! (every patch-level score tried stayed at or below 0.73 pixel AUROC there). Averaged
//! over a window of `window x window` feature cells, the band's features are far from
//! every window of the good images.
//!
//! Training: every position's window mean of the standardised features of the good
//! training images, `bank_size` of them sampled at random into a bank. Scoring: the
//! distance of each window mean to its nearest bank row, a `[h, w]` map smoothed like
//! the BMR map. The detector adds it to the BMR map after standardising both with the
//! held-out good images' pixel statistics: `z_bmr + weight * z_region`.
use super::memory::{MemoryBank, local_average};
use crate::error::{Error, Result};
use crate::rng::Rng;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegionConfig {
    /// Window side in feature cells; 0 turns the region score off (what model files
    /// written before it had).
    pub window: usize,
    /// Window means kept from the training images.
    pub bank_size: usize,
    /// Weight of the standardised region map against the standardised BMR map.
    pub weight: f32,
    /// Window centres searched every `stride` cells in each direction (the last row and
    /// column always), the map between them interpolated bilinearly: 1 searches every
    /// cell (model files written before this field), 2 a quarter of them. Neighbouring
    /// windows share all but one row or column of their cells, so their distances
    /// differ little, and the search is most of the region score's time.
    #[serde(default = "exact_stride")]
    pub stride: usize,
}

fn exact_stride() -> usize {
    1
}

impl Default for RegionConfig {
    fn default() -> Self {
        Self::OFF
    }
}

impl RegionConfig {
    pub const OFF: Self = Self { window: 0, bank_size: 0, weight: 0.0, stride: 1 };

    pub fn enabled(&self) -> bool {
        self.window > 0 && self.bank_size > 0
    }

    pub fn check(&self) -> Result<()> {
        if self.enabled() && !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(Error::Config(format!("region weight must be a finite number >= 0, not {}", self.weight)));
        }
        if self.stride == 0 {
            return Err(Error::Config("region stride must be at least 1".into()));
        }
        if self.window.is_multiple_of(2) && self.window > 0 {
            return Err(Error::Config(format!("region window must be odd (centred on its cell), not {}", self.window)));
        }
        Ok(())
    }
}

/// The window means `[B * h * w, C]` of standardised features `[B, h, w, C]`. A window
/// wider than the mirrored border allows (`2 * side - 1`) is narrowed to that.
pub fn window_means(y: &Tensor, window: usize) -> Result<Tensor> {
    let (_, h, w, c) = y.dims4()?;
    let k = window.min(2 * h.min(w) - 1);
    Ok(local_average(y, k)?.reshape(((), c))?)
}

/// The bank: `bank_size` window means sampled without replacement (all of them when
/// there are fewer) from the training images' standardised features `[h, w, C]` each.
pub fn fit_bank(ys: &[Tensor], cfg: &RegionConfig, seed: u64) -> Result<MemoryBank> {
    let mut all = Vec::with_capacity(ys.len());
    for y in ys {
        all.push(window_means(&y.unsqueeze(0)?, cfg.window)?);
    }
    let all = Tensor::cat(&all, 0)?;
    let n = all.dim(0)?;
    let bank = if n <= cfg.bank_size {
        all
    } else {
        let mut idx = Rng::new(seed).permutation(n);
        idx.truncate(cfg.bank_size);
        idx.sort_unstable();
        let idx: Vec<u32> = idx.into_iter().map(|i| i as u32).collect();
        let idx = Tensor::from_vec(idx, cfg.bank_size, all.device())?;
        all.index_select(&idx, 0)?
    };
    MemoryBank::new(bank)
}

/// Region maps `[B, h, w]` of standardised features `[B, h, w, C]`: each window mean's
/// distance to its nearest bank row, searched every `stride` cells and interpolated
/// between (on the CPU; the map is used there).
pub fn region_maps(bank: &MemoryBank, y: &Tensor, window: usize, stride: usize) -> Result<Tensor> {
    let (b, h, w, c) = y.dims4()?;
    let k = window.min(2 * h.min(w) - 1);
    let means = local_average(y, k)?;
    if stride <= 1 {
        return Ok(bank.nearest_distance(&means.reshape(((), c))?)?.reshape((b, h, w))?);
    }
    let (rows, cols) = (grid_points(h, stride), grid_points(w, stride));
    let idx = |v: &[usize]| Tensor::from_vec(v.iter().map(|&i| i as u32).collect::<Vec<u32>>(), v.len(), y.device());
    let sub = means.index_select(&idx(&rows)?, 1)?.index_select(&idx(&cols)?, 2)?;
    let d = bank.nearest_distance(&sub.reshape(((), c))?)?.to_device(&candle_core::Device::Cpu)?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(b * h * w);
    for img in d.chunks(rows.len() * cols.len()) {
        out.extend(interpolate_grid(img, &rows, &cols, h, w));
    }
    Ok(Tensor::from_vec(out, (b, h, w), &candle_core::Device::Cpu)?)
}

/// `0, s, 2s, ...` below `n`, and `n - 1` if that is not among them.
fn grid_points(n: usize, s: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).step_by(s.max(1)).collect();
    if v.last() != Some(&(n - 1)) {
        v.push(n - 1);
    }
    v
}

/// Bilinear interpolation of values at grid points `rows x cols` (row-major) to every
/// cell of `h x w`; the grid includes both ends, so nothing is extrapolated.
fn interpolate_grid(vals: &[f32], rows: &[usize], cols: &[usize], h: usize, w: usize) -> Vec<f32> {
    // (left index, weight of the right one) for every position along an axis.
    let axis = |pts: &[usize], n: usize| -> Vec<(usize, f32)> {
        let mut j = 0;
        (0..n)
            .map(|x| {
                while j + 1 < pts.len() - 1 && pts[j + 1] <= x {
                    j += 1;
                }
                if pts.len() == 1 {
                    return (0, 0.0);
                }
                let (a, b) = (pts[j], pts[j + 1]);
                (j, (x as f32 - a as f32) / (b - a) as f32)
            })
            .collect()
    };
    let (ay, ax) = (axis(rows, h), axis(cols, w));
    let nc = cols.len();
    // Along the columns on the sampled rows, then along the rows.
    let mut across = vec![0f32; rows.len() * w];
    for r in 0..rows.len() {
        for (x, &(j, t)) in ax.iter().enumerate() {
            let v0 = vals[r * nc + j];
            let v1 = if nc > 1 { vals[r * nc + j + 1] } else { v0 };
            across[r * w + x] = v0 + t * (v1 - v0);
        }
    }
    let mut out = vec![0f32; h * w];
    for (y, &(i, t)) in ay.iter().enumerate() {
        for x in 0..w {
            let v0 = across[i * w + x];
            let v1 = if rows.len() > 1 { across[(i + 1) * w + x] } else { v0 };
            out[y * w + x] = v0 + t * (v1 - v0);
        }
    }
    out
}

/// Mean and standard deviation of every value of `maps` (the pixel statistics that
/// standardise a map before fusion).
pub fn pixel_stats<'a>(maps: impl Iterator<Item = &'a [f32]>) -> (f32, f32) {
    let (mut n, mut s1, mut s2) = (0f64, 0f64, 0f64);
    for m in maps {
        for &v in m {
            n += 1.0;
            s1 += v as f64;
            s2 += (v as f64) * (v as f64);
        }
    }
    if n == 0.0 {
        return (0.0, 1.0);
    }
    let mean = s1 / n;
    let sd = (s2 / n - mean * mean).max(0.0).sqrt();
    (mean as f32, (sd as f32).max(1e-6))
}

/// `(local - mean_l) / sd_l + weight * (region - mean_r) / sd_r`, in place in `local`.
pub fn fuse(local: &mut [f32], region: &[f32], local_stats: (f32, f32), region_stats: (f32, f32), weight: f32) {
    let (ml, sl) = local_stats;
    let (mr, sr) = region_stats;
    for (l, r) in local.iter_mut().zip(region) {
        *l = (*l - ml) / sl + weight * (r - mr) / sr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// `[h, w, C]` features: channel 0 is a checkerboard of 0 and 1 (a fine texture)
    /// except in rows `flat`, where it is 1 everywhere; the other channels are small noise.
    fn image(h: usize, w: usize, c: usize, flat: std::ops::Range<usize>, rng: &mut Rng) -> Tensor {
        let mut v = Vec::with_capacity(h * w * c);
        for r in 0..h {
            for col in 0..w {
                v.push(if flat.contains(&r) { 1.0 } else { ((r + col) % 2) as f32 });
                for _ in 1..c {
                    v.push(0.05 * rng.normal() as f32);
                }
            }
        }
        Tensor::from_vec(v, (h, w, c), &Device::Cpu).unwrap()
    }

    #[test]
    fn bank_samples_window_means_and_distances_are_to_the_nearest_one() {
        let dev = Device::Cpu;
        // Window means of a constant image are that constant (mirrored border).
        let y = Tensor::full(3f32, (1, 6, 5, 2), &dev).unwrap();
        let m = window_means(&y, 3).unwrap();
        assert_eq!(m.dims(), &[30, 2]);
        // A window wider than the image is narrowed to what its mirrored border allows.
        let wide = window_means(&Tensor::arange(0f32, 8.0, &dev).unwrap().reshape((1, 2, 2, 2)).unwrap(), 13).unwrap();
        assert_eq!(wide.dims(), &[4, 2]);
        assert!(m.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| (v - 3.0).abs() < 1e-6));
        // Two training images of constants 0 and 1: with room for all, the bank holds
        // every window mean; a query image of 0.25 is 0.25 * sqrt(2) from the nearest.
        let ys: Vec<Tensor> = [0f32, 1.0].iter().map(|&c| Tensor::full(c, (4, 4, 2), &dev).unwrap()).collect();
        let cfg = RegionConfig { window: 3, bank_size: 1000, weight: 1.0, stride: 1 };
        let bank = fit_bank(&ys, &cfg, 1).unwrap();
        assert_eq!(bank.len(), 32);
        let q = Tensor::full(0.25f32, (1, 4, 4, 2), &dev).unwrap();
        let d = region_maps(&bank, &q, 3, 1).unwrap();
        assert_eq!(d.dims(), &[1, 4, 4]);
        for v in d.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            assert!((v - 0.25 * 2f32.sqrt()).abs() < 1e-4, "{v}");
        }
        // A smaller bank is a sample of those rows, the same for the same seed.
        let small = RegionConfig { bank_size: 5, ..cfg };
        let a = fit_bank(&ys, &small, 7).unwrap();
        let b = fit_bank(&ys, &small, 7).unwrap();
        assert_eq!(a.len(), 5);
        let rows = a.bank.to_vec2::<f32>().unwrap();
        assert_eq!(rows, b.bank.to_vec2::<f32>().unwrap());
        assert!(rows.iter().all(|r| r == &[0.0, 0.0] || r == &[1.0, 1.0]), "{rows:?}");
        assert_eq!(a.bank.dtype(), DType::F32);
    }

    #[test]
    fn a_band_of_another_finish_scores_above_the_rest_of_its_image() {
        // Good images are a checkerboard; the defect image has a flat band (rows 6..12)
        // where every cell is 1. Each of its cells also occurs in good images, so a
        // per-position nearest neighbour sees (almost) nothing; the band's window means
        // (1 against about 0.5) are far from every good window.
        let mut rng = Rng::new(3);
        let (h, w, c) = (16, 12, 4);
        let good: Vec<Tensor> = (0..6).map(|_| image(h, w, c, 0..0, &mut rng)).collect();
        let defect = image(h, w, c, 6..12, &mut rng).unsqueeze(0).unwrap();
        let map = |window: usize| -> Vec<Vec<f32>> {
            let bank = fit_bank(&good, &RegionConfig { window, bank_size: 100_000, weight: 1.0, stride: 1 }, 1).unwrap();
            region_maps(&bank, &defect, window, 1).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap()
        };
        let mean = |m: &[Vec<f32>], rows: std::ops::Range<usize>| {
            let n = rows.len() * (w - 4);
            rows.map(|i| m[i][2..w - 2].iter().sum::<f32>()).sum::<f32>() / n as f32
        };
        let region = map(5);
        let (inside, outside) = (mean(&region, 8..10), mean(&region, 14..16));
        assert!(inside > 0.4 && outside < 0.15, "region: inside {inside}, outside {outside}");
        let patch = map(1);
        let (inside, outside) = (mean(&patch, 8..10), mean(&patch, 14..16));
        assert!(inside < 0.15 && outside < 0.15, "per position: inside {inside}, outside {outside}");
    }

    #[test]
    fn strided_search_interpolates_between_searched_centres() {
        // A bank of one row (0): the exact map is each window mean's norm. With stride 2
        // the searched centres keep their exact value, and a map that is linear along an
        // axis (a ramp of constant columns) is reproduced everywhere.
        let dev = Device::Cpu;
        let bank = MemoryBank::new(Tensor::zeros((1, 1), candle_core::DType::F32, &dev).unwrap()).unwrap();
        let (h, w) = (7, 10);
        let ramp: Vec<f32> = (0..h * w).map(|i| (i % w) as f32).collect();
        let y = Tensor::from_vec(ramp, (1, h, w, 1), &dev).unwrap();
        let exact = region_maps(&bank, &y, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let strided = region_maps(&bank, &y, 1, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in exact.iter().zip(&strided) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // On random features with the 13-cell window, searched centres are exact and the
        // interpolated ones stay within the range of their neighbours.
        let mut rng = Rng::new(5);
        let (h, w, c) = (24, 24, 8);
        let good: Vec<Tensor> = (0..4).map(|_| Tensor::from_vec((0..h * w * c).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (h, w, c), &dev).unwrap()).collect();
        let cfg = RegionConfig { window: 13, bank_size: 500, weight: 1.0, stride: 2 };
        let bank = fit_bank(&good, &cfg, 1).unwrap();
        let q = Tensor::from_vec((0..h * w * c).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (1, h, w, c), &dev).unwrap();
        let exact = region_maps(&bank, &q, 13, 1).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let strided = region_maps(&bank, &q, 13, 2).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(grid_points(24, 2), vec![0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 23]);
        for r in (0..h).step_by(2) {
            for col in (0..w).step_by(2) {
                assert!((exact[r][col] - strided[r][col]).abs() < 1e-4);
            }
        }
        // Every interpolated cell is within two neighbour steps of the exact map (the
        // bilinear value lies between its four searched corners, each at most two steps
        // away): a wrong index or weight breaks this at once.
        let mut step = 0f32;
        for r in 0..h {
            for col in 0..w {
                if col + 1 < w {
                    step = step.max((exact[r][col] - exact[r][col + 1]).abs());
                }
                if r + 1 < h {
                    step = step.max((exact[r][col] - exact[r + 1][col]).abs());
                }
            }
        }
        let worst = exact.iter().flatten().zip(strided.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst > 0.0 && worst <= 2.0 * step, "interpolation error {worst}, largest neighbour step {step}");
    }

    #[test]
    fn fusion_standardises_both_maps() {
        let (m, s) = pixel_stats([[1f32, 3.0].as_slice(), [5.0, 7.0].as_slice()].into_iter());
        assert!((m - 4.0).abs() < 1e-6 && (s - 5f32.sqrt()).abs() < 1e-5, "{m} {s}");
        assert_eq!(pixel_stats(std::iter::empty()), (0.0, 1.0));
        let mut local = vec![2.0, 4.0];
        fuse(&mut local, &[10.0, 30.0], (2.0, 2.0), (10.0, 10.0), 2.0);
        assert_eq!(local, vec![0.0, 1.0 + 4.0]);
        assert!(RegionConfig { window: 3, bank_size: 10, weight: -1.0, stride: 1 }.check().is_err());
        assert!(RegionConfig::OFF.check().is_ok() && !RegionConfig::OFF.enabled());
        assert!(RegionConfig { window: 4, bank_size: 10, weight: 1.0, stride: 1 }.check().is_err());
    }
}
