//! Depthwise convolution without candle's per-channel grouped convolution: on the CPU a
//! kernel over the whole tensor at once ([`DepthwiseOp`]), on GPUs a sum of shifted views
//! ([`shift_add`]).
//!
//! candle runs a grouped convolution as one small convolution per channel, which on a
//! CPU spends most of its time in thread hand-offs. This kernel walks every (image,
//! channel) plane in parallel with rayon, with batch norm already folded into the
//! weights and bias, and the activation applied as each output row is finished.
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, bail};
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

/// Depthwise convolution on devices other than the CPU (CUDA): the sum of `k * k`
/// shifted views of the input, each scaled per channel. candle's grouped convolution
/// launches one convolution per channel, hundreds of kernel launches per layer; this
/// launches about `2 k^2` elementwise kernels per layer, plus `stride^2` copies that
/// split a strided input into its phase planes.
///
/// `xp`: `[B, C, Hp, Wp]`, padding already applied; `taps[i * k + j]`: the `[1, C, 1, 1]`
/// weights of kernel position `(i, j)`. Returns the unpadded ("valid") convolution.
pub fn shift_add(xp: &Tensor, taps: &[Tensor], k: usize, stride: usize) -> candle_core::Result<Tensor> {
    let (b, c, hp, wp) = xp.dims4()?;
    if k == 0 || stride == 0 || taps.len() != k * k || hp < k || wp < k {
        bail!("depthwise shift-add: {k}x{k} kernel, stride {stride}, {} taps, input {hp}x{wp}", taps.len());
    }
    let (oh, ow) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    // Plane `p * stride + q` holds the input rows = p and columns = q (mod stride), so
    // input row `i + stride * y` is row `i / stride + y` of plane row-phase `i % stride`.
    let planes: Vec<Tensor> = if stride == 1 {
        vec![xp.clone()]
    } else {
        let (h2, w2) = (hp.div_ceil(stride) * stride, wp.div_ceil(stride) * stride);
        let x = xp.pad_with_zeros(2, 0, h2 - hp)?.pad_with_zeros(3, 0, w2 - wp)?.contiguous()?;
        let x = x.reshape((b, c, h2 / stride, stride, w2 / stride, stride))?;
        let mut v = Vec::with_capacity(stride * stride);
        for p in 0..stride {
            for q in 0..stride {
                v.push(x.narrow(3, p, 1)?.narrow(5, q, 1)?.squeeze(5)?.squeeze(3)?.contiguous()?);
            }
        }
        v
    };
    let mut acc: Option<Tensor> = None;
    for i in 0..k {
        for j in 0..k {
            let plane = &planes[(i % stride) * stride + j % stride];
            let term = plane.narrow(2, i / stride, oh)?.narrow(3, j / stride, ow)?.broadcast_mul(&taps[i * k + j])?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("depthwise shift-add: empty kernel".into()))
}

/// The per-position weights [`shift_add`] takes, from a `[C, 1, k, k]` kernel.
pub fn shift_add_taps(w: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let (c, _, kh, kw) = w.dims4()?;
    let mut taps = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            taps.push(w.narrow(2, i, 1)?.narrow(3, j, 1)?.reshape((1, c, 1, 1))?.contiguous()?);
        }
    }
    Ok(taps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shift_add_equals_grouped_convolution() {
        let dev = Device::Cpu;
        for (k, s, h, w) in [(3, 1, 9, 10), (3, 2, 9, 10), (3, 2, 12, 12), (5, 1, 11, 8), (5, 2, 11, 13), (5, 2, 16, 16)] {
            let c = 6;
            let n = 2 * c * h * w;
            let x = Tensor::from_vec((0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect::<Vec<_>>(), (2, c, h, w), &dev).unwrap();
            let wv: Vec<f32> = (0..c * k * k).map(|i| ((i * 104729 % 997) as f32 / 498.0) - 1.0).collect();
            let wt = Tensor::from_vec(wv, (c, 1, k, k), &dev).unwrap();
            let want = x.conv2d(&wt, 0, s, 1, c).unwrap();
            let got = shift_add(&x, &shift_add_taps(&wt).unwrap(), k, s).unwrap();
            assert_eq!(got.dims(), want.dims(), "k {k} stride {s} {h}x{w}");
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "k {k} stride {s} {h}x{w}: max difference {diff}");
        }
    }
}
