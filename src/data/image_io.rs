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

/// Reads and decodes an image, naming the file in every error.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(path, &bytes)
}

/// Decodes an image from the bytes of the file `path` (named in every error). A file
/// cut short (a JPEG without its end marker, a PNG without its IEND chunk, a BMP with
/// fewer pixel bytes than its header promises) is refused rather than decoded with
/// grey or black filling the missing part, which the decoders would otherwise do
/// without a word.
pub fn decode_image(path: &Path, bytes: &[u8]) -> Result<DynamicImage> {
    let bad = |reason: String| Error::Image { path: path.into(), reason };
    if bytes.is_empty() {
        return Err(bad("the file is empty (0 bytes)".into()));
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if let Some(format) = reader.format() {
        check_complete(bytes, format).map_err(bad)?;
    }
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    if img.width() < MIN_SIDE || img.height() < MIN_SIDE {
        return Err(bad(format!(
            "image is {}x{} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed",
            img.width(),
            img.height()
        )));
    }
    Ok(img)
}

/// Whether the file's structure reaches its end: the check that tells a truncated
/// image (a transfer cut short, a file still being written) from a whole one.
pub fn check_complete(bytes: &[u8], format: image::ImageFormat) -> std::result::Result<(), String> {
    match format {
        image::ImageFormat::Jpeg => jpeg_complete(bytes),
        image::ImageFormat::Png => png_complete(bytes),
        image::ImageFormat::Bmp => bmp_complete(bytes),
        _ => Ok(()),
    }
}

fn truncated(what: &str, len: usize) -> String {
    format!("truncated {what} file: it ends after {len} bytes, before the image data is complete (still being written, or cut short)")
}

/// Walks a JPEG's segments and entropy-coded scans up to the end-of-image marker.
/// Thumbnails inside APP segments are skipped by their segment length; in scan data a
/// 0xFF is always followed by a stuffed 0x00 or a restart marker, so the first other
/// marker ends the scan.
fn jpeg_complete(b: &[u8]) -> std::result::Result<(), String> {
    let n = b.len();
    if n < 2 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("not a JPEG: no start-of-image marker".into());
    }
    let mut i = 2;
    loop {
        if i >= n {
            return Err(truncated("JPEG", n));
        }
        if b[i] != 0xFF {
            return Err(format!("corrupt JPEG: expected a marker at byte {i}"));
        }
        while i < n && b[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return Err(truncated("JPEG", n));
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD8 => continue,
            _ => {
                if i + 2 > n {
                    return Err(truncated("JPEG", n));
                }
                let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                if len < 2 {
                    return Err(format!("corrupt JPEG: segment length {len} at byte {i}"));
                }
                if i + len > n {
                    return Err(truncated("JPEG", n));
                }
                i += len;
                if marker == 0xDA {
                    // Entropy-coded data up to the next marker that is not a restart.
                    loop {
                        if i + 1 >= n {
                            return Err(truncated("JPEG", n));
                        }
                        if b[i] == 0xFF {
                            let next = b[i + 1];
                            if next == 0x00 || (0xD0..=0xD7).contains(&next) {
                                i += 2;
                                continue;
                            }
                            if next != 0xFF {
                                break;
                            }
                        }
                        i += 1;
                    }
                }
            }
        }
    }
}

/// Walks a PNG's chunks up to IEND; every chunk must be whole.
fn png_complete(b: &[u8]) -> std::result::Result<(), String> {
    let n = b.len();
    let mut i = 8;
    loop {
        if i == n {
            return Err(format!("truncated PNG file: it ends after {n} bytes without its IEND chunk (still being written, or cut short)"));
        }
        if i + 8 > n {
            return Err(truncated("PNG", n));
        }
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let kind = &b[i + 4..i + 8];
        let end = i.saturating_add(12).saturating_add(len);
        if end > n {
            return Err(truncated("PNG", n));
        }
        if kind == b"IEND" {
            return Ok(());
        }
        i = end;
    }
}

/// An uncompressed BMP must hold the rows its header promises.
fn bmp_complete(b: &[u8]) -> std::result::Result<(), String> {
    let n = b.len();
    if n < 34 {
        return Err(truncated("BMP", n));
    }
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let header = u32_at(14);
    let compression = u32_at(30);
    if header < 40 || !(compression == 0 || compression == 3) {
        return Ok(());
    }
    let offset = u32_at(10) as u64;
    let width = (u32_at(18) as i32).unsigned_abs() as u64;
    let height = (u32_at(22) as i32).unsigned_abs() as u64;
    let bpp = u16::from_le_bytes([b[28], b[29]]) as u64;
    let stride = (width * bpp).div_ceil(32) * 4;
    if (n as u64) < offset + stride * height {
        return Err(truncated("BMP", n));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbImage};

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 251) as u8]));
        let mut buf = std::io::Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn whole_images_decode_and_cut_ones_are_refused() {
        let p = Path::new("part.img");
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Bmp, ImageFormat::Tiff] {
            let whole = encoded(format);
            let img = decode_image(p, &whole).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((img.width(), img.height()), (64, 48));
            for cut in [whole.len() / 3, whole.len() - 2] {
                let e = decode_image(p, &whole[..cut]).err().unwrap_or_else(|| panic!("{format:?} cut to {cut} bytes decoded"));
                let msg = e.to_string();
                assert!(msg.contains("part.img"), "{msg}");
            }
        }
    }

    #[test]
    fn truncation_is_named_as_such() {
        let p = Path::new("cam/part_007.jpg");
        let jpeg = encoded(ImageFormat::Jpeg);
        let msg = decode_image(p, &jpeg[..jpeg.len() / 3]).unwrap_err().to_string();
        assert!(msg.contains("part_007.jpg") && msg.contains("truncated JPEG"), "{msg}");
        let png = encoded(ImageFormat::Png);
        let msg = decode_image(p, &png[..png.len() - 12]).unwrap_err().to_string();
        assert!(msg.contains("truncated PNG") && msg.contains("IEND"), "{msg}");
    }

    #[test]
    fn bytes_after_the_end_marker_are_allowed() {
        // Some cameras append data after a JPEG's end-of-image marker.
        let mut jpeg = encoded(ImageFormat::Jpeg);
        jpeg.extend_from_slice(b"\x00\x00vendor trailer");
        assert!(decode_image(Path::new("a.jpg"), &jpeg).is_ok());
    }

    #[test]
    fn jpeg_scan_data_with_stuffed_bytes_and_restarts_is_walked() {
        // SOI, SOS with a 2-byte header, scan data holding FF00 and a restart marker, EOI.
        let whole = [0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD9];
        assert!(jpeg_complete(&whole).is_ok());
        assert!(jpeg_complete(&whole[..whole.len() - 1]).is_err());
        assert!(jpeg_complete(&whole[..9]).is_err());
    }
}
