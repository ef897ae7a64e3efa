//! Feasibility probe for a SimpleNet / GLASS-style detector (issue 16), before building
//! it as a method: frozen stage 4 + 5 features (standardised, 3x3 averaged, as
//! MemFlowNet's bank), a linear adaptor (identity start) and an MLP discriminator
//! (one hidden layer, leaky ReLU) trained with SimpleNet's truncated L1 loss against
//! Gaussian-noise feature anomalies and (unless `SYN=0`) synthetic image defects: one
//! per training image, a thresholded Perlin mask through which either another training
//! image (flipped, contrast and brightness jittered) or a Perlin texture (random tint) is
//! blended in; a cell counts as anomalous when a quarter of it is inside the mask.
//! Prints the image AUROC of the discriminator's map maximum per noise level, alone and
//! fused with the pooled-feature Gaussian (NF-BMR's global part: the larger of the two
//! z-scores, z from held-out good images), beside the nearest-neighbour distance to all
//! training patches. Results are in issue 16's note.
//!
//! `[SYN=0|1|0,1] [NN=0] [SIZE=256] [STAGES=4,5] cargo run --release --example synth_probe -- DATA N_TRAIN SIGMA[,SIGMA...] [STEPS] [HIDDEN]`
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
use flowspect::backbone::{self, BackboneMode};
use flowspect::data::dataset;
use flowspect::models::features::{self, FeatureTap};
use flowspect::models::memory::{MemoryBank, patch_features};
use flowspect::models::scoring;
use flowspect::progress::{CancelToken, NoProgress};
use std::path::PathBuf;

/// 2-D Perlin noise on an `s x s` grid with `res x res` lattice cells, in about [-1, 1].
fn perlin(s: usize, res: usize, rng: &mut flowspect::rng::Rng) -> Vec<f32> {
    let g: Vec<(f32, f32)> = (0..(res + 1) * (res + 1))
        .map(|_| {
            let a = rng.uniform() as f32 * std::f32::consts::TAU;
            (a.cos(), a.sin())
        })
        .collect();
    let fade = |t: f32| t * t * t * (t * (t * 6.0 - 15.0) + 10.0);
    let mut out = vec![0f32; s * s];
    for y in 0..s {
        for x in 0..s {
            let (fx, fy) = (x as f32 * res as f32 / s as f32, y as f32 * res as f32 / s as f32);
            let (cx, cy) = (fx as usize, fy as usize);
            let (tx, ty) = (fx - cx as f32, fy - cy as f32);
            let dot = |ix: usize, iy: usize| {
                let (gx, gy) = g[iy * (res + 1) + ix];
                gx * (tx - (ix - cx) as f32) + gy * (ty - (iy - cy) as f32)
            };
            let (u, v) = (fade(tx), fade(ty));
            let a = dot(cx, cy) + u * (dot(cx + 1, cy) - dot(cx, cy));
            let b = dot(cx, cy + 1) + u * (dot(cx + 1, cy + 1) - dot(cx, cy + 1));
            out[y * s + x] = (a + v * (b - a)) * std::f32::consts::SQRT_2;
        }
    }
    out
}

/// A synthetic defect in a prepared input `[3, s, s]`: a thresholded Perlin mask through
/// which a texture (another image flipped, with contrast and brightness jitter, or a
/// Perlin texture) is blended in. Returns the input and the mask.
fn synthesise(x: &[f32], other: &[f32], s: usize, rng: &mut flowspect::rng::Rng) -> (Vec<f32>, Vec<f32>) {
    let mask = loop {
        let res = 1 << (1 + rng.below(4));
        let p = perlin(s, res, rng);
        let th = 0.3 + 0.3 * rng.uniform() as f32;
        let m: Vec<f32> = p.iter().map(|&v| if v > th { 1.0 } else { 0.0 }).collect();
        let area = m.iter().sum::<f32>() / (s * s) as f32;
        if (0.005..0.3).contains(&area) {
            break m;
        }
    };
    let beta = 0.5 + 0.5 * rng.uniform() as f32;
    let texture: Vec<f32> = if rng.uniform() < 0.5 {
        let (a, b) = (0.3 + 1.4 * rng.uniform() as f32, (rng.uniform() as f32 - 0.5) * 2.0);
        (0..3 * s * s).map(|i| {
            let (c, r) = (i / (s * s), i % (s * s));
            a * other[c * s * s + (s * s - 1 - r)] + b
        }).collect()
    } else {
        let t = perlin(s, 1 << (2 + rng.below(4)), rng);
        let (a, tint) = (0.5 + 2.0 * rng.uniform() as f32, [rng.normal() as f32, rng.normal() as f32, rng.normal() as f32]);
        (0..3 * s * s).map(|i| a * t[i % (s * s)] + tint[i / (s * s)]).collect()
    };
    let out = (0..3 * s * s).map(|i| {
        let m = beta * mask[i % (s * s)];
        x[i] * (1.0 - m) + texture[i] * m
    }).collect();
    (out, mask)
}

