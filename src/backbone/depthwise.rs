//! Depthwise convolution on the CPU over the whole tensor at once.
//!
//! candle runs a grouped convolution as one small convolution per channel, which on a
//! CPU spends most of its time in thread hand-offs. This kernel walks every (image,
//! channel) plane in parallel with rayon, with batch norm already folded into the
//! weights and bias, and the activation applied as each output row is finished.
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, bail};
use rayon::prelude::*;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu6,
    Silu,
}

impl Activation {
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Relu6 => v.clamp(0.0, 6.0),
            Activation::Silu => v / (1.0 + (-v).exp()),
        }
    }
}

/// Depthwise k x k convolution with explicit (possibly asymmetric) padding.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// `[channels, k, k]`, batch norm folded in.
    pub weight: Arc<Vec<f32>>,
    pub bias: Arc<Vec<f32>>,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    /// (top, left) padding; bottom/right follow from `out_hw`.
    pub pad: (usize, usize),
    pub activation: Activation,
}

impl DepthwiseConv {
    pub fn out_hw(&self, h: usize, w: usize, pad_total: (usize, usize)) -> (usize, usize) {
        (
            (h + pad_total.0 - self.kernel) / self.stride + 1,
            (w + pad_total.1 - self.kernel) / self.stride + 1,
        )
    }
}

/// The op as applied to one tensor, with the output size fixed.
pub struct DepthwiseOp<'a> {
    pub conv: &'a DepthwiseConv,
    pub out_h: usize,
    pub out_w: usize,
}

impl CustomOp1 for DepthwiseOp<'_> {
    fn name(&self) -> &'static str {
        "flowspect-depthwise"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = match storage {
            CpuStorage::F32(v) => v,
            _ => bail!("depthwise: only f32 is supported"),
        };
        let (b, c, h, w) = layout.shape().dims4()?;
        let Some(offsets) = layout.contiguous_offsets() else {
            bail!("depthwise: input must be contiguous")
        };
        let src = &src[offsets.0..offsets.1];
        let cv = self.conv;
        if c != cv.channels {
            bail!("depthwise: {} channels, weights for {}", c, cv.channels)
        }
        let (oh, ow, k, s) = (self.out_h, self.out_w, cv.kernel, cv.stride);
        let (pt, pl) = (cv.pad.0 as isize, cv.pad.1 as isize);
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, dst)| {
                let ch = plane % c;
                let inp = &src[plane * h * w..(plane + 1) * h * w];
                let wk = &cv.weight[ch * k * k..(ch + 1) * k * k];
                let bias = cv.bias[ch];
                for oy in 0..oh {
                    let row = &mut dst[oy * ow..(oy + 1) * ow];
                    row.fill(bias);
                    for ky in 0..k {
                        let iy = (oy * s) as isize + ky as isize - pt;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let irow = &inp[iy as usize * w..(iy as usize + 1) * w];
                        for kx in 0..k {
                            let wv = wk[ky * k + kx];
                            // valid ox: 0 <= ox*s + kx - pl < w
                            let off = kx as isize - pl;
                            let lo = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(s) };
                            let hi_excl = {
                                let lim = w as isize - off; // ox*s < lim
                                if lim <= 0 { 0 } else { ((lim as usize - 1) / s + 1).min(ow) }
                            };
                            if lo >= hi_excl {
                                continue;
                            }
                            if s == 1 {
                                let start = (lo as isize + off) as usize;
                                let src_row = &irow[start..start + (hi_excl - lo)];
                                for (d, &x) in row[lo..hi_excl].iter_mut().zip(src_row) {
                                    *d += wv * x;
                                }
                            } else {
                                for ox in lo..hi_excl {
                                    let ix = (ox * s) as isize + off;
                                    row[ox] += wv * irow[ix as usize];
                                }
                            }
                        }
                    }
                    if cv.activation != Activation::None {
                        for v in row.iter_mut() {
                            *v = cv.activation.apply(*v);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}
