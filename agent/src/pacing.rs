//! Reconnect pacing: after an attempt or a stream failed, when the next
//! attempt may go. The backoff (`vane-backoff`, full jitter) paces retries
//! while the circuit breaker is closed; once failed connects reach the
//! breaker's threshold the breaker takes over, with short jittered periods
//! between probes, so that however long an outage lasts an agent finds the
//! server within `BreakerConfig::open_for` of its return.
//!
//! The rules, in order:
//! - a configuration error (see [`Retry::AtCap`]) waits the backoff cap;
//! - a failed connect while the breaker is open waits for the breaker;
//! - a failed connect otherwise waits the next backoff pause, never longer
//!   than the breaker's `open_for` (a failed connect means the server does
//!   not answer, and the pause is what a returning server waits for);
//! - a stream that ends waits the next backoff pause, up to the cap (the
//!   server answered: if its streams keep ending before they deliver
//!   anything, growing pauses spare it); after a stream that delivered, the
//!   backoff starts over.
//!
//! The link's state machine is one user; the load generator's simulated
//! agents are the other, so that a benchmark's fleet reconnects exactly as
//! real agents do.

use std::time::Duration;

use tokio::time::Instant;
use vane_backoff::ExponentialBackoff;

use crate::breaker::{Breaker, BreakerConfig, BreakerState, Permit};

/// How to retry after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A fault that may pass (a server restarting, the network): the next
    /// step of the backoff sequence.
    Backoff,
    /// A fault only an operator can fix (credentials, certificates, a group
    /// the agent may not watch, a request the server refuses): a fast retry
    /// would only hammer the server, so it is retried at the backoff cap and
    /// logged as a configuration error.
    AtCap,
}

impl Retry {
    /// How to retry after the server answered with `code`:
    /// `UNAUTHENTICATED`, `PERMISSION_DENIED` and `INVALID_ARGUMENT` are
    /// configuration errors; any other code may pass.
    pub fn after_status(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument => Retry::AtCap,
            _ => Retry::Backoff,
        }
    }
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connecting or opening the watch failed: no stream. Counts towards
    /// the breaker.
    Connect,
    /// An open stream ended or broke.
    Stream {
        /// It had delivered (a response, or a long enough quiet life): the
        /// backoff starts over.
        delivered: bool,
    },
}

/// The wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// A backoff pause (or the cap) until this instant.
    Backoff(Instant),
    /// The breaker is open until this instant; then one probe.
    BreakerOpen(Instant),
}

impl Pause {
    /// When the wait ends.
    pub fn until(&self) -> Instant {
        match *self {
            Pause::Backoff(until) | Pause::BreakerOpen(until) => until,
        }
    }
}

/// The backoff and the breaker of one agent.
#[derive(Debug, Clone)]
pub struct Pacing {
    backoff: ExponentialBackoff,
    breaker: Breaker,
}

impl Pacing {
    /// Pacing from a backoff sequence (`BackoffConfig::build`) and the
    /// breaker's settings.
    pub fn new(backoff: ExponentialBackoff, breaker: BreakerConfig) -> Self {
        Self {
            backoff,
            breaker: Breaker::new(breaker),
        }
    }

    /// Whether an attempt may go at `now`.
    pub fn permit(&mut self, now: Instant) -> Permit {
        self.breaker.acquire(now)
    }

    /// A stream opened: the breaker closes, whether this was a normal
    /// attempt or its probe.
    pub fn opened(&mut self) {
        self.breaker.on_success();
    }

    /// `failure` happened at `now`, to be retried as `retry` says: the wait
    /// before the next attempt.
    pub fn failed(&mut self, now: Instant, failure: Failure, retry: Retry) -> Pause {
        match failure {
            Failure::Connect => self.breaker.on_failure(now),
            Failure::Stream { delivered: true } => self.backoff.reset(),
            Failure::Stream { delivered: false } => {}
        }
        if retry == Retry::AtCap {
            return Pause::Backoff(now + self.backoff.max());
        }
        if let (Failure::Connect, BreakerState::Open { until }) = (failure, self.breaker.state()) {
            return Pause::BreakerOpen(until);
        }
        let pause = self.backoff.next();
        let pause = match failure {
            Failure::Connect => pause.min(self.breaker.config().open_for),
            Failure::Stream { .. } => pause,
        };
        Pause::Backoff(now + pause)
    }

