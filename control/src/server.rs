//! The control server as a library: open the store, seed the hub, bind,
//! serve `ConfigDiscovery` and `Admin`, and shut down within a grace period.
//!
//! The binary (`src/bin/vane-control.rs`) only parses flags, sets up logging
//! and signals, and calls [`Server::bind`] then [`Server::serve`]; tests can
//! do the same in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{self, ConnCounters, ConnLimits, TlsError, TlsFiles};
use crate::admin::AdminService;
use crate::agents::{AgentRegistry, DEFAULT_FORGET_AFTER};
use crate::audit::AuditLog;
use crate::auth::rate::PushLimiter;
use crate::auth::{Auth, Policy, Tokens, reload};
use crate::collectors::{HealthCollector, SecurityCollector};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::reach::StoreReach;
use crate::rollout::driver::Rollouts;
use crate::targets::Cohorts;
use crate::watch::DiscoveryService;
use vane_store::{FeedEvent, HeadFeed, RedbStore, Store, StoreError};
use vane_store_etcd::{EtcdConfig, EtcdStore};

/// Where the server listens unless configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Where the server keeps its data unless configured.
pub const DEFAULT_DATA_DIR: &str = "./vane-data";
/// How long shutdown waits for streams and pushes unless configured.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How the server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:7070`; port 0 picks a free
    /// port (see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Directory of the embedded store. Default `./vane-data`.
    pub data_dir: PathBuf,
    /// The clustered store: when set, versions live in etcd (shared with
    /// the other replicas) and `data_dir` is not used. Default `None`.
    pub etcd: Option<EtcdConfig>,
    /// This server's name among the replicas, shown in `vanectl status`
    /// next to the agents it serves. Default: the bound address, with the
    /// host's name when listening on every interface.
    pub replica_name: Option<String>,
    /// Largest encoded snapshot accepted. Default
    /// [`vane_model::DEFAULT_MAX_SNAPSHOT_BYTES`] (4 MiB).
    pub max_snapshot_bytes: usize,
    /// How long shutdown waits for open streams and pushes in progress
    /// before dropping them. Default 10s.
    pub shutdown_grace: Duration,
    /// How long a disconnected agent stays in `Status`. Default 1h.
    pub agent_forget_after: Duration,
    /// Interval of HTTP/2 pings on idle connections, which find dead agents
    /// behind silent network failures. Default 20s.
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    /// Default 10s.
    pub http2_keepalive_timeout: Duration,
    /// Address of the admin HTTP endpoint (`GET /metrics`, `GET /healthz`).
    /// Default none: not served.
    pub admin_listen: Option<SocketAddr>,
    /// Address of the web console (`/ui/`, docs/console.md), served with
    /// the main port's TLS, tokens and policy. Default none: not served.
    pub console_listen: Option<SocketAddr>,
    /// TLS for the gRPC endpoint (server certificate and key, and the CA of
    /// client certificates). Default none: plaintext, loopback only unless
    /// `insecure`.
    pub tls: Option<TlsFiles>,
    /// The policy file (identities to roles per group), reloaded when it
    /// changes. Default none: authorization off, loopback only unless
    /// `insecure`.
    pub policy: Option<PathBuf>,
    /// The bearer-token file, reloaded when it changes. Default none: no
    /// tokens accepted.
    pub tokens: Option<PathBuf>,
    /// Serve without TLS or without a policy on a non-loopback address.
    /// Default false.
    pub insecure: bool,
    /// Connection limits and the TLS handshake timeout. Defaults: 50,000
    /// connections, 10,000 per identity, 10s.
    pub conn_limits: ConnLimits,
    /// HTTP/2 streams one connection may have open at once (an agent needs
    /// one, vanectl one per call). Default 100.
    pub max_streams_per_connection: u32,
    /// A watch stream silent this long (no heartbeat) is closed. Default 5m.
    pub idle_stream_timeout: Duration,
    /// Most agents (node ids) tracked. Default 100,000.
    pub max_agents: usize,
    /// Watch streams one identity (certificate or token) may hold open at
    /// once; anonymous callers are not counted. Default 10,000.
    pub max_streams_per_identity: usize,
    /// Pushes and rollbacks per second each identity may sustain (0: no
    /// limit). Default `None`: 20 when a policy is in force, no limit
    /// without one (everyone is the same anonymous caller then, on
    /// loopback or with `--insecure`).
    pub push_rate: Option<u32>,
    /// Pushes an identity may make in a burst. Default 100.
    pub push_burst: u32,
    /// Longest a unary Admin call may take before it is cancelled.
    /// Default 60s.
    pub request_timeout: Duration,
    /// What retention keeps. Default: the newest 1,000 versions of each
    /// group, and every version younger than 30 days.
    pub retention: vane_store::Retention,
    /// How often retention runs. Default 1m.
    pub retention_interval: Duration,
    /// HTTP long polls held at once, across every caller (each also counts
    /// against its identity's `max_streams_per_identity`). Default 20,000.
    pub max_held_polls: usize,
}

