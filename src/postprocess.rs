//! Anomaly-map post-processing on plain `f32` buffers: bilinear resizing and
//! separable Gaussian smoothing.

/// Bilinear resize of a row-major `w x h` map to `ow x oh` (align-corners = false,
/// like PyTorch's `interpolate(mode="bilinear")`).
pub fn resize_bilinear(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    let mut out = vec![0f32; ow * oh];
    let sx = w as f32 / ow as f32;
    let sy = h as f32 / oh as f32;
    for oy in 0..oh {
        let fy = ((oy as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let y0 = fy.floor() as usize;
        let y1 = (y0 + 1).min(h - 1);
        let ty = fy - y0 as f32;
        for ox in 0..ow {
            let fx = ((ox as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let x0 = fx.floor() as usize;
            let x1 = (x0 + 1).min(w - 1);
            let tx = fx - x0 as f32;
            let top = src[y0 * w + x0] * (1.0 - tx) + src[y0 * w + x1] * tx;
            let bot = src[y1 * w + x0] * (1.0 - tx) + src[y1 * w + x1] * tx;
            out[oy * ow + ox] = top * (1.0 - ty) + bot * ty;
        }
    }
    out
}

fn kernel(sigma: f32) -> Vec<f32> {
    let r = (4.0 * sigma).ceil().max(1.0) as isize;
    let mut k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Separable Gaussian blur with edge replication; `sigma <= 0` returns the input.
pub fn gaussian_blur(src: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return src.to_vec();
    }
    let k = kernel(sigma);
    let r = (k.len() / 2) as isize;
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (i, kv) in k.iter().enumerate() {
                let xx = (x as isize + i as isize - r).clamp(0, w as isize - 1) as usize;
                acc += kv * src[y * w + xx];
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (i, kv) in k.iter().enumerate() {
                let yy = (y as isize + i as isize - r).clamp(0, h as isize - 1) as usize;
                acc += kv * tmp[yy * w + x];
            }
            out[y * w + x] = acc;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn blur_keeps_mass_and_constant() {
        let c = vec![2.0f32; 30];
        assert!(gaussian_blur(&c, 6, 5, 1.5).iter().all(|v| (v - 2.0).abs() < 1e-5));
        let mut d = vec![0f32; 21 * 21];
        d[10 * 21 + 10] = 1.0;
        let b = gaussian_blur(&d, 21, 21, 2.0);
        let s: f32 = b.iter().sum();
        assert!((s - 1.0).abs() < 1e-4);
        assert!(b[10 * 21 + 10] < 0.1 && b[10 * 21 + 10] > b[10 * 21 + 13]);
    }
    #[test]
    fn bilinear_identity_and_upsample() {
        let m: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&m, 4, 3, 4, 3), m);
        let up = resize_bilinear(&[0.0, 1.0], 2, 1, 4, 1);
        assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
