//! A memory of taught good patches, for a map that cannot learn new good data cheaply
//! (NF-BMR's BMR map: fine-tuning it did not generalise, README "Label and teach").
//!
//! Every position of every taught image joins the memory (standardised features,
//! averaged over their 3x3 neighbourhood, as MemFlowNet's bank). A position of a new
//! image scores `z = (d - mu) / sigma`, `d` its distance to the nearest taught patch and
//! `mu`, `sigma` the mean and spread of the taught patches' own leave-one-image-out
//! distances (how near a patch of that kind comes to the other taught images). The
//! method takes the smaller of its own position-normalised map and this `z`: where a
//! new image looks as much like the taught images as they look like each other, the map
//! says "good"; elsewhere (a defect, a texture never taught) `z` is large and the map is
//! left as it is. With fewer than two taught images there is no spread to measure and
//! the memory does nothing.
use super::memory::{MemoryBank, local_average};
use crate::error::{Error, Result};
use candle_core::{D, Device, Tensor};

/// Side of the averaging window of taught and scored patches.
const NEIGHBOURHOOD: usize = 3;

pub struct TaughtPatches {
    /// `[images * per_image, C]`, averaged patches, image by image.
    rows: Tensor,
    per_image: usize,
    bank: MemoryBank,
    /// Mean and spread of the leave-one-image-out distances (`None`: fewer than two images).
    scale: Option<(f32, f32)>,
}

impl TaughtPatches {
    /// The memory of the standardised features `[n, h, w, C]` of taught images.
    pub fn new(y: &Tensor) -> Result<Self> {
        let rows = Self::patches(y)?;
        let (_, h, w, _) = y.dims4()?;
        let mut t = Self { bank: MemoryBank::new(rows.clone())?, rows, per_image: h * w, scale: None };
        t.rescale()?;
        Ok(t)
    }

    fn patches(y: &Tensor) -> Result<Tensor> {
        let a = local_average(y, NEIGHBOURHOOD)?;
        let c = a.dim(D::Minus1)?;
        Ok(a.reshape(((), c))?.contiguous()?)
    }

    /// How many images the memory holds.
    pub fn images(&self) -> usize {
        self.rows.dim(0).unwrap_or(0) / self.per_image.max(1)
    }

    /// Adds more taught images `[n, h, w, C]` (the same grid as before).
    pub fn add(&mut self, y: &Tensor) -> Result<()> {
        let (_, h, w, _) = y.dims4()?;
        if h * w != self.per_image {
            return Err(Error::Config(format!("taught images of {} positions, the memory holds {}", h * w, self.per_image)));
        }
        self.rows = Tensor::cat(&[&self.rows, &Self::patches(y)?], 0)?;
        self.bank = MemoryBank::new(self.rows.clone())?;
        self.rescale()
    }

    fn rescale(&mut self) -> Result<()> {
        let n = self.images();
        if n < 2 {
            self.scale = None;
            return Ok(());
        }
        let mut all = Vec::with_capacity(self.rows.dim(0)?);
        for i in 0..n {
            let own = self.rows.narrow(0, i * self.per_image, self.per_image)?;
            let mut others = Vec::new();
            if i > 0 {
                others.push(self.rows.narrow(0, 0, i * self.per_image)?);
            }
            if i + 1 < n {
                others.push(self.rows.narrow(0, (i + 1) * self.per_image, (n - i - 1) * self.per_image)?);
            }
            let bank = MemoryBank::new(Tensor::cat(&others, 0)?)?;
            all.extend(bank.nearest_distance(&own)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?);
        }
        let m = all.iter().sum::<f32>() / all.len() as f32;
        let sd = (all.iter().map(|d| (d - m) * (d - m)).sum::<f32>() / all.len() as f32).sqrt();
        self.scale = Some((m, sd.max(1e-6)));
        Ok(())
    }

    /// `[B, h, w]` z-scores of standardised features `[B, h, w, C]` (on the CPU), or
    /// `None` while fewer than two images are taught.
    pub fn z_maps(&self, y: &Tensor) -> Result<Option<Tensor>> {
        let Some((m, sd)) = self.scale else { return Ok(None) };
        let (b, h, w, _) = y.dims4()?;
        let d = self.bank.nearest_distance(&Self::patches(y)?)?;
        Ok(Some(d.affine(1.0 / sd as f64, -(m / sd) as f64)?.reshape((b, h, w))?.to_device(&Device::Cpu)?))
    }

    /// The tensors of a model file, named `<prefix>.rows` and `<prefix>.per_image`.
    pub fn tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (format!("{prefix}.rows"), self.rows.to_device(&Device::Cpu)?),
            (format!("{prefix}.per_image"), Tensor::new(&[self.per_image as u32], &Device::Cpu)?),
        ])
    }

    /// From a model file's tensors; `None` when it has none.
    pub fn load(st: &super::StoredTensors, prefix: &str, dim: usize) -> Result<Option<Self>> {
        if !st.all.contains_key(&format!("{prefix}.rows")) {
            return Ok(None);
        }
        let rows = st.get(&format!("{prefix}.rows"))?;
        let per = st.get(&format!("{prefix}.per_image"))?.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
        let per_image = per.first().copied().unwrap_or(0) as usize;
        let ok = matches!(rows.dims(), &[r, d] if d == dim && per_image > 0 && r > 0 && r % per_image == 0);
        if !ok {
            return Err(st.bad(format!("taught patches have shape {:?} ({per_image} per image), expected [k * {per_image}, {dim}]", rows.dims())));
        }
        let mut t = Self { bank: MemoryBank::new(rows.clone())?, rows, per_image, scale: None };
        t.rescale()?;
        Ok(Some(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::DType;

    /// `[n, 6, 6, 4]` features: noise around `centre` in every channel.
    fn images(n: usize, centre: f32, rng: &mut Rng) -> Tensor {
        let v: Vec<f32> = (0..n * 36 * 4).map(|_| centre + 0.1 * rng.normal() as f32).collect();
        Tensor::from_vec(v, (n, 6, 6, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn near_taught_patches_score_low_and_far_ones_high() {
        let mut rng = Rng::new(3);
        let one = TaughtPatches::new(&images(1, 2.0, &mut rng)).unwrap();
        // One image: no spread, no scores.
        assert!(one.z_maps(&images(1, 2.0, &mut rng)).unwrap().is_none());
        let mut t = one;
        t.add(&images(2, 2.0, &mut rng)).unwrap();
        assert_eq!(t.images(), 3);
        let like = t.z_maps(&images(1, 2.0, &mut rng)).unwrap().unwrap();
        let far = t.z_maps(&images(1, 0.0, &mut rng)).unwrap().unwrap();
        let (lm, fm) = (like.mean_all().unwrap().to_scalar::<f32>().unwrap(), far.min_all().unwrap().to_scalar::<f32>().unwrap());
        assert!(lm.abs() < 1.5, "a patch like the taught ones: z {lm}");
        assert!(fm > 20.0, "a patch far from them: z {fm}");
        assert_eq!(like.dims(), &[1, 6, 6]);
        // A different grid is refused.
        let wrong = Tensor::zeros((1, 5, 5, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(t.add(&wrong).is_err());
    }
}
