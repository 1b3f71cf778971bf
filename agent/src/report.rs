//! The embedder's health hook: what the data plane says of the version it
//! runs ([`DataPlaneHealth`]), kept latest-wins in one `watch` channel that
//! the link reads to send it on its stream (`WatchRequest.health`, see
//! docs/protocol.md#data-plane-health).
//!
//! This is not the agent's own [`crate::Health`] (is the control plane
//! reachable, is the configuration current): that one the agent works out
//! itself; this one only the embedder knows (are requests failing since the
//! version was applied, does a health command pass).

use serde::Serialize;
use tokio::sync::watch;

/// Most bytes of a degraded reason kept; longer ones are cut (with `…`),
/// so an embedder cannot make every request of the stream carry arbitrary
/// amounts of text.
pub const MAX_REASON_BYTES: usize = 1024;

/// What the embedder reports of its data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPlaneHealth {
    /// It serves as it should.
    Healthy,
    /// It serves badly with what it runs (errors, a failing check).
    Degraded {
        /// Why, as an operator reads it.
        reason: String,
    },
}

impl DataPlaneHealth {
    /// Whether this is `Degraded`.
    pub fn is_degraded(&self) -> bool {
        matches!(self, DataPlaneHealth::Degraded { .. })
    }
}

/// One report: the health and the version it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Whether the data plane says it is degraded.
    pub degraded: bool,
    /// Why (empty when healthy).
    pub reason: String,
    /// The version the report is about (0: the defaults or nothing).
    pub version: u64,
}

impl HealthReport {
    /// `health` of `version`, with the reason trimmed and cut to
    /// [`MAX_REASON_BYTES`].
    pub fn new(version: u64, health: DataPlaneHealth) -> Self {
        match health {
            DataPlaneHealth::Healthy => Self {
                degraded: false,
                reason: String::new(),
                version,
            },
            DataPlaneHealth::Degraded { reason } => Self {
                degraded: true,
                reason: cut(reason.trim(), MAX_REASON_BYTES),
                version,
            },
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, `…` added
/// when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The latest report (none until the embedder reports), latest-wins: the
/// embedder may report as often as it likes; only changes wake the link,
/// and a change made while the link is busy is coalesced with the next.
#[derive(Debug)]
pub(crate) struct Reports {
    latest: watch::Sender<Option<HealthReport>>,
}

impl Reports {
    pub(crate) fn new() -> Self {
        Self {
            latest: watch::channel(None).0,
        }
    }

    /// Records `report`; wakes the link only if it differs from the last.
    pub(crate) fn report(&self, report: HealthReport) {
        self.latest.send_if_modified(|latest| {
            if latest.as_ref() == Some(&report) {
                false
            } else {
                *latest = Some(report);
                true
            }
        });
    }

    /// The latest report.
    pub(crate) fn latest(&self) -> Option<HealthReport> {
        self.latest.borrow().clone()
    }

    /// A receiver that is woken by every change from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<HealthReport>> {
        self.latest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_trimmed_and_cut_and_only_changes_wake_the_link() {
        let r = HealthReport::new(
            3,
            DataPlaneHealth::Degraded {
                reason: format!("  {}  ", "é".repeat(MAX_REASON_BYTES)),
            },
        );
        assert!(r.degraded);
        assert!(r.reason.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(r.reason.ends_with('…') && r.reason.starts_with('é'));
        assert_eq!(
            HealthReport::new(3, DataPlaneHealth::Healthy),
            HealthReport {
                degraded: false,
                reason: String::new(),
                version: 3
            }
        );

        let reports = Reports::new();
        let mut link = reports.subscribe();
        assert_eq!(reports.latest(), None);
        reports.report(HealthReport::new(1, DataPlaneHealth::Healthy));
        assert!(link.has_changed().unwrap());
        link.borrow_and_update();
        reports.report(HealthReport::new(1, DataPlaneHealth::Healthy));
        assert!(!link.has_changed().unwrap(), "the same report again");
        reports.report(HealthReport::new(2, DataPlaneHealth::Healthy));
        assert!(link.has_changed().unwrap(), "another version");
        assert_eq!(reports.latest().map(|r| r.version), Some(2));
    }
}
