//! A circuit breaker for reconnects: after `failure_threshold` consecutive
//! failed attempts it opens, and from then on the agent stops escalating its
//! backoff and probes the server at a steady, jittered pace: each period
//! between probes is uniform in `[open_for / 2, open_for]`, counted from the
//! start of the attempt that failed, then exactly one probe goes
//! (half-open). The probe's success closes the breaker; its failure opens it
//! again for another period.
//!
//! Why a short period: once the server answers again, an agent waits at
//! most one period before its probe finds it, so `open_for` bounds the
//! recovery after an outage of any length (3 s by default; a 30 s period
//! used to add up to 36 s after every outage). Why this still protects the
//! server: each agent has at most one attempt in flight and makes at most
//! one per `open_for / 2`, spread by the jitter, and an attempt on a dead
//! server costs that server nothing (a refused or unanswered connect); the
//! expensive part (TLS, the watch, a full snapshot) happens only once it
//! accepts. Time is `tokio::time::Instant` so tests can pause the clock.

use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings. Defaults: open after 5 consecutive failures, for
/// periods of 1.5 to 3 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// The longest the breaker stays open before its next probe, and the
    /// longest pause between attempts after any failed connect. Each
    /// period is uniform in `[open_for / 2, open_for]` (equal jitter).
    /// Default 3 s.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(3),
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
    /// When the last permitted attempt started: the next period counts
    /// from there, so an attempt that took long to fail (a connect timeout
    /// on a black-holed server) is followed by the next without a further
    /// wait, and a server that comes back during it is still found within
    /// one period.
    attempt_started: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            failures: 0,
            attempt_started: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to make an attempt at `now`.
    pub fn acquire(&mut self, now: Instant) -> Permit {
        let permit = match self.state {
            BreakerState::Closed => Permit::Attempt,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Permit::Probe
            }
            BreakerState::Open { until } => Permit::WaitUntil(until),
            // The probe's outcome is not known yet: nobody else goes.
            BreakerState::HalfOpen => Permit::WaitUntil(now + self.config.open_for),
        };
        if matches!(permit, Permit::Attempt | Permit::Probe) {
            self.attempt_started = Some(now);
        }
        permit
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
            let started = self.attempt_started.take().unwrap_or(now).min(now);
            let until = started + vane_backoff::equal_jitter(self.config.open_for);
            self.state = BreakerState::Open {
                until: until.max(now),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_until(b: &Breaker) -> Instant {
        match b.state() {
            BreakerState::Open { until } => until,
            other => panic!("breaker should be open, is {other:?}"),
        }
    }

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
        assert_eq!(b.acquire(Instant::now()), Permit::Attempt);
        b.on_failure(Instant::now());
        let Permit::WaitUntil(until) = b.acquire(Instant::now()) else {
            panic!("breaker should be open");
        };
        let wait = until - Instant::now();
        assert!(
            wait >= Duration::from_secs(5) && wait <= Duration::from_secs(10),
            "a period is in [open_for/2, open_for]: {wait:?}"
        );
        assert_eq!(b.state().as_str(), "open");

        tokio::time::advance(wait).await;
        assert_eq!(b.acquire(Instant::now()), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A second caller during the probe must wait.
        assert!(matches!(b.acquire(Instant::now()), Permit::WaitUntil(_)));

        // The probe fails: open again at once, whatever the count, for one
        // more period and no longer.
        b.on_failure(Instant::now());
        let again = open_until(&b) - Instant::now();
        assert!(again <= Duration::from_secs(10), "{again:?}");

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.acquire(Instant::now()), Permit::Probe);
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.acquire(Instant::now()), Permit::Attempt);
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_counts_from_the_start_of_the_attempt_that_failed() {
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(3),
        });
        // An attempt that hangs for 5 s (a connect timeout) before failing:
        // the next may go at once, since a whole period has passed.
        assert_eq!(b.acquire(Instant::now()), Permit::Attempt);
        tokio::time::advance(Duration::from_secs(5)).await;
        b.on_failure(Instant::now());
        assert_eq!(open_until(&b), Instant::now());
        assert_eq!(b.acquire(Instant::now()), Permit::Probe);
        // One that fails after 1 s waits out the rest of its period only.
        tokio::time::advance(Duration::from_secs(1)).await;
        let started = Instant::now() - Duration::from_secs(1);
        b.on_failure(Instant::now());
        let until = open_until(&b);
        assert!(
            until >= started + Duration::from_millis(1500)
                && until <= started + Duration::from_secs(3),
            "{:?}",
            until - started
        );
    }

    #[tokio::test(start_paused = true)]
    async fn periods_are_jittered_across_a_fleet() {
        let config = BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(3),
        };
        let now = Instant::now();
        let periods: Vec<Duration> = (0..200)
            .map(|_| {
                let mut b = Breaker::new(config);
                b.acquire(now);
                b.on_failure(now);
                open_until(&b) - now
            })
            .collect();
        let min = periods.iter().min().copied().unwrap();
        let max = periods.iter().max().copied().unwrap();
        assert!(min >= Duration::from_millis(1500) && max <= Duration::from_secs(3));
        assert!(
            max - min > Duration::from_secs(1),
            "agents that failed together must not probe together: {min:?}..{max:?}"
        );
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
