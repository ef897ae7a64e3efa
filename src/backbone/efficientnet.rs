//! EfficientNet feature extractor (the paper's SNN) that exposes every stage's output.
//!
//! Two interchangeable execution paths share one set of weights:
//! - [`BackboneMode::Fast`]: batch norm folded into the convolutions at load time,
//!   pointwise convolutions as one matrix product, depthwise convolutions by
//!   [`super::depthwise`] (its CPU kernel, or shifted views on GPUs), activations fused
//!   where the kernel allows.
//! - [`BackboneMode::Reference`]: the plain candle formulation (grouped `conv2d`,
//!   batch norm as separate ops). Kept for tests and the benchmark's comparison.
use super::config::{BlockSpec, EfficientNetConfig, Family, Padding};
use super::depthwise::{Activation, DepthwiseConv, DepthwiseOp, shift_add, shift_add_taps};
use super::fused::{BiasAct, BiasResidual};
use crate::error::{Error, Result};
use candle_core::{D, DType, Device, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackboneMode {
    #[default]
    Fast,
    Reference,
}

#[derive(Debug, Clone)]
struct BatchNorm {
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
}

/// A convolution without bias followed by batch norm, kept raw and folded.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor,
    bn: BatchNorm,
    folded_w: Tensor,
    folded_b: Tensor,
    kernel: usize,
    stride: usize,
    groups: usize,
    /// CPU depthwise kernel (fast path), when this is a depthwise convolution on CPU.
    dw: Option<DepthwiseConv>,
    /// The folded bias as a plain vector, for the fused CPU epilogues (CPU only).
    bias_cpu: Option<Arc<Vec<f32>>>,
    /// Depthwise convolution on other devices: the folded kernel split per position
    /// for [`shift_add`].
    taps: Option<Vec<Tensor>>,
}

#[derive(Debug, Clone)]
struct Se {
    reduce_w: Tensor,
    reduce_b: Tensor,
    expand_w: Tensor,
    expand_b: Tensor,
}

#[derive(Debug, Clone)]
struct Block {
    spec: BlockSpec,
    expand: Option<ConvBn>,
    dw: ConvBn,
    se: Option<Se>,
    project: ConvBn,
}

pub struct EfficientNet {
    cfg: EfficientNetConfig,
    stem: ConvBn,
    blocks: Vec<Block>,
    head: Option<ConvBn>,
    classifier: Option<(Tensor, Tensor)>,
    act: Activation,
    mode: BackboneMode,
    device: Device,
}

fn get(t: &HashMap<String, Tensor>, name: &str, device: &Device) -> Result<Tensor> {
    t.get(name)
        .ok_or_else(|| Error::Data(format!("backbone weights lack tensor '{name}'")))?
        .to_dtype(DType::F32)?
        .to_device(device)
        .map_err(Error::from)
}

fn load_bn(t: &HashMap<String, Tensor>, p: &str, dev: &Device) -> Result<BatchNorm> {
    Ok(BatchNorm {
        gamma: get(t, &format!("{p}.weight"), dev)?,
        beta: get(t, &format!("{p}.bias"), dev)?,
        mean: get(t, &format!("{p}.running_mean"), dev)?,
        var: get(t, &format!("{p}.running_var"), dev)?,
    })
}

