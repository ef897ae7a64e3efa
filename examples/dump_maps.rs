//! Diagnostic: writes each test image's anomaly map (model input resolution) and its
//! mask to a raw file for offline analysis. Usage: dump_maps <model> <mvtec dir> <out.bin>
//! Layout: u32 size, u32 n, then per image: u8 kind index (magnetic-tile kinds, good first; 255 other), u8 defect, f32 map[size*size], u8 mask[size*size].
use candle_core::Device;
use flowspect::data::{self, image_io::load_mask};
use flowspect::detector::Detector;
use flowspect::evaluate::evaluate;
use flowspect::progress::{CancelToken, NoProgress};
use image::imageops::FilterType;
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(a.len() == 4, "usage: dump_maps <model> <mvtec dir> <out.bin>");
    let det = Detector::load(std::path::Path::new(&a[1]), &Device::Cpu)?;
    let samples = data::test_samples(std::path::Path::new(&a[2]))?;
    let (_, scored) = evaluate(&det, &samples, &NoProgress, &CancelToken::new())?;
    let kinds = ["good", "blowhole", "break", "crack", "fray", "uneven"];
    let size = det.image_size();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&a[3])?);
    f.write_all(&(size as u32).to_le_bytes())?;
    f.write_all(&(scored.len() as u32).to_le_bytes())?;
    for s in &scored {
        let smp = samples
            .iter()
            .find(|x| x.path == s.path)
            .ok_or_else(|| anyhow::anyhow!("{}: scored but not in the test set", s.path.display()))?;
        let k = kinds.iter().position(|k| *k == smp.kind).unwrap_or(255) as u8;
        f.write_all(&[k, (smp.defect == Some(true)) as u8])?;
        for v in &s.map {
            f.write_all(&v.to_le_bytes())?;
        }
        let mask: Vec<u8> = match &smp.mask {
            Some(m) if smp.defect == Some(true) => {
                let m = load_mask(m, s.width, s.height)?;
                let r = image::imageops::resize(&m, size as u32, size as u32, FilterType::Nearest);
                r.pixels().map(|p| (p.0[0] > 127) as u8).collect()
            }
            _ => vec![0; size * size],
        };
        f.write_all(&mask)?;
    }
    Ok(())
}
