//! Diagnostic: writes tapped backbone features of training and test images to raw files.
//! Usage: dump_feats <mvtec dir> <image size> <stages,comma> <n train> <out prefix>
//! Each file: u32 n, u32 h, u32 w, u32 c, then per image u8 kind index (magnetic-tile kinds,
//! good first; 255 other) and f32 [h, w, c].
use candle_core::Device;
use flowspect::backbone::{self, BackboneMode};
use flowspect::data;
use flowspect::models::features::{FeatureTap, ImageFeatures, extract_paths};
use flowspect::progress::{CancelToken, NoProgress};
use std::io::Write;

fn write(path: &str, feats: &[ImageFeatures], kinds: &[u8]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let first = feats.first().ok_or_else(|| anyhow::anyhow!("{path}: no images to write"))?;
    let dims = first.features.dims().to_vec();
    for v in [feats.len(), dims[0], dims[1], dims[2]] {
        f.write_all(&(v as u32).to_le_bytes())?;
    }
    for (x, k) in feats.iter().zip(kinds) {
        f.write_all(&[*k])?;
        for v in x.features.flatten_all()?.to_vec1::<f32>()? {
            f.write_all(&v.to_le_bytes())?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(a.len() == 6, "usage: dump_feats <mvtec dir> <image size> <stages,comma> <n train> <out prefix>");
    let dir = std::path::PathBuf::from(&a[1]);
    let size: usize = a[2].parse()?;
    let stages: Vec<usize> = a[3].split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
    let n: usize = a[4].parse()?;
    let net = backbone::load(&backbone::default_backbone_path(), &Device::Cpu, BackboneMode::Fast)?;
    let tap = FeatureTap { reflect_cells: 2, ..FeatureTap::new(size, stages) };
    let train = data::training_images(&dir)?;
    let n = n.min(train.len());
    let train: Vec<_> = (0..n).map(|i| train[i * train.len() / n].clone()).collect();
    let (tf, _) = extract_paths(&net, &tap, &train, 8, &NoProgress, &CancelToken::new())?;
    write(&format!("{}_train.bin", a[5]), &tf, &vec![0; tf.len()])?;
    let kinds = ["good", "blowhole", "break", "crack", "fray", "uneven"];
    let samples = data::test_samples(&dir)?;
    let paths: Vec<_> = samples.iter().map(|s| s.path.clone()).collect();
    let (ff, _) = extract_paths(&net, &tap, &paths, 8, &NoProgress, &CancelToken::new())?;
    let k: Vec<u8> = ff
        .iter()
        .map(|f| {
            let s = samples.iter().find(|s| s.path == f.path).map(|s| s.kind.as_str()).unwrap_or("good");
            kinds.iter().position(|k| *k == s).unwrap_or(0) as u8
        })
        .collect();
    write(&format!("{}_test.bin", a[5]), &ff, &k)?;
    Ok(())
}
