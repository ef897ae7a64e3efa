//! Memory-bank tools for MemFlowNet: noise-insensitive local averaging of patch
//! features, greedy k-center coreset subsampling, and nearest-neighbour search as
//! batched matrix products on the tensors' device.
use crate::error::Result;
use crate::models::features::reflect_pad;
use crate::progress::{CancelToken, Progress, ProgressSink};
use crate::rng::Rng;
use candle_core::{D, DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Averages each position of `[B, h, w, C]` features over its `k x k` neighbourhood
/// (PatchCore's local aggregation; the image border is mirrored). `k <= 1` is a no-op.
pub fn local_average(f: &Tensor, k: usize) -> Result<Tensor> {
    if k <= 1 {
        return Ok(f.clone());
    }
    let (b, h, w, c) = f.dims4()?;
    // On the CPU: a separable running-sum box filter, O(1) per value whatever `k`
    // (candle's average pooling visits all k * k cells of every window: 60-90 ms per
    // 512 px image for the 13-cell region window). Same mirrored border, same result to
    // float rounding (tested against the pooling path below).
    if f.device().is_cpu() && k / 2 <= h.min(w) - 1 {
        let v = f.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let out = box_filter_reflect(&v, b, h, w, c, k);
        return Ok(Tensor::from_vec(out, (b, h, w, c), f.device())?.to_dtype(f.dtype())?);
    }
    let x = f.permute((0, 3, 1, 2))?.contiguous()?;
    let x = reflect_pad(&x, k / 2)?;
    let x = x.avg_pool2d_with_stride((k, k), (1, 1))?;
    Ok(x.permute((0, 2, 3, 1))?.contiguous()?)
}

/// Mirrored index (without repeating the edge) of `j` in `0..n`, for `|j| < n`.
fn mirror(j: isize, n: usize) -> usize {
    let n = n as isize;
    (if j < 0 {
        -j
    } else if j >= n {
        2 * (n - 1) - j
    } else {
        j
    }) as usize
}

/// The `k x k` mean of `[b, h, w, c]` values (row-major, channels last) at every
/// position, the border mirrored as `reflect_pad` does; needs `k / 2 <= min(h, w) - 1`.
/// Two running-sum passes (along rows, then columns), each O(1) per value.
fn box_filter_reflect(v: &[f32], b: usize, h: usize, w: usize, c: usize, k: usize) -> Vec<f32> {
    debug_assert_eq!(v.len(), b * h * w * c);
    let p = (k / 2) as isize;
    let mut rows = vec![0f32; v.len()];
    // Along each row: out[x] = sum over dx in -p..=p of in[mirror(x + dx)].
    rows.par_chunks_mut(w * c).zip(v.par_chunks(w * c)).for_each(|(out, row)| {
        let mut acc = vec![0f32; c];
        for dx in -p..=p {
            let src = &row[mirror(dx, w) * c..][..c];
            acc.iter_mut().zip(src).for_each(|(a, s)| *a += s);
        }
        out[..c].copy_from_slice(&acc);
        for x in 1..w as isize {
            let (add, sub) = (mirror(x + p, w) * c, mirror(x - 1 - p, w) * c);
            for ch in 0..c {
                acc[ch] += row[add + ch] - row[sub + ch];
            }
            out[x as usize * c..][..c].copy_from_slice(&acc);
        }
    });
    // Along each column, per image, scaled to the mean.
    let scale = 1.0 / (k * k) as f32;
    let mut out = vec![0f32; v.len()];
    let plane = h * w * c;
    let line = w * c;
    out.par_chunks_mut(plane).zip(rows.par_chunks(plane)).for_each(|(out, img)| {
        let mut acc = vec![0f32; line];
        for dy in -p..=p {
            let src = &img[mirror(dy, h) * line..][..line];
            acc.iter_mut().zip(src).for_each(|(a, s)| *a += s);
        }
        out[..line].iter_mut().zip(&acc).for_each(|(o, a)| *o = a * scale);
        for y in 1..h as isize {
            let (add, sub) = (mirror(y + p, h) * line, mirror(y - 1 - p, h) * line);
            for i in 0..line {
                acc[i] += img[add + i] - img[sub + i];
            }
            out[y as usize * line..][..line].iter_mut().zip(&acc).for_each(|(o, a)| *o = a * scale);
        }
    });
    out
}

/// Greedy k-center selection (Sener & Savarese 2018, as PatchCore uses it): starting
/// from row `start`, repeatedly adds the row of `x` (`n x d`, row-major) farthest from
/// everything picked so far, until `k` rows are picked. Returns their indices in the
/// order picked. When `d > proj_dim > 0`, distances are measured after a fixed Gaussian
/// random projection to `proj_dim` dimensions (Johnson-Lindenstrauss; PatchCore does the
/// same to make the selection affordable); `proj_dim = 0` uses the full vectors.
#[allow(clippy::too_many_arguments)]
pub fn greedy_coreset(
    x: &[f32],
    n: usize,
    d: usize,
    k: usize,
    start: usize,
    proj_dim: usize,
    seed: u64,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<Vec<usize>> {
    let k = k.min(n);
    if k == 0 {
        return Ok(Vec::new());
    }
    let (p, dp) = if proj_dim > 0 && d > proj_dim {
        let mut rng = Rng::new(seed);
        let scale = 1.0 / (proj_dim as f32).sqrt();
        let r: Vec<f32> = (0..d * proj_dim).map(|_| rng.normal() as f32 * scale).collect();
        let xt = Tensor::from_slice(x, (n, d), &Device::Cpu)?;
        let rt = Tensor::from_vec(r, (d, proj_dim), &Device::Cpu)?;
        (xt.matmul(&rt)?.flatten_all()?.to_vec1::<f32>()?, proj_dim)
    } else {
        (x.to_vec(), d)
    };
    const ROWS: usize = 4096;
    let mut mind = vec![f32::INFINITY; n];
    let mut picked = Vec::with_capacity(k);
    let mut cur = start.min(n - 1);
    progress.report(Progress::Stage { name: "coreset".into(), total: k });
    for it in 0..k {
        if it % 64 == 0 {
            cancel.check()?;
            progress.report(Progress::Step { done: it });
        }
        picked.push(cur);
        if it + 1 == k {
            break;
        }
        let c = &p[cur * dp..(cur + 1) * dp];
        // Update each row's distance to the picked set and find the farthest row.
        let (best, _) = mind
            .par_chunks_mut(ROWS)
            .enumerate()
            .map(|(b, m)| {
                let mut best = (usize::MAX, f32::NEG_INFINITY);
                for (j, mj) in m.iter_mut().enumerate() {
                    let i = b * ROWS + j;
                    let row = &p[i * dp..(i + 1) * dp];
                    let mut s = 0f32;
                    for (a, q) in row.iter().zip(c) {
                        let t = a - q;
                        s += t * t;
                    }
                    if s < *mj {
                        *mj = s;
                    }
                    if *mj > best.1 {
                        best = (i, *mj);
                    }
                }
                best
            })
            .reduce(|| (usize::MAX, f32::NEG_INFINITY), |a, b| if b.1 > a.1 || (b.1 == a.1 && b.0 < a.0) { b } else { a });
        if best == usize::MAX {
            break;
        }
        cur = best;
    }
    progress.report(Progress::Step { done: picked.len() });
    Ok(picked)
}

/// What training the memory bank did (in the training report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BankReport {
    pub patches: usize,
    pub rows: usize,
    pub dim: usize,
    pub megabytes: f64,
    pub coreset_seconds: f64,
}

/// `[B, h, w, C]` features as a bank holds them: standardised with `mean` and `std`, then
/// averaged over their `k x k` neighbourhood. Training patches and queries both go
/// through it.
pub fn patch_features(f: &Tensor, mean: &Tensor, std: &Tensor, k: usize) -> Result<Tensor> {
    local_average(&f.broadcast_sub(mean)?.broadcast_div(std)?, k)
}

/// How a memory bank is built from training patches.
#[derive(Debug, Clone)]
pub struct BankConfig {
    /// Side of the local averaging window (1 = none).
    pub neighbourhood: usize,
    /// Fraction of the training patches kept.
    pub coreset_ratio: f64,
    /// Upper bound on the bank's rows, whatever the ratio.
    pub max_bank: usize,
    /// Dimensions of the random projection the coreset is selected on (0 = none).
    pub projection: usize,
    /// Standardise each channel with the training patches' mean and spread first.
    pub standardise: bool,
    pub seed: u64,
}

/// A bank with the per-channel statistics its queries are standardised with (zeros and
/// ones when the bank is not standardised).
pub struct TrainedBank {
    pub bank: MemoryBank,
    pub mean: Tensor,
    pub std: Tensor,
}

/// Builds a memory bank from per-image patch features `[h, w, C]`: optional per-channel
/// standardisation, local averaging, greedy k-center coreset on a random projection.
pub fn build_bank(
    raw: Vec<Tensor>,
    cfg: &BankConfig,
    device: &Device,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<(TrainedBank, BankReport)> {
    let first = raw.first().ok_or_else(|| crate::error::Error::Data("no training images for the memory bank".into()))?;
    let c = first.dim(D::Minus1)?;
    let (bm, bs) = if cfg.standardise {
        crate::models::features::channel_stats(&raw.iter().collect::<Vec<_>>())?
    } else {
        (Tensor::zeros(c, DType::F32, first.device())?, Tensor::ones(c, DType::F32, first.device())?)
    };
    let mut patches = Vec::with_capacity(raw.len());
    for chunk in raw.chunks(16) {
        cancel.check()?;
        let b = patch_features(&Tensor::stack(chunk, 0)?, &bm, &bs, cfg.neighbourhood)?;
        patches.push(b.reshape(((), c))?.to_device(&Device::Cpu)?);
    }
    drop(raw);
    let all = Tensor::cat(&patches, 0)?;
    drop(patches);
    let (n, dim) = all.dims2()?;
    let k = ((n as f64 * cfg.coreset_ratio).ceil() as usize).clamp(1, cfg.max_bank.max(1)).min(n);
    let tc = std::time::Instant::now();
    let flat = all.flatten_all()?.to_vec1::<f32>()?;
    let picked = greedy_coreset(&flat, n, dim, k, 0, cfg.projection, cfg.seed, progress, cancel)?;
    drop(flat);
    let idx = Tensor::from_vec(picked.iter().map(|&i| i as u32).collect::<Vec<_>>(), picked.len(), &Device::Cpu)?;
    let bank = MemoryBank::new(all.index_select(&idx, 0)?.to_device(device)?)?;
    let report = BankReport {
        patches: n,
        rows: bank.len(),
        dim,
        megabytes: bank.bytes() as f64 / (1024.0 * 1024.0),
        coreset_seconds: tc.elapsed().as_secs_f64(),
    };
    progress.report(Progress::Info(format!(
        "memory bank: {} of {n} patches ({:.1} MB) in {:.1} s",
        report.rows, report.megabytes, report.coreset_seconds
    )));
    Ok((TrainedBank { bank, mean: bm.to_device(device)?, std: bs.to_device(device)? }, report))
}

impl TrainedBank {
    /// The bank and its statistics as model-file tensors (`memory.bank`, `.mean`, `.std`).
    pub fn tensors(bank: &MemoryBank, mean: &Tensor, std: &Tensor) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![
            ("memory.bank".to_string(), bank.bank.to_device(&Device::Cpu)?),
            ("memory.mean".to_string(), mean.to_device(&Device::Cpu)?),
            ("memory.std".to_string(), std.to_device(&Device::Cpu)?),
        ])
    }

    /// The bank stored in a model file, refused unless its rows have `dim` values.
    pub fn load(st: &crate::models::StoredTensors, dim: usize) -> Result<Self> {
        let bank = st.get("memory.bank")?;
        if !matches!(bank.dims(), &[_, d] if d == dim) {
            return Err(st.bad(format!("memory bank has shape {:?}, expected [rows, {dim}]", bank.dims())));
        }
        Ok(Self { bank: MemoryBank::new(bank)?, mean: st.get("memory.mean")?, std: st.get("memory.std")? })
    }
}

