//! Feasibility probe for a SimpleNet-style detector (issue 16): frozen stage 4 + 5
//! features (standardised, 3x3 averaged, as MemFlowNet's bank), a linear adaptor and an
//! MLP discriminator trained against Gaussian-noise feature anomalies. Prints the image
//! AUROC of the discriminator's map maximum per noise level, beside the nearest-neighbour
//! distance (a full bank of the same training patches).
//!
//! `cargo run --release --example synth_probe -- DATA N_TRAIN SIGMA[,SIGMA...] [STEPS] [HIDDEN]`
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
use flowspect::backbone::{self, BackboneMode};
use flowspect::data::dataset;
use flowspect::models::features::{self, FeatureTap};
use flowspect::models::memory::{MemoryBank, patch_features};
use flowspect::progress::{CancelToken, NoProgress};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let data = PathBuf::from(&a[1]);
    let n_train: usize = a[2].parse()?;
    let sigmas: Vec<f64> = a[3].split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
    let steps: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(600);
    let hidden: usize = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let dev = Device::Cpu;
    let net = backbone::load(&PathBuf::from(backbone::DEFAULT_BACKBONE), &dev, BackboneMode::Fast)?;
    let mut tap = FeatureTap::new(256, vec![4, 5]);
    tap.reflect_cells = 2;
    let train = dataset::spread(&dataset::training_images(&data)?, Some(n_train));
    let test = dataset::test_samples(&data.join("test"))?;
    let t0 = std::time::Instant::now();
    let (tf, _) = features::extract_paths(&net, &tap, &train, 8, &NoProgress, &CancelToken::new())?;
    let paths: Vec<PathBuf> = test.iter().map(|s| s.path.clone()).collect();
    let (sf, _) = features::extract_paths(&net, &tap, &paths, 8, &NoProgress, &CancelToken::new())?;
    eprintln!("features {} train, {} test in {:.1} s", tf.len(), sf.len(), t0.elapsed().as_secs_f64());
    let labels: Vec<bool> = test.iter().map(|s| s.defect.unwrap_or(false)).collect();
    let trs: Vec<&Tensor> = tf.iter().map(|f| &f.features).collect();
    let (mean, std) = features::channel_stats(&trs)?;
    let prep = |fs: &[features::ImageFeatures]| -> anyhow::Result<Tensor> {
        let x = Tensor::stack(&fs.iter().map(|f| &f.features).collect::<Vec<_>>(), 0)?;
        Ok(patch_features(&x, &mean, &std, 3)?)
    };
    let xtr = prep(&tf)?; // [n, h, w, C]
    let xte = prep(&sf)?;
    let (n, h, w, c) = xtr.dims4()?;
    let m = xte.dim(0)?;
    let ptr = xtr.reshape((n * h * w, c))?;
    let pte = xte.reshape((m * h * w, c))?;
    // Nearest-neighbour baseline.
    let t = std::time::Instant::now();
    let bank = MemoryBank::new(ptr.clone())?;
    let d = bank.nearest_distance(&pte)?.reshape((m, h * w))?.max(D::Minus1)?.to_vec1::<f32>()?;
    let nnd = bank.nearest_distance(&ptr.narrow(0, 0, 4096.min(n * h * w))?)?;
    eprintln!(
        "nn: image AUROC {:.4} ({:.1} s); typical good NN distance (self, 0) / test good median max {:.3}",
        flowspect::metrics::auroc(&d, &labels).unwrap_or(f64::NAN),
        t.elapsed().as_secs_f64(),
        nnd.mean_all()?.to_scalar::<f32>()?
    );
    for &sigma in &sigmas {
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
            let loss = ((ts.affine(-1.0, 0.5)?.relu()?.mean_all()? + fs.affine(1.0, 0.5)?.relu()?.mean_all()?))?;
            opt.backward_step(&loss)?;
            if step + 1 == steps {
                last = loss.to_scalar::<f32>()?;
            }
        }
        let score = |p: &Tensor| -> anyhow::Result<Vec<f32>> { Ok(disc(&adaptor.forward(p)?)?.neg()?.reshape((m, h * w))?.max(D::Minus1)?.to_vec1::<f32>()?) };
        let s = score(&pte)?;
        eprintln!(
            "sigma {sigma}: image AUROC {:.4}, final loss {last:.4}, {:.1} s",
            flowspect::metrics::auroc(&s, &labels).unwrap_or(f64::NAN),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
