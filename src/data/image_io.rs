//! Decoding images of any supported kind (JPEG, PNG, BMP, TIFF; grayscale, RGB,
//! RGBA, 8 or 16 bit) into the network's input, and ground-truth masks.
use crate::backbone::Normalization;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use image::{DynamicImage, GrayImage, imageops::FilterType};
use std::path::Path;

/// Images smaller than this on either side are rejected: the backbone would see
/// nothing but interpolation.
pub const MIN_SIDE: u32 = 8;

pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];

pub fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Decodes an image, naming the file in every error.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() == 0 {
        return Err(Error::Image {
            path: path.into(),
            reason: "the file is empty (0 bytes)".into(),
        });
    }
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let img = reader.decode().map_err(|e| Error::Image {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if img.width() < MIN_SIDE || img.height() < MIN_SIDE {
        return Err(Error::Image {
            path: path.into(),
            reason: format!(
                "image is {}x{} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed",
                img.width(),
                img.height()
            ),
        });
    }
    Ok(img)
}

/// Resizes to `size` x `size` and normalises into a `[3, size, size]` f32 vector
/// (channel-major). Grayscale is repeated on three channels, alpha is dropped,
/// 16-bit is scaled to [0, 1] like 8-bit.
pub fn to_input(img: &DynamicImage, size: usize, norm: &Normalization) -> Vec<f32> {
    to_input_wh(img, size, size, norm)
}

/// Resizes to `width` x `height` (no aspect constraint) and normalises into a
/// `[3, height, width]` f32 vector.
pub fn to_input_wh(img: &DynamicImage, width: usize, height: usize, norm: &Normalization) -> Vec<f32> {
    let rgb = img.to_rgb8();
    let resized = image::imageops::resize(&rgb, width as u32, height as u32, FilterType::Triangle);
    let n = width * height;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = (p.0[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
        }
    }
    out
}

/// Stacks prepared inputs into a `[B, 3, size, size]` tensor.
pub fn batch_tensor<V: AsRef<[f32]>>(inputs: &[V], size: usize, device: &Device) -> Result<Tensor> {
    let flat: Vec<f32> = inputs.iter().flat_map(|v| v.as_ref().iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (inputs.len(), 3, size, size), device)?)
}

/// Loads a binary mask (any non-zero pixel is defect) at the given size.
pub fn load_mask(path: &Path, width: u32, height: u32) -> Result<GrayImage> {
    let img = load_image(path)?.to_luma8();
    let img = if img.width() != width || img.height() != height {
        image::imageops::resize(&img, width, height, FilterType::Nearest)
    } else {
        img
    };
    Ok(img)
}
