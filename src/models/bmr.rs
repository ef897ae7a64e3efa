//! BMR: the bidirectional mapping residual network. TMNN maps source features Y to
//! the flow's target Z, SMNN maps Z back to Y; both share one middle block.
//!
//! Tensors are channels-last, `[B, H, W, C]`, so every 1x1 convolution is one matrix
//! product over all positions and every 3x3 convolution is an im2col matrix product
//! (nine shifted views concatenated on the channel axis), which is also what makes the
//! backward pass cheap on the CPU.
use crate::error::Result;
use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BmrConfig {
    /// Width of the mapping networks (paper: 1024).
    pub hidden: usize,
    /// Width inside each residual block's 3x3 convolution (a ResNet bottleneck).
    pub bottleneck: usize,
    /// Residual blocks before and after the shared block, in each direction (paper: 2).
    pub blocks: usize,
}

impl Default for BmrConfig {
    fn default() -> Self {
        Self {
            hidden: 1024,
            bottleneck: 256,
            blocks: 2,
        }
    }
}

/// Applies a linear layer over the last axis as one 2-D matrix product.
fn linear_last(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let c = *dims.last().unwrap_or(&1);
    let n = x.elem_count() / c.max(1);
    let y = l.forward(&x.contiguous()?.reshape((n, c))?)?;
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = y.dim(1)?;
    }
    Ok(y.reshape(out)?)
}

/// 1x1 convolution on channels-last tensors.
struct Pointwise(Linear);

impl Pointwise {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self(candle_nn::linear(cin, cout, vb)?))
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear_last(&self.0, x)
    }
}

/// 3x3 convolution, zero padding 1, on `[B, H, W, C]`.
struct Conv3x3(Linear);

impl Conv3x3 {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self(candle_nn::linear(9 * cin, cout, vb)?))
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let p = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
        let mut cols = Vec::with_capacity(9);
        for dy in 0..3 {
            for dx in 0..3 {
                cols.push(p.narrow(1, dy, h)?.narrow(2, dx, w)?);
            }
        }
        let x = Tensor::cat(&cols, D::Minus1)?;
        linear_last(&self.0, &x)
    }
}

/// 1x1 -> 3x3 -> 1x1 with ReLU after each; the block's input is added before the
/// last ReLU.
struct ResBlock {
    a: Pointwise,
    b: Conv3x3,
    c: Pointwise,
}

impl ResBlock {
    fn new(vb: VarBuilder, hidden: usize, bottleneck: usize) -> Result<Self> {
        Ok(Self {
            a: Pointwise::new(vb.pp("a"), hidden, bottleneck)?,
            b: Conv3x3::new(vb.pp("b"), bottleneck, bottleneck)?,
            c: Pointwise::new(vb.pp("c"), bottleneck, hidden)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.a.forward(x)?.relu()?;
        let h = self.b.forward(&h)?.relu()?;
        let h = self.c.forward(&h)?;
        Ok((h + x)?.relu()?)
    }
}

struct MapNet {
    inp: Pointwise,
    pre: Vec<ResBlock>,
    post: Vec<ResBlock>,
    out: Pointwise,
}

impl MapNet {
    fn new(vb: VarBuilder, dim: usize, cfg: &BmrConfig) -> Result<Self> {
        let mk = |name: &str| -> Result<Vec<ResBlock>> {
            (0..cfg.blocks)
                .map(|i| ResBlock::new(vb.pp(format!("{name}{i}")), cfg.hidden, cfg.bottleneck))
                .collect()
        };
        Ok(Self {
            inp: Pointwise::new(vb.pp("in"), dim, cfg.hidden)?,
            pre: mk("pre")?,
            post: mk("post")?,
            out: Pointwise::new(vb.pp("out"), cfg.hidden, dim)?,
        })
    }

    fn forward(&self, x: &Tensor, shared: &ResBlock) -> Result<Tensor> {
        let mut h = self.inp.forward(x)?.relu()?;
        for b in &self.pre {
            h = b.forward(&h)?;
        }
        h = shared.forward(&h)?;
        for b in &self.post {
            h = b.forward(&h)?;
        }
        self.out.forward(&h)
    }
}

pub struct Bmr {
    tmnn: MapNet,
    smnn: MapNet,
    shared: ResBlock,
}

impl Bmr {
    pub fn new(vb: VarBuilder, dim: usize, cfg: &BmrConfig) -> Result<Self> {
        Ok(Self {
            tmnn: MapNet::new(vb.pp("tmnn"), dim, cfg)?,
            smnn: MapNet::new(vb.pp("smnn"), dim, cfg)?,
            shared: ResBlock::new(vb.pp("shared"), cfg.hidden, cfg.bottleneck)?,
        })
    }

    /// TMNN: Y -> Z, on `[B, H, W, C]`.
    pub fn to_target(&self, y: &Tensor) -> Result<Tensor> {
        self.tmnn.forward(y, &self.shared)
    }

    /// SMNN: Z -> Y, on `[B, H, W, C]`.
    pub fn to_source(&self, z: &Tensor) -> Result<Tensor> {
        self.smnn.forward(z, &self.shared)
    }

    /// Training loss `MSE_S + MSE_T`.
    pub fn loss(&self, y: &Tensor, z: &Tensor) -> Result<Tensor> {
        let t = candle_nn::loss::mse(&self.to_target(y)?, z)?;
        let s = candle_nn::loss::mse(&self.to_source(z)?, y)?;
        Ok((t + s)?)
    }

    /// Anomaly map of the paper's equation 14, per position, `[B, H, W]`:
    /// `(|y - SMNN(z)|^2 + |z - TMNN(y)|^2) / 2`, with the squared norms divided by C
    /// so the scale does not depend on the feature width.
    pub fn anomaly_map(&self, y: &Tensor, z: &Tensor) -> Result<Tensor> {
        let c = y.dim(D::Minus1)? as f64;
        let ds = (y - self.to_source(z)?)?.sqr()?.sum(D::Minus1)?;
        let dt = (z - self.to_target(y)?)?.sqr()?.sum(D::Minus1)?;
        Ok((ds + dt)?.affine(0.5 / c, 0.0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn conv3x3_matches_candle_conv2d() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let conv = Conv3x3::new(vb, 3, 4).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 5, 6, 3), &Device::Cpu).unwrap();
        let ours = conv.forward(&x).unwrap();
        // weight [cout, 9*cin] with index (dy*3+dx)*cin + ci -> [cout, cin, 3, 3]
        let w = conv.0.weight().reshape((4, 3, 3, 3)).unwrap().permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
        let b = conv.0.bias().unwrap().reshape((1, 4, 1, 1)).unwrap();
        let reference = x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap()
            .conv2d(&w, 1, 1, 1, 1).unwrap().broadcast_add(&b).unwrap()
            .permute((0, 2, 3, 1)).unwrap();
        let err = (ours - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-4, "{err}");
    }
}