/// TensorFlow "SAME" (or symmetric) padding: (before, after) for one axis.
pub fn pad_amounts(padding: Padding, input: usize, k: usize, s: usize) -> (usize, usize) {
    match padding {
        Padding::Same => {
            let out = input.div_ceil(s);
            let total = ((out - 1) * s + k).saturating_sub(input);
            (total / 2, total - total / 2)
        }
        Padding::Symmetric => ((k - 1) / 2, (k - 1) / 2),
    }
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn load(
        t: &HashMap<String, Tensor>,
        p: &str,
        kernel: usize,
        stride: usize,
        groups: usize,
        eps: f64,
        act: Activation,
        dev: &Device,
    ) -> Result<Self> {
        let weight = get(t, &format!("{p}.conv.weight"), dev)?;
        let bn = load_bn(t, &format!("{p}.bn"), dev)?;
        let (co, ci, kh, kw) = weight.dims4()?;
        if kh != kernel || kw != kernel || (groups > 1 && ci != 1) || (groups == 1 && ci == 0) {
            return Err(Error::Data(format!(
                "backbone weights: '{p}.conv.weight' has shape {:?}, the architecture expects a {kernel}x{kernel} kernel",
                weight.dims()
            )));
        }
        let scale = (&bn.gamma / (bn.var.clone() + eps)?.sqrt()?)?;
        let folded_w = weight.broadcast_mul(&scale.reshape((co, 1, 1, 1))?)?;
        let folded_b = (&bn.beta - (&bn.mean * &scale)?)?;
        let dw = if groups > 1 && dev.is_cpu() {
            Some(DepthwiseConv {
                weight: Arc::new(folded_w.flatten_all()?.to_vec1::<f32>()?),
                bias: Arc::new(folded_b.to_vec1::<f32>()?),
                channels: co,
                kernel,
                stride,
                pad: (0, 0),
                activation: act,
            })
        } else {
            None
        };
        let bias_cpu = if dev.is_cpu() { Some(Arc::new(folded_b.to_vec1::<f32>()?)) } else { None };
        let taps = if groups > 1 && !dev.is_cpu() { Some(shift_add_taps(&folded_w)?) } else { None };
        Ok(Self {
            weight,
            bn,
            folded_w,
            folded_b,
            kernel,
            stride,
            groups,
            dw,
            bias_cpu,
            taps,
        })
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::None => x.clone(),
        Activation::Relu6 => x.clamp(0f32, 6f32)?,
        Activation::Silu => candle_nn::ops::silu(x)?,
    })
}

impl EfficientNet {
    /// Builds the network from canonical tensors (see [`super::import`]).
    pub fn from_tensors(
        cfg: EfficientNetConfig,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
        mode: BackboneMode,
    ) -> Result<Self> {
        Self::from_tensors_upto(cfg, tensors, device, mode, 7)
    }

