//! Detection metrics: AUROC (image and pixel), ROC points, F1-max, confusion matrix
//! at a threshold, and AUPRO. A sample is predicted defective when its score is
//! `>= threshold`.
use serde::{Deserialize, Serialize};

/// One point of a ROC curve: predicting "defect" for scores `>= threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// `+inf` for the first point (nothing flagged); JSON has no infinity, so it is
    /// written as `null` and read back as `+inf`.
    #[serde(deserialize_with = "threshold_or_inf")]
    pub threshold: f32,
    pub fpr: f64,
    pub tpr: f64,
}

fn threshold_or_inf<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::INFINITY))
}

/// ROC curve with ties grouped: one point per distinct score, from the highest
/// threshold down, starting at (0, 0) with threshold +inf.
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Vec<RocPoint> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    let mut pts = vec![RocPoint {
        threshold: f32::INFINITY,
        fpr: 0.0,
        tpr: 0.0,
    }];
    let (mut tp, mut fp) = (0f64, 0f64);
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if labels[idx[i]] {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        pts.push(RocPoint {
            threshold: s,
            fpr: if neg > 0.0 { fp / neg } else { 0.0 },
            tpr: if pos > 0.0 { tp / pos } else { 0.0 },
        });
    }
    pts
}

/// Area under the ROC curve (trapezoids, so ties count one half). `None` when one
/// class is missing.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    if pos == 0 || pos == labels.len() {
        return None;
    }
    let pts = roc_curve(scores, labels);
    Some(
        pts.windows(2)
            .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
            .sum(),
    )
}

/// Counts at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
}

