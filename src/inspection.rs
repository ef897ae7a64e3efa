//! What an inspection decides about one image: its verdict under one or two image
//! thresholds, and the defect regions of its anomaly map. Shared by the GUI, the CLI
//! and the reports so that they all count the same way.
use crate::metrics::components;
use serde::{Deserialize, Serialize};

/// Accept / review / reject decision of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Review,
    Reject,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Accept => "accept",
            Verdict::Review => "review",
            Verdict::Reject => "reject",
        })
    }
}

/// Image thresholds. A score below `accept_below` is accepted. Without `reject_from`
/// everything else is rejected; with it, scores in `[accept_below, reject_from)` go to
/// review and scores at or above `reject_from` are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub accept_below: f32,
    pub reject_from: Option<f32>,
}

impl Thresholds {
    pub fn single(t: f32) -> Self {
        Self { accept_below: t, reject_from: None }
    }

    pub fn verdict(&self, score: f32) -> Verdict {
        if score < self.accept_below {
            return Verdict::Accept;
        }
        match self.reject_from {
            Some(u) if score < u => Verdict::Review,
            _ => Verdict::Reject,
        }
    }
}

/// Counts of a labelled set at some thresholds. An image counts as "flagged" when it
/// is not accepted (reject or review): review images are looked at by a person, so a
/// defect sent to review is not an escape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictCounts {
    pub accept: usize,
    pub review: usize,
    pub reject: usize,
    /// Defects flagged (true positives).
    pub tp: usize,
    /// Good images flagged (false alarms).
    pub fp: usize,
    /// Good images accepted.
    pub tn: usize,
    /// Defects accepted (escapes).
    pub fn_: usize,
    /// Good and defect images sent to review.
    pub review_good: usize,
    pub review_defect: usize,
    pub unlabeled: usize,
}

impl VerdictCounts {
    /// Counts `scores` with their labels (`None` for unlabeled images).
    pub fn count(scores: &[f32], labels: &[Option<bool>], t: &Thresholds) -> Self {
        let mut c = Self::default();
        for (&s, &l) in scores.iter().zip(labels) {
            let v = t.verdict(s);
            match v {
                Verdict::Accept => c.accept += 1,
                Verdict::Review => c.review += 1,
                Verdict::Reject => c.reject += 1,
            }
            let flagged = v != Verdict::Accept;
            match l {
                None => c.unlabeled += 1,
                Some(true) => {
                    if flagged {
                        c.tp += 1
                    } else {
                        c.fn_ += 1
                    }
                    if v == Verdict::Review {
                        c.review_defect += 1
                    }
                }
                Some(false) => {
                    if flagged {
                        c.fp += 1
                    } else {
                        c.tn += 1
                    }
                    if v == Verdict::Review {
                        c.review_good += 1
                    }
                }
            }
        }
        c
    }

    fn ratio(a: usize, b: usize) -> f64 {
        if b == 0 { 0.0 } else { a as f64 / b as f64 }
    }
    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }
}

/// One connected region of map values above the pixel threshold, in the map's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub x0: usize,
    pub y0: usize,
    /// Inclusive right and bottom edges.
    pub x1: usize,
    pub y1: usize,
    /// Pixels in the region.
    pub area: usize,
    /// The highest map value inside.
    pub peak: f32,
}

/// Regions (8-connected) of `map` (`width x height`, row-major) at or above
/// `threshold`, largest first.
pub fn regions(map: &[f32], width: usize, height: usize, threshold: f32) -> Vec<Region> {
    let mask: Vec<bool> = map.iter().map(|&v| v >= threshold).collect();
    let mut out: Vec<Region> = components(&mask, width, height)
        .into_iter()
        .map(|c| {
            let mut r = Region {
                x0: usize::MAX,
                y0: usize::MAX,
                x1: 0,
                y1: 0,
                area: c.len(),
                peak: f32::NEG_INFINITY,
            };
            for i in c {
                let (x, y) = (i % width, i / width);
                r.x0 = r.x0.min(x);
                r.y0 = r.y0.min(y);
                r.x1 = r.x1.max(x);
                r.y1 = r.y1.max(y);
                r.peak = r.peak.max(map[i]);
            }
            r
        })
        .collect();
    out.sort_by(|a, b| b.area.cmp(&a.area).then(a.y0.cmp(&b.y0)).then(a.x0.cmp(&b.x0)));
    out
}

/// Pixels of `mask` that have a 4-neighbour outside it (or lie on the border): the
/// outline to draw around defect regions.
pub fn outline(mask: &[bool], width: usize, height: usize) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            if !mask[i] {
                continue;
            }
            let edge = x == 0
                || y == 0
                || x + 1 == width
                || y + 1 == height
                || !mask[i - 1]
                || !mask[i + 1]
                || !mask[i - width]
                || !mask[i + width];
            out[i] = edge;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_with_one_and_two_thresholds() {
        let one = Thresholds::single(2.0);
        assert_eq!(one.verdict(1.9), Verdict::Accept);
        assert_eq!(one.verdict(2.0), Verdict::Reject);
        let two = Thresholds { accept_below: 2.0, reject_from: Some(3.0) };
        assert_eq!(two.verdict(1.0), Verdict::Accept);
        assert_eq!(two.verdict(2.5), Verdict::Review);
        assert_eq!(two.verdict(3.0), Verdict::Reject);
    }

    #[test]
    fn counts_treat_review_as_flagged() {
        let scores = [1.0, 2.5, 3.5, 1.0, 2.5, 3.5, 9.0];
        let labels = [Some(false), Some(false), Some(false), Some(true), Some(true), Some(true), None];
        let c = VerdictCounts::count(&scores, &labels, &Thresholds { accept_below: 2.0, reject_from: Some(3.0) });
        assert_eq!((c.accept, c.review, c.reject), (2, 2, 3));
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (2, 2, 1, 1));
        assert_eq!((c.review_good, c.review_defect, c.unlabeled), (1, 1, 1));
        assert!((c.precision() - 0.5).abs() < 1e-12);
        assert!((c.recall() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn regions_are_found_and_sorted_by_area() {
        // 6x4 map: a 2x2 blob at the left, a single pixel at the right.
        #[rustfmt::skip]
        let map = [
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 5.0, 6.0, 0.0, 0.0, 0.0,
            0.0, 5.0, 5.0, 0.0, 0.0, 7.0,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let r = regions(&map, 6, 4, 1.0);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].x0, r[0].y0, r[0].x1, r[0].y1, r[0].area), (1, 1, 2, 2, 4));
        assert_eq!(r[0].peak, 6.0);
        assert_eq!((r[1].x0, r[1].y0, r[1].area), (5, 2, 1));
        assert!(regions(&map, 6, 4, 10.0).is_empty());
    }

    #[test]
    fn outline_keeps_only_the_edge() {
        let mut mask = vec![false; 25];
        for y in 1..4 {
            for x in 1..4 {
                mask[y * 5 + x] = true;
            }
        }
        let o = outline(&mask, 5, 5);
        assert_eq!(o.iter().filter(|&&b| b).count(), 8);
        assert!(!o[2 * 5 + 2]);
    }
}
