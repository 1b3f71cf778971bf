//! The agent's reconnect backoff settings. The pacing itself is
//! `vane-backoff`'s [`ExponentialBackoff`] with full jitter: the delay before
//! reconnect attempt `n` is uniform in `[0, min(cap, base * 2^n)]`, so a fleet
//! that lost its control plane at the same instant spreads out instead of
//! reconnecting in waves.

use std::time::Duration;

use vane_backoff::{ExponentialBackoff, InvalidBackoff, Jitter};

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
        self.build().map(drop)
    }

    /// The retry sequence these settings describe. The rules are
    /// `vane-backoff`'s; the words are the agent's (`base`, `cap`), since
    /// they name the settings an operator wrote.
    pub fn build(&self) -> Result<ExponentialBackoff, String> {
        ExponentialBackoff::new(self.base, self.cap, Jitter::Full).map_err(|e| match e {
            InvalidBackoff::ZeroMin => "backoff base must be above zero".to_owned(),
            InvalidBackoff::MinAboveMax { min, max } => {
                format!("backoff base {min:?} is above the cap {max:?}")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated_in_the_agents_words() {
        assert!(BackoffConfig::default().validate().is_ok());
        let bad = BackoffConfig {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(1),
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "backoff base 5s is above the cap 1s"
        );
        let zero = BackoffConfig {
            base: Duration::ZERO,
            cap: Duration::from_secs(1),
        };
        assert_eq!(
            zero.validate().unwrap_err(),
            "backoff base must be above zero"
        );
    }

    #[test]
    fn the_defaults_are_full_jitter_from_500ms_to_30s() {
        let mut b = BackoffConfig::default().build().unwrap();
        assert_eq!(b.jitter(), Jitter::Full);
        assert_eq!(b.max(), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_millis());
            assert!(b.next() <= Duration::from_secs(30));
        }
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }
}
