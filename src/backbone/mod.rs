//! The frozen, ImageNet-pretrained feature extractor (the paper's SNN).
pub mod config;
pub mod depthwise;
pub mod efficientnet;
pub mod fused;
pub mod import;

pub use config::{EfficientNetConfig, Family, Normalization, Padding};
pub use efficientnet::{BackboneMode, EfficientNet};

use crate::error::Result;
use candle_core::Device;
use std::path::Path;

/// Loads a canonical backbone file (or any weight file `import` understands).
pub fn load(path: &Path, device: &Device, mode: BackboneMode) -> Result<EfficientNet> {
    let (cfg, tensors) = import::load_canonical(path)?;
    EfficientNet::from_tensors(cfg, &tensors, device, mode)
}

/// The default backbone shipped in `models/`.
pub const DEFAULT_BACKBONE: &str = "models/efficientnet-lite0.safetensors";

/// Finds the default backbone: beside the executable's crate (source checkout), or the
/// current directory.
pub fn default_backbone_path() -> std::path::PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_BACKBONE);
    if here.exists() {
        here
    } else {
        Path::new(DEFAULT_BACKBONE).to_path_buf()
    }
}

/// ImageNet class probabilities of one photo, most likely first.
pub fn classify(net: &EfficientNet, image: &Path, size: usize) -> Result<Vec<(usize, f32)>> {
    let img = crate::data::load_image(image)?;
    let x = crate::data::to_input(&img, size, &net.config().normalization);
    let x = crate::data::image_io::batch_tensor(&[x], size, net.device())?;
    let logits = net.forward_logits(&x)?;
    let p = candle_nn::ops::softmax(&logits, 1)?.squeeze(0)?.to_vec1::<f32>()?;
    let mut v: Vec<(usize, f32)> = p.into_iter().enumerate().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(v)
}
