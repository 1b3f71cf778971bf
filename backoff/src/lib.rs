//! `vane-backoff`: how long to wait before the next retry, for every retry
//! loop in Vane (the agent's reconnects, the etcd store's link, the control
//! server's agent replication). It depends on nothing of Vane.
//!
//! The pause before retry `n` (counting from 0) has the ceiling
//! `min(max, min_delay * 2^n)`; [`Jitter`] decides where under (or at) that
//! ceiling it falls. The shape is linkerd's `linkerd/exp-backoff`: a
//! validating constructor over `min`, `max` and `jitter`, then `next()` and
//! `reset()` on one sequence.
//!
//! ```
//! use std::time::Duration;
//! use vane_backoff::{ExponentialBackoff, Jitter};
//!
//! // 250 ms doubling to a 5 s cap, no jitter (one replica retrying alone).
//! let mut b = ExponentialBackoff::new(
//!     Duration::from_millis(250),
//!     Duration::from_secs(5),
//!     Jitter::None,
//! )?;
//! assert_eq!(b.next(), Duration::from_millis(250));
//! assert_eq!(b.next(), Duration::from_millis(500));
//! b.reset(); // the call succeeded: start over
//! assert_eq!(b.next(), Duration::from_millis(250));
//!
//! // A fleet of agents: full jitter, so they do not reconnect in waves.
//! let mut b = ExponentialBackoff::new(
//!     Duration::from_millis(500),
//!     Duration::from_secs(30),
//!     Jitter::Full,
//! )?;
//! assert!(b.next() <= Duration::from_millis(500));
//! # Ok::<(), vane_backoff::InvalidBackoff>(())
//! ```

use std::fmt;
use std::time::Duration;

/// Where a delay falls under its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// Exactly the ceiling. For a single client retrying alone, where
    /// predictable pauses read better in logs and nobody else competes.
    None,
    /// Uniform in `[0, ceiling]` (AWS "full jitter"). For a fleet that
    /// failed at the same instant: it spreads out instead of retrying in
    /// waves that knock the recovering server over again.
    Full,
}

/// Why [`ExponentialBackoff::new`] refused its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidBackoff {
    /// The minimum delay is zero, so doubling it would never grow it.
    ZeroMin,
    /// The minimum delay is above the maximum.
    MinAboveMax {
        /// The minimum given.
        min: Duration,
        /// The maximum given.
        max: Duration,
    },
}

// Written by hand rather than with thiserror: this crate depends on nothing
// but `rand`, and two messages do not need a derive.
impl fmt::Display for InvalidBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidBackoff::ZeroMin => f.write_str("the minimum delay must be above zero"),
            InvalidBackoff::MinAboveMax { min, max } => {
                write!(f, "the minimum delay {min:?} is above the maximum {max:?}")
            }
        }
    }
}

impl std::error::Error for InvalidBackoff {}

