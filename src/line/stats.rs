//! Counts, yield, throughput and latency of a run of inspections: what `watch` prints
//! when it stops and what the Inspect tab shows, computed one way for both.
use super::log::LogRow;
use crate::inspection::Verdict;

/// Rows by verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub accept: usize,
    pub review: usize,
    pub reject: usize,
    /// Files that could not be inspected (error rows).
    pub error: usize,
}

impl Tally {
    pub fn add(&mut self, r: &LogRow) {
        match (r.verdict, r.error.is_some()) {
            (_, true) | (None, _) => self.error += 1,
            (Some(Verdict::Accept), _) => self.accept += 1,
            (Some(Verdict::Review), _) => self.review += 1,
            (Some(Verdict::Reject), _) => self.reject += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.accept + self.review + self.reject + self.error
    }

    /// Parts inspected (error rows are not parts with a verdict).
    pub fn inspected(&self) -> usize {
        self.accept + self.review + self.reject
    }

    /// Share of inspected parts accepted, in [0, 1]; `None` before the first part.
    pub fn yield_fraction(&self) -> Option<f64> {
        let n = self.inspected();
        (n > 0).then(|| self.accept as f64 / n as f64)
    }
}

/// Statistics over a sequence of rows.
#[derive(Debug, Clone, Default)]
pub struct LineStats {
    pub tally: Tally,
    /// Arrival -> row milliseconds of the scored images, in arrival order.
    latencies: Vec<i64>,
    /// Earliest arrival and latest row of the scored images (Unix ms).
    span: Option<(i64, i64)>,
}

impl LineStats {
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a LogRow>) -> Self {
        let mut s = Self::default();
        for r in rows {
            s.push(r);
        }
        s
    }

    pub fn push(&mut self, r: &LogRow) {
        self.tally.add(r);
        if r.error.is_none() && r.score.is_some() {
            self.latencies.push(r.latency_ms().max(0));
            let (a, b) = self.span.unwrap_or((r.arrived_unix_ms, r.scored_unix_ms));
            self.span = Some((a.min(r.arrived_unix_ms), b.max(r.scored_unix_ms)));
        }
    }

    /// Scored images per second from the first arrival to the last row (0 with fewer
    /// than two images or no time between them). Idle time between bursts counts, so
    /// this is the rate the line delivered, bounded by the rate the watcher can score.
    pub fn images_per_second(&self) -> f64 {
        match self.span {
            Some((a, b)) if b > a && self.latencies.len() > 1 => self.latencies.len() as f64 * 1000.0 / (b - a) as f64,
            _ => 0.0,
        }
    }

    /// The `q` quantile (0.5 = median, 0.99) of arrival -> row latency in ms, by the
    /// nearest-rank rule; `None` before the first scored image.
    pub fn latency_ms(&self, q: f64) -> Option<i64> {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        percentile(&v, q)
    }
}

/// Nearest-rank quantile of sorted values.
pub fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(verdict: Option<Verdict>, arrived: i64, scored: i64) -> LogRow {
        LogRow {
            id: 0,
            path: "p.png".into(),
            size_bytes: None,
            sha256: None,
            arrived_unix_ms: arrived,
            scored_unix_ms: scored,
            score: verdict.map(|_| 1.0),
            verdict,
            regions: None,
            largest_region_px: None,
            model_fingerprint: String::new(),
            method: String::new(),
            accept_below: 1.0,
            reject_from: None,
            error: verdict.is_none().then(|| "bad".into()),
            sorted_to: None,
            station: String::new(),
        }
    }

    #[test]
    fn counts_yield_rate_and_latency() {
        let mut rows = Vec::new();
        // 100 images arriving every 100 ms, each logged 10..=109 ms later; every 4th rejected.
        for i in 0..100 {
            let v = if i % 4 == 0 { Verdict::Reject } else { Verdict::Accept };
            rows.push(row(Some(v), i * 100, i * 100 + 10 + i));
        }
        rows.push(row(None, 0, 5));
        let s = LineStats::from_rows(&rows);
        assert_eq!(s.tally, Tally { accept: 75, review: 0, reject: 25, error: 1 });
        assert_eq!(s.tally.yield_fraction(), Some(0.75));
        // 100 images from t=0 to the last row at 9900 + 109 ms.
        assert!((s.images_per_second() - 100.0 * 1000.0 / 10009.0).abs() < 1e-9);
        assert_eq!(s.latency_ms(0.5), Some(60)); // rank round(99 * 0.5) = 50 -> 10 + 50
        assert_eq!(s.latency_ms(0.99), Some(108)); // rank 98
        assert_eq!(LineStats::default().latency_ms(0.5), None);
        assert_eq!(LineStats::default().tally.yield_fraction(), None);
    }
}
