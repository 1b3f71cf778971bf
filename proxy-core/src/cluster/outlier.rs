//! Passive outlier detection: per-endpoint runtime state (in-flight count,
//! consecutive failures, ejection) and the ejection decision.
//!
//! An endpoint is ejected after `consecutive_failures` connect failures,
//! timeouts or 5xx responses in a row, for `base * 2^(n-1)` capped at `max`
//! (n counts its ejections; it resets once the endpoint has stayed in for
//! `max`). At most `max_ejection_percent` of a cluster's endpoints are out at
//! once; at 100 every one may be, and the cluster then balances over all
//! of them in panic mode (see [`super::ClusterRt::pick`]). An ejected
//! endpoint returns by itself when its interval ends: availability is a
//! comparison with the clock, so there is no timer to run and nothing to
//! forget.
//!
//! The state lives in an `Arc` keyed by (cluster, endpoint address) and is
//! carried into every new snapshot that keeps the endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use vane_model::OutlierDetection;

/// Runtime state of one endpoint of one cluster.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    /// Requests (or TCP connections) in flight to this endpoint.
    pub(crate) active: AtomicU32,
    /// Failures in a row since the last success.
    consecutive: AtomicU32,
    /// Out of rotation until this instant ([`crate::clock`] milliseconds).
    ejected_until: AtomicU64,
    /// How many times it was ejected (the back-off exponent).
    ejections: AtomicU32,
}

/// Counts a request (or TCP connection) in flight to an endpoint for as
/// long as it lives. HTTP responses carry it in their body and TCP
/// connections hold it while they copy, so `least_request` counts a request
/// until it is really done.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// Starts counting.
    pub(crate) fn new(state: &Arc<EndpointState>) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointState {
    /// Whether the endpoint takes traffic at `now_ms`.
    #[inline]
    pub(crate) fn available(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Requests in flight.
    #[inline]
    pub(crate) fn in_flight(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// A success resets the failure streak.
    #[inline]
    pub(crate) fn record_success(&self) {
        // Read first: the common case writes nothing, so endpoints shared by
        // every core do not bounce their cache line on each response.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; true when the streak reached `threshold` (the
    /// caller then asks the cluster whether it may eject).
    pub(crate) fn record_failure(&self, threshold: u32) -> bool {
        self.consecutive.fetch_add(1, Ordering::Relaxed) + 1 >= threshold.max(1)
    }

    /// When the endpoint returns, if it is ejected at `now_ms`.
    pub(crate) fn ejected_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    /// Ejects the endpoint at `now_ms`; returns the ejection's length. The
    /// caller holds the cluster's ejection lock and checked the caps.
    pub(crate) fn eject(&self, now_ms: u64, policy: &OutlierDetection) -> Duration {
        let last_until = self.ejected_until.load(Ordering::Relaxed);
        let max_ms = millis(policy.max_ejection);
        // Back in rotation for a whole `max` since the last return: forget
        // earlier ejections.
        if last_until.saturating_add(max_ms) <= now_ms {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let n = self
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let factor = 1u64
            .checked_shl(n.saturating_sub(1).min(62))
            .unwrap_or(u64::MAX);
        let length = millis(policy.base_ejection)
            .saturating_mul(factor)
            .min(max_ms);
        self.ejected_until
            .store(now_ms.saturating_add(length), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        Duration::from_millis(length)
    }

    /// Forgets the streak without ejecting (the caps refused the ejection),
    /// so the next decision needs a fresh streak.
    pub(crate) fn reset_streak(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How many endpoints of `total` may be ejected at once (rounded down).
/// All of them at 100%: panic mode keeps such a cluster serving.
pub(crate) fn max_ejected(total: usize, percent: u32) -> usize {
    total.saturating_mul(percent.min(100) as usize) / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(350),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn ejections_grow_then_cap_then_reset() {
        let e = EndpointState::default();
        let p = policy();
        assert!(!e.record_failure(3));
        assert!(!e.record_failure(3));
        assert!(e.record_failure(3));
        assert_eq!(e.eject(1_000, &p), Duration::from_millis(100));
        assert!(!e.available(1_099));
        assert!(e.available(1_100));
        assert_eq!(e.eject(1_100, &p), Duration::from_millis(200));
        assert_eq!(e.eject(1_300, &p), Duration::from_millis(350));
        assert_eq!(e.eject(1_650, &p), Duration::from_millis(350));
        // Back at 2_000; in for longer than `max` (350 ms): the next ejection
        // starts from the base again.
        assert_eq!(e.eject(2_400, &p), Duration::from_millis(100));
    }

    #[test]
    fn a_success_resets_the_streak() {
        let e = EndpointState::default();
        assert!(!e.record_failure(2));
        e.record_success();
        assert!(!e.record_failure(2));
        assert!(e.record_failure(2));
    }

    #[test]
    fn the_cap_rounds_down_and_reaches_all_at_100() {
        assert_eq!(max_ejected(1, 100), 1);
        assert_eq!(max_ejected(1, 50), 0);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(2, 100), 2);
        assert_eq!(max_ejected(3, 99), 2);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(10, 0), 0);
    }
}
