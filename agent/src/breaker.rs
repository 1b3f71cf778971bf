//! A circuit breaker for reconnects: after `failure_threshold` consecutive
//! failed attempts it opens and refuses attempts for `open_for` (plus jitter,
//! so a fleet does not probe in lockstep); then it lets exactly one probe
//! through (half-open). The probe's success closes it; its failure opens it
//! again. Time is `tokio::time::Instant` so tests can pause the clock.

use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings. Defaults: open after 5 consecutive failures, for 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is allowed. Default 30 s;
    /// up to 20% of jitter is added.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts flow.
    Closed,
    /// Attempts are refused until the instant passes.
    Open {
        /// When a probe becomes allowed.
        until: Instant,
    },
    /// One probe is in flight; nothing else goes through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, as in `/status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Go ahead (closed).
    Attempt,
    /// Go ahead: this is the single half-open probe.
    Probe,
    /// Wait until this instant, then ask again.
    WaitUntil(Instant),
}

/// The breaker itself.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    failures: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            failures: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to make an attempt at `now`.
    pub fn acquire(&mut self, now: Instant) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::Attempt,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Permit::Probe
            }
            BreakerState::Open { until } => Permit::WaitUntil(until),
            // The probe's outcome is not known yet: nobody else goes.
            BreakerState::HalfOpen => Permit::WaitUntil(now + self.config.open_for),
        }
    }

    /// The attempt succeeded (a stream was established).
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.state = BreakerState::Closed;
    }

    /// The attempt failed at `now`.
    pub fn on_failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let trip = matches!(self.state, BreakerState::HalfOpen)
            || self.failures >= self.config.failure_threshold.max(1);
        if trip {
            let extra = vane_backoff::full_jitter(self.config.open_for / 5);
            self.state = BreakerState::Open {
                until: now + self.config.open_for + extra,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_once() {
        let config = BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        };
        let mut b = Breaker::new(config);
        for _ in 0..2 {
            assert_eq!(b.acquire(Instant::now()), Permit::Attempt);
            b.on_failure(Instant::now());
            assert_eq!(b.state(), BreakerState::Closed);
        }
        b.on_failure(Instant::now());
        let Permit::WaitUntil(until) = b.acquire(Instant::now()) else {
            panic!("breaker should be open");
        };
        let wait = until - Instant::now();
        assert!(wait >= Duration::from_secs(10) && wait <= Duration::from_secs(12));
        assert_eq!(b.state().as_str(), "open");

        tokio::time::advance(Duration::from_secs(13)).await;
        assert_eq!(b.acquire(Instant::now()), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A second caller during the probe must wait.
        assert!(matches!(b.acquire(Instant::now()), Permit::WaitUntil(_)));

        // The probe fails: open again at once, whatever the count.
        b.on_failure(Instant::now());
        assert!(matches!(b.state(), BreakerState::Open { .. }));

        tokio::time::advance(Duration::from_secs(13)).await;
        assert_eq!(b.acquire(Instant::now()), Permit::Probe);
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.acquire(Instant::now()), Permit::Attempt);
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(1),
        });
        b.on_failure(Instant::now());
        b.on_success();
        b.on_failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
