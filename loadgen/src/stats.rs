//! Percentiles of latency samples.

use serde::Serialize;

/// p50, p99 and max of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Number of samples.
    pub count: usize,
}

impl Summary {
    /// Summarises `samples` (milliseconds); all zero when there are none.
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50_ms: percentile(&sorted, 50.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted[sorted.len() - 1],
            count: sorted.len(),
        }
    }
}

/// The nearest-rank percentile of sorted, non-empty samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to three decimals, so reports stay readable.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&samples);
        assert_eq!(
            (s.p50_ms, s.p99_ms, s.max_ms, s.count),
            (50.0, 99.0, 100.0, 100)
        );
        let s = Summary::of(&[3.0]);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (3.0, 3.0, 3.0));
        assert_eq!(Summary::of(&[]), Summary::default());
        assert_eq!(round3(1.23456), 1.235);
    }
}