/// Indices of up to `k` rows of `cand` `[M, D]`, picked farthest-first against the bank
/// and the rows already picked (the greedy k-center rule of the coreset, continued from
/// the bank): the candidates the bank covers worst, in the order they were picked.
/// Teaching good images adds these rows to a bank.
pub fn farthest_from_bank(bank: &MemoryBank, cand: &Tensor, k: usize, cancel: &CancelToken) -> Result<Vec<usize>> {
    let cand = cand.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.contiguous()?;
    let (m, d) = cand.dims2()?;
    let k = k.min(m);
    if k == 0 {
        return Ok(Vec::new());
    }
    let on_bank = bank.nearest_distance(&cand.to_device(bank.bank.device())?)?;
    let mut min_d: Vec<f32> = on_bank.to_device(&Device::Cpu)?.to_vec1::<f32>()?.into_iter().map(|v| v * v).collect();
    let x = cand.flatten_all()?.to_vec1::<f32>()?;
    let mut picked = Vec::with_capacity(k);
    for step in 0..k {
        if step % 64 == 0 {
            cancel.check()?;
        }
        let (best, &far) = min_d
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .ok_or_else(|| crate::error::Error::Data("no candidate rows".into()))?;
        if !(far > 0.0) {
            break;
        }
        picked.push(best);
        let row = &x[best * d..(best + 1) * d];
        min_d.par_iter_mut().enumerate().for_each(|(j, md)| {
            let other = &x[j * d..(j + 1) * d];
            let dist: f32 = row.iter().zip(other).map(|(a, b)| (a - b) * (a - b)).sum();
            if dist < *md {
                *md = dist;
            }
        });
    }
    Ok(picked)
}

