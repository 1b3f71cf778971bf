//! When each agent received and ACKed each version, and what the
//! responses carried: stamps in nanoseconds since the fleet started (plus
//! one, so 0 means "not yet"), written once per agent without locks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

/// Arrival and ACK times of one version, per agent.
#[derive(Debug)]
pub struct VersionTimes {
    pub(crate) version: u64,
    /// Nanoseconds since the fleet started, plus one (0: not yet).
    pub(crate) received: Vec<AtomicU64>,
    pub(crate) acked: Vec<AtomicU64>,
    pub(crate) acks_left: AtomicUsize,
    pub(crate) all_acked: Notify,
    pub(crate) full: AtomicU64,
    pub(crate) delta: AtomicU64,
    pub(crate) full_bytes: AtomicU64,
    pub(crate) delta_bytes: AtomicU64,
}

/// What the responses of one version were, summed over the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Responses with a full snapshot.
    pub full: u64,
    /// Responses with a delta.
    pub delta: u64,
    /// Body bytes of the full responses.
    pub full_bytes: u64,
    /// Body bytes of the delta responses.
    pub delta_bytes: u64,
}

impl VersionTimes {
    pub(crate) fn new(version: u64, agents: usize) -> Self {
        Self {
            version,
            received: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            acks_left: AtomicUsize::new(agents),
            all_acked: Notify::new(),
            full: AtomicU64::new(0),
            delta: AtomicU64::new(0),
            full_bytes: AtomicU64::new(0),
            delta_bytes: AtomicU64::new(0),
        }
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Milliseconds from `since` to each agent's first arrival of this
    /// version (agents it never reached are left out).
    pub fn received_ms(&self, started: Instant, since: Instant) -> Vec<f64> {
        Self::since(&self.received, started, since)
    }

    /// Milliseconds from `since` to each agent's ACK of this version.
    pub fn acked_ms(&self, started: Instant, since: Instant) -> Vec<f64> {
        Self::since(&self.acked, started, since)
    }

    /// What the responses carried.
    pub fn carried(&self) -> Carried {
        Carried {
            full: self.full.load(Ordering::Relaxed),
            delta: self.delta.load(Ordering::Relaxed),
            full_bytes: self.full_bytes.load(Ordering::Relaxed),
            delta_bytes: self.delta_bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn since(stamps: &[AtomicU64], started: Instant, since: Instant) -> Vec<f64> {
        let offset = since.saturating_duration_since(started).as_nanos() as f64;
        stamps
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s > 0)
            .map(|s| ((s - 1) as f64 - offset).max(0.0) / 1e6)
            .collect()
    }

    pub(crate) fn stamp(slot: &AtomicU64, now: u64) -> bool {
        slot.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}
