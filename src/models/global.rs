//! An image-level anomaly score from globally pooled backbone features: each chosen
//! stage's output is pooled over the image into per-channel mean and standard
//! deviation, the good training images' pooled vectors are modelled as one Gaussian per
//! stage, and an image's score is its Mahalanobis distance to that Gaussian,
//! standardised with the training images' own distances and summed over the stages
//! (Rippel et al., "Modeling the distribution of normal data in pre-trained deep
//! features for anomaly detection", ICPR 2020, pool and fit the same way).
//!
//! Why it is here: the anomaly maps look at one neighbourhood at a time, so defects that
//! change a whole image a little (the magnetic tiles' "uneven" shading) or that are
//! thin and long (cracks) barely raise any single position, while their pooled
//! statistics move. On `../shared/data/magnetic_tile` (`examples/global_probe.rs`,
//! 764 training images, 384 px, stages 4+5+6) this score alone reached image AUROC
//! 0.853, uneven 0.870 and crack 0.827 where the NF-BMR map maximum gave 0.63 and 0.68.
//!
//! The covariance is shrunk towards a multiple of the identity,
//! `(1 - a) S + a tr(S)/d I`, because a few hundred images estimate a few hundred
//! dimensions poorly (Ledoit-Wolf style, fixed `a`).
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// The Gaussian of one stage's pooled vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct StageGaussian {
    pub stage: usize,
    pub mean: Vec<f64>,
    /// Lower Cholesky factor of the shrunk covariance, row-major `d x d`.
    pub chol: Vec<f64>,
    /// Mean and standard deviation of the training images' distances.
    pub dist_mean: f64,
    pub dist_std: f64,
}

impl StageGaussian {
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Mahalanobis distance of `x` (one forward substitution with the Cholesky factor).
    pub fn distance(&self, x: &[f32]) -> f64 {
        let d = self.dim();
        let mut y = vec![0f64; d];
        let mut sum = 0.0;
        for i in 0..d {
            let row = &self.chol[i * d..i * d + i];
            let s = x[i] as f64 - self.mean[i] - row.iter().zip(&y).map(|(l, v)| l * v).sum::<f64>();
            y[i] = s / self.chol[i * d + i];
            sum += y[i] * y[i];
        }
        sum.sqrt()
    }

    /// Fits one stage; `rows` are the pooled vectors of the training images.
    pub fn fit(stage: usize, rows: &[&[f32]], shrinkage: f64) -> Result<Self> {
        let n = rows.len();
        if n < 2 {
            return Err(Error::Data(format!("global statistics need at least 2 images, got {n}")));
        }
        let d = rows[0].len();
        if d == 0 || rows.iter().any(|r| r.len() != d) {
            return Err(Error::Config(format!("pooled features of stage {stage} have inconsistent sizes")));
        }
        let mean: Vec<f64> = (0..d).map(|k| rows.iter().map(|r| r[k] as f64).sum::<f64>() / n as f64).collect();
        let mut cov = vec![0f64; d * d];
        let mut centred = vec![0f64; d];
        for r in rows {
            for k in 0..d {
                centred[k] = r[k] as f64 - mean[k];
            }
            for i in 0..d {
                let ci = centred[i];
                let row = &mut cov[i * d..i * d + i + 1];
                for (c, v) in row.iter_mut().zip(&centred) {
                    *c += ci * v;
                }
            }
        }
        let denom = (n - 1) as f64;
        let trace = (0..d).map(|i| cov[i * d + i]).sum::<f64>() / denom;
        if !(trace > 1e-20) {
            return Err(Error::Data(format!("the pooled features of stage {stage} do not vary over the training images (all alike?)")));
        }
        let ridge = (shrinkage + 1e-9) * trace / d as f64;
        for i in 0..d {
            for j in 0..=i {
                let v = cov[i * d + j] / denom * (1.0 - shrinkage);
                cov[i * d + j] = if i == j { v + ridge } else { v };
            }
        }
        let chol = cholesky(cov, d).ok_or_else(|| {
            Error::Data(format!("the pooled features of stage {stage} have a singular covariance (all training images alike?)"))
        })?;
        let mut g = Self { stage, mean, chol, dist_mean: 0.0, dist_std: 1.0 };
        let dists: Vec<f64> = rows.iter().map(|r| g.distance(r)).collect();
        g.dist_mean = dists.iter().sum::<f64>() / n as f64;
        g.dist_std = (dists.iter().map(|v| (v - g.dist_mean).powi(2)).sum::<f64>() / n as f64).sqrt().max(1e-9);
        Ok(g)
    }
}

