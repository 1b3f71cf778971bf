//! What the agent runs and what it knows about its link to the control plane.
//!
//! The running configuration lives in ONE `ArcSwap<Current>`: snapshot,
//! version, hash and source are swapped together, so a reader can never see
//! the listeners of one version with the clusters of another. Readers never
//! lock. The link status (connection, breaker, staleness) is small and
//! changes rarely; it sits behind a std `Mutex` never held across an await.
//!
//! The link status has one writer, the transition of the link's state
//! machine (`link/machine.rs`, through `Shared::update_link`). Two notes
//! sit beside it that are not the link's: why startup fell back to the
//! defaults, and a failed cache write reported as the last error.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;
use tokio::time::Instant;
use vane_model::Snapshot;

use crate::breaker::BreakerState;
use crate::report::{HealthReport, Reports};

/// How many applies [`Health::history`] keeps (the oldest is dropped first).
pub const HISTORY_LEN: usize = 16;

/// One configuration the agent installed, as `/status` `history` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// The control plane's version (0 for defaults).
    pub version: u64,
    /// Hash of the content.
    pub hash: String,
    /// When it was installed, in milliseconds since the Unix epoch.
    pub applied_at_unix_ms: u64,
    /// `live`, `cache` or `defaults`.
    pub source: &'static str,
}

/// Where the running configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Received from the control plane on this run.
    Live,
    /// Loaded from the disk cache at startup.
    Cache,
    /// The embedded defaults (or nothing at all: an empty snapshot, version 0).
    Defaults,
}

impl Source {
    /// `live`, `cache` or `defaults`, as in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Cache => "cache",
            Source::Defaults => "defaults",
        }
    }
}

/// The running configuration: everything that is swapped at once.
#[derive(Debug, Clone)]
pub struct Current {
    /// The control plane's version (0 for defaults).
    pub version: u64,
    /// Hash of the content (empty when nothing is loaded).
    pub hash: String,
    /// Where it came from.
    pub source: Source,
    /// The snapshot itself.
    pub snapshot: Arc<Snapshot>,
    /// When it was applied.
    pub applied_at: SystemTime,
}

impl Current {
    pub(crate) fn empty() -> Self {
        Self {
            version: 0,
            hash: String::new(),
            source: Source::Defaults,
            snapshot: Arc::new(Snapshot::default()),
            applied_at: SystemTime::now(),
        }
    }
}

/// Healthy or not, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    /// Serving configuration the control plane confirmed recently.
    Healthy,
    /// Serving, but something needs an operator's eye.
    Degraded {
        /// What is wrong.
        reason: String,
    },
}

/// A report of the agent's state, as `health()` returns it.
#[derive(Debug, Clone)]
pub struct Health {
    /// Healthy or degraded.
    pub state: HealthState,
    /// Running version.
    pub version: u64,
    /// Running hash.
    pub hash: String,
    /// Where the running configuration came from.
    pub source: Source,
    /// Time since the control plane last confirmed the agent is current
    /// (zero while a stream is up and the last response was applied).
    pub staleness: Duration,
    /// The reconnect breaker's state.
    pub breaker: BreakerState,
    /// The last error (connection, NACK, cache), if any.
    pub last_error: Option<String>,
    /// Whether a watch stream is up.
    pub connected: bool,
    /// The control server of the current or last stream.
    pub server: Option<String>,
    /// The last version this agent refused, and why.
    pub last_nack: Option<(u64, String)>,
    /// Watch streams that failed or ended since start.
    pub reconnects: u64,
    /// Snapshots applied since start.
    pub applies: u64,
    /// Snapshots refused since start.
    pub nacks: u64,
    /// What the embedder last reported of its data plane (see
    /// [`crate::AgentHandle::report_health`]); `None` until it reports.
    pub data_plane: Option<HealthReport>,
    /// The last [`HISTORY_LEN`] configurations installed, oldest first (a
    /// cached one confirmed live is not a new entry: same content).
    pub history: Vec<Applied>,
}

/// Counters and gauges the agent keeps; register them with [`crate::AgentHandle::register_metrics`].
#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics {
    pub(crate) applies: Counter,
    pub(crate) nacks: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) version: Gauge,
    pub(crate) staleness: Gauge<f64, AtomicU64>,
    pub(crate) healthy: Gauge,
    pub(crate) connected: Gauge,
    pub(crate) data_plane_degraded: Gauge,
}

impl Metrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "vane_agent_applies",
            "Snapshots applied (live, cache or defaults)",
            self.applies.clone(),
        );
        registry.register(
            "vane_agent_nacks",
            "Snapshots refused (NACKed)",
            self.nacks.clone(),
        );
        registry.register(
            "vane_agent_reconnects",
            "Watch streams that ended and were retried",
            self.reconnects.clone(),
        );
        registry.register(
            "vane_agent_config_version",
            "Version of the running configuration (0: defaults)",
            self.version.clone(),
        );
        registry.register(
            "vane_agent_staleness_seconds",
            "Time since the control plane last confirmed the configuration is current",
            self.staleness.clone(),
        );
        registry.register(
            "vane_agent_healthy",
            "1 when healthy, 0 when degraded",
            self.healthy.clone(),
        );
        registry.register(
            "vane_agent_connected",
            "1 while a watch stream is up",
            self.connected.clone(),
        );
        registry.register(
            "vane_agent_data_plane_degraded",
            "1 while the embedder reports its data plane degraded (AgentHandle::report_health)",
            self.data_plane_degraded.clone(),
        );
    }
}

