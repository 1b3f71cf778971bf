//! The proxy as a whole: the agent, the compiled configuration and the
//! listeners, wired so that every configuration change, at startup (cache
//! or defaults) and live, takes one path, the agent's apply path:
//!
//! 1. the agent's validator binds the candidate's new listener addresses
//!    and compiles it aside (`Activation::validate`); a bind failure NACKs
//!    the snapshot whole;
//! 2. the agent's sink switches the data plane to exactly that compiled
//!    candidate: one swap of the `ArcSwap<Compiled>` the request path
//!    reads, then the listeners are reconciled (`Activation::commit`);
//! 3. the agent swaps its own snapshot, writes its cache and ACKs.
//!
//! So an ACK is only ever sent for a version the data plane already
//! serves. See `activate` for the hand-over between steps 1 and 2.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vane_agent::{Agent, AgentConfig, AgentHandle, Current, Source, StartError};
use vane_model::Snapshot;

use crate::activate::Activation;
use crate::clock;
use crate::compile::Compiled;
use crate::error::ProxyError;
use crate::health::{self, HealthConfig, ProxyHealth};
use crate::listeners::Listeners;
use crate::metrics::Metrics;
use crate::shared::{Settings, Shared};
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
    /// shorter of this and `header_read_timeout`). Default 60 s. Upgraded
    /// connections (tunnels) follow their route's idle timeout instead.
    pub idle_timeout: Duration,
    /// A new connection must deliver its first HTTP/1 request head (or the
    /// HTTP/2 preface), and every later HTTP/1 request head must be
    /// complete, within this long of its first byte; otherwise the
    /// connection is closed. It bounds slowloris clients on the listeners,
    /// and is also the admin endpoint's per-request and idle timeout.
    /// Default 10 s.
    pub header_read_timeout: Duration,
    /// When the proxy reports itself degraded to the control plane (the
    /// share of 502/503/504 answers over a window). Default: see
    /// [`HealthConfig`].
    pub health: HealthConfig,
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
            health: HealthConfig::default(),
        }
    }
}

/// The entry point: `Proxy::start(config)`.
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Starts the agent (which loads the cache or the defaults through the
    /// validator and the sink, binding their listeners and switching the
    /// data plane to them), and follows every later change. Must run inside
    /// a Tokio runtime; never waits for the network.
    pub fn start(config: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
        let control = tokio::runtime::Handle::try_current()
            .map_err(|_| ProxyError::Agent(StartError::NoRuntime))?;
        config.health.validate().map_err(ProxyError::Config)?;
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
            refusal_logged_ms: AtomicU64::new(0),
            health: Arc::new(ProxyHealth::new(config.health)),
        });
        let listeners = Arc::new(Listeners::new(control));
        let activation = Arc::new(Activation::new(shared.clone(), listeners.clone(), empty));
        let (validator, sink) = (activation.clone(), activation.clone());
        let mut builder = Agent::builder()
            .config(config.agent)
            .validator(move |candidate: &Current, _running: &Current| validator.validate(candidate))
            .sink(move |next: &Current| sink.commit(next));
        if let Some(d) = config.defaults {
            builder = builder.defaults(d);
        }
        let agent = builder.start()?;
        let mut changes = agent.subscribe();
        // What startup loaded went through the sink already.
        changes.mark_unchanged();
        let stop = CancellationToken::new();
        let task = {
            let (activation, stop) = (activation.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        changed = changes.changed() => if changed.is_err() { break },
                    }
                    let current = changes.borrow_and_update().clone();
                    activation.follow(current);
                }
            })
        };
        let health_task = tokio::spawn(health::follow(
            shared.health.clone(),
            agent.clone(),
            stop.clone(),
        ));
        let mut registry = Registry::default();
        shared.metrics.register(&mut registry);
        registry.register(
            "vane_proxy_degraded",
            "1 while the proxy reports itself degraded: more than --unhealthy-error-ratio of its answers over --unhealthy-window were 502/503/504 or upstream failures",
            shared.health.degraded.clone(),
        );
        registry.register(
            "vane_proxy_error_ratio",
            "Share of 502/503/504 answers and upstream failures over --unhealthy-window, since the running version was applied",
            shared.health.error_ratio.clone(),
        );
        agent.register_metrics(&mut registry);
        vane_admin_http::process::register_process_and_build(&mut registry);
        Ok(ProxyHandle {
            inner: Arc::new(Inner {
                shared,
                listeners,
                activation,
                agent,
                stop,
                stopping: AtomicBool::new(false),
                task: std::sync::Mutex::new(Some(task)),
                health_task: std::sync::Mutex::new(Some(health_task)),
                registry,
            }),
        })
    }
}

struct Inner {
    shared: Arc<Shared>,
    listeners: Arc<Listeners>,
    activation: Arc<Activation>,
    agent: AgentHandle,
    stop: CancellationToken,
    /// Set at shutdown: `/readyz` turns 503 so load balancers move away.
    stopping: AtomicBool,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Judges the proxy's health and reports it through the agent.
    health_task: std::sync::Mutex<Option<JoinHandle<()>>>,
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
        self.inner.shared.compiled.load().ready && !self.inner.stopping.load(Ordering::Acquire)
    }

    /// The configuration the data plane runs (routes swapped in and
    /// listeners reconciled). The data plane switches before the agent
    /// swaps, so this may lead the agent's by one apply, never trail it;
    /// only cached content the control plane confirms shows here as `live`
    /// a moment after the agent's.
    pub fn running(&self) -> Arc<Current> {
        self.inner.activation.active()
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
        let _ = self.inner.shared.health.evaluate();
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
        inner.stopping.store(true, Ordering::Release);
        // No candidate may start listeners behind the drain.
        inner.activation.close();
        inner.stop.cancel();
        let tasks = [&inner.task, &inner.health_task]
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).take());
        for task in tasks.into_iter().flatten() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use vane_model::{Format, parse_file, validate};

    #[tokio::test]
    async fn startup_defaults_take_the_apply_path() {
        let web = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let yaml = format!(
            r#"
listeners:
  - {{ name: web, address: "{web}", protocol: http, route_table: main }}
route_tables:
  - name: main
    routes: [ {{ match: {{ path_prefix: / }}, cluster: c }} ]
clusters:
  - {{ name: c, endpoints: [ {{ address: "127.0.0.1:9001" }} ] }}
"#
        );
        let defaults = validate(parse_file(yaml.as_bytes(), Format::Yaml).unwrap()).unwrap();
        let mut config = ProxyConfig {
            defaults: Some(defaults),
            workers: 1,
            drain_timeout: Duration::from_millis(100),
            ..ProxyConfig::default()
        };
        // Nobody listens there: the agent keeps retrying in the background.
        config.agent.servers = vec!["http://127.0.0.1:1".into()];
        config.agent.node_id = "n".into();
        config.agent.group = "edge".into();
        config.agent.shutdown_timeout = Duration::from_millis(200);
        let proxy = Proxy::start(config).unwrap();
        // When start returns, the defaults went through the validator and
        // the sink: the data plane runs them, and the agent agrees.
        assert!(proxy.ready());
        let running = proxy.running();
        assert_eq!(running.source, Source::Defaults);
        assert_eq!(running.hash, proxy.agent().current().hash);
        assert!(!running.hash.is_empty());
        assert_eq!(proxy.listener_addresses(), vec![("web".to_owned(), web)]);
        assert_eq!(
            proxy.inner.shared.compiled.load().current.hash,
            running.hash
        );
        proxy.shutdown().await;
        assert!(!proxy.ready());
    }
}
