//! The retry budget of a cluster: retries may add at most 20% to the
//! cluster's requests over the last 10 seconds, with a floor of 10 retries
//! per second so a quiet cluster can still retry (linkerd's default budget:
//! `retryRatio: 0.2`, `minRetriesPerSecond: 10`, `ttl: 10s`). It keeps a retry storm from multiplying the load on an
//! upstream that is already failing.
//!
//! The window is a ring of one-second slots of atomic counters. Rotating a
//! slot and counting are not one atomic step, so under heavy concurrency a
//! few requests or retries may be miscounted; a budget is a rate, and that
//! error is far below what it guards against. No locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds covered by the window.
pub(crate) const WINDOW_SECS: u64 = 10;
/// Retries allowed per request in the window.
pub(crate) const RETRY_RATIO: f64 = 0.2;
/// Retries always allowed per second, whatever the ratio says.
pub(crate) const MIN_RETRIES_PER_SEC: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    /// The second (since process start) this slot counts, plus one; 0: unused.
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A cluster's retry budget. Kept across snapshots while the cluster exists.
#[derive(Debug, Default)]
pub(crate) struct RetryBudget {
    slots: [Slot; WINDOW_SECS as usize],
}

impl RetryBudget {
    fn slot(&self, sec: u64) -> &Slot {
        let slot = &self.slots[(sec % WINDOW_SECS) as usize];
        let epoch = sec + 1;
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts an original request (not a retry) at second `sec`.
    pub(crate) fn deposit(&self, sec: u64) {
        self.slot(sec).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget at second `sec`, if there is one.
    pub(crate) fn try_withdraw(&self, sec: u64) -> bool {
        let current = self.slot(sec);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let epoch = slot.epoch.load(Ordering::Acquire);
            // Slots of the last WINDOW_SECS seconds, this one included.
            if epoch != 0 && epoch + WINDOW_SECS > sec + 1 && epoch <= sec + 1 {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = (retries as f64) < RETRY_RATIO * requests as f64
            || current.retries.load(Ordering::Relaxed) < MIN_RETRIES_PER_SEC;
        if allowed {
            current.retries.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn withdraw_all(b: &RetryBudget, sec: u64) -> u64 {
        let mut n = 0;
        while b.try_withdraw(sec) {
            n += 1;
            assert!(n < 10_000, "the budget never ran out");
        }
        n
    }

    #[test]
    fn a_quiet_cluster_gets_the_floor() {
        let b = RetryBudget::default();
        assert_eq!(withdraw_all(&b, 5), MIN_RETRIES_PER_SEC);
        // The next second has a fresh floor.
        assert_eq!(withdraw_all(&b, 6), MIN_RETRIES_PER_SEC);
    }

    #[test]
    fn retries_are_a_fifth_of_the_requests_in_the_window() {
        let b = RetryBudget::default();
        for sec in 100..110 {
            for _ in 0..100 {
                b.deposit(sec);
            }
        }
        // 1000 requests in the window: 200 retries.
        assert_eq!(withdraw_all(&b, 109), 200);
        // Ten seconds later those requests have left the window; only the
        // floor remains.
        assert_eq!(withdraw_all(&b, 125), MIN_RETRIES_PER_SEC);
    }
}