/// Largest header list (all request headers) the gRPC endpoint accepts.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            etcd: None,
            replica_name: None,
            max_snapshot_bytes: vane_model::DEFAULT_MAX_SNAPSHOT_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            agent_forget_after: DEFAULT_FORGET_AFTER,
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            admin_listen: None,
            console_listen: None,
            tls: None,
            policy: None,
            tokens: None,
            insecure: false,
            conn_limits: ConnLimits::default(),
            max_streams_per_connection: 100,
            idle_stream_timeout: crate::watch::DEFAULT_IDLE_STREAM_TIMEOUT,
            max_agents: crate::watch::DEFAULT_MAX_AGENTS,
            max_streams_per_identity: crate::watch::DEFAULT_MAX_STREAMS_PER_IDENTITY,
            push_rate: None,
            push_burst: crate::auth::rate::DEFAULT_PUSH_BURST,
            request_timeout: Duration::from_secs(60),
            retention: vane_store::Retention {
                keep_versions: crate::retention::DEFAULT_RETAIN_VERSIONS,
                keep_age: crate::retention::DEFAULT_RETAIN_AGE,
            },
            retention_interval: crate::retention::DEFAULT_RETENTION_INTERVAL,
            max_held_polls: crate::http::DEFAULT_MAX_HELD_POLLS,
        }
    }
}

/// What the server's security settings load at startup.
struct Security {
    tls: Option<Arc<rustls::ServerConfig>>,
    policy: Option<Arc<ArcSwap<Policy>>>,
    tokens: Option<Arc<ArcSwap<Tokens>>>,
}

impl Security {
    /// Loads TLS, policy and tokens, and refuses an open server on a
    /// non-loopback address unless `insecure`.
    fn load(config: &Config) -> Result<Self, ServerError> {
        Self::check_exposure(config)?;
        Self::load_files(config, config.listen.ip().is_loopback())
    }

    /// Refuses plaintext or an open policy on a non-loopback address unless
    /// `insecure` (then warns).
    fn check_exposure(config: &Config) -> Result<(), ServerError> {
        if let Some(console) = config.console_listen
            && !console.ip().is_loopback()
            && !config.insecure
        {
            // The console takes the main port's TLS and policy: the same
            // rules, naming its own flag.
            if config.tls.is_none() {
                return Err(ServerError::Insecure(format!(
                    "--console-listen {console}: not a loopback address, and no --tls-cert/--tls-key: bearer tokens and configurations would cross the network in plaintext. Give a certificate, or --insecure to serve plaintext anyway"
                )));
            }
            if config.policy.is_none() {
                return Err(ServerError::Insecure(format!(
                    "--console-listen {console}: not a loopback address, and no --policy: anyone who can connect could roll back every group. Give a policy, or --insecure to allow everyone everything"
                )));
            }
        }
        let loopback = config.listen.ip().is_loopback();
        if !loopback && !config.insecure {
            if config.tls.is_none() {
                return Err(ServerError::Insecure(format!(
                    "--listen {}: not a loopback address, and no --tls-cert/--tls-key: agents' and operators' traffic would be plaintext. Give a certificate, or --insecure to serve plaintext anyway",
                    config.listen
                )));
            }
            if config.policy.is_none() {
                return Err(ServerError::Insecure(format!(
                    "--listen {}: not a loopback address, and no --policy: anyone who can connect could push to every group. Give a policy, or --insecure to allow everyone everything",
                    config.listen
                )));
            }
        }
        if !loopback && config.insecure && (config.tls.is_none() || config.policy.is_none()) {
            tracing::warn!(
                addr = %config.listen,
                tls = config.tls.is_some(),
                policy = config.policy.is_some(),
                "--insecure: serving a non-loopback address without TLS or without a policy"
            );
        }
        Ok(())
    }

