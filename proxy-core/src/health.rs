//! The proxy's own health, reported through the agent to the control plane
//! (a rollout aborts on it): degraded when, since the running version was
//! applied, too many of the proxy's answers over a sliding window are
//! errors.
//!
//! - An error is an HTTP response with status 502, 503 or 504 (the proxy's
//!   own `upstream_failed`, `no_healthy_endpoint` and `upstream_timeout`, or
//!   an upstream's answer with those codes), or a TCP connection for which
//!   no upstream could be reached. Everything else routed counts as a
//!   success; requests no route matches are not counted.
//! - The window ([`HealthConfig::window`], 10 s by default) is a ring of
//!   [`SLOTS`] slots, each `window / SLOTS` long; it is cleared when a new
//!   version is applied, so a version is judged on its own traffic only.
//! - Degraded while the window holds at least `min_requests` answers (20)
//!   and more than `error_ratio` (0.2) of them are errors; healthy
//!   otherwise, so it recovers as the errors leave the window.
//!
//! The request path only does one compare-and-swap on one slot (no lock, no
//! allocation); the verdict is computed off the request path, every
//! `window / SLOTS` (at most every second), by [`follow`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use vane_agent::{AgentHandle, DataPlaneHealth};

use crate::clock;

/// Slots in the window.
pub(crate) const SLOTS: usize = 10;

/// When the proxy reports itself degraded. The defaults are what
/// `vane-proxy`'s `--unhealthy-*` flags default to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Degraded above this share of errors (0..=1). Default 0.2.
    pub error_ratio: f64,
    /// ... with at least this many answers in the window. Default 20.
    pub min_requests: u64,
    /// The sliding window. Default 10 s.
    pub window: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            error_ratio: 0.2,
            min_requests: 20,
            window: Duration::from_secs(10),
        }
    }
}

impl HealthConfig {
    /// Checks the values; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_ratio) {
            return Err(format!(
                "--unhealthy-error-ratio {}: must be between 0 and 1",
                self.error_ratio
            ));
        }
        if self.window < Duration::from_millis(SLOTS as u64) {
            return Err(format!(
                "--unhealthy-window {:?}: must be at least {SLOTS}ms",
                self.window
            ));
        }
        Ok(())
    }

    /// Why the window's counts make the proxy degraded, if they do.
    pub(crate) fn verdict(&self, counts: Counts) -> DataPlaneHealth {
        let Counts { requests, errors } = counts;
        if requests == 0 || requests < self.min_requests {
            return DataPlaneHealth::Healthy;
        }
        let ratio = errors as f64 / requests as f64;
        if ratio <= self.error_ratio {
            return DataPlaneHealth::Healthy;
        }
        DataPlaneHealth::Degraded {
            reason: format!(
                "error ratio {ratio:.2} over the last {}: {errors} of {requests} answers were 502/503/504 or upstream failures (limit --unhealthy-error-ratio {})",
                humantime::format_duration(self.window),
                self.error_ratio
            ),
        }
    }
}

/// Answers and errors in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
}

// A slot is one word: the slot's number (its start / slot length) in the
// top 24 bits, its answers and its errors in 20 bits each (saturating).
const EPOCH_BITS: u32 = 24;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

fn pack(epoch: u64, requests: u64, errors: u64) -> u64 {
    ((epoch & EPOCH_MASK) << (2 * COUNT_BITS)) | (requests << COUNT_BITS) | errors
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (
        word >> (2 * COUNT_BITS),
        (word >> COUNT_BITS) & COUNT_MAX,
        word & COUNT_MAX,
    )
}

/// The sliding window of answers: [`SLOTS`] one-word slots.
#[derive(Debug)]
pub(crate) struct ErrorWindow {
    slots: [AtomicU64; SLOTS],
    slot_ms: u64,
}

