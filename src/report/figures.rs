//! The pictures of a report: heatmap overlays, binary masks, and the outlined figure of
//! each flagged image for the HTML and PDF pages.
use crate::error::{Error, Result};
use crate::inspection::outline;
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};
use std::path::Path;

/// Longest side of a figure in the HTML and PDF pages.
pub const FIGURE_SIDE: u32 = 400;
const REGION: [u8; 3] = [255, 40, 200];
const TRUTH: [u8; 3] = [40, 230, 60];

pub fn write_png(path: &Path, img: &DynamicImage) -> Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)
        .map_err(|e| Error::bad_file(path, format!("cannot encode PNG: {e}")))?;
    std::fs::write(path, buf.get_ref()).map_err(|e| Error::io(path, e))
}

/// A binary mask image: 255 where `mask` is set.
pub fn mask_image(mask: &[bool], w: usize, h: usize) -> DynamicImage {
    let mut img = GrayImage::new(w as u32, h as u32);
    for (p, &m) in img.pixels_mut().zip(mask) {
        *p = Luma([if m { 255 } else { 0 }]);
    }
    DynamicImage::ImageLuma8(img)
}

fn draw_outline(img: &mut RgbImage, mask: &[bool], color: [u8; 3]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let o = outline(mask, w, h);
    for (i, &on) in o.iter().enumerate() {
        if on {
            let (x, y) = ((i % w) as u32, (i / w) as u32);
            img.put_pixel(x, y, Rgb(color));
            if x + 1 < w as u32 {
                img.put_pixel(x + 1, y, Rgb(color));
            }
        }
    }
}

/// The overlay with the defect regions (magenta) and the ground truth (green) outlined,
/// scaled to at most [`FIGURE_SIDE`], as JPEG bytes with its size.
pub fn flagged_figure(overlay: &RgbImage, regions: &[bool], truth: Option<&GrayImage>) -> Result<(Vec<u8>, u32, u32)> {
    let mut img = overlay.clone();
    draw_outline(&mut img, regions, REGION);
    if let Some(t) = truth {
        let m: Vec<bool> = t.pixels().map(|p| p.0[0] > 127).collect();
        if m.len() == regions.len() {
            draw_outline(&mut img, &m, TRUTH);
        }
    }
    let d = DynamicImage::ImageRgb8(img);
    let d = if d.width().max(d.height()) > FIGURE_SIDE {
        d.resize(FIGURE_SIDE, FIGURE_SIDE, image::imageops::FilterType::Triangle)
    } else {
        d
    };
    let mut buf = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 88)
        .encode_image(&d.to_rgb8())
        .map_err(|e| Error::Data(format!("cannot encode a report figure: {e}")))?;
    Ok((buf.into_inner(), d.width(), d.height()))
}