/// Image maxima of per-position normalised maps (`te`, `ho`: [k * hw] row-major), with
/// the held-out maps' statistics as the methods normalise theirs
/// (`scoring::position_stats`); the held-out maxima are leave-one-out.
fn posnorm_max(te: &[f32], ho: &[f32], hw: usize) -> (Vec<f32>, Vec<f32>) {
    let rows: Vec<Vec<f32>> = ho.chunks(hw).map(|r| r.to_vec()).collect();
    let (mean, scale) = scoring::position_stats(rows.iter());
    let max = |v: &mut dyn Iterator<Item = f32>| v.fold(f32::NEG_INFINITY, f32::max);
    let t = te.chunks(hw).map(|r| max(&mut r.iter().zip(&mean).zip(&scale).map(|((v, m), s)| (v - m) / s))).collect();
    let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let h = scoring::loo_position_normalise(&refs).iter().map(|r| max(&mut r.iter().copied())).collect();
    (t, h)
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let data = PathBuf::from(&a[1]);
    let n_train: usize = a[2].parse()?;
    let sigmas: Vec<f64> = a[3].split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
    let steps: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(600);
    let hidden: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let dev = Device::Cpu;
    let net = backbone::load(&PathBuf::from(backbone::DEFAULT_BACKBONE), &dev, BackboneMode::Fast)?;
    let size: usize = std::env::var("SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let stages: Vec<usize> = std::env::var("STAGES").ok().map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect()).unwrap_or(vec![4, 5]);
    let mut tap = FeatureTap::new(size, stages);
    tap.reflect_cells = 2;
    tap.global_stages = vec![4, 5, 6];
    // Every 11th of n_train + n_train / 10 images held out (z-scores for the fusion).
    let all = dataset::spread(&dataset::training_images(&data)?, Some(n_train + n_train / 10));
    let held: Vec<PathBuf> = all.iter().step_by(11).cloned().collect();
    let train: Vec<PathBuf> = all.iter().enumerate().filter(|(i, _)| i % 11 != 0).map(|(_, p)| p.clone()).collect();
    let (hf, _) = features::extract_paths(&net, &tap, &held, 8, &NoProgress, &CancelToken::new())?;
    let test = dataset::test_samples(&data.join("test"))?;
    let t0 = std::time::Instant::now();
    let (tf, _) = features::extract_paths(&net, &tap, &train, 8, &NoProgress, &CancelToken::new())?;
    let paths: Vec<PathBuf> = test.iter().map(|s| s.path.clone()).collect();
    let (sf, _) = features::extract_paths(&net, &tap, &paths, 8, &NoProgress, &CancelToken::new())?;
    eprintln!("features {} train, {} test in {:.1} s", tf.len(), sf.len(), t0.elapsed().as_secs_f64());
    // Synthetic defects: one per training image.
    let t1 = std::time::Instant::now();
    let norm = net.config().normalization;
    let inputs: Vec<Vec<f32>> = train.iter().map(|p| Ok(flowspect::data::to_input(&flowspect::data::load_image(p)?, size, &norm))).collect::<anyhow::Result<_>>()?;
    let mut srng = flowspect::rng::Rng::new(11);
    let mut syn_in = Vec::new();
    let mut syn_mask = Vec::new();
    for i in 0..inputs.len() {
        let j = (i + 1 + srng.below(inputs.len() - 1)) % inputs.len();
        let (x, m) = synthesise(&inputs[i], &inputs[j], size, &mut srng);
        syn_in.push(x);
        syn_mask.push(m);
    }
    let mut syn_feats = Vec::new();
    for ch in syn_in.chunks(8) {
        let x = flowspect::data::image_io::batch_tensor(ch, size, &dev)?;
        syn_feats.push(features::extract(&net, &tap, &x)?);
    }
    let syn_feats = Tensor::cat(&syn_feats, 0)?;
    eprintln!("{} synthetic defects in {:.1} s", syn_in.len(), t1.elapsed().as_secs_f64());
    let labels: Vec<bool> = test.iter().map(|s| s.defect.unwrap_or(false)).collect();
    let trs: Vec<&Tensor> = tf.iter().map(|f| &f.features).collect();
    let (mean, std) = features::channel_stats(&trs)?;
    let prep = |fs: &[features::ImageFeatures]| -> anyhow::Result<Tensor> {
        let x = Tensor::stack(&fs.iter().map(|f| &f.features).collect::<Vec<_>>(), 0)?;
        Ok(patch_features(&x, &mean, &std, 3)?)
    };
    let xtr = prep(&tf)?; // [n, h, w, C]
    let xte = prep(&sf)?;
    let xho = prep(&hf)?;
    let nh = hf.len();
    let gauss = flowspect::models::global::GlobalGaussian::fit(&[4, 5, 6], &tf.iter().map(|f| f.global.as_slice()).collect::<Vec<_>>(), 0.1)?;
    let gte: Vec<f32> = sf.iter().map(|f| gauss.score(&f.global)).collect::<flowspect::error::Result<_>>()?;
    let gho: Vec<f32> = hf.iter().map(|f| gauss.score(&f.global)).collect::<flowspect::error::Result<_>>()?;
    let ms = |v: &[f32]| {
        let m = v.iter().sum::<f32>() / v.len() as f32;
        (m, (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / (v.len() - 1) as f32).sqrt())
    };
    let fused = |mte: &[f32], mho: &[f32]| -> f64 {
        let (a, b) = (ms(mho), ms(&gho));
        let f: Vec<f32> = mte.iter().zip(&gte).map(|(m, g)| ((m - a.0) / a.1).max((g - b.0) / b.1)).collect();
        flowspect::metrics::auroc(&f, &labels).unwrap_or(f64::NAN)
    };
    eprintln!("global Gaussian (stages 4-6): image AUROC {:.4}; {} held out", flowspect::metrics::auroc(&gte, &labels).unwrap_or(f64::NAN), nh);
    let (n, h, w, c) = xtr.dims4()?;
    let m = xte.dim(0)?;
    let ptr = xtr.reshape((n * h * w, c))?;
    // Synthetic patches whose cell is at least a quarter inside the mask.
    let xsy = patch_features(&syn_feats, &mean, &std, 3)?.reshape((n * h * w, c))?;
    let cell = size / h;
    let mut anom = Vec::new();
    for (i, m) in syn_mask.iter().enumerate() {
        for cy in 0..h {
            for cx in 0..w {
                let mut a = 0.0;
                for y in cy * cell..(cy + 1) * cell {
                    for x in cx * cell..(cx + 1) * cell {
                        a += m[y * size + x];
                    }
                }
                if a / (cell * cell) as f32 >= 0.25 {
                    anom.push((i * h * w + cy * w + cx) as u32);
                }
            }
        }
    }
    let n_anom = anom.len();
    let psy = xsy.index_select(&Tensor::new(anom, &dev)?, 0)?;
    eprintln!("{n_anom} synthetic anomalous patches");
    let gas_steps: usize = std::env::var("GAS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let syn_flags: Vec<bool> = std::env::var("SYN").map(|v| v.split(',').map(|f| f != "0").collect()).unwrap_or(vec![true]);
    let pte = xte.reshape((m * h * w, c))?;
    // Nearest-neighbour baseline (NN=0 skips it: a full set's patches take long).
    let t = std::time::Instant::now();
    if std::env::var("NN").map(|v| v != "0").unwrap_or(true) {
    let bank = MemoryBank::new(ptr.clone())?;
    let dm = bank.nearest_distance(&pte)?.to_vec1::<f32>()?;
    let dhm = bank.nearest_distance(&xho.reshape((nh * h * w, c))?)?.to_vec1::<f32>()?;
    let d: Vec<f32> = dm.chunks(h * w).map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
    let dho: Vec<f32> = dhm.chunks(h * w).map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
    eprintln!("nn + global fused: {:.4}", fused(&d, &dho));
    let (pd, pdh) = posnorm_max(&dm, &dhm, h * w);
    eprintln!("nn position-normalised: {:.4}, fused with global {:.4}", flowspect::metrics::auroc(&pd, &labels).unwrap_or(f64::NAN), fused(&pd, &pdh));
    let nnd = bank.nearest_distance(&ptr.narrow(0, 0, 4096.min(n * h * w))?)?;
    eprintln!(
        "nn: image AUROC {:.4} ({:.1} s); typical good NN distance (self, 0) / test good median max {:.3}",
        flowspect::metrics::auroc(&d, &labels).unwrap_or(f64::NAN),
        t.elapsed().as_secs_f64(),
        nnd.mean_all()?.to_scalar::<f32>()?
    );
    }
    for (use_syn, sigma) in syn_flags.iter().flat_map(|&y| sigmas.iter().map(move |&s| (y, s))) {
        let t = std::time::Instant::now();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let adaptor = candle_nn::linear(c, c, vb.pp("adaptor"))?;
        // Identity start for the adaptor.
        {
            let data = vm.data().lock().unwrap();
            data.get("adaptor.weight").unwrap().set(&Tensor::eye(c, DType::F32, &dev)?)?;
            data.get("adaptor.bias").unwrap().set(&Tensor::zeros(c, DType::F32, &dev)?)?;
        }
        let l1 = candle_nn::linear(c, hidden, vb.pp("d1"))?;
        let l2 = candle_nn::linear(hidden, 1, vb.pp("d2"))?;
        let disc = |x: &Tensor| -> candle_core::Result<Tensor> {
            let y = l1.forward(x)?;
            let y = (y.relu()? - (y.neg()?.relu()? * 0.2)?)?;
            l2.forward(&y)?.squeeze(D::Minus1)
        };
        let mut opt = candle_nn::AdamW::new(vm.all_vars(), candle_nn::ParamsAdamW { lr: 2e-4, weight_decay: 1e-5, ..Default::default() })?;
        let mut rng = flowspect::rng::Rng::new(7);
        let batch = 1024;
        let total = n * h * w;
        let mut last = 0.0;
        for step in 0..steps {
            let idx: Vec<u32> = (0..batch).map(|_| (rng.next_u64() % total as u64) as u32).collect();
            let x = ptr.index_select(&Tensor::new(idx, &dev)?, 0)?;
            let q = adaptor.forward(&x)?;
            let noise = (Tensor::randn(0f32, 1f32, q.shape(), &dev)? * sigma)?;
            let fake = (&q + noise)?;
            let ts = disc(&q)?;
            let fs = disc(&fake)?;
            let mut loss = ((ts.affine(-1.0, 0.5)?.relu()?.mean_all()? + fs.affine(1.0, 0.5)?.relu()?.mean_all()?))?;
            if gas_steps > 0 {
                // GLASS's gradient-ascent synthesis: push the noisy features up the
                // discriminator's "good" output (ascent on its loss for them as
                // anomalies: hard negatives), each step normalised, then projected back
                // into the band [r, 2r] around the good feature.
                let qd = q.detach();
                let mut h = fake.detach();
                let r = sigma * (c as f64).sqrt();
                for _ in 0..gas_steps {
                    let v = candle_core::Var::from_tensor(&h)?;
                    let g = disc(v.as_tensor())?.sum_all()?.backward()?;
                    let g = g.get(v.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient"))?.clone();
                    let gn = g.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
                    h = (h + (g.broadcast_div(&gn)? * (0.1 * r))?)?;
                    let d = (&h - &qd)?;
                    let dn = d.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
                    let a = dn.clamp(r, 2.0 * r)?;
                    h = (&qd + d.broadcast_mul(&(a / &dn)?)?)?;
                }
                loss = (loss + disc(&h.detach())?.affine(1.0, 0.5)?.relu()?.mean_all()?)?;
            }
            if use_syn {
                let idx: Vec<u32> = (0..batch / 2).map(|_| (rng.next_u64() % n_anom as u64) as u32).collect();
                let sy = adaptor.forward(&psy.index_select(&Tensor::new(idx, &dev)?, 0)?)?;
                loss = (loss + disc(&sy)?.affine(1.0, 0.5)?.relu()?.mean_all()?)?;
            }
            opt.backward_step(&loss)?;
            if step + 1 == steps {
                last = loss.to_scalar::<f32>()?;
            }
        }
        let maps = |p: &Tensor| -> anyhow::Result<Vec<f32>> { Ok(disc(&adaptor.forward(p)?)?.neg()?.to_vec1::<f32>()?) };
        let smap = maps(&pte)?;
        let shmap = maps(&xho.reshape((nh * h * w, c))?)?;
        let mx = |v: &[f32]| -> Vec<f32> { v.chunks(h * w).map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect() };
        let (s, sho) = (mx(&smap), mx(&shmap));
        let (ps, psh) = posnorm_max(&smap, &shmap, h * w);
        eprintln!("  position-normalised: image AUROC {:.4}, fused with global {:.4}", flowspect::metrics::auroc(&ps, &labels).unwrap_or(f64::NAN), fused(&ps, &psh));
        eprintln!(
            "synthetic defects {use_syn}, sigma {sigma}: image AUROC {:.4}, fused with global {:.4}, final loss {last:.4}, {:.1} s",
            flowspect::metrics::auroc(&s, &labels).unwrap_or(f64::NAN),
            fused(&s, &sho),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
