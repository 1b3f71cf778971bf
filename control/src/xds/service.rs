//! The `envoy.service.discovery.v3.AggregatedDiscoveryService` tonic
//! service: [`XdsService`] opens a stream as Vane's own watch does — the
//! caller authenticated (client certificate or bearer token in the
//! `authorization` metadata), the first request read under a timeout, its
//! node checked, the caller authorized as an agent of the node's group,
//! the per-identity stream cap and the agent cap applied, the node
//! recorded — then runs it in a task of its own.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::accept::ConnInfo;
use crate::agents::AgentRegistry;
use crate::audit::AuditLog;
use crate::auth::{Action, Auth, Caller};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::targets::Cohorts;
use crate::watch::admission::{Access, Credentials, StreamsPerIdentity, first_request};
use crate::xds::delta::Delta;
use crate::xds::node::node_info;
use crate::xds::sotw::Sotw;
use crate::xds::stream::{Protocol, XdsStream, may_send_private_keys};
use crate::xds::tracker::Tracker;

/// The largest request accepted (a delta stream's first request lists
/// every resource the client has).
pub(crate) const MAX_XDS_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The response stream of either method.
type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The ADS service, sharing the watch service's hub, cohorts, registry,
/// policy and per-identity stream cap.
#[derive(Debug, Clone)]
pub struct XdsService {
    inner: Arc<Inner>,
    /// The server's connections are TLS (private keys may go to any host).
    over_tls: bool,
}

#[derive(Debug)]
struct Inner {
    hub: Arc<Hub>,
    cohorts: Arc<Cohorts>,
    agents: Arc<AgentRegistry>,
    auth: Auth,
    audit: Option<Arc<AuditLog>>,
    streams: Arc<StreamsPerIdentity>,
    max_agents: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl XdsService {
    /// The service of a server whose Vane watch is `watch`: the same hub,
    /// cohorts, agents, policy, limits and metrics.
    pub fn beside(watch: &crate::watch::DiscoveryService) -> Self {
        let parts = watch.parts();
        Self {
            inner: Arc::new(Inner {
                hub: parts.hub,
                cohorts: parts.cohorts,
                agents: parts.agents,
                auth: parts.auth,
                audit: parts.audit,
                streams: parts.streams,
                max_agents: parts.max_agents,
                metrics: parts.metrics,
                shutdown: parts.shutdown,
                tasks: parts.tasks,
            }),
            over_tls: false,
        }
    }

    /// Says whether the server's connections are TLS. Until told, they are
    /// taken as plaintext: secrets with inline private keys go to loopback
    /// clients only.
    #[must_use]
    pub fn over_tls(mut self, tls: bool) -> Self {
        self.over_tls = tls;
        self
    }

    /// The gRPC service to add to a tonic server.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_XDS_REQUEST_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    /// Records a refused stream in the audit log.
    fn refused(&self, caller: &Caller, group: &str, status: &Status) {
        tracing::info!(identity = %caller.identity, peer = %caller.peer, group, code = ?status.code(), reason = status.message(), "xDS stream refused");
        if let Some(audit) = &self.inner.audit {
            audit.refused(caller, "xds", group, "", status);
        }
    }

    /// Opens a stream of protocol `P`.
    async fn open<P: Protocol>(
        &self,
        request: Request<Streaming<P::Request>>,
    ) -> Result<Responses<P::Response>, Status> {
        let inner = &self.inner;
        let credentials = Credentials::of_request(&request);
        let remote = request
            .extensions()
            .get::<ConnInfo>()
            .map(|c| c.remote)
            .or_else(|| request.remote_addr());
        let caller = credentials
            .caller(&inner.auth)
            .map_err(|(anonymous, status)| {
                self.refused(&anonymous, "", &status);
                status
            })?;
        // An anonymous caller (anonymous_watch) is never sent keys either.
        let keys_allowed =
            may_send_private_keys(remote, self.over_tls) && !inner.auth.is_anonymous_grant(&caller);
        let mut inbound = request.into_inner();
        let first = first_request(&inner.shutdown, &mut inbound).await?;
        let node = node_info(P::node(&first)).map_err(|e| {
            let status = Status::invalid_argument(e.to_string());
            self.refused(&caller, "", &status);
            status
        })?;
        // Before the check: a reload between the two is not missed.
        let changes = inner.auth.subscribe_changes();
        if let Err(status) = inner.auth.authorize(&caller, Action::Watch, &node.group) {
            self.refused(&caller, &node.group, &status);
            return Err(status);
        }
        let slot = if caller.identity.is_empty() {
            None
        } else {
            match inner.streams.acquire(&caller.identity) {
                Ok(slot) => Some(slot),
                Err(status) => {
                    self.refused(&caller, &node.group, &status);
                    return Err(status);
                }
            }
        };
        let key = inner
            .agents
            .connect_as(
                &node,
                &caller.peer,
                None,
                &caller.identity,
                inner.max_agents,
            )
            .map_err(|e| {
                let status = Status::from(e);
                self.refused(&caller, &node.group, &status);
                status
            })?;
        let span = tracing::info_span!(
            "xds",
            group = %node.group,
            node = %node.id,
            client = %node.client,
            peer = %caller.peer,
            stream = key.generation(),
        );
        span.in_scope(|| tracing::info!(build = %node.agent_build, "xDS client connected"));
        let mut tracker = Tracker::new(
            Arc::clone(&inner.agents),
            key.clone(),
            inner.metrics.stream(&node.group),
            node.client == vane_xds::Client::Envoy.as_str(),
        );
        let mut protocol = P::default();
        if let Err(status) = protocol.on_request(first, &mut tracker) {
            // Nothing will follow: the node is not left connected.
            inner.agents.disconnect(&key);
            return Err(status);
        }
        let access = changes.is_some().then(|| {
            Box::new(Access {
                auth: inner.auth.clone(),
                audit: inner.audit.clone(),
                credentials,
                caller,
            })
        });
        let stream = XdsStream {
            protocol,
            tracker,
            agents: Arc::clone(&inner.agents),
            key,
            heads: inner.hub.subscribe(&node.group),
            cohorts: inner.cohorts.subscribe(&node.group),
            node,
            target: None,
            untranslatable: 0,
            keys_allowed,
            access,
            span,
        };
        let (tx, rx) = mpsc::channel(1);
        // The stream's end travels apart from its responses, so that a
        // client that stopped reading cannot hold the task.
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        let shutdown = inner.shutdown.clone();
        inner.tasks.spawn(async move {
            let end = stream.run(inbound, tx, changes, shutdown).await;
            drop(slot);
            if let Some(status) = end {
                let _ = end_tx.send(status);
            }
        });
        let end = futures::stream::once(end_rx).filter_map(|end| async move { end.ok().map(Err) });
        Ok(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).chain(end),
        ))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = Responses<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.open::<Sotw>(request).await.map(Response::new)
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.open::<Delta>(request).await.map(Response::new)
    }
}