impl StageGaussian {
    /// The shrunk covariance `L L^T` (lower triangle filled, row-major).
    fn covariance(&self) -> Vec<f64> {
        let d = self.dim();
        let mut c = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..=i {
                let s: f64 = (0..=j).map(|k| self.chol[i * d + k] * self.chol[j * d + k]).sum();
                c[i * d + j] = s;
            }
        }
        c
    }

    /// Updates mean and covariance as if `rows` had been among the `n` training images
    /// (the sample covariance is recovered from the shrunk one, the new rows' outer
    /// products added, and the result shrunk again). The distance statistics stay the
    /// training images'.
    pub fn absorb(&mut self, rows: &[&[f32]], n: usize, shrinkage: f64) -> Result<()> {
        let d = self.dim();
        if rows.iter().any(|r| r.len() != d) {
            return Err(Error::Config(format!("pooled features of stage {} have size != {d}", self.stage)));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let shrunk = self.covariance();
        let trace_c: f64 = (0..d).map(|i| shrunk[i * d + i]).sum();
        // tr(C) = (1 - a) tr(S) + (a + 1e-9) tr(S).
        let trace_s = trace_c / (1.0 + 1e-9);
        let ridge = (shrinkage + 1e-9) * trace_s / d as f64;
        let m = rows.len();
        let total = (n + m) as f64;
        let new_mean: Vec<f64> = (0..d)
            .map(|k| (self.mean[k] * n as f64 + rows.iter().map(|r| r[k] as f64).sum::<f64>()) / total)
            .collect();
        // Scatter about the new mean: old scatter + n (mu - mu')(mu - mu')^T + new rows'.
        let mut scatter = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..=i {
                let s = if i == j { shrunk[i * d + j] - ridge } else { shrunk[i * d + j] };
                let s = s / (1.0 - shrinkage).max(1e-12) * (n as f64 - 1.0);
                scatter[i * d + j] = s + n as f64 * (self.mean[i] - new_mean[i]) * (self.mean[j] - new_mean[j]);
            }
        }
        for r in rows {
            for i in 0..d {
                let ci = r[i] as f64 - new_mean[i];
                for j in 0..=i {
                    scatter[i * d + j] += ci * (r[j] as f64 - new_mean[j]);
                }
            }
        }
        let denom = total - 1.0;
        let trace = (0..d).map(|i| scatter[i * d + i]).sum::<f64>() / denom;
        let ridge = (shrinkage + 1e-9) * trace / d as f64;
        for i in 0..d {
            for j in 0..=i {
                let v = scatter[i * d + j] / denom * (1.0 - shrinkage);
                scatter[i * d + j] = if i == j { v + ridge } else { v };
            }
        }
        self.chol = cholesky(scatter, d)
            .ok_or_else(|| Error::Data(format!("the pooled features of stage {} have a singular covariance after teaching", self.stage)))?;
        self.mean = new_mean;
        Ok(())
    }
}

/// In-place Cholesky factorisation of the lower triangle; `None` if not positive definite.
fn cholesky(mut a: Vec<f64>, d: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let s = a[j * d + j] - (0..j).map(|k| a[j * d + k] * a[j * d + k]).sum::<f64>();
        if !(s > 0.0) {
            return None;
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let s = a[i * d + j] - (0..j).map(|k| a[i * d + k] * a[j * d + k]).sum::<f64>();
            a[i * d + j] = s / l;
        }
        for k in j + 1..d {
            a[j * d + k] = 0.0;
        }
    }
    Some(a)
}

/// One Gaussian per pooled stage.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalGaussian {
    pub stages: Vec<StageGaussian>,
}

