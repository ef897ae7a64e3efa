//! The training loop shared by the trainable networks: AdamW over shuffled batches,
//! a held-out validation loss each epoch, early stopping when it plateaus, and the
//! best epoch's weights restored at the end.
use crate::error::{Error, Result};
use crate::progress::{CancelToken, Progress, ProgressSink};
use crate::rng::Rng;
use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Stop after this many epochs without a relative improvement of `min_delta`.
    pub patience: usize,
    pub min_delta: f64,
}

/// What one training run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub train_loss: Vec<f64>,
    pub val_loss: Vec<f64>,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub seconds: f64,
}

fn snapshot(vm: &VarMap) -> Result<Vec<(String, Tensor)>> {
    let data = vm.data().lock().map_err(|_| Error::Data("weights lock poisoned".into()))?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn restore(vm: &VarMap, snap: &[(String, Tensor)]) -> Result<()> {
    let data = vm.data().lock().map_err(|_| Error::Data("weights lock poisoned".into()))?;
    for (k, t) in snap {
        if let Some(v) = data.get(k) {
            v.set(t)?;
        }
    }
    Ok(())
}

/// Trains the variables of `vm`. `loss(batch_indices)` returns the mean loss of a
/// batch of training items; `val_loss(batch_indices)` of validation items.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    stage: &str,
    vm: &VarMap,
    cfg: &OptimConfig,
    n_train: usize,
    n_val: usize,
    seed: u64,
    loss: &dyn Fn(&[usize]) -> Result<Tensor>,
    val_loss: &dyn Fn(&[usize]) -> Result<Tensor>,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<History> {
    let start = std::time::Instant::now();
    let mut opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let mut rng = Rng::new(seed);
    let mut hist = History::default();
    let mut best = f64::INFINITY;
    let mut best_snap = None;
    let mut since_best = 0;
    let steps = n_train.div_ceil(cfg.batch_size.max(1));
    progress.report(Progress::Stage {
        name: stage.to_string(),
        total: cfg.epochs * steps,
    });
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n_train).collect();
        rng.shuffle(&mut order);
        let mut sum = 0.0;
        for (s, b) in order.chunks(cfg.batch_size.max(1)).enumerate() {
            cancel.check()?;
            let l = loss(b)?;
            let v = l.to_scalar::<f32>()? as f64;
            if !v.is_finite() {
                return Err(Error::Data(format!(
                    "{stage}: training diverged (loss {v}) in epoch {}; try a lower learning rate",
                    epoch + 1
                )));
            }
            opt.backward_step(&l)?;
            sum += v * b.len() as f64;
            progress.report(Progress::Step { done: epoch * steps + s + 1 });
        }
        let train = sum / n_train.max(1) as f64;
        let val = if n_val > 0 {
            let idx: Vec<usize> = (0..n_val).collect();
            let mut vs = 0.0;
            for b in idx.chunks(cfg.batch_size.max(1)) {
                cancel.check()?;
                vs += val_loss(b)?.to_scalar::<f32>()? as f64 * b.len() as f64;
            }
            vs / n_val as f64
        } else {
            train
        };
        hist.train_loss.push(train);
        hist.val_loss.push(val);
        progress.report(Progress::Epoch {
            stage: stage.to_string(),
            epoch: epoch + 1,
            epochs: cfg.epochs,
            loss: train,
        });
        progress.report(Progress::Info(format!(
            "{stage} epoch {}/{}: train loss {train:.5}, validation loss {val:.5}",
            epoch + 1,
            cfg.epochs
        )));
        let improved = val < best - cfg.min_delta * best.abs().max(1e-12);
        if val < best {
            best = val;
            hist.best_epoch = epoch + 1;
            best_snap = Some(snapshot(vm)?);
        }
        if improved {
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                hist.stopped_early = epoch + 1 < cfg.epochs;
                break;
            }
        }
    }
    if let Some(s) = best_snap {
        restore(vm, &s)?;
    }
    hist.seconds = start.elapsed().as_secs_f64();
    Ok(hist)
}

/// Draws every randomly initialised variable of `vm` again from a seeded generator, with
/// candle_nn::linear's distributions (weights Kaiming-normal over the fan-in, biases
/// uniform in +-1/sqrt(fan-in)): candle's CPU generator cannot be seeded, so without
/// this two trainings with the same seed differ. Variables that start at zero (the flow
/// couplings' last layers) stay zero. Names are visited in sorted order.
pub fn seeded_init(vm: &VarMap, seed: u64) -> Result<()> {
    let data = vm.data().lock().map_err(|_| Error::Data("weights lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = Rng::new(seed);
    for name in names {
        let var = &data[name];
        let t = var.as_tensor();
        if t.abs()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? == 0.0 {
            continue;
        }
        let dims = t.dims().to_vec();
        let fan_in = if name.ends_with("bias") {
            let w = name.trim_end_matches("bias").to_string() + "weight";
            match data.get(&w) {
                Some(w) => w.as_tensor().dims().iter().skip(1).product::<usize>(),
                None => continue,
            }
        } else {
            dims.iter().skip(1).product::<usize>()
        }
        .max(1) as f64;
        let n = t.elem_count();
        let v: Vec<f64> = if name.ends_with("bias") {
            let b = 1.0 / fan_in.sqrt();
            (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * b).collect()
        } else if name.ends_with("weight") {
            let sd = (2.0 / fan_in).sqrt();
            (0..n).map(|_| rng.normal() * sd).collect()
        } else {
            continue;
        };
        var.set(&Tensor::from_vec(v, dims, t.device())?.to_dtype(t.dtype())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod seeded_init_tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Init, VarBuilder};

    #[test]
    fn seeded_init_draws_candles_distributions_and_keeps_zero_layers() {
        let draw = |seed| {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let l = candle_nn::linear(400, 300, vb.pp("a")).unwrap();
            let z = vb.pp("z").get_with_hints((5, 4), "weight", Init::Const(0.0)).unwrap();
            seeded_init(&vm, seed).unwrap();
            let w = l.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = l.bias().unwrap().to_vec1::<f32>().unwrap();
            (w, b, z.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
        };
        let (w, b, z) = draw(1);
        let sd = (w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len() as f64).sqrt();
        assert!((sd - (2.0f64 / 400.0).sqrt()).abs() < 0.002, "weight sd {sd}");
        let bound = 1.0 / 20.0;
        assert!(b.iter().all(|v| v.abs() <= bound) && b.iter().any(|v| v.abs() > 0.8 * bound), "bias not uniform in +-{bound}");
        assert_eq!(z, 0.0, "a zero-initialised layer stays zero");
        assert_eq!(draw(1).0, w);
        assert_ne!(draw(2).0, w);
    }
}