/// Adds good images' patches to a bank (teach): each image's raw features `[h, w, C]`
/// go through [`patch_features`] as training patches did, and the `ratio` of them
/// (the training coreset's ratio, at least one per image) that the bank covers worst
/// join it, farthest first. Returns how many rows were added.
pub fn teach_bank(bank: &mut MemoryBank, raw: &[&Tensor], mean: &Tensor, std: &Tensor, k: usize, ratio: f64, cancel: &CancelToken) -> Result<usize> {
    if raw.is_empty() {
        return Ok(0);
    }
    let mut rows = Vec::with_capacity(raw.len());
    for chunk in raw.chunks(16) {
        cancel.check()?;
        let b = patch_features(&Tensor::stack(chunk, 0)?, mean, std, k)?;
        let c = b.dim(D::Minus1)?;
        rows.push(b.reshape(((), c))?);
    }
    let cand = Tensor::cat(&rows, 0)?;
    let m = cand.dim(0)?;
    let want = ((m as f64 * ratio).ceil() as usize).max(raw.len()).min(m);
    bank.extend_farthest(&cand, want, cancel)
}

/// A bank of vectors `[K, D]` with their squared norms, searched by nearest neighbour.
pub struct MemoryBank {
    pub bank: Tensor,
    sq: Tensor,
}