    fn load_files(config: &Config, loopback: bool) -> Result<Self, ServerError> {
        let tls = config.tls.as_ref().map(accept::server_config).transpose()?;
        let policy = config
            .policy
            .as_ref()
            .map(|p| {
                reload::load(p, Policy::parse)
                    .map_err(|e| ServerError::Security(format!("--policy {e}")))
            })
            .transpose()?
            .map(|p| Arc::new(ArcSwap::from_pointee(p)));
        let tokens = config
            .tokens
            .as_ref()
            .map(|p| {
                reload::load(p, Tokens::parse)
                    .map_err(|e| ServerError::Security(format!("--tokens {e}")))
            })
            .transpose()?
            .map(|t| Arc::new(ArcSwap::from_pointee(t)));
        if config.tokens.is_some() && config.tls.is_none() && !loopback {
            tracing::warn!("bearer tokens over plaintext: anyone on the path can read them");
        }
        Ok(Self {
            tls,
            policy,
            tokens,
        })
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address cannot be bound.
    #[error("listen: cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed to open, seed or close.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC transport failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A policy or token file cannot be used.
    #[error("{0}")]
    Security(String),
    /// Serving as configured would be open to the network.
    #[error("{0}")]
    Insecure(String),
}

/// A server that has opened its store and bound its socket.
pub struct Server {
    config: Config,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The admin endpoint's socket and address, when configured.
    admin: Option<(TcpListener, SocketAddr)>,
    console: Option<(TcpListener, SocketAddr)>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    agents: Arc<AgentRegistry>,
    security: Security,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the store (etcd when `config.etcd` is set, else the embedded
    /// store in `config.data_dir`) and binds `config.listen`.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        // Before the store opens: a refusal to serve should not touch it.
        Security::check_exposure(&config)?;
        let store: Arc<dyn Store> = match &config.etcd {
            Some(etcd) => Arc::new(EtcdStore::connect(etcd.clone()).await?),
            None => Arc::new(RedbStore::open(&config.data_dir).await?),
        };
        Self::bind_with_store(config, store).await
    }

