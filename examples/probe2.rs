//! Diagnostic: nearest-neighbour probe with aspect-preserving input at a fixed scale.
//! probe2 <mvtec dir> <scale> <stage> <n train> <sigma>
use candle_core::{D, Device, Tensor};
use flowspect::backbone::{self, BackboneMode};
use flowspect::data::image_io;
use flowspect::{data, metrics, postprocess};

fn feats(net: &backbone::EfficientNet, p: &std::path::Path, k: f32, stage: usize) -> anyhow::Result<(Tensor, usize, usize, u32, u32)> {
    let img = data::load_image(p)?;
    let img = if std::env::var("PHOTO_NORM").is_ok() {
        let g = img.to_luma32f();
        let n = g.len() as f32;
        let m = g.iter().sum::<f32>() / n;
        let sd = (g.iter().map(|v| (v - m).powi(2)).sum::<f32>() / n).sqrt().max(1e-3);
        let out = image::ImageBuffer::from_fn(g.width(), g.height(), |x, y| {
            let v = ((g.get_pixel(x, y).0[0] - m) / sd * 0.15 + 0.45).clamp(0.0, 1.0);
            image::Luma([(v * 255.0) as u8])
        });
        image::DynamicImage::ImageLuma8(out)
    } else {
        img
    };
    let w = ((img.width() as f32 * k / 16.0).round() as usize).max(2) * 16;
    let h = ((img.height() as f32 * k / 16.0).round() as usize).max(2) * 16;
    let x = image_io::to_input_wh(&img, w, h, &net.config().normalization);
    let x = Tensor::from_vec(x, (1, 3, h, w), &Device::Cpu)?;
    let f = net.forward_stages(&x, stage)?.pop().unwrap().squeeze(0)?.permute((1, 2, 0))?.contiguous()?;
    Ok((f, w, h, img.width(), img.height()))
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&a[1]);
    let k: f32 = a[2].parse()?;
    let stage: usize = a[3].parse()?;
    let n: usize = a[4].parse()?;
    let sigma: f32 = a[5].parse()?;
    let net = backbone::load(&backbone::default_backbone_path(), &Device::Cpu, BackboneMode::Fast)?;
    let train = data::training_images(&dir)?;
    let train: Vec<_> = (0..n).map(|i| train[i * train.len() / n].clone()).collect();
    let t0 = std::time::Instant::now();
    let mut bank = vec![];
    for p in &train {
        let (f, ..) = feats(&net, p, k, stage)?;
        let c = f.dim(D::Minus1)?;
        bank.push(f.reshape(((), c))?);
    }
    let bank = Tensor::cat(&bank, 0)?;
    let bank_sq = bank.sqr()?.sum_keepdim(1)?.t()?;
    let samples = data::test_samples(&dir)?;
    let (mut scores, mut labels) = (vec![], vec![]);
    let mut pix = metrics::PixelAuroc::new(0.0, 2000.0, 50000);
    for s in &samples {
        let (f, w, h, ow, oh) = feats(&net, &s.path, k, stage)?;
        let (fh, fw, c) = f.dims3()?;
        let q = f.reshape(((), c))?;
        let d = q.sqr()?.sum_keepdim(1)?.broadcast_add(&bank_sq)?.sub(&(q.matmul(&bank.t()?)? * 2.0)?)?;
        let m = d.min(1)?.clamp(0f32, f32::MAX)?.sqrt()?.to_vec1::<f32>()?;
        let up = postprocess::resize_bilinear(&m, fw, fh, w, h);
        let sm = postprocess::gaussian_blur(&up, w, h, sigma);
        scores.push(sm.iter().copied().fold(f32::MIN, f32::max));
        labels.push(s.defect == Some(true));
        let mask: Vec<bool> = match &s.mask {
            Some(mp) => {
                let mk = data::load_mask(mp, ow, oh)?;
                let r = image::imageops::resize(&mk, w as u32, h as u32, image::imageops::FilterType::Nearest);
                r.pixels().map(|p| p.0[0] > 127).collect()
            }
            None if s.defect == Some(false) => vec![false; w * h],
            None => continue,
        };
        pix.add(&sm, &mask);
    }
    println!(
        "scale {k} stage {stage} n {n} sigma {sigma}: image AUROC {:.4} pixel AUROC {:.4} ({:.0} s)",
        metrics::auroc(&scores, &labels).unwrap_or(f64::NAN),
        pix.auroc().unwrap_or(f64::NAN),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