/// Bank rows and query rows compared at once: the distance block is at most
/// `QUERY_BLOCK x BANK_BLOCK` floats (32 MiB).
const BANK_BLOCK: usize = 8192;
const QUERY_BLOCK: usize = 1024;

impl MemoryBank {
    pub fn new(bank: Tensor) -> Result<Self> {
        let bank = bank.to_dtype(DType::F32)?.contiguous()?;
        // An empty bank (an untrained model) gets its squared norms made directly: CUDA
        // reductions over a zero-row tensor divide by zero inside candle.
        let sq = if bank.dim(0)? == 0 {
            Tensor::zeros((1, 0), DType::F32, bank.device())?
        } else {
            bank.sqr()?.sum(D::Minus1)?.unsqueeze(0)?
        };
        Ok(Self { bank, sq })
    }

    /// Adds `rows` `[R, D]` at the end of the bank.
    pub fn append(&mut self, rows: &Tensor) -> Result<()> {
        if rows.dim(0)? == 0 {
            return Ok(());
        }
        let rows = rows.to_dtype(DType::F32)?.to_device(self.bank.device())?;
        *self = Self::new(Tensor::cat(&[&self.bank, &rows], 0)?)?;
        Ok(())
    }

    /// The rows of `cand` `[M, D]` that [`farthest_from_bank`] picks (at most `k`),
    /// appended; returns how many were added.
    pub fn extend_farthest(&mut self, cand: &Tensor, k: usize, cancel: &CancelToken) -> Result<usize> {
        let idx = farthest_from_bank(self, cand, k, cancel)?;
        if idx.is_empty() {
            return Ok(0);
        }
        let n = idx.len();
        let idx = Tensor::from_vec(idx.into_iter().map(|i| i as u32).collect::<Vec<_>>(), n, cand.device())?;
        self.append(&cand.index_select(&idx, 0)?)?;
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.bank.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the bank in bytes.
    pub fn bytes(&self) -> usize {
        self.bank.elem_count() * 4
    }

    /// `[n, h, w, C]` raw patch features -> `[n, h, w]` distance of each (standardised and
    /// locally averaged as [`patch_features`]) to its nearest bank row, on the CPU.
    pub fn patch_distances(&self, f: &Tensor, mean: &Tensor, std: &Tensor, k: usize) -> Result<Tensor> {
        Ok(self.patch_search(f, mean, std, k)?.1)
    }

    /// [`Self::patch_distances`] with the queries it searched for: `[n * h * w, C]`
    /// patches as a bank holds them ([`patch_features`]), and their distances.
    pub fn patch_search(&self, f: &Tensor, mean: &Tensor, std: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
        let b = patch_features(f, mean, std, k)?;
        let (n, h, w, c) = b.dims4()?;
        let q = b.reshape((n * h * w, c))?;
        let dist = self.nearest_distance(&q)?.reshape((n, h, w))?;
        Ok((q, dist.to_device(&Device::Cpu)?))
    }

    /// Euclidean distance of each query row `[M, D]` to its nearest bank row: `[M]`,
    /// from `|q|^2 + min_b(|b|^2 - 2 q.b)`, one matrix product per block of queries and
    /// bank rows (blocks bound the temporaries: a whole batch of 512 px images against a
    /// full bank would be hundreds of MB per intermediate).
    pub fn nearest_distance(&self, q: &Tensor) -> Result<Tensor> {
        let q = q.to_dtype(DType::F32)?.contiguous()?;
        let m = q.dim(0)?;
        let k = self.len();
        if k == 0 {
            return Ok(Tensor::full(f32::INFINITY, m, q.device())?);
        }
        let mut parts = Vec::with_capacity(m.div_ceil(QUERY_BLOCK));
        let mut qs = 0;
        while qs < m {
            let qb = q.narrow(0, qs, QUERY_BLOCK.min(m - qs))?;
            let qsq = qb.sqr()?.sum(D::Minus1)?;
            let qm2 = qb.affine(-2.0, 0.0)?;
            let mut best: Option<Tensor> = None;
            let mut start = 0;
            while start < k {
                let len = BANK_BLOCK.min(k - start);
                let b = self.bank.narrow(0, start, len)?;
                let bsq = self.sq.narrow(1, start, len)?;
                let d = qm2.matmul(&b.t()?)?.broadcast_add(&bsq)?.min(D::Minus1)?;
                best = Some(match best {
                    None => d,
                    Some(prev) => prev.minimum(&d)?,
                });
                start += len;
            }
            if let Some(b) = best {
                parts.push((b + qsq)?);
            }
            qs += QUERY_BLOCK;
        }
        Ok(Tensor::cat(&parts, 0)?.relu()?.sqrt()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn brute_greedy(x: &[f32], n: usize, d: usize, k: usize, start: usize) -> Vec<usize> {
        let dist = |a: usize, b: usize| -> f32 { (0..d).map(|j| (x[a * d + j] - x[b * d + j]).powi(2)).sum() };
        let mut picked = vec![start];
        while picked.len() < k {
            let far = (0..n)
                .max_by(|&a, &b| {
                    let da = picked.iter().map(|&p| dist(a, p)).fold(f32::INFINITY, f32::min);
                    let db = picked.iter().map(|&p| dist(b, p)).fold(f32::INFINITY, f32::min);
                    da.total_cmp(&db).then(b.cmp(&a))
                })
                .unwrap();
            picked.push(far);
        }
        picked
    }

    #[test]
    fn teaching_a_bank_adds_the_rows_it_covers_worst() {
        // A bank of the points 0..5 on a line; candidates at 2 (already covered), 20, 9
        // and 19.5: the farthest-first rule takes 20, then 9 (19.5 is covered by 20), and
        // never a row the bank already holds.
        let row = |x: f32| vec![x, 0.0];
        let bank: Vec<f32> = (0..5).flat_map(|i| row(i as f32)).collect();
        let mut b = MemoryBank::new(Tensor::from_vec(bank, (5, 2), &Device::Cpu).unwrap()).unwrap();
        let cand: Vec<f32> = [2.0, 20.0, 9.0, 19.5].into_iter().flat_map(row).collect();
        let cand = Tensor::from_vec(cand, (4, 2), &Device::Cpu).unwrap();
        let cancel = CancelToken::new();
        assert_eq!(farthest_from_bank(&b, &cand, 2, &cancel).unwrap(), vec![1, 2]);
        assert_eq!(b.extend_farthest(&cand, 10, &cancel).unwrap(), 3, "all but the covered row");
        assert_eq!(b.len(), 8);
        let d = b.nearest_distance(&cand).unwrap().to_vec1::<f32>().unwrap();
        assert!(d.iter().all(|v| *v < 1e-3), "every candidate is in the bank now: {d:?}");
    }

    #[test]
    fn coreset_keeps_the_farthest_points() {
        // 200 points in a small cluster around the origin and 4 far outliers: a
        // coreset of 5 starting inside the cluster picks every outlier, farthest first.
        let mut rng = Rng::new(1);
        let d = 6;
        let mut x: Vec<f32> = (0..200 * d).map(|_| rng.normal() as f32 * 0.1).collect();
        let outliers = [(50.0f32, 0usize), (-40.0, 1), (30.0, 2), (20.0, 3)];
        for (v, axis) in outliers {
            let mut p = vec![0f32; d];
            p[axis] = v;
            x.extend(p);
        }
        let n = 204;
        let picked = greedy_coreset(&x, n, d, 5, 0, 0, 0, &NoProgress, &CancelToken::new()).unwrap();
        assert_eq!(picked[0], 0);
        assert_eq!(&picked[1..], &[200, 201, 202, 203], "outliers, farthest first");
        // Equal to a direct implementation of the greedy rule on random data.
        let x: Vec<f32> = (0..150 * d).map(|_| rng.normal() as f32).collect();
        let fast = greedy_coreset(&x, 150, d, 20, 7, 0, 0, &NoProgress, &CancelToken::new()).unwrap();
        assert_eq!(fast, brute_greedy(&x, 150, d, 20, 7));
    }

    #[test]
    fn projected_coreset_still_covers_the_outliers() {
        let mut rng = Rng::new(2);
        let d = 64;
        let mut x: Vec<f32> = (0..500 * d).map(|_| rng.normal() as f32 * 0.1).collect();
        for axis in 0..3 {
            let mut p = vec![0f32; d];
            p[axis * 10] = 40.0 + axis as f32;
            x.extend(p);
        }
        let picked = greedy_coreset(&x, 503, d, 4, 0, 16, 9, &NoProgress, &CancelToken::new()).unwrap();
        let mut tail = picked[1..].to_vec();
        tail.sort();
        assert_eq!(tail, vec![500, 501, 502]);
    }

    #[test]
    fn nearest_neighbour_equals_brute_force() {
        let mut rng = Rng::new(3);
        // Both the bank and the queries span more than one block.
        let (k, m, d) = (BANK_BLOCK + 777, QUERY_BLOCK + 37, 12);
        let bank: Vec<f32> = (0..k * d).map(|_| rng.normal() as f32).collect();
        let q: Vec<f32> = (0..m * d).map(|_| rng.normal() as f32).collect();
        let mb = MemoryBank::new(Tensor::from_slice(&bank, (k, d), &Device::Cpu).unwrap()).unwrap();
        let got = mb
            .nearest_distance(&Tensor::from_slice(&q, (m, d), &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in 0..m {
            let want = (0..k)
                .map(|j| (0..d).map(|c| (q[i * d + c] - bank[j * d + c]).powi(2)).sum::<f32>())
                .fold(f32::INFINITY, f32::min)
                .sqrt();
            assert!((got[i] - want).abs() < 1e-3 * want.max(1.0), "query {i}: {} vs {want}", got[i]);
        }
        // A query equal to a bank row is at distance ~0 (found in the second block).
        let row = Tensor::from_slice(&bank[(k - 1) * d..], (1, d), &Device::Cpu).unwrap();
        assert!(mb.nearest_distance(&row).unwrap().to_vec1::<f32>().unwrap()[0] < 1e-2);
    }

    #[test]
    fn running_sum_box_filter_equals_pooling() {
        // The CPU path against candle's average pooling of the mirrored padding, on
        // random features, for the windows the methods use (3, 5 and the region's 13).
        let mut rng = Rng::new(11);
        for &(b, h, w, c, k) in &[(2, 9, 7, 5, 3), (1, 24, 24, 16, 13), (1, 8, 12, 3, 5), (1, 7, 7, 4, 13)] {
            let v: Vec<f32> = (0..b * h * w * c).map(|_| rng.normal() as f32).collect();
            let t = Tensor::from_vec(v.clone(), (b, h, w, c), &Device::Cpu).unwrap();
            let x = t.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
            let x = reflect_pad(&x, k / 2).unwrap().avg_pool2d_with_stride((k, k), (1, 1)).unwrap();
            let want = x.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = if k / 2 <= h.min(w) - 1 {
                box_filter_reflect(&v, b, h, w, c, k)
            } else {
                local_average(&t, k).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            assert_eq!(got.len(), want.len(), "{b}x{h}x{w}x{c} k {k}");
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{b}x{h}x{w}x{c} k {k}: max difference {worst}");
            let through = local_average(&t, k).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(through.len(), want.len());
        }
    }

    #[test]
    fn local_average_is_a_box_filter() {
        // One channel, a single spike: the 3x3 average spreads it to 1/9 around it.
        let mut v = vec![0f32; 25];
        v[12] = 9.0;
        let t = Tensor::from_vec(v, (1, 5, 5, 1), &Device::Cpu).unwrap();
        let a = local_average(&t, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for r in 0..5 {
            for c in 0..5 {
                let want = if (1..=3).contains(&r) && (1..=3).contains(&c) { 1.0 } else { 0.0 };
                assert!((a[r * 5 + c] - want).abs() < 1e-6, "({r},{c}) {}", a[r * 5 + c]);
            }
        }
    }
}