/// The link's status.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) connected: bool,
    /// Whether the control plane currently confirms what we run.
    confirmed: bool,
    /// The last instant at which it did.
    last_confirmed: Instant,
    pub(crate) breaker: BreakerState,
    pub(crate) last_error: Option<String>,
    pub(crate) server: Option<String>,
    pub(crate) last_nack: Option<(u64, String)>,
    /// The control server that said it cannot reach its store, until the
    /// next confirmation: the reason given once staleness passes the
    /// threshold.
    pub(crate) cut_off: Option<String>,
    /// Why the startup did not load a cache (reported while on defaults).
    startup_note: Option<String>,
}

impl Link {
    /// The control plane confirms what we run (a stream is up and nothing
    /// it sent is refused).
    pub(crate) fn confirm(&mut self, now: Instant) {
        self.confirmed = true;
        self.last_confirmed = now;
        self.cut_off = None;
    }

    /// Confirmation stops (stream lost, or the last response was refused);
    /// staleness counts from `now` if it was confirmed until then.
    pub(crate) fn unconfirm(&mut self, now: Instant) {
        if self.confirmed {
            self.last_confirmed = now;
        }
        self.confirmed = false;
    }

    /// Confirmation ended at `at` at the latest: the server of the stream
    /// has not reached its store since then, so its confirmations since
    /// were none. Staleness counts from `at` if the link was confirmed
    /// until now; if it was not, the last real confirmation stands (it came
    /// from an earlier stream, perhaps from another server).
    pub(crate) fn unconfirm_since(&mut self, at: Instant) {
        if self.confirmed {
            self.last_confirmed = at;
        }
        self.confirmed = false;
    }
}

/// State shared between the handle, the apply path and the stream task.
pub(crate) struct Shared {
    pub(crate) current: ArcSwap<Current>,
    pub(crate) changes: watch::Sender<Arc<Current>>,
    link: Mutex<Link>,
    pub(crate) metrics: Metrics,
    pub(crate) stale_after: Duration,
    /// The embedder's latest data-plane health report, sent by the link.
    pub(crate) reports: Reports,
    /// The last [`HISTORY_LEN`] installs, oldest first.
    history: Mutex<VecDeque<Applied>>,
}

impl Shared {
    pub(crate) fn new(stale_after: Duration) -> Self {
        let current = Arc::new(Current::empty());
        let (changes, _) = watch::channel(current.clone());
        Self {
            current: ArcSwap::new(current),
            changes,
            link: Mutex::new(Link {
                connected: false,
                confirmed: false,
                last_confirmed: Instant::now(),
                breaker: BreakerState::Closed,
                last_error: None,
                server: None,
                last_nack: None,
                cut_off: None,
                startup_note: None,
            }),
            metrics: Metrics::default(),
            stale_after,
            reports: Reports::new(),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
        }
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        // A panic while holding this lock cannot leave the plain data in it
        // inconsistent, so a poisoned lock is still usable.
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the link status. Its one caller is the transition of the
    /// link's state machine, so the status always says what the machine
    /// last decided.
    pub(crate) fn update_link(&self, f: impl FnOnce(&mut Link)) {
        f(&mut self.link());
    }

    /// Why startup serves the defaults (reported while it does).
    pub(crate) fn set_startup_note(&self, note: String) {
        self.link().startup_note = Some(note);
    }

    /// An error outside the link (the disk cache could not be written),
    /// reported as the last error until the link has a newer one.
    pub(crate) fn record_error(&self, error: String) {
        self.link().last_error = Some(error);
    }

    /// Installs a new running configuration: the one swap, noted in the
    /// history.
    pub(crate) fn install(&self, current: Current) {
        self.note_applied(&current);
        self.swap(current);
    }

    fn swap(&self, current: Current) {
        let current = Arc::new(current);
        self.metrics
            .version
            .set(i64::try_from(current.version).unwrap_or(i64::MAX));
        self.current.store(current.clone());
        self.changes.send_replace(current);
    }

    /// The control plane confirmed what we run: content loaded from the
    /// cache is now known to be live (same content, only its provenance
    /// changes).
    pub(crate) fn promote_cached(&self) {
        let current = self.current.load_full();
        if current.source == Source::Cache {
            let mut promoted = (*current).clone();
            promoted.source = Source::Live;
            self.swap(promoted);
        }
    }

    fn note_applied(&self, current: &Current) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY_LEN {
            history.pop_front();
        }
        history.push_back(Applied {
            version: current.version,
            hash: current.hash.clone(),
            applied_at_unix_ms: current
                .applied_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            source: current.source.as_str(),
        });
    }

