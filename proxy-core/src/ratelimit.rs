//! Named token buckets, lock-free: the generic cell rate algorithm (GCRA),
//! which is a token bucket stored as one number, the "theoretical arrival
//! time" of the next request, updated with a compare-and-swap.
//!
//! A limit of `r` requests per second with burst `b` admits `b` requests at
//! once from a full bucket, then one every `1/r` seconds. A refused request
//! learns how long until a token is available (the `retry-after`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One named bucket shared by every route that references the limit.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// The limit's name.
    pub(crate) name: String,
    /// Refill rate, as configured.
    pub(crate) requests_per_second: f64,
    /// Bucket size, as configured.
    pub(crate) burst: u64,
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of now the arrival time may run: `burst * interval`.
    tolerance: u64,
    /// Theoretical arrival time, in nanoseconds on [`crate::clock`].
    tat: AtomicU64,
}

impl RateLimiter {
    /// A full bucket.
    pub(crate) fn new(name: &str, requests_per_second: f64, burst: u64) -> Self {
        // Validation guarantees rps > 0; clamp anyway so a token never costs
        // zero time (which would disable the limit) or overflows.
        let interval = (1e9 / requests_per_second.max(1e-9)).clamp(1.0, 1e18) as u64;
        let tolerance = interval.saturating_mul(burst.max(1));
        Self {
            name: name.to_owned(),
            requests_per_second,
            burst,
            interval,
            tolerance,
            tat: AtomicU64::new(0),
        }
    }

    /// Whether this bucket was built from the same parameters (its state is
    /// then kept across snapshots).
    pub(crate) fn same_as(&self, requests_per_second: f64, burst: u64) -> bool {
        self.requests_per_second.to_bits() == requests_per_second.to_bits() && self.burst == burst
    }

    /// Takes a token at `now_ns`, or says how long until one is available.
    pub(crate) fn try_acquire(&self, now_ns: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(self.interval);
            let limit = now_ns.saturating_add(self.tolerance);
            if next > limit {
                return Err(Duration::from_nanos(next - limit));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

/// The `retry-after` value for a wait: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn admits_the_burst_then_the_rate() {
        let l = RateLimiter::new("l", 10.0, 5);
        let t0 = 100 * SEC;
        for _ in 0..5 {
            assert!(l.try_acquire(t0).is_ok());
        }
        let wait = l.try_acquire(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // A tenth of a second later exactly one more token is there.
        assert!(l.try_acquire(t0 + SEC / 10).is_ok());
        assert!(l.try_acquire(t0 + SEC / 10).is_err());
        // After a long pause the bucket is full again, not fuller.
        let t1 = t0 + 60 * SEC;
        for _ in 0..5 {
            assert!(l.try_acquire(t1).is_ok());
        }
        assert!(l.try_acquire(t1).is_err());
    }

    #[test]
    fn slow_limits_report_whole_seconds() {
        let l = RateLimiter::new("slow", 0.5, 1);
        assert!(l.try_acquire(10 * SEC).is_ok());
        let wait = l.try_acquire(10 * SEC).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        assert_eq!(retry_after_secs(wait), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn parameters_decide_whether_state_is_kept() {
        let l = RateLimiter::new("l", 100.0, 200);
        assert!(l.same_as(100.0, 200));
        assert!(!l.same_as(100.0, 201));
        assert!(!l.same_as(99.5, 200));
    }
}
