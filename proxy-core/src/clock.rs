//! The data plane's monotonic clock: milliseconds and nanoseconds since the
//! process started, as plain integers so runtime state (ejections, token
//! buckets, retry-budget windows) fits in atomics.

use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds from the process's base instant to `at` (0 before it).
pub(crate) fn nanos_at(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

/// Milliseconds from the process's base instant to `at`.
pub(crate) fn millis_at(at: Instant) -> u64 {
    nanos_at(at) / 1_000_000
}

/// Milliseconds since the base instant, now.
pub(crate) fn now_millis() -> u64 {
    millis_at(Instant::now())
}
