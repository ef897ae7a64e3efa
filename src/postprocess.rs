//! Anomaly-map post-processing on plain `f32` buffers: bilinear resizing and
//! separable Gaussian smoothing.
use rayon::prelude::*;

/// Bilinear resize of a row-major `w x h` map to `ow x oh` (align-corners = false,
/// like PyTorch's `interpolate(mode="bilinear")`).
pub fn resize_bilinear(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    let mut out = vec![0f32; ow * oh];
    let sx = w as f32 / ow as f32;
    let sy = h as f32 / oh as f32;
    // Horizontal source indices and weights, shared by every row.
    let xs: Vec<(usize, usize, f32)> = (0..ow)
        .map(|ox| {
            let fx = ((ox as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let x0 = fx.floor() as usize;
            (x0, (x0 + 1).min(w - 1), fx - x0 as f32)
        })
        .collect();
    out.par_chunks_mut(ow.max(1)).enumerate().for_each(|(oy, row)| {
        let fy = ((oy as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let y0 = fy.floor() as usize;
        let y1 = (y0 + 1).min(h - 1);
        let ty = fy - y0 as f32;
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for (o, &(x0, x1, tx)) in row.iter_mut().zip(&xs) {
            let top = r0[x0] * (1.0 - tx) + r0[x1] * tx;
            let bot = r1[x0] * (1.0 - tx) + r1[x1] * tx;
            *o = top * (1.0 - ty) + bot * ty;
        }
    });
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
/// Rows are processed in parallel; both passes run over contiguous rows so the inner
/// loops vectorise (the vertical pass accumulates whole shifted rows).
pub fn gaussian_blur(src: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 || w == 0 || h == 0 {
        return src.to_vec();
    }
    let k = kernel(sigma);
    let r = k.len() / 2;
    let mut tmp = vec![0f32; w * h];
    tmp.par_chunks_mut(w).enumerate().for_each(|(y, out)| {
        // The row with `r` replicated pixels on each side.
        let row = &src[y * w..(y + 1) * w];
        let mut padded = Vec::with_capacity(w + 2 * r);
        padded.extend(std::iter::repeat_n(row[0], r));
        padded.extend_from_slice(row);
        padded.extend(std::iter::repeat_n(row[w - 1], r));
        for (i, &kv) in k.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(&padded[i..i + w]) {
                *o += kv * v;
            }
        }
    });
    let mut out = vec![0f32; w * h];
    out.par_chunks_mut(w).enumerate().for_each(|(y, o)| {
        for (i, &kv) in k.iter().enumerate() {
            let yy = (y + i).saturating_sub(r).min(h - 1);
            for (a, &v) in o.iter_mut().zip(&tmp[yy * w..(yy + 1) * w]) {
                *a += kv * v;
            }
        }
    });
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
    fn blur_matches_direct_convolution_with_edge_replication() {
        let (w, h, sigma) = (13usize, 9usize, 1.7f32);
        let src: Vec<f32> = (0..w * h).map(|i| ((i * 37) % 11) as f32).collect();
        let k = kernel(sigma);
        let r = (k.len() / 2) as isize;
        let at = |x: isize, y: isize| src[y.clamp(0, h as isize - 1) as usize * w + x.clamp(0, w as isize - 1) as usize];
        let got = gaussian_blur(&src, w, h, sigma);
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut want = 0.0;
                for (j, kj) in k.iter().enumerate() {
                    for (i, ki) in k.iter().enumerate() {
                        want += kj * ki * at(x + i as isize - r, y + j as isize - r);
                    }
                }
                let g = got[y as usize * w + x as usize];
                assert!((g - want).abs() < 1e-4, "({x},{y}): {g} vs {want}");
            }
        }
    }
    #[test]
    fn bilinear_identity_and_upsample() {
        let m: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&m, 4, 3, 4, 3), m);
        let up = resize_bilinear(&[0.0, 1.0], 2, 1, 4, 1);
        assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
