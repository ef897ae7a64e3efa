//! Diagnostic: how well do plain backbone features separate good from defect on a
//! dataset? Nearest-neighbour distance of each test position to a bank of training
//! positions; prints image and pixel AUROC. Usage:
//! probe <mvtec dir> <image size> <stages,comma> <n train>
use candle_core::{D, Device, Tensor};
use flowspect::backbone::{self, BackboneMode};
use flowspect::models::features::{FeatureTap, extract_paths};
use flowspect::progress::{CancelToken, NoProgress};
use flowspect::{data, metrics, postprocess};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&a[1]);
    let size: usize = a[2].parse()?;
    let stages: Vec<usize> = a[3].split(',').map(|s| s.parse().unwrap()).collect();
    let n: usize = a[4].parse()?;
    let net = backbone::load(&backbone::default_backbone_path(), &Device::Cpu, BackboneMode::Fast)?;
    let tap = FeatureTap::new(size, stages);
    let train = data::training_images(&dir)?;
    let train: Vec<_> = (0..n).map(|i| train[i * train.len() / n].clone()).collect();
    let t0 = std::time::Instant::now();
    let (tf, _) = extract_paths(&net, &tap, &train, 8, &NoProgress, &CancelToken::new())?;
    let c = tf[0].features.dim(D::Minus1)?;
    let bank: Vec<Tensor> = tf.iter().map(|f| f.features.reshape(((), c)).unwrap()).collect();
    let bank = Tensor::cat(&bank, 0)?;
    let bank_sq = bank.sqr()?.sum_keepdim(1)?.t()?; // [1, M]
    let samples = data::test_samples(&dir)?;
    let paths: Vec<_> = samples.iter().map(|s| s.path.clone()).collect();
    let (ff, _) = extract_paths(&net, &tap, &paths, 8, &NoProgress, &CancelToken::new())?;
    let (mut scores, mut labels) = (vec![], vec![]);
    let mut pix = metrics::PixelAuroc::new(0.0, 2000.0, 50000);
    for (f, s) in ff.iter().zip(&samples) {
        let (h, w, _) = f.features.dims3()?;
        let q = f.features.reshape(((), c))?;
        let d = q.sqr()?.sum_keepdim(1)?.broadcast_add(&bank_sq)?.sub(&(q.matmul(&bank.t()?)? * 2.0)?)?;
        let m = d.min(1)?.clamp(0f32, f32::MAX)?.sqrt()?.to_vec1::<f32>()?;
        let up = postprocess::resize_bilinear(&m, w, h, size, size);
        let sm = postprocess::gaussian_blur(&up, size, size, 4.0);
        scores.push(sm.iter().copied().fold(f32::MIN, f32::max));
        labels.push(s.defect == Some(true));
        let mask: Vec<bool> = match &s.mask {
            Some(mp) => {
                let mk = data::load_mask(mp, f.width, f.height)?;
                let r = image::imageops::resize(&mk, size as u32, size as u32, image::imageops::FilterType::Nearest);
                r.pixels().map(|p| p.0[0] > 127).collect()
            }
            None if s.defect == Some(false) => vec![false; size * size],
            None => continue,
        };
        pix.add(&sm, &mask);
    }
    println!(
        "size {size} stages {:?} n {n}: image AUROC {:.4} pixel AUROC {:.4} ({:.0} s)",
        tap.stages,
        metrics::auroc(&scores, &labels).unwrap_or(f64::NAN),
        pix.auroc().unwrap_or(f64::NAN),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
