//! The `vane.v1.ConfigDiscovery` service: [`DiscoveryService`] (its
//! settings, and opening a stream: first request, authorization, caps, the
//! agent's record, the stream's task) and [`WatchServer`], the hand-written
//! tower service tonic serves (see `body.rs` for why it is not generated).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codec::Codec as _;
use tonic::{Status, Streaming};
use vane_proto as pb;

use crate::accept::ConnInfo;
use crate::agents::AgentRegistry;
use crate::audit::AuditLog;
use crate::auth::{Action, Auth, Caller};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::reach::StoreReach;
use crate::targets::{self, Cohorts};
use crate::watch::admission::{
    Access, Credentials, DEFAULT_IDLE_STREAM_TIMEOUT, DEFAULT_MAX_AGENTS,
    DEFAULT_MAX_STREAMS_PER_IDENTITY, MAX_REQUEST_BYTES, StreamsPerIdentity, check_first_request,
    first_request,
};
use crate::watch::body::WatchBody;
use crate::watch::state::WatchState;

/// What the xDS service shares with the watch service: one hub, one
/// registry, one policy, one per-identity stream cap.
pub(crate) struct Parts {
    pub(crate) hub: Arc<Hub>,
    pub(crate) cohorts: Arc<Cohorts>,
    pub(crate) agents: Arc<AgentRegistry>,
    pub(crate) auth: Auth,
    pub(crate) audit: Option<Arc<AuditLog>>,
    pub(crate) streams: Arc<StreamsPerIdentity>,
    pub(crate) max_agents: usize,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// The `ConfigDiscovery` gRPC service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    hub: Arc<Hub>,
    cohorts: Arc<Cohorts>,
    agents: Arc<AgentRegistry>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    auth: Auth,
    audit: Option<Arc<AuditLog>>,
    idle_timeout: Duration,
    max_agents: usize,
    /// Open streams per identity, and the cap.
    streams: Arc<StreamsPerIdentity>,
    /// Whether the store is reachable, as agents are told.
    reach: watch::Receiver<StoreReach>,
}

