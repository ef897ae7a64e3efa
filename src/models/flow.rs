//! TNF: a Real-NVP normalizing flow of affine coupling blocks that maps backbone
//! features Y (one vector per position) to Z ~ N(0, I).
//!
//! Each block permutes the channels with a fixed random permutation, keeps the first
//! half, and transforms the second half as `x2 * exp(s(x1)) + t(x1)` where `s` and `t`
//! come from one two-layer MLP. `s` is soft-clamped as `c * tanh(s / c)` (FrEIA's
//! GLOW-coupling clamp) so the scale stays finite early in training. The last layer
//! starts at zero, so the untrained flow is the identity up to permutation.
use crate::error::Result;
use crate::rng::Rng;
use candle_core::{D, Device, Tensor};
use candle_nn::{Init, Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowConfig {
    /// Number of coupling blocks (paper: 4).
    pub blocks: usize,
    /// Hidden width of each coupling's MLP (paper: 1024).
    pub hidden: usize,
    /// Soft clamp of the log-scale.
    pub clamp: f64,
    /// Seed of the channel permutations.
    pub seed: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            blocks: 4,
            hidden: 1024,
            clamp: 1.9,
            seed: 7,
        }
    }
}

struct Coupling {
    l1: Linear,
    l2: Linear,
    perm: Tensor,
    inv_perm: Tensor,
    c1: usize,
    c2: usize,
    clamp: f64,
}

impl Coupling {
    fn scale_shift(&self, x1: &Tensor) -> Result<(Tensor, Tensor)> {
        // `x1` is a column slice; CUDA matrix products refuse a row stride wider than the row.
        let h = self.l1.forward(&x1.contiguous()?)?.relu()?;
        let st = self.l2.forward(&h)?;
        let s = st.narrow(1, 0, self.c2)?;
        let t = st.narrow(1, self.c2, self.c2)?;
        let s = ((s / self.clamp)?.tanh()? * self.clamp)?;
        Ok((s, t))
    }

    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = x.index_select(&self.perm, 1)?;
        let x1 = x.narrow(1, 0, self.c1)?;
        let x2 = x.narrow(1, self.c1, self.c2)?;
        let (s, t) = self.scale_shift(&x1)?;
        let y2 = (x2.mul(&s.exp()?)? + t)?;
        Ok((Tensor::cat(&[&x1, &y2], 1)?, s.sum(1)?))
    }

    fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        let y1 = y.narrow(1, 0, self.c1)?;
        let y2 = y.narrow(1, self.c1, self.c2)?;
        let (s, t) = self.scale_shift(&y1)?;
        let x2 = (y2 - t)?.mul(&s.neg()?.exp()?)?;
        Ok(Tensor::cat(&[&y1, &x2], 1)?.index_select(&self.inv_perm, 1)?)
    }
}

pub struct RealNvp {
    blocks: Vec<Coupling>,
    dim: usize,
}

impl RealNvp {
    /// `zero_init`: start as the identity (training); tests use random last layers.
    pub fn new(vb: VarBuilder, dim: usize, cfg: &FlowConfig, zero_init: bool) -> Result<Self> {
        let mut rng = Rng::new(cfg.seed);
        let c1 = dim / 2;
        let c2 = dim - c1;
        let mut blocks = Vec::with_capacity(cfg.blocks);
        for i in 0..cfg.blocks {
            let vb = vb.pp(format!("block{i}"));
            let l1 = candle_nn::linear(c1, cfg.hidden, vb.pp("l1"))?;
            let l2 = if zero_init {
                let w = vb.pp("l2").get_with_hints((2 * c2, cfg.hidden), "weight", Init::Const(0.0))?;
                let b = vb.pp("l2").get_with_hints(2 * c2, "bias", Init::Const(0.0))?;
                Linear::new(w, Some(b))
            } else {
                candle_nn::linear(cfg.hidden, 2 * c2, vb.pp("l2"))?
            };
            let p = rng.permutation(dim);
            let mut inv = vec![0u32; dim];
            for (i, &v) in p.iter().enumerate() {
                inv[v] = i as u32;
            }
            let p: Vec<u32> = p.into_iter().map(|v| v as u32).collect();
            let dev = vb.device();
            blocks.push(Coupling {
                l1,
                l2,
                perm: Tensor::from_vec(p, dim, dev)?,
                inv_perm: Tensor::from_vec(inv, dim, dev)?,
                c1,
                c2,
                clamp: cfg.clamp,
            });
        }
        Ok(Self { blocks, dim })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `x: [N, C]` -> `(z: [N, C], log|det J|: [N])`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = x.clone();
        let mut logdet = Tensor::zeros(x.dim(0)?, x.dtype(), x.device())?;
        for b in &self.blocks {
            let (y, ld) = b.forward(&h)?;
            h = y;
            logdet = (logdet + ld)?;
        }
        Ok((h, logdet))
    }