    pub(crate) fn health(&self) -> Health {
        let current = self.current.load_full();
        let link = self.link();
        let staleness = if link.confirmed {
            Duration::ZERO
        } else {
            Instant::now().saturating_duration_since(link.last_confirmed)
        };
        let state = if current.source == Source::Defaults {
            let why = link
                .startup_note
                .clone()
                .unwrap_or_else(|| "no configuration received yet".into());
            HealthState::Degraded {
                reason: format!("serving embedded defaults: {why}"),
            }
        } else if let Some(url) = link
            .cut_off
            .as_ref()
            .filter(|_| staleness > self.stale_after)
        {
            // The agent may be connected and may have applied all its
            // server sent: the server is what is behind.
            HealthState::Degraded {
                reason: format!("control server {url} cannot reach its store"),
            }
        } else if staleness > self.stale_after {
            HealthState::Degraded {
                reason: format!(
                    "not confirmed by the control plane for {}s (threshold {}s){}",
                    staleness.as_secs(),
                    self.stale_after.as_secs(),
                    link.last_error
                        .as_ref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                ),
            }
        } else {
            HealthState::Healthy
        };
        self.metrics.staleness.set(staleness.as_secs_f64());
        self.metrics
            .healthy
            .set(i64::from(state == HealthState::Healthy));
        self.metrics.connected.set(i64::from(link.connected));
        Health {
            state,
            version: current.version,
            hash: current.hash.clone(),
            source: current.source,
            staleness,
            breaker: link.breaker,
            last_error: link.last_error.clone(),
            connected: link.connected,
            server: link.server.clone(),
            last_nack: link.last_nack.clone(),
            reconnects: self.metrics.reconnects.get(),
            applies: self.metrics.applies.get(),
            nacks: self.metrics.nacks.get(),
            data_plane: self.reports.latest(),
            history: self
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn staleness_counts_from_the_last_confirmation() {
        let shared = Shared::new(Duration::from_secs(300));
        let mut current = Current::empty();
        current.version = 3;
        current.hash = "ab".into();
        current.source = Source::Live;
        shared.install(current);
        shared.update_link(|l| l.confirm(Instant::now()));
        tokio::time::advance(Duration::from_secs(3600)).await;
        // Confirmed while the stream is up, however long ago the last change.
        assert_eq!(shared.health().staleness, Duration::ZERO);
        assert_eq!(shared.health().state, HealthState::Healthy);

        shared.update_link(|l| l.unconfirm(Instant::now()));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(shared.health().staleness, Duration::from_secs(299));
        assert_eq!(shared.health().state, HealthState::Healthy);
        tokio::time::advance(Duration::from_secs(2)).await;
        let HealthState::Degraded { reason } = shared.health().state else {
            panic!("should be degraded after the threshold");
        };
        assert!(reason.contains("threshold 300s"), "{reason}");

        // The next confirmation makes it healthy again.
        shared.update_link(|l| l.confirm(Instant::now()));
        assert_eq!(shared.health().state, HealthState::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_its_store_backdates_only_a_standing_confirmation() {
        let shared = Shared::new(Duration::from_secs(300));
        shared.update_link(|l| l.confirm(Instant::now()));
        tokio::time::advance(Duration::from_secs(10)).await;
        let four_ago = Instant::now() - Duration::from_secs(4);
        shared.update_link(|l| l.unconfirm_since(four_ago));
        assert_eq!(shared.health().staleness, Duration::from_secs(4));
        // Not confirmed now: the last real confirmation stands, whatever
        // another server says of its own store.
        tokio::time::advance(Duration::from_secs(1)).await;
        let long_ago = Instant::now() - Duration::from_secs(9);
        shared.update_link(|l| l.unconfirm_since(long_ago));
        assert_eq!(shared.health().staleness, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn history_keeps_the_last_installs_and_skips_a_promotion() {
        let shared = Shared::new(Duration::from_secs(300));
        let mut cached = Current::empty();
        cached.version = 1;
        cached.hash = "h1".into();
        cached.source = Source::Cache;
        shared.install(cached);
        shared.promote_cached();
        let h = shared.health();
        assert_eq!(h.source, Source::Live);
        assert_eq!(h.history.len(), 1, "a promotion is the same content");
        assert_eq!((h.history[0].version, h.history[0].source), (1, "cache"));
        for v in 2..=20 {
            let mut c = Current::empty();
            c.version = v;
            c.hash = format!("h{v}");
            c.source = Source::Live;
            shared.install(c);
        }
        let versions: Vec<u64> = shared.health().history.iter().map(|a| a.version).collect();
        assert_eq!(
            versions,
            (5..=20).collect::<Vec<_>>(),
            "the last 16, oldest first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn defaults_are_degraded() {
        let shared = Shared::new(Duration::from_secs(300));
        shared.set_startup_note("cache corrupt".into());
        let HealthState::Degraded { reason } = shared.health().state else {
            panic!("defaults are degraded");
        };
        assert_eq!(reason, "serving embedded defaults: cache corrupt");
    }
}