impl Confusion {
    pub fn at(scores: &[f32], labels: &[bool], threshold: f32) -> Self {
        let mut c = Confusion::default();
        for (&s, &l) in scores.iter().zip(labels) {
            match (s >= threshold, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }
    pub fn false_positive_rate(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The best F1 over all thresholds and the threshold that reaches it (the lowest
/// score of the positive set at that point).
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Option<(f64, f32)> {
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    if pos == 0.0 {
        return None;
    }
    let neg = labels.len() as f64 - pos;
    let mut best: Option<(f64, f32)> = None;
    for p in roc_curve(scores, labels).into_iter().skip(1) {
        let tp = p.tpr * pos;
        let fp = p.fpr * neg;
        let prec = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        let f1 = if prec + p.tpr > 0.0 {
            2.0 * prec * p.tpr / (prec + p.tpr)
        } else {
            0.0
        };
        if best.is_none_or(|(b, _)| f1 > b) {
            best = Some((f1, p.threshold));
        }
    }
    best
}

/// Connected components (8-neighbourhood) of a binary mask; returns each
/// component's pixel indices.
pub fn components(mask: &[bool], width: usize, height: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; mask.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        let mut comp = Vec::new();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            comp.push(i);
            let (x, y) = ((i % width) as isize, (i / width) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                        continue;
                    }
                    let j = ny as usize * width + nx as usize;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        out.push(comp);
    }
    out
}

/// Accumulates what AUPRO needs, one image at a time: the scores of good pixels and,
/// per ground-truth region, the sorted scores of its pixels.
#[derive(Default)]
pub struct ProAccumulator {
    normal: Vec<f32>,
    regions: Vec<Vec<f32>>,
}

impl ProAccumulator {
    pub fn add(&mut self, map: &[f32], mask: &[bool], width: usize, height: usize) {
        for (&s, &m) in map.iter().zip(mask) {
            if !m {
                self.normal.push(s);
            }
        }
        for comp in components(mask, width, height) {
            let mut r: Vec<f32> = comp.iter().map(|&i| map[i]).collect();
            r.sort_by(f32::total_cmp);
            self.regions.push(r);
        }
    }

    /// Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr`
    /// (1.0 is perfect). Thresholds are the good pixels' score quantiles at `steps`
    /// evenly spaced false-positive rates; PRO is linear between them.
    pub fn aupro(&mut self, max_fpr: f64, steps: usize) -> Option<f64> {
        if self.regions.is_empty() || self.normal.is_empty() {
            return None;
        }
        self.normal.sort_by(|a, b| b.total_cmp(a));
        let n = self.normal.len();
        let pro_at = |t: f32| -> f64 {
            let s: f64 = self
                .regions
                .iter()
                .map(|r| {
                    // pixels with score >= t
                    let below = r.partition_point(|&v| v < t);
                    (r.len() - below) as f64 / r.len() as f64
                })
                .sum();
            s / self.regions.len() as f64
        };
        let fpr_at = |t: f32| -> f64 { self.normal.partition_point(|&v| v >= t) as f64 / n as f64 };
        // Curve points (fpr, pro), from the threshold just above every good pixel down.
        let top = self.normal[0];
        let pro_above: f64 = self
            .regions
            .iter()
            .map(|r| (r.len() - r.partition_point(|&v| v <= top)) as f64 / r.len() as f64)
            .sum::<f64>()
            / self.regions.len() as f64;
        let mut pts = vec![(0.0f64, pro_above)];
        for k in 1..=steps {
            let target = max_fpr * k as f64 / steps as f64;
            let idx = ((target * n as f64).ceil() as usize).clamp(1, n) - 1;
            let t = self.normal[idx];
            pts.push((fpr_at(t), pro_at(t)));
        }
        // Integrate with the curve clipped at max_fpr (linear interpolation).
        let mut area = 0.0;
        for w in pts.windows(2) {
            let ((f0, p0), (f1, p1)) = (w[0], w[1]);
            if f0 >= max_fpr || f1 <= f0 {
                continue;
            }
            let (f1c, p1c) = if f1 > max_fpr {
                (max_fpr, p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0))
            } else {
                (f1, p1)
            };
            area += (f1c - f0) * (p0 + p1c) / 2.0;
        }
        // If the last point stops short of max_fpr, extend flat.
        if let Some(&(f, p)) = pts.last() {
            if f < max_fpr {
                area += (max_fpr - f) * p;
            }
        }
        Some(area / max_fpr)
    }
}

/// Pixel AUROC without holding all pixels: scores are binned into a fine histogram,
/// which is exact up to ties inside one bucket.
pub struct PixelAuroc {
    /// Ascending bin edges; a score `s` falls in bin `#edges <= s`.
    edges: Vec<f32>,
    pos: Vec<u64>,
    neg: Vec<u64>,
}

impl PixelAuroc {
    /// Bins spaced linearly over `[lo, hi]`.
    pub fn new(lo: f32, hi: f32, bins: usize) -> Self {
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let n = bins.max(2);
        let edges = (1..n).map(|i| lo + (hi - lo) * i as f32 / n as f32).collect();
        Self::with_edges(edges)
    }

    /// Bins at the quantiles of `sample` (any subset of the scores to come), so that
    /// heavy tails do not squeeze the bulk of the scores into a few bins and create
    /// artificial ties.
    pub fn from_sample(sample: &[f32], bins: usize) -> Self {
        let mut v: Vec<f32> = sample.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f32::total_cmp);
        let mut edges: Vec<f32> = if v.is_empty() {
            Vec::new()
        } else {
            (1..bins).map(|i| v[i * v.len() / bins]).collect()
        };
        edges.dedup();
        Self::with_edges(edges)
    }

    /// Quantile bins for the given maps, from a strided sample of about a million of
    /// their values.
    pub fn for_maps<'a>(maps: impl Iterator<Item = &'a [f32]> + Clone, bins: usize) -> Self {
        let total: usize = maps.clone().map(|m| m.len()).sum();
        let stride = (total / 1_000_000).max(1);
        let sample: Vec<f32> = maps.flat_map(|m| m.iter().step_by(stride).copied()).collect();
        Self::from_sample(&sample, bins)
    }

    /// An accumulator with the same bins and no counts.
    pub fn empty_like(&self) -> Self {
        Self::with_edges(self.edges.clone())
    }

    /// Adds the counts of `other`, which must have been made with the same bins.
    pub fn merge(&mut self, other: &PixelAuroc) {
        debug_assert_eq!(self.edges, other.edges);
        for (a, b) in self.pos.iter_mut().zip(&other.pos) {
            *a += b;
        }
        for (a, b) in self.neg.iter_mut().zip(&other.neg) {
            *a += b;
        }
    }

    fn with_edges(edges: Vec<f32>) -> Self {
        let n = edges.len() + 1;
        Self { edges, pos: vec![0; n], neg: vec![0; n] }
    }

    fn bin(&self, s: f32) -> usize {
        self.edges.partition_point(|&e| e <= s)
    }

    pub fn add(&mut self, map: &[f32], mask: &[bool]) {
        for (&s, &m) in map.iter().zip(mask) {
            let b = self.bin(s);
            if m {
                self.pos[b] += 1
            } else {
                self.neg[b] += 1
            }
        }
    }
    pub fn auroc(&self) -> Option<f64> {
        let p: u64 = self.pos.iter().sum();
        let n: u64 = self.neg.iter().sum();
        if p == 0 || n == 0 {
            return None;
        }
        // Mann-Whitney: P(pos > neg) + P(pos == neg)/2, walking bins upward.
        let mut neg_below = 0u64;
        let mut acc = 0f64;
        for b in 0..self.pos.len() {
            acc += self.pos[b] as f64 * (neg_below as f64 + self.neg[b] as f64 / 2.0);
            neg_below += self.neg[b];
        }
        Some(acc / (p as f64 * n as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_by_hand_with_ties() {
        // pos: 0.9, 0.5 ; neg: 0.5, 0.1 -> pairs: (0.9>0.5)=1,(0.9>0.1)=1,(0.5=0.5)=0.5,(0.5>0.1)=1 -> 3.5/4
        let s = [0.9, 0.5, 0.5, 0.1];
        let l = [true, true, false, false];
        assert!((auroc(&s, &l).unwrap() - 0.875).abs() < 1e-12);
        // perfectly inverted
        assert_eq!(auroc(&[0.1, 0.9], &[true, false]), Some(0.0));
        // all tied
        assert_eq!(auroc(&[0.3, 0.3, 0.3], &[true, false, false]), Some(0.5));
        assert_eq!(auroc(&[0.3, 0.4], &[true, true]), None);
    }

    #[test]
    fn roc_points_group_ties() {
        let pts = roc_curve(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]);
        let got: Vec<(f64, f64)> = pts.iter().map(|p| (p.fpr, p.tpr)).collect();
        assert_eq!(got, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        assert_eq!(pts[2].threshold, 0.5);
    }

    #[test]
    fn f1_max_by_hand() {
        // threshold 0.8: tp=1 fp=0 fn=1 -> P=1 R=.5 F1=.667; threshold .6: tp=2 fp=1 -> P=.667 R=1 F1=.8
        let s = [0.9, 0.7, 0.6, 0.2];
        let l = [true, false, true, false];
        let (f1, t) = f1_max(&s, &l).unwrap();
        assert!((f1 - 0.8).abs() < 1e-12);
        assert_eq!(t, 0.6);
        let c = Confusion::at(&s, &l, t);
        assert_eq!(c, Confusion { tp: 2, fp: 1, tn: 1, fn_: 0 });
        assert!((c.precision() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.recall(), 1.0);
    }

    #[test]
    fn pixel_auroc_matches_exact() {
        let s: Vec<f32> = (0..1000).map(|i| (((i * 7919) % 1000) as f32 + 0.5) / 1000.0).collect();
        let l: Vec<bool> = (0..1000).map(|i| (i * 31) % 7 == 0 || s[i] > 0.8).collect();
        let exact = auroc(&s, &l).unwrap();
        let mut h = PixelAuroc::new(0.0, 1.0, 1000);
        h.add(&s, &l);
        assert!((h.auroc().unwrap() - exact).abs() < 1e-9, "{} vs {exact}", h.auroc().unwrap());
    }

    #[test]
    fn pixel_auroc_quantile_bins_survive_outliers() {
        // Bulk in [0, 1), a few huge outliers: linear bins over [min, max] would put the
        // whole bulk into one bin (AUROC collapses towards 0.5), quantile bins keep it.
        let mut s: Vec<f32> = (0..5000).map(|i| (((i * 7919) % 5000) as f32 + 0.5) / 5000.0).collect();
        let mut l: Vec<bool> = s.iter().map(|&v| v > 0.7).collect();
        s.extend([1e6, 2e6]);
        l.extend([false, true]);
        let exact = auroc(&s, &l).unwrap();
        let mut lin = PixelAuroc::new(0.0, 2e6, 1000);
        lin.add(&s, &l);
        assert!((lin.auroc().unwrap() - exact).abs() > 0.1);
        let mut q = PixelAuroc::from_sample(&s, 10_000);
        q.add(&s, &l);
        assert!((q.auroc().unwrap() - exact).abs() < 1e-9, "{} vs {exact}", q.auroc().unwrap());
    }

    #[test]
    fn merged_pixel_aurocs_equal_one_accumulator_over_both() {
        // A "kind" image (two defect pixels) and a "good" image, scored apart and merged.
        let (kind_s, kind_l) = ([0.9f32, 0.2, 0.6, 0.1], [true, false, true, false]);
        let good_s = [0.7f32, 0.3, 0.05, 0.65];
        let mut kind = PixelAuroc::new(0.0, 1.0, 1000);
        let mut good = kind.empty_like();
        kind.add(&kind_s, &kind_l);
        good.add(&good_s, &[false; 4]);
        // Defects 0.9 and 0.6 against the six others: 0.9 beats all 6, 0.6 beats 4 of 6.
        let mut merged = kind.empty_like();
        merged.merge(&kind);
        merged.merge(&good);
        assert!((merged.auroc().unwrap() - 10.0 / 12.0).abs() < 1e-12);
        kind.merge(&good);
        assert_eq!(kind.auroc(), merged.auroc());
        assert_eq!(good.auroc(), None, "no positives");
    }

    #[test]
    fn components_eight_connected() {
        // 1 1 0 0
        // 0 0 1 0   <- diagonal joins the first blob
        // 0 0 0 0
        // 1 0 0 1
        let m = [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1].map(|v| v == 1);
        let c = components(&m, 4, 4);
        let mut sizes: Vec<usize> = c.iter().map(|c| c.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![1, 1, 3]);
    }

    #[test]
    fn aupro_by_hand() {
        // Perfect separation: every region fully detected before any false positive.
        let mut a = ProAccumulator::default();
        let map = [0.9, 0.9, 0.1, 0.2, 0.3, 0.4];
        let mask = [true, true, false, false, false, false];
        a.add(&map, &mask, 6, 1);
        assert!((a.aupro(0.3, 100).unwrap() - 1.0).abs() < 1e-9);
        // Two regions: one always found first, the other scored below every good pixel.
        let mut b = ProAccumulator::default();
        let map = [0.9, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
        let mask = [true, false, true, false, false, false, false, false, false, false, false, false];
        // regions: {0} score .9 and {2} score .5 tie with all good pixels except index 1.
        b.add(&map, &mask, 12, 1);
        // At every threshold with fpr <= 0.3 (t > .5), region {0} found, {2} not: PRO = .5.
        // Good pixels: ten, nine of them at .5 -> the first quantile step jumps to fpr .9,
        // which is clipped at .3 by interpolation from (0, .5) to (.9, 1.0): PRO(.3)=.5+.5/3.
        let got = b.aupro(0.3, 10).unwrap();
        let expected = (0.3 * (0.5 + (0.5 + 0.5 / 3.0)) / 2.0) / 0.3;
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
    }
}