    /// Binds `config.listen` serving `store` (any backend); `data_dir` is
    /// not used. The store is closed when the server stops, or here if
    /// binding fails.
    pub async fn bind_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Self, ServerError> {
        let bound = async {
            let security = Security::load(&config)?;
            let heads = crate::integrity::read_heads(store.as_ref()).await?;
            let listener =
                TcpListener::bind(config.listen)
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: config.listen,
                        source,
                    })?;
            let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
            let admin = match config.admin_listen {
                Some(addr) => {
                    let bind_error = |source| ServerError::Bind { addr, source };
                    let admin = TcpListener::bind(addr).await.map_err(bind_error)?;
                    let bound = admin.local_addr().map_err(bind_error)?;
                    Some((admin, bound))
                }
                None => None,
            };
            let console = match config.console_listen {
                Some(addr) => {
                    let bind_error = |source| ServerError::Bind { addr, source };
                    let console = TcpListener::bind(addr).await.map_err(bind_error)?;
                    let bound = console.local_addr().map_err(bind_error)?;
                    Some((console, bound))
                }
                None => None,
            };
            Ok::<_, ServerError>((heads, listener, local_addr, (admin, console), security))
        }
        .await;
        let (heads, listener, local_addr, (admin, console), security) = match bound {
            Ok(bound) => bound,
            Err(e) => {
                if let Err(close) = store.close().await {
                    tracing::warn!(error = %close, "closing the store after a failed start");
                }
                return Err(e);
            }
        };
        // Every head is checked against its hash before any agent is sent it.
        let hub = Hub::new();
        let (heads, unreadable) = heads;
        unreadable.into_iter().for_each(|c| hub.found_corrupt(c));
        let seeded = hub.publish_verified(heads).await;
        tracing::info!(
            groups = seeded,
            corrupt = hub.corrupt().heads().len(),
            "hub seeded from the store"
        );
        Ok(Self {
            hub: Arc::new(hub),
            agents: Arc::new(AgentRegistry::new(config.agent_forget_after)),
            config,
            listener,
            local_addr,
            admin,
            console,
            store,
            security,
        })
    }

    /// The admin endpoint's bound address, when `admin_listen` was set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// The console's bound address, when `console_listen` was set.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().map(|(_, addr)| *addr)
    }

    /// The bound address (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then: stops accepting, ends every
    /// watch stream, waits at most `shutdown_grace` for streams and pushes in
    /// progress, and closes the store.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Self {
            config,
            listener,
            local_addr,
            admin: admin_endpoint,
            console: console_endpoint,
            store,
            hub,
            agents,
            security,
        } = self;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();

        let store_metrics = crate::metered_store::StoreMetrics::default();
        let store: Arc<dyn Store> = Arc::new(crate::metered_store::MeteredStore::new(
            store,
            store_metrics.clone(),
        ));
        let call_metrics = crate::admin::metered::CallMetrics::default();
        let metrics = Arc::new(Metrics::new());
        let conn_counters = Arc::new(ConnCounters::default());
        let replica = config
            .replica_name
            .clone()
            .unwrap_or_else(|| default_replica_name(local_addr));
        let auth = Auth::new(security.policy.clone(), security.tokens.clone());
        if let (Some(path), Some(policy)) = (&config.policy, &security.policy) {
            tasks.spawn(reload::watch(
                "policy",
                path.clone(),
                Policy::parse,
                Arc::clone(policy),
                {
                    let auth = auth.clone();
                    move |outcome| {
                        if outcome == reload::Reload::Applied {
                            auth.changed();
                        }
                    }
                },
                stop.clone(),
            ));
        }
        if let (Some(path), Some(tokens)) = (&config.tokens, &security.tokens) {
            tasks.spawn(reload::watch(
                "token file",
                path.clone(),
                Tokens::parse,
                Arc::clone(tokens),
                {
                    let auth = auth.clone();
                    move |outcome| {
                        if outcome == reload::Reload::Applied {
                            auth.changed();
                        }
                    }
                },
                stop.clone(),
            ));
        }
        let audit = AuditLog::spawn(Arc::clone(&store), replica.clone(), &tasks);
        let push_rate = config.push_rate.unwrap_or(if security.policy.is_some() {
            crate::auth::rate::DEFAULT_PUSH_RATE
        } else {
            0
        });
        let push_limit = Arc::new(PushLimiter::new(f64::from(push_rate), config.push_burst));
        // With a clustered store, agents hear when this replica cannot reach
        // it (followed below); a single server's store is always reachable.
        let (store_reach, reach) = tokio::sync::watch::channel(StoreReach::Reachable);
        // Rollouts: their cohorts are known before any agent is served (a
        // candidate head goes to nobody until then).
        let cohorts = Arc::new(Cohorts::new());
        let rollouts = Rollouts::new(
            Arc::clone(&store),
            Arc::clone(&hub),
            Arc::clone(&cohorts),
            Arc::clone(&agents),
            replica.clone(),
            Some(Arc::clone(&audit)),
        );
        if let Err(e) = rollouts.load().await {
            tracing::warn!(error = %e, "reading rollouts at startup failed; the driver retries");
        }
        tasks.spawn(Arc::clone(&rollouts).run(stop.clone()));
        let discovery = DiscoveryService::new(
            Arc::clone(&hub),
            Arc::clone(&agents),
            stop.clone(),
            tasks.clone(),
        )
        .with_cohorts(Arc::clone(&cohorts))
        .with_metrics(Arc::clone(&metrics))
        .with_auth(auth.clone(), Some(Arc::clone(&audit)))
        .with_limits(config.idle_stream_timeout, config.max_agents)
        .with_streams_per_identity(config.max_streams_per_identity)
        .with_store_reach(reach);
        let pruned = prometheus_client::metrics::counter::Counter::default();
        tasks.spawn(
            crate::retention::Task {
                store: Arc::clone(&store),
                agents: Arc::clone(&agents),
                retention: config.retention,
                interval: config.retention_interval,
                pruned: pruned.clone(),
                rollouts: Some(Arc::clone(&rollouts)),
            }
            .run(stop.clone()),
        );
        if let Some((admin_listener, admin_addr)) = admin_endpoint {
            let mut registry = metrics.registry(Arc::clone(&hub), Arc::clone(&agents));
            store_metrics.register(&mut registry);
            call_metrics.register(&mut registry);
            registry.register(
                "vane_control_pruned_versions",
                "Versions retention removed since start (--retain-versions, --retain-age)",
                pruned,
            );
            registry.register_collector(Box::new(HealthCollector(Arc::clone(&store))));
            registry.register_collector(Box::new(crate::collectors::RolloutCollector(Arc::clone(
                &rollouts,
            ))));
            registry.register_collector(Box::new(SecurityCollector {
                connections: Arc::clone(&conn_counters),
                audit: Arc::clone(&audit),
            }));
            let stopped = stop.clone();
            let ready: crate::metrics::Readiness = {
                let store = Arc::clone(&store);
                Arc::new(move || crate::health::not_ready(store.as_ref()))
            };
            tasks.spawn(async move {
                tracing::info!(addr = %admin_addr, "admin endpoint serving /metrics");
                if let Err(e) =
                    crate::metrics::serve_admin(admin_listener, registry, ready, stopped).await
                {
                    tracing::error!(error = %e, "admin endpoint failed");
                }
            });
        }
        let admin = AdminService::new(
            Arc::clone(&store),
            Arc::clone(&hub),
            Arc::clone(&agents),
            tasks.clone(),
            config.max_snapshot_bytes,
        )
        .with_replica(replica.clone())
        .with_security(auth.clone(), Some(audit), push_limit)
        .with_rollouts(Arc::clone(&rollouts))
        .with_shutdown(stop.clone());
        if let Some((listener, _)) = console_endpoint {
            let endpoint = crate::console::Endpoint {
                listener,
                tls: security.tls.clone(),
                limits: config.conn_limits,
                counters: Arc::clone(&conn_counters),
                request_timeout: config.request_timeout,
                max_header_list_bytes: MAX_HEADER_LIST_BYTES,
            };
            tasks.spawn(crate::console::serve(
                endpoint,
                admin.clone(),
                auth,
                stop.clone(),
            ));
        }
        // Only the tasks and services keep it from here: it holds the audit
        // log, whose writer ends (and shutdown with it) once every holder
        // is gone.
        drop(rollouts);
        tasks.spawn(sweep_agents(
            Arc::clone(&agents),
            Arc::clone(&hub),
            stop.clone(),
        ));
        // A clustered store: other replicas' pushes reach this hub through
        // the store's feed, and agents' status is shared with them.
        if let Some(feed) = store.feed() {
            tasks.spawn(follow_feed(feed, Arc::clone(&hub), stop.clone()));
            tasks.spawn(crate::reach::follow(
                Arc::clone(&store),
                store_reach,
                stop.clone(),
            ));
        }
        if let Some(directory) = store.agent_directory() {
            tasks.spawn(crate::replication::replicate(
                Arc::clone(&agents),
                directory,
                replica.clone(),
                stop.clone(),
            ));
        }

        let incoming = accept::incoming(
            listener,
            security.tls.clone(),
            config.conn_limits,
            conn_counters,
            stop.clone(),
        );
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        tasks.spawn(crate::health::report(
            health_reporter,
            Arc::clone(&store),
            stop.clone(),
        ));
        // The HTTP API (http/) shares the port: HTTP/1.1 and h2 both reach it.
        let http_api = crate::http::HttpApi::beside(&discovery)
            .with_limits(config.max_held_polls, config.request_timeout);
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(config.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .max_concurrent_streams(Some(config.max_streams_per_connection))
            .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
            .http2_max_pending_accept_reset_streams(Some(100))
            .timeout(config.request_timeout)
            .add_routes(http_api.routes())
            .add_service(
                crate::xds::XdsService::beside(&discovery)
                    .over_tls(security.tls.is_some())
                    .into_server(),
            )
            .add_service(crate::openfeature::FlagSyncService::beside(&discovery).into_server())
            .add_service(discovery.into_server())
            .add_service(crate::admin::metered::Metered::new(
                admin.into_server(),
                call_metrics,
            ))
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let health = store.health();
        tracing::info!(
            addr = %local_addr,
            tls = security.tls.is_some(),
            authorization = security.policy.is_some(),
            store = health.backend,
            location = %health.location,
            replica = %replica,
            "serving"
        );

        tokio::pin!(server);
        let served = tokio::select! {
            served = &mut server => served.map_err(ServerError::from),
            () = shutdown => {
                tracing::info!(grace = ?config.shutdown_grace, "shutting down");
                stop.cancel();
                let drain = async {
                    let served = (&mut server).await;
                    tasks.close();
                    tasks.wait().await;
                    served
                };
                match tokio::time::timeout(config.shutdown_grace, drain).await {
                    Ok(served) => served.map_err(ServerError::from),
                    Err(_) => {
                        tracing::warn!(
                            grace = ?config.shutdown_grace,
                            "grace period over; dropping the connections still open"
                        );
                        Ok(())
                    }
                }
            }
        };
        // Also reached when the transport failed on its own.
        stop.cancel();
        tasks.close();
        let closed = store.close().await;
        tracing::info!("stopped");
        served?;
        closed.map_err(ServerError::from)
    }
}