impl ErrorWindow {
    pub(crate) fn new(window: Duration) -> Self {
        let slot_ms = (u64::try_from(window.as_millis()).unwrap_or(u64::MAX) / SLOTS as u64).max(1);
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            slot_ms,
        }
    }

    /// Counts one answer at `now_ms` (the data plane's clock).
    #[inline]
    pub(crate) fn record(&self, error: bool, now_ms: u64) {
        let epoch = (now_ms / self.slot_ms) & EPOCH_MASK;
        let slot = &self.slots[(now_ms / self.slot_ms) as usize % SLOTS];
        let mut word = slot.load(Ordering::Relaxed);
        loop {
            let (e, requests, errors) = unpack(word);
            // An answer timed before what the slot holds now (a request
            // that started a lap of the ring ago) is too old to count.
            let ahead = e.wrapping_sub(epoch) & EPOCH_MASK;
            if ahead != 0 && ahead < EPOCH_MASK / 2 {
                return;
            }
            // A slot last used a window (or more) ago starts over.
            let (requests, errors) = if e == epoch {
                (requests, errors)
            } else {
                (0, 0)
            };
            let next = pack(
                epoch,
                (requests + 1).min(COUNT_MAX),
                (errors + u64::from(error)).min(COUNT_MAX),
            );
            match slot.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// The answers of the window ending at `now_ms`.
    pub(crate) fn counts(&self, now_ms: u64) -> Counts {
        let now = now_ms / self.slot_ms;
        let mut counts = Counts::default();
        for slot in &self.slots {
            let (epoch, requests, errors) = unpack(slot.load(Ordering::Relaxed));
            let age = (now.wrapping_sub(epoch)) & EPOCH_MASK;
            if age < SLOTS as u64 {
                counts.requests += requests;
                counts.errors += errors;
            }
        }
        counts
    }

    /// Forgets every answer (a new version was applied). Every slot is
    /// marked with the current slot's number, so answers of requests that
    /// started before are dropped too, except those that started within
    /// the current slot (a second, by default).
    pub(crate) fn clear(&self, now_ms: u64) {
        let empty = pack(now_ms / self.slot_ms, 0, 0);
        for slot in &self.slots {
            slot.store(empty, Ordering::Relaxed);
        }
    }
}

/// The proxy's health state: the window, its settings and its gauges.
#[derive(Debug)]
pub(crate) struct ProxyHealth {
    pub(crate) config: HealthConfig,
    pub(crate) window: ErrorWindow,
    /// `vane_proxy_degraded`: 1 while the proxy reports itself degraded.
    pub(crate) degraded: Gauge,
    /// `vane_proxy_error_ratio`: the share of errors in the window now.
    pub(crate) error_ratio: Gauge<f64, AtomicU64>,
}

impl ProxyHealth {
    pub(crate) fn new(config: HealthConfig) -> Self {
        Self {
            window: ErrorWindow::new(config.window),
            config,
            degraded: Gauge::default(),
            error_ratio: Gauge::default(),
        }
    }

    /// Counts one answer at `now_ms` (the data plane's clock; a request's
    /// start is close enough for slots of a second, and saves a clock read).
    #[inline]
    pub(crate) fn record(&self, error: bool, now_ms: u64) {
        self.window.record(error, now_ms);
    }

    /// The verdict on the window now, with the gauges refreshed.
    pub(crate) fn evaluate(&self) -> DataPlaneHealth {
        let counts = self.window.counts(clock::now_millis());
        let ratio = if counts.requests == 0 {
            0.0
        } else {
            counts.errors as f64 / counts.requests as f64
        };
        self.error_ratio.set(ratio);
        let verdict = self.config.verdict(counts);
        self.degraded.set(i64::from(verdict.is_degraded()));
        verdict
    }
}

/// Judges the window every `window / SLOTS` (at most every second) and
/// tells the agent when the verdict or the running version changes, until
/// `stop`. Clearing the window on a new version is `activate`'s.
pub(crate) async fn follow(health: Arc<ProxyHealth>, agent: AgentHandle, stop: CancellationToken) {
    let period = (health.config.window / SLOTS as u32).min(Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(u64, bool)> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let version = agent.current().version;
        let verdict = health.evaluate();
        let now = (version, verdict.is_degraded());
        // Only flips (and new versions) are reported: a reason whose counts
        // change every tick would make every tick a change to send.
        if last != Some(now) {
            if let DataPlaneHealth::Degraded { reason } = &verdict {
                tracing::warn!(version, %reason, "the data plane is degraded");
            } else if last.is_some_and(|(_, degraded)| degraded) {
                tracing::info!(version, "the data plane is healthy again");
            }
            agent.report_health_for(version, verdict);
            last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn degraded(h: &DataPlaneHealth) -> bool {
        h.is_degraded()
    }

    #[test]
    fn the_ratio_needs_enough_answers_and_must_exceed_the_limit() {
        let c = HealthConfig::default();
        let v = |requests, errors| c.verdict(Counts { requests, errors });
        assert!(!degraded(&v(0, 0)));
        assert!(!degraded(&v(19, 19)), "fewer than min_requests");
        assert!(!degraded(&v(20, 4)), "exactly the ratio is not above it");
        let DataPlaneHealth::Degraded { reason } = v(20, 5) else {
            panic!("5 of 20 is above 0.2");
        };
        assert_eq!(
            reason,
            "error ratio 0.25 over the last 10s: 5 of 20 answers were 502/503/504 or upstream failures (limit --unhealthy-error-ratio 0.2)"
        );
        assert!(HealthConfig::default().validate().is_ok());
        let bad = HealthConfig {
            error_ratio: 1.5,
            ..HealthConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("--unhealthy-error-ratio")
        );
    }

    #[test]
    fn answers_leave_the_window_as_it_slides() {
        let w = ErrorWindow::new(Duration::from_secs(10));
        let t0 = 1_000_000;
        for i in 0..10 {
            w.record(true, t0 + i * 100);
        }
        for i in 0..10 {
            w.record(false, t0 + 5_000 + i * 100);
        }
        assert_eq!(
            w.counts(t0 + 5_999),
            Counts {
                requests: 20,
                errors: 10
            }
        );
        // Ten slots of one second: the errors of second 0 are gone at 10 s.
        assert_eq!(w.counts(t0 + 9_999).errors, 10);
        assert_eq!(
            w.counts(t0 + 10_000),
            Counts {
                requests: 10,
                errors: 0
            }
        );
        assert_eq!(w.counts(t0 + 15_000), Counts::default());
        // A slot reused a lap later starts over, and an answer timed a
        // lap before what it holds now is dropped.
        w.record(true, t0 + 20_000);
        w.record(true, t0 + 10_000);
        assert_eq!(
            w.counts(t0 + 20_000),
            Counts {
                requests: 1,
                errors: 1
            }
        );
    }

    #[test]
    fn clearing_forgets_everything_before() {
        let w = ErrorWindow::new(Duration::from_secs(10));
        let t0 = 50_000;
        for i in 0..30 {
            w.record(true, t0 + i * 10);
        }
        assert_eq!(w.counts(t0 + 500).errors, 30);
        w.clear(t0 + 500);
        assert_eq!(w.counts(t0 + 500), Counts::default());
        w.record(false, t0 + 600);
        w.record(true, t0 + 1_700);
        assert_eq!(
            w.counts(t0 + 1_700),
            Counts {
                requests: 2,
                errors: 1
            }
        );
    }

    #[test]
    fn counts_saturate_instead_of_spilling_into_the_next_field() {
        let w = ErrorWindow::new(Duration::from_secs(10));
        let slot = &w.slots[0];
        slot.store(pack(0, COUNT_MAX, COUNT_MAX), Ordering::Relaxed);
        w.record(true, 0);
        assert_eq!(
            unpack(slot.load(Ordering::Relaxed)),
            (0, COUNT_MAX, COUNT_MAX)
        );
    }

    #[test]
    fn answers_from_many_threads_are_all_counted() {
        let w = Arc::new(ErrorWindow::new(Duration::from_secs(3600)));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        w.record((i + t) % 4 == 0, 1_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            w.counts(1_000),
            Counts {
                requests: 40_000,
                errors: 10_000
            }
        );
    }
}
