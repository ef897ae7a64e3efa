//! In-place CPU epilogues for the convolutions of the fast path: the folded batch-norm
//! bias, the activation and (for a block's projection) the residual, applied in one
//! pass over the convolution's fresh output instead of two or three separate tensor
//! ops, each of which would read and write the whole tensor again.
use super::depthwise::Activation;
use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, bail};
use rayon::prelude::*;

/// `y = act(y + bias[c])` over a contiguous `[B, C, ...]` tensor.
pub struct BiasAct<'a> {
    pub bias: &'a [f32],
    pub activation: Activation,
}

fn planes<'b>(storage: &'b mut CpuStorage, layout: &Layout, channels: usize, name: &str) -> candle_core::Result<(&'b mut [f32], usize)> {
    let dims = layout.shape().dims();
    if dims.len() < 2 || dims[1] != channels {
        bail!("{name}: shape {dims:?} does not have {channels} channels")
    }
    let Some((a, b)) = layout.contiguous_offsets() else { bail!("{name}: output must be contiguous") };
    let plane = dims[2..].iter().product::<usize>();
    match storage {
        CpuStorage::F32(v) => Ok((&mut v[a..b], plane)),
        _ => bail!("{name}: only f32 is supported"),
    }
}

impl InplaceOp1 for BiasAct<'_> {
    fn name(&self) -> &'static str {
        "flowspect-bias-act"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let c = self.bias.len();
        let (v, plane) = planes(storage, layout, c, self.name())?;
        let act = self.activation;
        v.par_chunks_mut(plane.max(1)).enumerate().for_each(|(i, p)| {
            let b = self.bias[i % c];
            match act {
                Activation::None => p.iter_mut().for_each(|x| *x += b),
                Activation::Relu6 => p.iter_mut().for_each(|x| *x = (*x + b).clamp(0.0, 6.0)),
                Activation::Silu => p.iter_mut().for_each(|x| *x = Activation::Silu.apply(*x + b)),
            }
        });
        Ok(())
    }
}

/// `y = y + bias[c] + r` over contiguous `[B, C, ...]` tensors of one shape.
pub struct BiasResidual<'a> {
    pub bias: &'a [f32],
}

impl InplaceOp2 for BiasResidual<'_> {
    fn name(&self) -> &'static str {
        "flowspect-bias-residual"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        if l1.shape() != l2.shape() {
            bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.shape(), l2.shape())
        }
        let c = self.bias.len();
        let (v, plane) = planes(s1, l1, c, self.name())?;
        let Some((a, b)) = l2.contiguous_offsets() else { bail!("{}: residual must be contiguous", self.name()) };
        let r = match s2 {
            CpuStorage::F32(r) => &r[a..b],
            _ => bail!("{}: only f32 is supported", self.name()),
        };
        v.par_chunks_mut(plane.max(1))
            .zip(r.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(i, (p, q))| {
                let b = self.bias[i % c];
                p.iter_mut().zip(q).for_each(|(x, y)| *x += b + y);
            });
        Ok(())
    }
}