impl DiscoveryService {
    /// A service fanning out `hub`'s heads and recording agents in `agents`.
    /// Streams end when `shutdown` is cancelled; their tasks are spawned on
    /// `tasks` so the server can wait for them.
    pub fn new(
        hub: Arc<Hub>,
        agents: Arc<AgentRegistry>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            hub,
            cohorts: Arc::new(Cohorts::new()),
            agents,
            shutdown,
            tasks,
            metrics: Arc::new(Metrics::new()),
            auth: Auth::open(),
            audit: None,
            idle_timeout: DEFAULT_IDLE_STREAM_TIMEOUT,
            max_agents: DEFAULT_MAX_AGENTS,
            streams: Arc::new(StreamsPerIdentity::new(DEFAULT_MAX_STREAMS_PER_IDENTITY)),
            // Its sender is gone: reachable, for good.
            reach: watch::channel(StoreReach::Reachable).1,
        }
    }

    /// Where rollouts' cohorts are published (see [`crate::targets`]); by
    /// default no group has a rollout.
    #[must_use]
    pub fn with_cohorts(mut self, cohorts: Arc<Cohorts>) -> Self {
        self.cohorts = cohorts;
        self
    }

    /// Where the store's reachability is published (see [`crate::reach`]);
    /// by default the store is always reachable.
    #[must_use]
    pub fn with_store_reach(mut self, reach: watch::Receiver<StoreReach>) -> Self {
        self.reach = reach;
        self
    }

    /// How many watch streams one identity may hold open at once
    /// (anonymous callers are not counted).
    #[must_use]
    pub fn with_streams_per_identity(mut self, max: usize) -> Self {
        self.streams = Arc::new(StreamsPerIdentity::new(max));
        self
    }

    /// Who may watch which group (default: everyone, everything), and
    /// where refusals are recorded.
    #[must_use]
    pub fn with_auth(mut self, auth: Auth, audit: Option<Arc<AuditLog>>) -> Self {
        self.auth = auth;
        self.audit = audit;
        self
    }

    /// Limits: how long a stream may stay silent, and how many node ids
    /// are tracked.
    #[must_use]
    pub fn with_limits(mut self, idle_timeout: Duration, max_agents: usize) -> Self {
        self.idle_timeout = idle_timeout;
        self.max_agents = max_agents;
        self
    }

    /// Counts into `metrics` (by default, metrics nobody reads).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// What the xDS service shares with this one (`crate::xds`).
    pub(crate) fn parts(&self) -> Parts {
        Parts {
            hub: Arc::clone(&self.hub),
            cohorts: Arc::clone(&self.cohorts),
            agents: Arc::clone(&self.agents),
            auth: self.auth.clone(),
            audit: self.audit.clone(),
            streams: Arc::clone(&self.streams),
            max_agents: self.max_agents,
            metrics: Arc::clone(&self.metrics),
            shutdown: self.shutdown.clone(),
            tasks: self.tasks.clone(),
        }
    }

    /// The gRPC service to add to a tonic server: `vane.v1.ConfigDiscovery`
    /// with its one method, `Watch`.
    pub fn into_server(self) -> WatchServer {
        WatchServer {
            service: Arc::new(self),
        }
    }

    /// Opens one watch stream: reads and checks the first request, records
    /// the agent, starts the stream's task and returns its response body.
    async fn open(
        &self,
        caller: Caller,
        credentials: Credentials,
        mut inbound: Streaming<pb::WatchRequest>,
    ) -> Result<WatchBody, Status> {
        let peer = caller.peer.clone();
        let first = first_request(&self.shutdown, &mut inbound).await?;
        let node = check_first_request(&first).map_err(Status::invalid_argument)?;
        if let Err(status) = self.auth.authorize(&caller, Action::Watch, &node.group) {
            self.refused(&caller, &node.group, &status);
            return Err(status);
        }
        let slot = if caller.identity.is_empty() {
            None
        } else {
            match self.streams.acquire(&caller.identity) {
                Ok(slot) => Some(slot),
                Err(status) => {
                    self.refused(&caller, &node.group, &status);
                    return Err(status);
                }
            }
        };

        let mut heads = self.hub.subscribe(&node.group);
        let head = heads.borrow_and_update().clone();
        let mut cohorts = self.cohorts.subscribe(&node.group);
        // What this agent should run: the head, or its cohort's version.
        let target = targets::target(&head, &cohorts.borrow_and_update(), &node.id);
        let runs_head = head
            .as_ref()
            .is_some_and(|h| first.version_info == h.version && first.hash == h.hash);
        // Record what the agent says it runs, unless the claim cannot be one
        // of our versions: newer than the head, or the head's number with
        // another hash (e.g. from a server whose data was wiped).
        let claim_plausible = first.version_info > 0
            && head.as_ref().is_none_or(|h| {
                first.version_info < h.version || (first.version_info == h.version && runs_head)
            });
        let running = claim_plausible.then_some((first.version_info, first.hash.as_str()));
        let key = self
            .agents
            .connect_as(&node, &peer, running, &caller.identity, self.max_agents)
            .map_err(|e| {
                let status = Status::from(e);
                self.refused(&caller, &node.group, &status);
                status
            })?;

        let span = tracing::info_span!(
            "watch",
            group = %node.group,
            node = %node.id,
            peer = %peer,
            stream = key.generation(),
        );
        span.in_scope(|| {
            tracing::info!(
                running = first.version_info,
                head = head.as_ref().map_or(0, |h| h.version),
                "agent connected"
            );
        });

        // Boxed: tokio's mpsc allocates its slots 32 at a time, and 32
        // inline responses were 5 KiB per stream, idle or not.
        let (tx, rx) = mpsc::channel::<Box<pb::WatchResponse>>(1);
        let idle_timeout = self.idle_timeout;
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        let metrics = self.metrics.stream(&node.group);
        let mut stream = WatchState::new(
            Arc::clone(&self.agents),
            key,
            node,
            first.accept_delta,
            metrics,
        );
        stream.span = span;
        stream.keys_refused = crate::secrets::refusal_for(credentials.conn.as_ref())
            .or_else(|| crate::secrets::anonymous_refusal(&self.auth, &caller));
        stream.cohorts = cohorts;
        stream.accept_notices = first.accept_store_notices;
        stream.record_health(first.health.as_ref());
        let mut reach = self.reach.clone();
        stream.reach = *reach.borrow_and_update();
        stream.reach_changes = Some(reach);
        let changes = self.auth.subscribe_changes();
        if changes.is_some() {
            stream.access = Some(Box::new(Access {
                auth: self.auth.clone(),
                audit: self.audit.clone(),
                credentials,
                caller,
            }));
        }
        let runs_target = target
            .as_ref()
            .is_some_and(|t| first.version_info == t.version && first.hash == t.hash);
        match target {
            Some(target) if runs_target => {
                stream.known_version = target.version;
                // Checked against our own record: a delta may start here.
                stream.acked = Some((target.version, target.hash.clone()));
            }
            // It runs something newer than its cohort's version (it was
            // sent the candidate before): never send it back.
            Some(target) if claim_plausible && first.version_info > target.version => {
                stream.known_version = first.version_info;
            }
            target => stream.pending = target,
        }
        let shutdown = self.shutdown.clone();
        // Not `.instrument(span)`: entering a span on every poll of ten
        // thousand streams costs more than the rest of a wake-up; the
        // stream's log lines name the span as their parent instead.
        self.tasks.spawn(async move {
            let end = stream
                .run(inbound, heads, changes, tx, shutdown, idle_timeout)
                .await;
            // The identity's slot is free once the stream is over.
            drop(slot);
            if let Some(status) = end {
                // The agent may be gone already; nothing to tell then.
                let _ = end_tx.send(status);
            }
        });

        Ok(WatchBody {
            responses: rx,
            body: None,
            end: Some(end_rx),
        })
    }
}