/// Binds and serves until `shutdown` completes (see [`Server::serve`]).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    Server::bind(config).await?.serve(shutdown).await
}

/// The replica's name when none is configured: the bound address, with the
/// host's name instead of an unspecified IP (`0.0.0.0`, `::`).
fn default_replica_name(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified()
        && let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        && !host.trim().is_empty()
    {
        return format!("{}:{}", host.trim(), addr.port());
    }
    addr.to_string()
}

/// Publishes the heads the store's feed reports (pushes made through any
/// replica) to the hub, and forgets the groups it reports deleted, until
/// `stop`. The hub ignores versions it already
/// has, so this replica's own pushes, published by the Admin API at once,
/// are not sent twice; and it never goes back, so a re-read after
/// compaction cannot make a stream serve an older version.
async fn follow_feed(mut feed: HeadFeed, hub: Arc<Hub>, stop: CancellationToken) {
    use futures::StreamExt as _;
    let mut lost_since: Option<std::time::Instant> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = feed.next() => event,
        };
        match event {
            None => return,
            Some(FeedEvent::Heads(records) | FeedEvent::Resynced(records)) => {
                if let Some(since) = lost_since.take() {
                    tracing::info!(after = ?since.elapsed(), "store feed resumed");
                }
                // Checked against their hashes first (integrity.rs).
                let published = hub.publish_verified(records).await;
                tracing::debug!(published, "new heads from the store");
            }
            Some(FeedEvent::Deleted(groups)) => {
                // Deleted through another replica (or while the feed was
                // not looking): forget the heads as the deleting replica
                // did; streams keep what they sent.
                for (group, last_version) in groups {
                    if hub.forget(&group, last_version) {
                        tracing::info!(
                            group,
                            last_version,
                            "group deleted through another replica"
                        );
                    }
                }
            }
            Some(FeedEvent::Resumed) => {
                if let Some(since) = lost_since.take() {
                    tracing::info!(after = ?since.elapsed(), "store feed resumed");
                }
            }
            Some(FeedEvent::Lost { error, retry_in }) => {
                if lost_since.is_none() {
                    lost_since = Some(std::time::Instant::now());
                    tracing::warn!(
                        error = %error,
                        ?retry_in,
                        "lost the store's change feed; streaming the last known snapshots (read-only)"
                    );
                } else {
                    tracing::debug!(error = %error, ?retry_in, "store feed still down");
                }
            }
        }
    }
}