impl GlobalGaussian {
    /// Fits every stage; `pooled[i][s]` is image `i`'s pooled vector of the `s`-th stage
    /// of `stages` (as `ImageFeatures::global`).
    pub fn fit(stages: &[usize], pooled: &[&[Vec<f32>]], shrinkage: f64) -> Result<Self> {
        let mut out = Vec::with_capacity(stages.len());
        for (si, &stage) in stages.iter().enumerate() {
            let rows: Vec<&[f32]> = pooled
                .iter()
                .map(|p| p.get(si).map(|v| v.as_slice()).ok_or_else(|| Error::Config(format!("no pooled features of stage {stage}"))))
                .collect::<Result<_>>()?;
            out.push(StageGaussian::fit(stage, &rows, shrinkage)?);
        }
        Ok(Self { stages: out })
    }

    /// Updates every stage's Gaussian with taught images' pooled vectors
    /// ([`StageGaussian::absorb`]); `n` images trained it.
    pub fn absorb(&mut self, pooled: &[&[Vec<f32>]], n: usize, shrinkage: f64) -> Result<()> {
        for (si, g) in self.stages.iter_mut().enumerate() {
            let rows: Vec<&[f32]> = pooled
                .iter()
                .map(|p| p.get(si).map(|v| v.as_slice()).ok_or_else(|| Error::Config(format!("no pooled features of stage {}", g.stage))))
                .collect::<Result<_>>()?;
            g.absorb(&rows, n, shrinkage)?;
        }
        Ok(())
    }

    /// The sum over stages of the standardised distances.
    pub fn score(&self, pooled: &[Vec<f32>]) -> Result<f32> {
        if pooled.len() != self.stages.len() {
            return Err(Error::Config(format!("{} pooled stages given, the model has {}", pooled.len(), self.stages.len())));
        }
        let mut total = 0.0;
        for (g, x) in self.stages.iter().zip(pooled) {
            if x.len() != g.dim() {
                return Err(Error::Config(format!("stage {} pooled size {} != {}", g.stage, x.len(), g.dim())));
            }
            total += (g.distance(x) - g.dist_mean) / g.dist_std;
        }
        Ok(total as f32)
    }

