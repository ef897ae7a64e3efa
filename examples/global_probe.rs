//! Diagnostic: how well does the image-level Gaussian of pooled backbone features
//! (`flowspect::models::global`) separate good from defect images on its own? Prints
//! image AUROC, overall and by defect kind, for each pooled stage and their sum.
//! Usage: global_probe <mvtec dir> <image size> <stages,comma> <n train> [shrinkage]
use candle_core::Device;
use flowspect::backbone::{self, BackboneMode};
use flowspect::models::features::{FeatureTap, extract_paths};
use flowspect::models::global::GlobalGaussian;
use flowspect::progress::{CancelToken, NoProgress};
use flowspect::{data, metrics};
use std::collections::BTreeMap;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(a.len() >= 5, "usage: global_probe <mvtec dir> <image size> <stages,comma> <n train> [shrinkage]");
    let dir = std::path::PathBuf::from(&a[1]);
    let size: usize = a[2].parse()?;
    let stages: Vec<usize> = a[3].split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
    let n: usize = a[4].parse()?;
    let shrink: f64 = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(0.1);
    let net = backbone::load(&backbone::default_backbone_path(), &Device::Cpu, BackboneMode::Fast)?;
    let tap = FeatureTap { global_stages: stages.clone(), ..FeatureTap::new(size, vec![stages[0]]) };
    let train = data::training_images(&dir)?;
    let n = n.min(train.len());
    let train: Vec<_> = (0..n).map(|i| train[i * train.len() / n].clone()).collect();
    let (tf, _) = extract_paths(&net, &tap, &train, 8, &NoProgress, &CancelToken::new())?;
    let pooled: Vec<&[Vec<f32>]> = tf.iter().map(|f| f.global.as_slice()).collect();
    let g = GlobalGaussian::fit(&stages, &pooled, shrink)?;
    let samples = data::test_samples(&dir)?;
    let paths: Vec<_> = samples.iter().map(|s| s.path.clone()).collect();
    let (ff, _) = extract_paths(&net, &tap, &paths, 8, &NoProgress, &CancelToken::new())?;
    let by_path: BTreeMap<_, _> = samples.iter().map(|s| (s.path.clone(), s)).collect();
    let kinds: Vec<(bool, String)> = ff.iter().map(|f| (by_path[&f.path].defect == Some(true), by_path[&f.path].kind.clone())).collect();
    for (si, st) in g.stages.iter().enumerate() {
        let s: Vec<f32> = ff.iter().map(|f| st.distance(&f.global[si]) as f32).collect();
        report(&format!("stage {}", st.stage), &s, &kinds);
    }
    let total: Vec<f32> = ff.iter().map(|f| g.score(&f.global)).collect::<Result<_, _>>()?;
    report("sum", &total, &kinds);
    Ok(())
}

fn report(name: &str, sc: &[f32], kinds: &[(bool, String)]) {
    let labels: Vec<bool> = kinds.iter().map(|k| k.0).collect();
    let mut by_kind = BTreeMap::new();
    for (_, k) in kinds.iter().filter(|k| k.0) {
        let (a, b): (Vec<f32>, Vec<bool>) = kinds.iter().zip(sc).filter(|(x, _)| !x.0 || &x.1 == k).map(|(x, v)| (*v, x.0)).unzip();
        by_kind.insert(k.clone(), metrics::auroc(&a, &b).unwrap_or(f64::NAN));
    }
    let ks: Vec<String> = by_kind.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
    println!("{name}: image AUROC {:.4} | {}", metrics::auroc(sc, &labels).unwrap_or(f64::NAN), ks.join(", "));
}