    /// Like [`Self::from_tensors`], building only the stages up to `max_stage` (a
    /// feature extractor does not need the rest, nor their weights).
    pub fn from_tensors_upto(
        cfg: EfficientNetConfig,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
        mode: BackboneMode,
        max_stage: usize,
    ) -> Result<Self> {
        let eps = cfg.bn_eps;
        let act = match cfg.family {
            Family::Lite => Activation::Relu6,
            Family::B => Activation::Silu,
        };
        let stem = ConvBn::load(tensors, "stem", 3, 2, 1, eps, act, device)?;
        let mut blocks = Vec::new();
        for (i, spec) in cfg.blocks().into_iter().enumerate() {
            if spec.stage > max_stage {
                break;
            }
            let p = format!("blocks.{i}");
            let mid = spec.cin * spec.expand;
            let expand = if spec.expand != 1 {
                Some(ConvBn::load(tensors, &format!("{p}.expand"), 1, 1, 1, eps, act, device)?)
            } else {
                None
            };
            let dw = ConvBn::load(
                tensors,
                &format!("{p}.dw"),
                spec.kernel,
                spec.stride,
                mid,
                eps,
                act,
                device,
            )?;
            let se = match spec.se {
                Some(_) => Some(Se {
                    reduce_w: get(tensors, &format!("{p}.se.reduce.weight"), device)?,
                    reduce_b: get(tensors, &format!("{p}.se.reduce.bias"), device)?,
                    expand_w: get(tensors, &format!("{p}.se.expand.weight"), device)?,
                    expand_b: get(tensors, &format!("{p}.se.expand.bias"), device)?,
                }),
                None => None,
            };
            let project = ConvBn::load(
                tensors,
                &format!("{p}.project"),
                1,
                1,
                1,
                eps,
                Activation::None,
                device,
            )?;
            if project.weight.dim(0)? != spec.cout || dw.weight.dim(0)? != mid {
                return Err(Error::Data(format!(
                    "backbone weights do not fit {}: block {i} has {} output channels, expected {}",
                    cfg.variant,
                    project.weight.dim(0)?,
                    spec.cout
                )));
            }
            blocks.push(Block {
                spec,
                expand,
                dw,
                se,
                project,
            });
        }
        let head = if max_stage == 7 && tensors.contains_key("head.conv.weight") {
            Some(ConvBn::load(tensors, "head", 1, 1, 1, eps, act, device)?)
        } else {
            None
        };
        let classifier = match (tensors.get("classifier.weight"), tensors.get("classifier.bias")) {
            (Some(_), Some(_)) => Some((
                get(tensors, "classifier.weight", device)?,
                get(tensors, "classifier.bias", device)?,
            )),
            _ => None,
        };
        Ok(Self {
            cfg,
            stem,
            blocks,
            head,
            classifier,
            act,
            mode,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &EfficientNetConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn mode(&self) -> BackboneMode {
        self.mode
    }
    pub fn set_mode(&mut self, mode: BackboneMode) {
        self.mode = mode;
    }

    /// The canonical tensors this network was built from, for the stages it has.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        let mut put_cb = |p: &str, c: &ConvBn| {
            m.insert(format!("{p}.conv.weight"), c.weight.clone());
            m.insert(format!("{p}.bn.weight"), c.bn.gamma.clone());
            m.insert(format!("{p}.bn.bias"), c.bn.beta.clone());
            m.insert(format!("{p}.bn.running_mean"), c.bn.mean.clone());
            m.insert(format!("{p}.bn.running_var"), c.bn.var.clone());
        };
        put_cb("stem", &self.stem);
        for (i, b) in self.blocks.iter().enumerate() {
            if let Some(e) = &b.expand {
                put_cb(&format!("blocks.{i}.expand"), e);
            }
            put_cb(&format!("blocks.{i}.dw"), &b.dw);
            put_cb(&format!("blocks.{i}.project"), &b.project);
        }
        if let Some(h) = &self.head {
            put_cb("head", h);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if let Some(se) = &b.se {
                m.insert(format!("blocks.{i}.se.reduce.weight"), se.reduce_w.clone());
                m.insert(format!("blocks.{i}.se.reduce.bias"), se.reduce_b.clone());
                m.insert(format!("blocks.{i}.se.expand.weight"), se.expand_w.clone());
                m.insert(format!("blocks.{i}.se.expand.bias"), se.expand_b.clone());
            }
        }
        if let Some((w, b)) = &self.classifier {
            m.insert("classifier.weight".into(), w.clone());
            m.insert("classifier.bias".into(), b.clone());
        }
        m
    }

    fn pad_input(&self, x: &Tensor, k: usize, s: usize) -> Result<(Tensor, (usize, usize))> {
        let (_, _, h, w) = x.dims4()?;
        let (t, b) = pad_amounts(self.cfg.padding, h, k, s);
        let (l, r) = pad_amounts(self.cfg.padding, w, k, s);
        let x = if t + b > 0 || l + r > 0 {
            x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?
        } else {
            x.clone()
        };
        Ok((x, (t, l)))
    }

    fn bn_ref(&self, x: &Tensor, bn: &BatchNorm) -> Result<Tensor> {
        let c = bn.gamma.dim(0)?;
        let sh = (1, c, 1, 1);
        let x = x.broadcast_sub(&bn.mean.reshape(sh)?)?;
        let denom = (bn.var.clone() + self.cfg.bn_eps)?.sqrt()?;
        let x = x.broadcast_div(&denom.reshape(sh)?)?;
        Ok(x.broadcast_mul(&bn.gamma.reshape(sh)?)?
            .broadcast_add(&bn.beta.reshape(sh)?)?)
    }

    /// k x k convolution (stem or depthwise) with batch norm and activation.
    fn conv_bn(&self, x: &Tensor, c: &ConvBn, act: Activation) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        match (self.mode, &c.dw) {
            (BackboneMode::Fast, Some(dw)) => {
                let (t, b) = pad_amounts(self.cfg.padding, h, c.kernel, c.stride);
                let (l, r) = pad_amounts(self.cfg.padding, w, c.kernel, c.stride);
                let mut dw = dw.clone();
                dw.pad = (t, l);
                let (oh, ow) = dw.out_hw(h, w, (t + b, l + r));
                let x = x.contiguous()?;
                Ok(x.apply_op1_no_bwd(&DepthwiseOp {
                    conv: &dw,
                    out_h: oh,
                    out_w: ow,
                })?)
            }
            (BackboneMode::Fast, None) => {
                let (xp, _) = self.pad_input(x, c.kernel, c.stride)?;
                let y = match &c.taps {
                    Some(taps) => shift_add(&xp, taps, c.kernel, c.stride)?,
                    None => xp.conv2d(&c.folded_w, 0, c.stride, 1, c.groups)?,
                };
                match &c.bias_cpu {
                    Some(bias) => {
                        let y = y.contiguous()?;
                        y.inplace_op1(&BiasAct { bias, activation: act })?;
                        Ok(y)
                    }
                    None => activate(&y.broadcast_add(&c.folded_b.reshape((1, (), 1, 1))?)?, act),
                }
            }
            (BackboneMode::Reference, _) => {
                let (xp, _) = self.pad_input(x, c.kernel, c.stride)?;
                let y = xp.conv2d(&c.weight, 0, c.stride, 1, c.groups)?;
                activate(&self.bn_ref(&y, &c.bn)?, act)
            }
        }
    }