    /// The tensors saved in a model file, named `<prefix>.<stage>.{mean,chol,dist}`.
    pub fn tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for g in &self.stages {
            let d = g.dim();
            let p = format!("{prefix}.{}", g.stage);
            out.push((format!("{p}.mean"), Tensor::from_vec(g.mean.clone(), d, &Device::Cpu)?));
            out.push((format!("{p}.chol"), Tensor::from_vec(g.chol.clone(), (d, d), &Device::Cpu)?));
            out.push((format!("{p}.dist"), Tensor::from_vec(vec![g.dist_mean, g.dist_std], 2, &Device::Cpu)?));
        }
        Ok(out)
    }

    /// Reads what [`Self::tensors`] wrote; `missing` names a missing tensor in the error.
    pub fn from_tensors(
        prefix: &str,
        stages: &[usize],
        all: &HashMap<String, Tensor>,
        missing: impl Fn(&str) -> Error,
    ) -> Result<Self> {
        let get = |n: String| -> Result<Vec<f64>> {
            let t = all.get(&n).ok_or_else(|| missing(&n))?;
            Ok(t.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?)
        };
        let mut out = Vec::new();
        for &stage in stages {
            let p = format!("{prefix}.{stage}");
            let mean = get(format!("{p}.mean"))?;
            let chol = get(format!("{p}.chol"))?;
            let dist = get(format!("{p}.dist"))?;
            if chol.len() != mean.len() * mean.len() || dist.len() != 2 {
                return Err(missing(&format!("{p} (wrong shape)")));
            }
            out.push(StageGaussian { stage, mean, chol, dist_mean: dist[0], dist_std: dist[1] });
        }
        Ok(Self { stages: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn distance_is_the_mahalanobis_distance_of_a_known_gaussian() {
        // Two independent dimensions with sd 1 and 3 (no shrinkage): the distance of
        // mean + (1, 3) is sqrt(2) up to the sampling error of the estimates.
        let mut rng = Rng::new(7);
        let rows: Vec<Vec<f32>> = (0..20_000).map(|_| vec![5.0 + (rng.normal() as f32), -2.0 + 3.0 * (rng.normal() as f32)]).collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let g = StageGaussian::fit(4, &refs, 0.0).unwrap();
        let d = g.distance(&[6.0, 1.0]);
        assert!((d - 2f64.sqrt()).abs() < 0.03, "{d}");
        // A correlated pair: x2 = x1 + small noise. Moving along the correlation is
        // cheap, across it is expensive, although both moves have the same length.
        let rows: Vec<Vec<f32>> = (0..5_000)
            .map(|_| {
                let a = rng.normal() as f32;
                vec![a, a + 0.1 * (rng.normal() as f32)]
            })
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let g = StageGaussian::fit(5, &refs, 0.0).unwrap();
        assert!(g.distance(&[1.0, 1.0]) < 1.5);
        assert!(g.distance(&[1.0, -1.0]) > 10.0);
    }

    #[test]
    fn absorbing_rows_equals_fitting_on_all_of_them() {
        // Teach: a Gaussian fitted on 40 rows that absorbs 12 more has the mean and the
        // shrunk covariance of one fitted on all 52 (the distance statistics stay).
        let mut rng = Rng::new(11);
        let rows: Vec<Vec<f32>> = (0..52).map(|i| (0..5).map(|k| (rng.normal() * (1.0 + k as f64) + if i >= 40 { 0.7 } else { 0.0 }) as f32).collect()).collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let all = StageGaussian::fit(5, &refs, 0.2).unwrap();
        let mut g = StageGaussian::fit(5, &refs[..40], 0.2).unwrap();
        let before = g.clone();
        g.absorb(&refs[40..], 40, 0.2).unwrap();
        for (a, b) in g.mean.iter().zip(&all.mean) {
            assert!((a - b).abs() < 1e-9, "mean {a} vs {b}");
        }
        for (a, b) in g.chol.iter().zip(&all.chol) {
            assert!((a - b).abs() < 1e-9, "chol {a} vs {b}");
        }
        assert_eq!((g.dist_mean, g.dist_std), (before.dist_mean, before.dist_std));
        assert!(g.absorb(&[&[1.0f32, 2.0][..]], 52, 0.2).is_err(), "a row of the wrong size");
    }

    #[test]
    fn cholesky_reproduces_the_matrix_and_rejects_singular_ones() {
        let a = vec![4.0, 0.0, 0.0, 2.0, 5.0, 0.0, -2.0, 1.0, 6.0];
        let l = cholesky(a.clone(), 3).unwrap();
        for i in 0..3 {
            for j in 0..=i {
                let v: f64 = (0..3).map(|k| l[i * 3 + k] * l[j * 3 + k]).sum();
                assert!((v - a[i * 3 + j]).abs() < 1e-12, "({i},{j}) {v}");
            }
        }
        assert!(cholesky(vec![1.0, 0.0, 1.0, 1.0], 2).is_none());
        // Identical training images: a clear error, with or without shrinkage.
        let same = vec![vec![1.0f32, 2.0]; 5];
        let refs: Vec<&[f32]> = same.iter().map(|r| r.as_slice()).collect();
        assert!(StageGaussian::fit(6, &refs, 0.0).is_err());
        assert!(StageGaussian::fit(6, &refs, 0.5).is_err());
    }

    #[test]
    fn score_standardises_and_sums_stages_and_round_trips_through_tensors() {
        let mut rng = Rng::new(3);
        let imgs: Vec<Vec<Vec<f32>>> = (0..300)
            .map(|_| vec![(0..4).map(|_| rng.normal() as f32).collect(), (0..6).map(|_| 2.0 * (rng.normal() as f32)).collect()])
            .collect();
        let refs: Vec<&[Vec<f32>]> = imgs.iter().map(|v| v.as_slice()).collect();
        let g = GlobalGaussian::fit(&[4, 6], &refs, 0.1).unwrap();
        let train: Vec<f32> = imgs.iter().map(|v| g.score(v).unwrap()).collect();
        let mean = train.iter().sum::<f32>() / train.len() as f32;
        assert!(mean.abs() < 1e-3, "training scores are centred: {mean}");
        let outlier = vec![vec![4.0; 4], vec![0.0; 6]];
        assert!(g.score(&outlier).unwrap() > train.iter().copied().fold(f32::MIN, f32::max));
        assert!(g.score(&outlier[..1]).is_err());
        let all: HashMap<String, Tensor> = g.tensors("global").unwrap().into_iter().collect();
        let back = GlobalGaussian::from_tensors("global", &[4, 6], &all, |n| Error::Data(n.into())).unwrap();
        assert_eq!(back, g);
        assert!(GlobalGaussian::from_tensors("global", &[5], &all, |n| Error::Data(n.into())).is_err());
    }
}
