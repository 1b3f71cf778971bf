//! The per-identity push rate limit: a token bucket per identity, so one
//! runaway script (or a stolen credential) cannot flood the history, the
//! store's disk and every agent with versions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pushes per second each identity may sustain unless configured.
pub const DEFAULT_PUSH_RATE: u32 = 20;
/// Pushes an identity may make at once after a quiet spell unless configured.
pub const DEFAULT_PUSH_BURST: u32 = 100;
/// Buckets kept before full (idle) ones are dropped.
const MAX_BUCKETS: usize = 10_000;

/// One token bucket per identity.
#[derive(Debug)]
pub struct PushLimiter {
    /// Tokens per second; 0 turns the limit off.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PushLimiter {
    /// `rate` pushes per second with bursts of `burst`; a rate of 0 turns
    /// the limit off.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: if rate.is_finite() && rate > 0.0 {
                rate
            } else {
                0.0
            },
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// The limit as words for errors: "20 per second (burst 100)".
    pub fn describe(&self) -> String {
        format!("{} per second (burst {})", self.rate, self.burst)
    }

    /// Takes one push from `identity`'s bucket, or says how long until one
    /// is available.
    pub fn check(&self, identity: &str, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        // A std mutex: held for a few arithmetic operations, never across
        // an await.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(identity) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refill(*b, now, rate, burst).tokens < burst);
        }
        let bucket = buckets.entry(identity.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let mut refilled = refill(*bucket, now, self.rate, self.burst);
        if refilled.tokens >= 1.0 {
            refilled.tokens -= 1.0;
            *bucket = refilled;
            Ok(())
        } else {
            *bucket = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled.tokens) / self.rate))
        }
    }
}

fn refill(b: Bucket, now: Instant, rate: f64, burst: f64) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * rate).min(burst),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_paces() {
        let l = PushLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check("a", t0).unwrap();
        }
        let wait = l.check("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Another identity has its own bucket.
        l.check("b", t0).unwrap();
        // Half a second later one more push is allowed, then none.
        let t1 = t0 + Duration::from_millis(500);
        l.check("a", t1).unwrap();
        assert!(l.check("a", t1).is_err());
    }

    #[test]
    fn zero_rate_is_off() {
        let l = PushLimiter::new(0.0, 1);
        let t0 = Instant::now();
        for _ in 0..1000 {
            l.check("a", t0).unwrap();
        }
    }

    #[test]
    fn buckets_stay_bounded() {
        let l = PushLimiter::new(1000.0, 1);
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS * 2) {
            l.check(&format!("id{i}"), t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_BUCKETS + 1);
    }
}