    /// The breaker's state, for the link status.
    pub fn breaker(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The backoff sequence.
    pub fn backoff(&self) -> &ExponentialBackoff {
        &self.backoff
    }

    /// The longest pause after a failed connect: the bound on how long a
    /// server that answers again waits for this agent's next attempt.
    pub fn longest_connect_pause(&self) -> Duration {
        self.breaker.config().open_for
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::BackoffConfig;

    fn defaults() -> Pacing {
        Pacing::new(
            BackoffConfig::default().build().unwrap(),
            BreakerConfig::default(),
        )
    }

    /// One agent through an outage of `outage` that starts at `t0` (its
    /// stream, which had delivered, breaks then): every attempt before the
    /// end fails after `fails_after`, the first one from the end on opens
    /// a stream. Returns the start of every attempt.
    fn through_an_outage(
        p: &mut Pacing,
        t0: Instant,
        outage: Duration,
        fails_after: Duration,
    ) -> Vec<Instant> {
        let back = t0 + outage;
        let mut attempts = Vec::new();
        let mut next = p
            .failed(t0, Failure::Stream { delivered: true }, Retry::Backoff)
            .until();
        loop {
            let at = match p.permit(next) {
                Permit::WaitUntil(until) => {
                    assert!(until > next, "a wait must end later");
                    next = until;
                    continue;
                }
                Permit::Attempt | Permit::Probe => next,
            };
            attempts.push(at);
            if at >= back {
                p.opened();
                return attempts;
            }
            next = p
                .failed(at + fails_after, Failure::Connect, Retry::Backoff)
                .until();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_forty_second_outage_every_agent_is_back_within_open_for() {
        let t0 = Instant::now();
        let outage = Duration::from_secs(40);
        let bound = BreakerConfig::default().open_for;
        let mut recoveries = Vec::new();
        for _ in 0..500 {
            let mut p = defaults();
            let attempts = through_an_outage(&mut p, t0, outage, Duration::ZERO);
            let last = *attempts.last().unwrap();
            recoveries.push(last - (t0 + outage));
            assert_eq!(p.breaker(), BreakerState::Closed);
            // Never a pause longer than the bound, so recovery is bounded
            // whenever the server comes back...
            for pair in attempts.windows(2) {
                assert!(pair[1] - pair[0] <= bound, "{:?}", pair[1] - pair[0]);
            }
            // ...and, once the breaker is open, never faster than half of
            // it: a dead server is not hammered.
            for pair in attempts[5..].windows(2) {
                assert!(pair[1] - pair[0] >= bound / 2, "{:?}", pair[1] - pair[0]);
            }
            assert!(attempts.len() <= 5 + 1 + (outage.as_secs_f64() / 1.5).ceil() as usize);
        }
        let worst = recoveries.iter().max().unwrap();
        assert!(*worst <= bound, "slowest recovery {worst:?}");
        // Spread out, not in step: some agents come back early, some late.
        let best = recoveries.iter().min().unwrap();
        assert!(*worst - *best > bound / 2, "{best:?}..{worst:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_that_time_out_follow_each_other_without_a_further_wait() {
        // A black-holed server: every connect hangs 5 s, then fails.
        let t0 = Instant::now();
        let mut p = defaults();
        let attempts =
            through_an_outage(&mut p, t0, Duration::from_secs(40), Duration::from_secs(5));
        let back = t0 + Duration::from_secs(40);
        let in_flight_at_return = attempts[attempts.len() - 2];
        assert!(in_flight_at_return < back);
        // The attempt in flight at the return fails at its timeout (if its
        // SYN is not retried in time), and the next one goes at once.
        assert!(*attempts.last().unwrap() - back <= Duration::from_secs(5));
        for pair in attempts[5..].windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_secs(5));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_breaker_opens_pauses_never_pass_open_for() {
        let mut p = Pacing::new(
            BackoffConfig::default().build().unwrap(),
            BreakerConfig {
                failure_threshold: 100,
                open_for: Duration::from_secs(3),
            },
        );
        let now = Instant::now();
        for _ in 0..20 {
            let Pause::Backoff(until) = p.failed(now, Failure::Connect, Retry::Backoff) else {
                panic!("the breaker stays closed below its threshold");
            };
            assert!(until - now <= Duration::from_secs(3));
        }
        assert_eq!(p.backoff().ceiling(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_that_end_unused_and_configuration_errors_back_off_to_the_cap() {
        let mut p = defaults();
        let now = Instant::now();
        // A server that accepts and drops every stream: pauses grow to 30 s.
        for _ in 0..10 {
            p.opened();
            p.failed(now, Failure::Stream { delivered: false }, Retry::Backoff);
        }
        assert_eq!(p.backoff().ceiling(), Duration::from_secs(30));
        // A stream that delivered starts the sequence over.
        let Pause::Backoff(until) =
            p.failed(now, Failure::Stream { delivered: true }, Retry::Backoff)
        else {
            panic!("a stream failure is a backoff pause");
        };
        assert!(until - now <= Duration::from_millis(500));
        // Refused credentials: the cap, even with the breaker open.
        for _ in 0..5 {
            p.failed(now, Failure::Connect, Retry::Backoff);
        }
        assert!(matches!(p.breaker(), BreakerState::Open { .. }));
        assert_eq!(
            p.failed(now, Failure::Connect, Retry::AtCap),
            Pause::Backoff(now + Duration::from_secs(30))
        );
    }
}
