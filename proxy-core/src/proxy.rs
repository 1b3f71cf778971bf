//! The proxy as a whole: the agent, the compiled configuration and the
//! listeners, wired so that every configuration change, at startup (cache
//! or defaults) and live, takes one path:
//!
//! 1. the agent's validator binds the candidate's new listener addresses
//!    (`Listeners::prepare`); a failure NACKs the snapshot whole;
//! 2. the agent swaps its snapshot and ACKs;
//! 3. the activation task, woken by `subscribe()` (latest wins), compiles the
//!    snapshot aside, swaps the one `ArcSwap<Compiled>` the request path
//!    reads, and reconciles the listeners.
//!
//! The request path only ever reads step 3's result.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vane_agent::{Agent, AgentConfig, AgentHandle, Current, Source};
use vane_model::Snapshot;

use crate::clock;
use crate::compile::{Compiled, compile};
use crate::error::ProxyError;
use crate::listeners::Listeners;
use crate::metrics::Metrics;
use crate::workers::Workers;

/// The shortest idle or header-read timeout (shorter ones are raised to
/// it): the connection timer ticks at half the shorter of the two.
const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// Everything a proxy is started with.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The embedded agent's settings (servers, node id, group, cache...).
    /// Required fields have no default; see [`AgentConfig`].
    pub agent: AgentConfig,
    /// Served when there is no usable cache. Default: none.
    pub defaults: Option<Snapshot>,
    /// How long a removed listener (or, at shutdown, every listener) lets
    /// its connections finish. Default 10 s.
    pub drain_timeout: Duration,
    /// Most downstream connections open at once, over all listeners; more
    /// are accepted and closed at once (counted in
    /// `vane_proxy_connections_refused`). Default 100 000.
    pub max_connections: usize,
    /// Data-plane worker threads (each runs its own single-threaded
    /// runtime). 0: one per CPU. Default 0.
    pub workers: usize,
    /// A downstream connection with no request started and none in flight
    /// for this long is closed gracefully (checked every half of the
    /// shorter of this and `header_read_timeout`). Default 60 s.
    pub idle_timeout: Duration,
    /// A new connection must deliver its first HTTP/1 request head (or the
    /// HTTP/2 preface), and every later HTTP/1 request head must be
    /// complete, within this long of its first byte; otherwise the
    /// connection is closed. It bounds slowloris clients on the listeners,
    /// and is also the admin endpoint's per-request and idle timeout.
    /// Default 10 s.
    pub header_read_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            agent: AgentConfig::default(),
            defaults: None,
            drain_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            workers: 0,
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Settings the data plane reads.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) drain_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// State every listener and connection shares.
pub(crate) struct Shared {
    /// The running configuration, compiled. The one thing requests read.
    pub(crate) compiled: ArcSwap<Compiled>,
    pub(crate) metrics: Metrics,
    /// HTTP/1.1 + h2c connection settings.
    pub(crate) http: auto::Builder<TokioExecutor>,
    /// Caps open downstream connections.
    pub(crate) connection_limit: Arc<Semaphore>,
    /// When a refusal at the connection limit was last logged (clock
    /// milliseconds; 0: never): a flood must not become a log flood.
    pub(crate) refusal_logged_ms: AtomicU64,
    pub(crate) config: Settings,
    /// The data-plane threads.
    pub(crate) workers: Workers,
    /// The snapshot whose activation finished (routing swapped and
    /// listeners reconciled): what `/config_dump` reports.
    active: ArcSwap<Current>,
    /// Set at shutdown: `/readyz` turns 503 so load balancers move away.
    stopping: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("version", &self.compiled.load().current.version)
            .finish_non_exhaustive()
    }
}

