//! Exponential backoff with full jitter: the delay before reconnect attempt
//! `n` is uniform in `[0, min(cap, base * 2^n)]` (AWS "full jitter"), so a
//! fleet that lost its control plane at the same instant spreads out instead
//! of reconnecting in waves.

use std::time::Duration;

/// Backoff settings. Defaults: base 500 ms, cap 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay. Default 500 ms.
    pub base: Duration,
    /// Largest delay; configuration errors are retried at this pace. Default 30 s.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

impl BackoffConfig {
    /// Checks that `0 < base <= cap`.
    pub fn validate(&self) -> Result<(), String> {
        if self.base.is_zero() {
            return Err("backoff base must be above zero".into());
        }
        if self.base > self.cap {
            return Err(format!(
                "backoff base {:?} is above the cap {:?}",
                self.base, self.cap
            ));
        }
        Ok(())
    }
}

/// The state of one retry sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh sequence.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .base
            .checked_mul(factor)
            .unwrap_or(self.config.cap)
            .min(self.config.cap)
    }

    /// The next delay (uniform in `[0, ceiling]`), advancing the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling)
    }

    /// The delay used for errors that fast retries cannot fix: the cap.
    pub fn cap(&self) -> Duration {
        self.config.cap
    }

    /// Starts over, after a stream that delivered.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Uniform in `[0, max]`, at millisecond resolution.
pub(crate) fn jitter(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let config = BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..2000 {
            let mut b = Backoff::new(config);
            for _ in 0..3 {
                b.next_delay();
            }
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            seen_low |= d < ceiling / 4;
            seen_high |= d > ceiling * 3 / 4;
        }
        assert!(seen_low && seen_high, "full jitter covers the whole range");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn config_is_validated() {
        assert!(BackoffConfig::default().validate().is_ok());
        let bad = BackoffConfig {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(1),
        };
        assert!(bad.validate().is_err());
    }
}