/// One retry sequence: its settings, checked once, and how many retries it
/// has paced since the last [`reset`](Self::reset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl ExponentialBackoff {
    /// A fresh sequence from `min` doubling up to `max`. Refuses a zero
    /// `min` and a `min` above `max`; `min == max` is a constant pause.
    pub fn new(min: Duration, max: Duration, jitter: Jitter) -> Result<Self, InvalidBackoff> {
        if min.is_zero() {
            return Err(InvalidBackoff::ZeroMin);
        }
        if min > max {
            return Err(InvalidBackoff::MinAboveMax { min, max });
        }
        Ok(Self {
            min,
            max,
            jitter,
            attempt: 0,
        })
    }

    /// The first ceiling.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The largest delay. Callers that give up on fast retries for an
    /// error only an operator can fix use it as their fixed pace.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// How delays fall under their ceiling.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The delay before the next retry, advancing the sequence.
    // Not `Iterator::next`: the sequence never ends, and an `Option` would
    // make every caller unwrap a value that is always there.
    #[expect(
        clippy::should_implement_trait,
        reason = "an endless sequence; see the comment above"
    )]
    pub fn next(&mut self) -> Duration {
        let delay = self.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Starts the sequence over, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        self.ceiling_at(self.attempt)
    }

    /// The delay before retry `attempt` (0 for the first), without moving
    /// the sequence: for a loop that already counts its own failures.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling_at(attempt);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => full_jitter(ceiling),
        }
    }

    /// `min * 2^attempt`, at most `max`, without overflowing for any count.
    fn ceiling_at(&self, attempt: u32) -> Duration {
        // `Duration::checked_mul` takes a u32, so the doubling is two
        // factors of at most 2^31; 2^62 nanoseconds is 146 years, past any
        // maximum, so counts beyond that need not grow further.
        let low = 1u32 << attempt.min(31);
        let high = 1u32 << attempt.saturating_sub(31).min(31);
        self.min
            .checked_mul(low)
            .and_then(|d| d.checked_mul(high))
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// Uniform in `[0, ceiling]`, at nanosecond resolution: the full jitter of
/// one delay, also for pauses that are not part of a sequence.
pub fn full_jitter(ceiling: Duration) -> Duration {
    // u64 nanoseconds cover 584 years; saturate beyond.
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

/// Uniform in `[ceiling / 2, ceiling]` (AWS "equal jitter"): for a pause
/// that must stay near a bound (a circuit breaker's period between probes,
/// which bounds how long a recovered server waits for a client) yet must
/// not fall in step across a fleet.
pub fn equal_jitter(ceiling: Duration) -> Duration {
    let half = ceiling / 2;
    half + full_jitter(ceiling - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_jitter_the_delays_double_up_to_the_max() {
        // The control server's agent replication: 250 ms to 5 s.
        let mut b = ExponentialBackoff::new(ms(250), ms(5000), Jitter::None).unwrap();
        let delays: Vec<_> = (0..8).map(|_| b.next().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next(), ms(250));
    }

    #[test]
    fn delay_by_attempt_matches_the_sequence() {
        // The etcd store's link counts its own attempts.
        let b = ExponentialBackoff::new(ms(50), ms(500), Jitter::None).unwrap();
        let by_attempt: Vec<_> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(by_attempt, [50, 100, 200, 400, 500, 500]);
        let mut seq = b.clone();
        for n in 0..6 {
            assert_eq!(seq.next(), b.delay(n));
        }
        assert_eq!(b.attempts(), 0, "delay() does not move the sequence");
    }

    #[test]
    fn ceilings_of_the_agent_defaults() {
        let mut b = ExponentialBackoff::new(ms(500), ms(30_000), Jitter::Full).unwrap();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next();
        }
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        b.reset();
        assert_eq!(b.ceiling(), ms(500));
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_covers_it() {
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..2000 {
            let mut b = ExponentialBackoff::new(ms(100), ms(2000), Jitter::Full).unwrap();
            for _ in 0..3 {
                b.next();
            }
            let ceiling = b.ceiling();
            assert_eq!(ceiling, ms(800));
            let d = b.next();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            seen_low |= d < ceiling / 4;
            seen_high |= d > ceiling * 3 / 4;
        }
        assert!(seen_low && seen_high, "full jitter covers the whole range");
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half_and_covers_it() {
        let (mut low, mut high) = (ms(1000), ms(0));
        for _ in 0..2000 {
            let d = equal_jitter(ms(1000));
            assert!(d >= ms(500) && d <= ms(1000), "{d:?}");
            low = low.min(d);
            high = high.max(d);
        }
        assert!(low < ms(600) && high > ms(900), "{low:?}..{high:?}");
        assert_eq!(equal_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn huge_attempt_counts_neither_overflow_nor_pass_the_max() {
        let mut b =
            ExponentialBackoff::new(Duration::from_nanos(1), ms(30_000), Jitter::None).unwrap();
        for _ in 0..200 {
            assert!(b.next() <= ms(30_000));
        }
        assert_eq!(b.delay(u32::MAX), ms(30_000));
        let huge = ExponentialBackoff::new(Duration::MAX, Duration::MAX, Jitter::None).unwrap();
        assert_eq!(huge.delay(40), Duration::MAX);
    }

    #[test]
    fn equal_min_and_max_is_a_constant_pause() {
        let mut b = ExponentialBackoff::new(ms(300), ms(300), Jitter::None).unwrap();
        assert!((0..5).all(|_| b.next() == ms(300)));
    }

    #[test]
    fn the_constructor_refuses_what_cannot_pace() {
        assert_eq!(
            ExponentialBackoff::new(Duration::ZERO, ms(10), Jitter::Full),
            Err(InvalidBackoff::ZeroMin)
        );
        let err = ExponentialBackoff::new(ms(5000), ms(1000), Jitter::None).unwrap_err();
        assert_eq!(
            err,
            InvalidBackoff::MinAboveMax {
                min: ms(5000),
                max: ms(1000)
            }
        );
        assert_eq!(
            err.to_string(),
            "the minimum delay 5s is above the maximum 1s"
        );
        assert_eq!(
            InvalidBackoff::ZeroMin.to_string(),
            "the minimum delay must be above zero"
        );
        let b = ExponentialBackoff::new(ms(1), ms(2), Jitter::Full).unwrap();
        assert_eq!((b.min(), b.max(), b.jitter()), (ms(1), ms(2), Jitter::Full));
    }
}