/// The entry point: `Proxy::start(config)`.
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Starts the agent (which loads the cache or the defaults through the
    /// validator, binding their listeners), activates what it loaded, and
    /// follows every later change. Must run inside a Tokio runtime; never
    /// waits for the network.
    pub fn start(config: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
        let empty = Arc::new(Current {
            version: 0,
            hash: String::new(),
            source: Source::Defaults,
            snapshot: Arc::new(Snapshot::default()),
            applied_at: SystemTime::now(),
        });
        // Start the clock before anything is timed against it.
        let _ = clock::now_millis();
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let workers = Workers::start(workers).map_err(ProxyError::Workers)?;
        let shared = Arc::new(Shared {
            compiled: ArcSwap::from_pointee(Compiled::empty(empty.clone())),
            active: ArcSwap::new(empty),
            metrics: Metrics::new(),
            http: crate::http::server::builder(),
            connection_limit: Arc::new(Semaphore::new(config.max_connections.max(1))),
            config: Settings {
                drain_timeout: config.drain_timeout,
                // A zero period would make the connection timer spin.
                idle_timeout: config.idle_timeout.max(MIN_TIMEOUT),
                header_read_timeout: config.header_read_timeout.max(MIN_TIMEOUT),
                max_connections: config.max_connections.max(1),
            },
            workers,
            stopping: AtomicBool::new(false),
            refusal_logged_ms: AtomicU64::new(0),
        });
        let listeners = Arc::new(Listeners::new());
        let binder = listeners.clone();
        let mut builder = Agent::builder()
            .config(config.agent)
            .validator(move |candidate: &Current, _running: &Current| binder.prepare(candidate));
        if let Some(d) = config.defaults {
            builder = builder.defaults(d);
        }
        let agent = builder.start()?;
        let mut changes = agent.subscribe();
        activate(&shared, &listeners, changes.borrow_and_update().clone());
        let stop = CancellationToken::new();
        let task = {
            let (shared, listeners, stop) = (shared.clone(), listeners.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        changed = changes.changed() => if changed.is_err() { break },
                    }
                    let current = changes.borrow_and_update().clone();
                    activate(&shared, &listeners, current);
                }
            })
        };
        let mut registry = Registry::default();
        shared.metrics.register(&mut registry);
        agent.register_metrics(&mut registry);
        Ok(ProxyHandle {
            inner: Arc::new(Inner {
                shared,
                listeners,
                agent,
                stop,
                task: std::sync::Mutex::new(Some(task)),
                registry,
            }),
        })
    }
}

/// Makes `current` the data plane's configuration.
fn activate(shared: &Arc<Shared>, listeners: &Arc<Listeners>, current: Arc<Current>) {
    let running = shared.compiled.load_full();
    if Arc::ptr_eq(&running.current, &current) || (current.hash.is_empty() && !running.ready) {
        // Nothing new, or still nothing loaded (no cache, no defaults).
        return;
    }
    if running.ready && running.current.hash == current.hash {
        // Same content under a new provenance (the control plane confirmed
        // the cached version): nothing to compile or rebind.
        shared.compiled.store(Arc::new(Compiled {
            current: current.clone(),
            ready: running.ready,
            listeners: running.listeners.clone(),
            clusters: running.clusters.clone(),
            limits: running.limits.clone(),
        }));
    } else {
        let next = compile(current.clone(), &running, &shared.metrics);
        listeners.freeze_removed(&current, &running);
        shared.compiled.store(Arc::new(next));
        shared.metrics.commit_build();
        listeners.reconcile(&current, shared);
    }
    shared
        .metrics
        .config_version
        .set(i64::try_from(current.version).unwrap_or(i64::MAX));
    shared.active.store(current.clone());
    shared.metrics.activations.inc();
    tracing::info!(
        version = current.version,
        hash = %current.hash,
        source = current.source.as_str(),
        "configuration active"
    );
}

struct Inner {
    shared: Arc<Shared>,
    listeners: Arc<Listeners>,
    agent: AgentHandle,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    registry: Registry,
}

/// A running proxy. Cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("shared", &self.inner.shared)
            .finish_non_exhaustive()
    }
}

impl ProxyHandle {
    /// The embedded agent.
    pub fn agent(&self) -> &AgentHandle {
        &self.inner.agent
    }

    /// Whether a configuration is active and the proxy is not shutting down.
    pub fn ready(&self) -> bool {
        self.inner.shared.compiled.load().ready
            && !self.inner.shared.stopping.load(Ordering::Acquire)
    }

    /// The configuration the data plane runs, once fully activated (routes
    /// swapped in and listeners reconciled). It may trail the agent's by the
    /// time one activation takes.
    pub fn running(&self) -> Arc<Current> {
        self.inner.shared.active.load_full()
    }

    /// Listeners accepting connections: (name, address).
    pub fn listener_addresses(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.inner.listeners.addresses()
    }

    /// The data plane's shared state (settings and metrics, for the admin
    /// endpoint).
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Prometheus text of the proxy's and the agent's metrics.
    pub fn render_metrics(&self) -> String {
        // Refresh the gauges that are computed, not counted.
        let _ = self.inner.agent.health();
        let compiled = self.inner.shared.compiled.load();
        let now = clock::now_millis();
        for c in compiled.clusters.values() {
            c.stats
                .ejected
                .set(i64::try_from(c.ejected_count(now)).unwrap_or(i64::MAX));
        }
        vane_agent::status::render_metrics(&self.inner.registry)
    }

    /// Stops accepting on every listener, drains open connections within
    /// the drain timeout, and stops the agent. Bounded.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shared.stopping.store(true, Ordering::Release);
        inner.stop.cancel();
        let task = inner.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        inner
            .listeners
            .shutdown(&inner.shared, inner.shared.config.drain_timeout)
            .await;
        inner.shared.workers.stop().await;
        inner.agent.shutdown().await;
    }
}