    pub fn inverse(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = z.clone();
        for b in self.blocks.iter().rev() {
            h = b.inverse(&h)?;
        }
        Ok(h)
    }

    /// Per-position negative log-likelihood (without the constant), divided by C:
    /// `(|z|^2 / 2 - log|det J|) / C`.
    pub fn nll(z: &Tensor, logdet: &Tensor) -> Result<Tensor> {
        let c = z.dim(1)? as f64;
        Ok(((z.sqr()?.sum(D::Minus1)? * 0.5)? - logdet)?.affine(1.0 / c, 0.0)?)
    }
}

#[allow(dead_code)]
fn _assert_send(_: &Device) {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;

    fn small() -> (VarMap, RealNvp) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let cfg = FlowConfig { blocks: 3, hidden: 8, clamp: 1.9, seed: 3 };
        let f = RealNvp::new(vb, 5, &cfg, false).unwrap();
        (vm, f)
    }

    #[test]
    fn inverse_undoes_forward() {
        let (_vm, f) = small();
        let x = Tensor::randn(0f64, 1.0, (7, 5), &Device::Cpu).unwrap();
        let (z, _) = f.forward(&x).unwrap();
        let back = f.inverse(&z).unwrap();
        let err = (back - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(err < 1e-10, "max error {err}");
        // and the flow is not the identity
        let moved = (z - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(moved > 1e-3);
    }

    fn det(mut m: Vec<Vec<f64>>) -> f64 {
        let n = m.len();
        let mut d = 1.0;
        for c in 0..n {
            let p = (c..n).max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs())).unwrap();
            if p != c {
                m.swap(p, c);
                d = -d;
            }
            d *= m[c][c];
            for r in c + 1..n {
                let f = m[r][c] / m[c][c];
                for k in c..n {
                    m[r][k] -= f * m[c][k];
                }
            }
        }
        d
    }

    #[test]
    fn log_det_matches_numerical_jacobian() {
        let (_vm, f) = small();
        let x0: Vec<f64> = vec![0.3, -1.2, 0.7, 2.0, -0.4];
        let eval = |x: &[f64]| -> Vec<f64> {
            let t = Tensor::from_vec(x.to_vec(), (1, 5), &Device::Cpu).unwrap();
            f.forward(&t).unwrap().0.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        };
        let h = 1e-6;
        let mut jac = vec![vec![0.0; 5]; 5];
        for j in 0..5 {
            let mut xp = x0.clone();
            let mut xm = x0.clone();
            xp[j] += h;
            xm[j] -= h;
            let (yp, ym) = (eval(&xp), eval(&xm));
            for i in 0..5 {
                jac[i][j] = (yp[i] - ym[i]) / (2.0 * h);
            }
        }
        let numeric = det(jac).abs().ln();
        let t = Tensor::from_vec(x0.clone(), (1, 5), &Device::Cpu).unwrap();
        let analytic = f.forward(&t).unwrap().1.to_vec1::<f64>().unwrap()[0];
        assert!((numeric - analytic).abs() < 1e-6, "numeric {numeric} analytic {analytic}");
        assert!(analytic.abs() > 1e-3, "the test case must have a non-trivial Jacobian");
    }
}