/// Forgets long-disconnected agents, and hub channels of groups that have no
/// version and no watcher, now and then, until `stop`.
async fn sweep_agents(agents: Arc<AgentRegistry>, hub: Arc<Hub>, stop: CancellationToken) {
    let period = (agents.forget_after() / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {
                let forgotten = agents.sweep();
                if forgotten > 0 {
                    tracing::debug!(forgotten, "forgot disconnected agents");
                }
                let dropped = hub.sweep();
                if dropped > 0 {
                    tracing::debug!(dropped, "dropped unwatched empty groups");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::wrappers::ReceiverStream;
    use vane_proto as pb;

    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.to_path_buf(),
            shutdown_grace: Duration::from_secs(5),
            ..Config::default()
        }
    }

    fn snapshot() -> pb::Snapshot {
        let spec = vane_model::parse_file(
            br#"{"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:1"}]}]}"#,
            vane_model::Format::Json,
        )
        .unwrap();
        vane_model::proto::spec_to_proto(&spec)
    }

    #[tokio::test]
    async fn serves_and_shuts_down_with_an_open_stream() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(config(dir.path())).await.unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let stop = CancellationToken::new();
        let running = tokio::spawn(server.serve(stop.clone().cancelled_owned()));

        let url = format!("http://{addr}");
        let mut admin = pb::admin_client::AdminClient::connect(url.clone())
            .await
            .unwrap();
        let pushed = admin
            .push(pb::PushRequest {
                supersede: false,
                group: "edge".into(),
                snapshot: Some(snapshot()),
                expected_version: Some(0),
                dry_run: false,
                message: "first".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pushed.version, 1);

        let mut watch = pb::config_discovery_client::ConfigDiscoveryClient::connect(url)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::WatchRequest {
            node: Some(pb::Node {
                id: "n".into(),
                group: "edge".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut responses = watch
            .watch(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = responses.message().await.unwrap().unwrap();
        assert_eq!((first.version, first.hash), (1, pushed.hash));

        // The agent keeps its stream (and request side) open: shutdown must
        // still finish quickly.
        let started = std::time::Instant::now();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("server did not stop in time")
            .unwrap()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(4));
        let end = responses.message().await;
        assert!(
            matches!(&end, Err(s) if s.code() == tonic::Code::Unavailable),
            "{end:?}"
        );
        drop(tx);

        // The store was closed: the data dir opens again, with the version.
        let server = Server::bind(config(dir.path())).await.unwrap();
        let stop = CancellationToken::new();
        let running = tokio::spawn(server.serve(stop.clone().cancelled_owned()));
        stop.cancel();
        running.await.unwrap().unwrap();
        let store = RedbStore::open(dir.path()).await.unwrap();
        assert_eq!(store.get("edge", None).await.unwrap().unwrap().version, 1);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn bind_failure_releases_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = config(dir.path());
        cfg.listen = taken.local_addr().unwrap();
        let err = Server::bind(cfg).await.unwrap_err();
        assert!(err.to_string().starts_with("listen: cannot bind"), "{err}");
        // The store is closed, so a second open succeeds.
        let store = RedbStore::open(dir.path()).await.unwrap();
        store.close().await.unwrap();
    }
}