    /// 1x1 convolution with batch norm and activation, plus `residual` when given
    /// (added after the activation; projections have none).
    fn pointwise(&self, x: &Tensor, c: &ConvBn, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
        match self.mode {
            BackboneMode::Fast => {
                let (b, ci, h, w) = x.dims4()?;
                let co = c.folded_w.dim(0)?;
                let wmat = c.folded_w.reshape((co, ci))?;
                let y = wmat.broadcast_matmul(&x.reshape((b, ci, h * w))?)?.reshape((b, co, h, w))?;
                match (&c.bias_cpu, residual) {
                    // One pass over the fresh product: bias, activation, residual.
                    (Some(bias), Some(r)) if act == Activation::None => {
                        y.inplace_op2(&r.contiguous()?, &BiasResidual { bias })?;
                        Ok(y)
                    }
                    (Some(bias), r) => {
                        y.inplace_op1(&BiasAct { bias, activation: act })?;
                        match r {
                            Some(r) => Ok((y + r)?),
                            None => Ok(y),
                        }
                    }
                    (None, r) => {
                        let y = activate(&y.broadcast_add(&c.folded_b.reshape((1, co, 1, 1))?)?, act)?;
                        match r {
                            Some(r) => Ok((y + r)?),
                            None => Ok(y),
                        }
                    }
                }
            }
            BackboneMode::Reference => {
                let y = activate(&self.bn_ref(&x.conv2d(&c.weight, 0, 1, 1, 1)?, &c.bn)?, act)?;
                match residual {
                    Some(r) => Ok((y + r)?),
                    None => Ok(y),
                }
            }
        }
    }

    fn block(&self, x: &Tensor, b: &Block) -> Result<Tensor> {
        let mut h = match &b.expand {
            Some(e) => self.pointwise(x, e, self.act, None)?,
            None => x.clone(),
        };
        h = self.conv_bn(&h, &b.dw, self.act)?;
        if let Some(se) = &b.se {
            let s = h.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
            let s = s
                .conv2d(&se.reduce_w, 0, 1, 1, 1)?
                .broadcast_add(&se.reduce_b.reshape((1, (), 1, 1))?)?;
            let s = candle_nn::ops::silu(&s)?;
            let s = s
                .conv2d(&se.expand_w, 0, 1, 1, 1)?
                .broadcast_add(&se.expand_b.reshape((1, (), 1, 1))?)?;
            h = h.broadcast_mul(&candle_nn::ops::sigmoid(&s)?)?;
        }
        let residual = (b.spec.stride == 1 && b.spec.cin == b.spec.cout).then_some(x);
        self.pointwise(&h, &b.project, Activation::None, residual)
    }

