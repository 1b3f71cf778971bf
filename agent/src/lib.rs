//! `vane-agent`: the library a proxy links to follow a Vane control server and
//! keep serving through any control-plane failure.
//!
//! One entry, one builder:
//!
//! ```no_run
//! # async fn demo() -> Result<(), vane_agent::StartError> {
//! let agent = vane_agent::Agent::builder()
//!     .servers(["http://127.0.0.1:7070"])
//!     .node_id("edge-1")
//!     .group("edge")
//!     .cache_dir("/var/cache/vane")
//!     .start()?;
//! let snapshot = agent.snapshot(); // lock-free, never waits on the network
//! # drop(snapshot);
//! agent.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`apply`]: the one apply path (startup from cache or defaults, and every
//!   live update): version, hash, validation, embedder hooks, one swap, cache.
//! - `link`: the watch stream to the control plane as a state machine
//!   (connect, ACK/NACK, heartbeats, reconnect); its module docs hold the
//!   state diagram.
//! - [`backoff`], [`breaker`], [`pacing`]: reconnect pacing (the backoff
//!   itself is `vane-backoff`'s); [`pacing::Pacing`] decides each pause and
//!   is also what the load generator's simulated agents reconnect with.
//! - [`cache`]: the atomic disk cache.
//! - [`state`]: the running configuration (one `ArcSwap`) and health.
//! - [`report`]: the embedder's health hook ([`AgentHandle::report_health`]):
//!   what the data plane says of the version it runs, sent to the control
//!   plane on the watch stream.
//! - TLS and tokens for the control plane come from `vane-tls`
//!   ([`ClientTls`], [`BearerToken`]), checked at start.
//! - [`status`]: the `/status` JSON and Prometheus rendering shared by the
//!   sidecar and the proxy.

pub mod apply;
pub mod atomic_file;
pub mod backoff;
pub mod breaker;
pub mod cache;
pub mod config;
mod link;
pub mod pacing;
pub mod report;
pub mod state;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;
use vane_model::Snapshot;

pub use apply::{ApplyOutcome, Candidate, Rejection, Sink, Validator};
pub use backoff::BackoffConfig;
pub use breaker::{BreakerConfig, BreakerState};
pub use config::AgentConfig;
pub use report::{DataPlaneHealth, HealthReport};
pub use state::{Applied, Current, Health, HealthState, Source};
pub use status::StatusReport;
pub use vane_tls::{BearerToken, ClientIdentity, ClientTls, TlsPart};

use apply::Applier;
use cache::DiskCache;
use state::Shared;

/// The entry point: `Agent::builder()`.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// A builder with the documented defaults (see [`AgentConfig`]).
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }
}

/// Why `start()` refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong; the text names it.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// `start()` was called outside a Tokio runtime.
    #[error("vane-agent must be started inside a Tokio runtime")]
    NoRuntime,
}

/// Builds and starts an agent.
#[derive(Default)]
#[must_use]
pub struct AgentBuilder {
    config: AgentConfig,
    defaults: Option<Snapshot>,
    validator: Option<Arc<dyn Validator>>,
    sink: Option<Arc<dyn Sink>>,
}

impl AgentBuilder {
    /// Control-server URLs, tried in turn.
    pub fn servers<I, S>(mut self, servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.servers = servers.into_iter().map(Into::into).collect();
        self
    }