impl DiscoveryService {
    /// Records a refused watch in the audit log.
    fn refused(&self, caller: &Caller, group: &str, status: &Status) {
        tracing::info!(identity = %caller.identity, peer = %caller.peer, group, code = ?status.code(), reason = status.message(), "watch refused");
        if let Some(audit) = &self.audit {
            audit.refused(caller, "watch", group, "", status);
        }
    }
}

/// The `vane.v1.ConfigDiscovery` service as a tower service, written out
/// rather than generated so that responses can be sent without tonic's
/// per-call encode buffer: tonic would copy every snapshot into a buffer of
/// each stream, and keep that buffer (as large as the largest snapshot sent)
/// for the stream's life. Here a response is a few bytes of header and
/// fields, followed by the hub's shared `Bytes` itself, which hyper hands
/// to the socket without a copy. Requests are decoded by tonic as usual.
#[derive(Debug, Clone)]
pub struct WatchServer {
    service: Arc<DiscoveryService>,
}

impl tonic::server::NamedService for WatchServer {
    const NAME: &'static str = "vane.v1.ConfigDiscovery";
}

/// The path of the one method.
const WATCH_PATH: &str = "/vane.v1.ConfigDiscovery/Watch";

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for WatchServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = Arc::clone(&self.service);
        Box::pin(async move {
            if request.uri().path() != WATCH_PATH {
                return Ok(Status::unimplemented(format!(
                    "{}: no such method of vane.v1.ConfigDiscovery",
                    request.uri().path()
                ))
                .into_http());
            }
            let encoding = request
                .headers()
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok());
            if encoding.is_some_and(|e| e != "identity") {
                return Ok(Status::unimplemented(
                    "grpc-encoding: compressed requests are not supported",
                )
                .into_http());
            }
            let (parts, body) = request.into_parts();
            // Served through our accept loop the connection is a ConnInfo;
            // an embedder serving this service with tonic's own incoming
            // still gets the peer's address.
            let tcp_only = parts
                .extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
                .map(|remote| ConnInfo {
                    remote,
                    identity: None,
                    tls: false,
                });
            let credentials = Credentials {
                conn: parts.extensions.get::<ConnInfo>().cloned().or(tcp_only),
                authorization: parts.headers.get(http::header::AUTHORIZATION).cloned(),
            };
            let caller = match service.auth.caller(
                credentials.conn.as_ref(),
                credentials
                    .authorization
                    .as_ref()
                    .map(http::HeaderValue::as_bytes),
            ) {
                Ok(caller) => caller,
                Err(status) => {
                    let anonymous = Caller {
                        identity: String::new(),
                        source: crate::auth::Source::None,
                        peer: parts
                            .extensions
                            .get::<ConnInfo>()
                            .map(|c| c.remote.to_string())
                            .unwrap_or_default(),
                    };
                    service.refused(&anonymous, "", &status);
                    return Ok(status.into_http());
                }
            };
            let inbound = Streaming::new_request(
                vane_proto::codec::VaneCodec::<pb::WatchResponse, pb::WatchRequest>::default()
                    .decoder(),
                body,
                None,
                Some(MAX_REQUEST_BYTES),
            );
            Ok(match service.open(caller, credentials, inbound).await {
                Ok(body) => {
                    let mut response = http::Response::new(tonic::body::Body::new(body));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}
