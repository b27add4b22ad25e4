//! Latency samples, their percentiles and the ratios the report compares, kept exact: a run
//! holds at most a few hundred thousand samples, so sorting them is cheaper than a histogram
//! dependency and gives the true order statistics.

use std::time::Duration;

use serde_json::json;

/// The latencies of one measured path, in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    micros: Vec<u64>,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, latency: Duration) {
        self.micros
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn extend(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The `p`-th percentile (0 < p ≤ 100) by the nearest-rank method: the smallest sample at
    /// or below which at least p % of the samples lie. `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        nearest_rank(&sorted, p)
    }

    /// p50, p99 and the maximum, in microseconds.
    pub fn summary(&self) -> Summary {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        Summary {
            count: sorted.len(),
            p50_us: nearest_rank(&sorted, 50.0).unwrap_or(0),
            p99_us: nearest_rank(&sorted, 99.0).unwrap_or(0),
            max_us: sorted.last().copied().unwrap_or(0),
        }
    }
}

fn nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The order statistics of a path that the report prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Summary {
    pub fn to_json(self) -> serde_json::Value {
        json!({"count": self.count, "p50_us": self.p50_us, "p99_us": self.p99_us, "max_us": self.max_us})
    }
}

/// `a / b`, rounded to two decimals for the report; `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    if b == 0.0 || !a.is_finite() || !b.is_finite() {
        return None;
    }
    Some(((a / b) * 100.0).round() / 100.0)
}

/// The added latency of a proxied path over the direct one (never below zero: a proxy that
/// measures faster than the direct call added nothing measurable).
pub fn added(proxied_us: u64, direct_us: u64) -> u64 {
    proxied_us.saturating_sub(direct_us)
}

/// Formats a ratio for the table.
pub fn show_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
}

/// Microseconds as milliseconds with two decimals, for the table.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[u64]) -> Samples {
        let mut s = Samples::new();
        for v in values {
            s.record(Duration::from_micros(*v));
        }
        s
    }

    #[test]
    fn percentiles_are_nearest_rank_order_statistics() {
        // 1..=100 in reverse: p50 is the 50th smallest, p99 the 99th, whatever the order.
        let s = samples(&(1..=100).rev().collect::<Vec<_>>());
        assert_eq!(s.percentile(50.0), Some(50));
        assert_eq!(s.percentile(99.0), Some(99));
        assert_eq!(s.percentile(100.0), Some(100));
        assert_eq!(s.percentile(0.5), Some(1));
        let summary = s.summary();
        assert_eq!(
            (summary.count, summary.p50_us, summary.p99_us),
            (100, 50, 99)
        );
        assert_eq!(summary.max_us, 100);
        // Few samples: p99 of ten is the largest; p50 of ten is the fifth.
        let few = samples(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 1_000]);
        assert_eq!(few.percentile(99.0), Some(1_000));
        assert_eq!(few.percentile(50.0), Some(50));
        // One sample is every percentile; none has none; nonsense p has none.
        assert_eq!(samples(&[7]).percentile(1.0), Some(7));
        assert_eq!(Samples::new().percentile(50.0), None);
        assert_eq!(s.percentile(0.0), None);
        assert_eq!(s.percentile(101.0), None);
        assert_eq!(Samples::new().summary().p99_us, 0);
    }

    #[test]
    fn merged_samples_count_every_round() {
        let mut all = samples(&[1, 2]);
        all.extend(samples(&[3, 4]));
        assert_eq!(all.len(), 4);
        assert_eq!(all.percentile(50.0), Some(2));
    }

    #[test]
    fn ratios_round_and_refuse_a_zero_denominator() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(1.0, 3.0), Some(0.33));
        assert_eq!(ratio(2.0, 3.0), Some(0.67));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(show_ratio(ratio(1.0, 0.0)), "-");
        assert_eq!(show_ratio(Some(1.5)), "1.50");
        assert_eq!(added(1_500, 1_000), 500);
        assert_eq!(added(900, 1_000), 0);
        assert_eq!(ms(1_234), "1.23");
    }
}
