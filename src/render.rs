//! Turning anomaly maps into pictures: a colormap and an overlay on the image.
use image::{DynamicImage, Rgb, RgbImage};

/// Jet-like colormap of `t` in [0, 1] (blue -> cyan -> yellow -> red).
pub fn colormap(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    let r = (1.5 - (4.0 * t - 3.0).abs()).clamp(0.0, 1.0);
    let g = (1.5 - (4.0 * t - 2.0).abs()).clamp(0.0, 1.0);
    let b = (1.5 - (4.0 * t - 1.0).abs()).clamp(0.0, 1.0);
    [(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8]
}

/// Overlays `map` (row-major, the image's size) on `img`: values are scaled so that
/// `hi` is full red; `alpha` is the map's opacity.
pub fn overlay(img: &DynamicImage, map: &[f32], hi: f32, alpha: f32) -> RgbImage {
    let base = img.to_rgb8();
    let (w, h) = base.dimensions();
    let mut out = RgbImage::new(w, h);
    for (x, y, p) in base.enumerate_pixels() {
        let v = map.get((y * w + x) as usize).copied().unwrap_or(0.0);
        let c = colormap(if hi > 0.0 { v / hi } else { 0.0 });
        let mut o = [0u8; 3];
        for k in 0..3 {
            o[k] = (p.0[k] as f32 * (1.0 - alpha) + c[k] as f32 * alpha) as u8;
        }
        out.put_pixel(x, y, Rgb(o));
    }
    out
}