    /// This node's id.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.config.node_id = id.into();
        self
    }

    /// The group to follow.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = group.into();
        self
    }

    /// Labels reported to the control plane.
    pub fn labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.config.labels = labels;
        self
    }

    /// Where to keep the disk cache.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.cache_dir = Some(dir.into());
        self
    }

    /// The embedded last resort, served when there is no usable cache.
    pub fn defaults(mut self, snapshot: Snapshot) -> Self {
        self.defaults = Some(snapshot);
        self
    }

    /// A hook that can refuse a snapshot (the reason becomes the NACK's).
    pub fn validator(mut self, v: impl Validator) -> Self {
        self.validator = Some(Arc::new(v));
        self
    }

    /// A hook run right before each swap (e.g. write an output file).
    pub fn sink(mut self, s: impl Sink) -> Self {
        self.sink = Some(Arc::new(s));
        self
    }

    /// Reconnect backoff.
    pub fn backoff(mut self, b: BackoffConfig) -> Self {
        self.config.backoff = b;
        self
    }

    /// Reconnect breaker.
    pub fn breaker(mut self, b: BreakerConfig) -> Self {
        self.config.breaker = b;
        self
    }

    /// Staleness threshold for `Degraded`.
    pub fn stale_after(mut self, d: Duration) -> Self {
        self.config.stale_after = d;
        self
    }

    /// CA and client certificate for `https://` servers.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.config.tls = tls;
        self
    }

    /// A bearer token sent on every watch.
    pub fn token(mut self, token: BearerToken) -> Self {
        self.config.token = Some(token);
        self
    }

    /// How often a heartbeat is sent on an open stream.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.config.heartbeat_interval = d;
        self
    }

    /// Replaces the whole configuration (servers, ids, timeouts...).
    pub fn config(mut self, config: AgentConfig) -> Self {
        self.config = config;
        self
    }

    /// Loads the cache (or the defaults) through the apply path, then starts
    /// the watch loop in the background. Never waits for the network; it does
    /// block the calling thread while the cache is read and the embedder's
    /// hooks run (on a multi-threaded runtime, via `block_in_place`).
    ///
    /// Settings, URLs and TLS material are all checked here, so a bad
    /// certificate is reported now rather than at the first connect.
    pub fn start(self) -> Result<AgentHandle, StartError> {
        self.config.validate().map_err(StartError::Config)?;
        let backoff = self
            .config
            .backoff
            .build()
            .map_err(|e| StartError::Config(format!("backoff: {e}")))?;
        let endpoints = link::endpoints(&self.config).map_err(StartError::Config)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let config = Arc::new(self.config);
        let shared = Arc::new(Shared::new(config.stale_after));
        let applier = Arc::new(Applier::new(
            shared.clone(),
            self.validator,
            self.sink,
            config
                .cache_dir
                .as_ref()
                .map(|d| DiskCache::new(d, &config.group)),
            config.max_snapshot_bytes,
        ));
        // Every line the agent logs names the node and its group: a host
        // (or a log pipeline) may carry several agents.
        let span = tracing::info_span!("agent", node_id = %config.node_id, group = %config.group);
        // Loading the cache runs the embedder's hooks and may fsync: blocking
        // work, kept off the async workers where the runtime allows it.
        span.in_scope(|| {
            if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                tokio::task::block_in_place(|| startup(&applier, self.defaults));
            } else {
                startup(&applier, self.defaults);
            }
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let transport = link::Grpc::new(endpoints, &config);
        let task = runtime.spawn(
            link::run(config.clone(), applier, transport, backoff, shutdown_rx).instrument(span),
        );
        Ok(AgentHandle {
            inner: Arc::new(Inner {
                config,
                shared,
                shutdown_tx,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

/// Startup: the cache through the apply path; failing that, the defaults
/// through the same path; failing that, an empty snapshot (version 0).
fn startup(applier: &Applier, defaults: Option<Snapshot>) {
    let shared = &applier.shared;
    let note = match &applier.cache {
        None => "no cache directory configured".to_string(),
        Some(cache) => match cache.load() {
            Ok(cached) => {
                let version = cached.version;
                match applier.apply(Candidate {
                    version: cached.version,
                    hash: cached.hash,
                    body: cached.body,
                    origin: Source::Cache,
                }) {
                    ApplyOutcome::Applied | ApplyOutcome::AlreadyCurrent => {
                        tracing::info!(version, "serving the cached snapshot");
                        return;
                    }
                    ApplyOutcome::Rejected(r) => {
                        tracing::warn!(path = %cache.path().display(), reason = %r.reason, "ignoring the disk cache");
                        format!("cache {} unusable: {}", cache.path().display(), r.reason)
                    }
                }
            }
            Err(cache::CacheError::Missing(p)) => format!("no cache yet at {}", p.display()),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the disk cache");
                format!("cache unusable: {e}")
            }
        },
    };
    shared.set_startup_note(note);
    if let Some(d) = defaults {
        let outcome = applier.apply(Candidate {
            version: 0,
            hash: d.content_hash().to_hex(),
            body: Bytes::from(d.encode()),
            origin: Source::Defaults,
        });
        if let ApplyOutcome::Rejected(r) = outcome {
            tracing::error!(reason = %r.reason, "the embedded defaults were refused; serving an empty configuration");
        }
    }
}

struct Inner {
    config: Arc<AgentConfig>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A running agent. Cheap to clone; every method is non-blocking except
/// `shutdown()`, which is bounded.
#[derive(Clone)]
pub struct AgentHandle {
    inner: Arc<Inner>,
}

impl AgentHandle {
    /// The running snapshot, lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.shared.current.load().snapshot.clone()
    }

    /// The running snapshot with its version, hash and source.
    pub fn current(&self) -> Arc<Current> {
        self.inner.shared.current.load_full()
    }

    /// A latest-wins receiver of changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Current>> {
        self.inner.shared.changes.subscribe()
    }

    /// Health: state, version, hash, source, staleness, breaker, last error.
    pub fn health(&self) -> Health {
        self.inner.shared.health()
    }

    /// Reports the data plane's health for the version it runs now (the
    /// running version is attached; see [`Self::report_health_for`] to name
    /// it). Cheap and non-blocking, so it may be called as often as the
    /// embedder likes: the latest report wins, and only a change wakes the
    /// link, which sends it to the control plane within a second (and with
    /// every ACK and heartbeat after that).
    pub fn report_health(&self, health: DataPlaneHealth) {
        let version = self.inner.shared.current.load().version;
        self.report_health_for(version, health);
    }

    /// [`Self::report_health`] for a given version: for a check that
    /// started before the running version changed, so its verdict is not
    /// pinned on the next one.
    pub fn report_health_for(&self, version: u64, health: DataPlaneHealth) {
        let report = HealthReport::new(version, health);
        self.inner
            .shared
            .metrics
            .data_plane_degraded
            .set(i64::from(report.degraded));
        self.inner.shared.reports.report(report);
    }

    /// The `/status` report.
    pub fn status(&self) -> StatusReport {
        StatusReport::new(&self.inner.config, &self.health())
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.inner.config
    }

    /// Registers the agent's metrics (applies, NACKs, reconnects, staleness,
    /// version, health) in `registry`. Call [`Self::health`] before encoding
    /// to refresh the gauges.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.shared.metrics.register(registry);
    }

    /// Whether the watch loop runs (false once it ended, panicked, or
    /// [`Self::shutdown`] was called): what a liveness probe reports.
    pub fn is_running(&self) -> bool {
        self.inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Stops the watch loop, waiting at most the configured shutdown timeout.
    pub async fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(self.inner.config.shutdown_timeout, &mut task)
                .await
                .is_err()
        {
            tracing::warn!("agent did not stop in time; aborting its task");
            task.abort();
        }
    }
}