    /// Runs the network up to `last_stage` (1..=7) on a normalised `[B, 3, H, W]`
    /// batch and returns the output of every stage up to it, stage 1 first.
    pub fn forward_stages(&self, x: &Tensor, last_stage: usize) -> Result<Vec<Tensor>> {
        super::config::check_stage(last_stage)?;
        if self.blocks.last().is_some_and(|b| b.spec.stage < last_stage) {
            return Err(Error::Config(format!(
                "this backbone was loaded up to stage {}, stage {last_stage} was asked for",
                self.blocks.last().map(|b| b.spec.stage).unwrap_or(0)
            )));
        }
        let mut h = self.conv_bn(x, &self.stem, self.act)?;
        let mut outs = Vec::with_capacity(last_stage);
        for (i, b) in self.blocks.iter().enumerate() {
            if b.spec.stage > last_stage {
                break;
            }
            h = self.block(&h, b)?;
            let last_of_stage = self
                .blocks
                .get(i + 1)
                .map(|n| n.spec.stage != b.spec.stage)
                .unwrap_or(true);
            if last_of_stage {
                outs.push(h.clone());
            }
        }
        Ok(outs)
    }

    /// ImageNet logits `[B, 1000]`, when the weights include the head and classifier.
    pub fn forward_logits(&self, x: &Tensor) -> Result<Tensor> {
        let (head, (fw, fb)) = match (&self.head, &self.classifier) {
            (Some(h), Some(c)) => (h, c),
            _ => {
                return Err(Error::Data(
                    "these backbone weights have no classifier head".into(),
                ));
            }
        };
        let feats = self.forward_stages(x, 7)?;
        let last = feats.last().ok_or_else(|| Error::Data("no stages".into()))?;
        let h = self.pointwise(last, head, self.act, None)?;
        let pooled = h.mean(D::Minus1)?.mean(D::Minus1)?;
        Ok(pooled.matmul(&fw.t()?)?.broadcast_add(fb)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{default_backbone_path, load};

    /// The path a GPU takes (depthwise by `shift_add`, biases and activations as tensor
    /// ops), run on the CPU, against the CPU kernels: every stage's output must agree.
    #[test]
    fn gpu_path_matches_the_cpu_kernels() {
        let dev = Device::Cpu;
        let cpu = load(&default_backbone_path(), &dev, BackboneMode::Fast).unwrap();
        let mut gpu_like = load(&default_backbone_path(), &dev, BackboneMode::Fast).unwrap();
        let strip = |c: &mut ConvBn| {
            c.dw = None;
            c.bias_cpu = None;
            if c.groups > 1 {
                c.taps = Some(shift_add_taps(&c.folded_w).unwrap());
            }
        };
        strip(&mut gpu_like.stem);
        for b in &mut gpu_like.blocks {
            if let Some(e) = b.expand.as_mut() {
                strip(e);
            }
            strip(&mut b.dw);
            strip(&mut b.project);
        }
        assert!(gpu_like.blocks.iter().all(|b| b.dw.taps.is_some()));
        let n = 2 * 3 * 100 * 100;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 2000) as f32 / 1000.0) - 1.0).collect();
        let x = Tensor::from_vec(x, (2, 3, 100, 100), &dev).unwrap();
        let want = cpu.forward_stages(&x, 7).unwrap();
        let got = gpu_like.forward_stages(&x, 7).unwrap();
        assert_eq!(want.len(), got.len());
        for (s, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.dims(), g.dims(), "stage {}", s + 1);
            let scale = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
            let diff = (w - g).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4 * scale, "stage {}: max difference {diff} (largest value {scale})", s + 1);
        }
    }
}
