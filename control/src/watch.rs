//! The `ConfigDiscovery.Watch` service: one long-lived stream per agent,
//! state-of-the-world with ACK/NACK as in xDS (docs/protocol.md).
//!
//! # Per stream
//! 1. The first request must name the node (id, valid group); otherwise the
//!    call fails with `InvalidArgument` before any response.
//! 2. The group's head is sent unless the agent already runs exactly that
//!    version and hash, in which case it is recorded as acked.
//! 3. A request whose `response_nonce` is the last response's nonce answers
//!    it: with `error_detail` it is a NACK (recorded with its reason; the
//!    agent keeps its old version), else if `version_info` equals the sent
//!    version it is an ACK. Requests answering older responses are stale and
//!    only count as a sign of life.
//! 4. Each newer head is sent when it is published.
//! 5. When the policy or the token file is reloaded, the stream checks
//!    again that its caller may watch its group, and ends with
//!    `PermissionDenied` (or `Unauthenticated` for a withdrawn token) if not.
//!
//! # Deltas
//! If the first request set `accept_delta`, a newer head is sent as a delta
//! from the version the agent is known to run: the version of the last
//! response if it is not answered yet (the agent applies responses in order
//! and will run it unless it refuses it), else the last version it acked on
//! this stream, or the head it said it ran when it connected. The response
//! that opens a stream is always a full snapshot. The hub builds each
//! (base, head) delta once and every stream shares its bytes; when there is
//! no delta (base too old, delta too large), the full snapshot goes. A
//! request with `want_full` answering the last response makes the next
//! response the full head, even if this stream already carried it.
//!
//! # Backpressure
//! Responses go through an mpsc of capacity 1, and a slot is reserved only
//! when a version is pending. While the agent is slow the pending version is
//! replaced by newer heads (latest wins), so a stream holds at most one
//! pending version plus one in the channel, all sharing the hub's `Bytes`.
//!
//! # Shutdown
//! Every stream task watches the server's cancellation token; on shutdown it
//! ends the stream with `UNAVAILABLE` (agents reconnect, possibly elsewhere).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codec::Codec as _;
use tonic::{Status, Streaming};
use vane_proto as pb;

use crate::accept::ConnInfo;
use crate::agents::{AgentRegistry, ConnectRefused, NodeInfo, StreamKey};
use crate::audit::AuditLog;
use crate::auth::{Action, Auth, Caller};
use crate::hub::{Head, Hub, Published};
use crate::metrics::{Metrics, StreamMetrics};

/// How long a new stream may take to send its first request.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest node id, label key or value, and agent build accepted.
pub const MAX_NODE_FIELD_LEN: usize = 256;
/// Most labels a node may carry.
pub const MAX_LABELS: usize = 64;
/// NACK reasons longer than this are cut, so an agent cannot make the
/// registry hold arbitrary amounts of text.
pub const MAX_NACK_REASON_LEN: usize = 4096;
/// How long a stream may stay silent (no heartbeat, ACK or NACK) before the
/// server closes it, unless configured.
pub const DEFAULT_IDLE_STREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Most agents (node ids) the registry tracks unless configured.
pub const DEFAULT_MAX_AGENTS: usize = 100_000;
/// Watch streams one identity may hold open unless configured (as many as
/// connections per certificate identity).
pub const DEFAULT_MAX_STREAMS_PER_IDENTITY: usize = 10_000;

/// The `ConfigDiscovery` gRPC service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    hub: Arc<Hub>,
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
}

/// Open watch streams per identity, capped.
#[derive(Debug)]
struct StreamsPerIdentity {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl StreamsPerIdentity {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: std::sync::Mutex::default(),
        }
    }

    /// A slot for one more stream of `identity`, or the refusal.
    fn acquire(self: &Arc<Self>, identity: &str) -> Result<StreamSlot, Status> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(identity.to_owned()).or_insert(0);
        if *count >= self.max {
            return Err(Status::resource_exhausted(format!(
                "identity {identity:?} holds its maximum of {} watch streams (--max-streams-per-identity)",
                self.max
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            streams: Arc::clone(self),
            identity: identity.to_owned(),
        })
    }
}

/// One open stream of an identity; released when dropped.
#[derive(Debug)]
struct StreamSlot {
    streams: Arc<StreamsPerIdentity>,
    identity: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.identity);
            }
        }
    }
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
            agents,
            shutdown,
            tasks,
            metrics: Arc::new(Metrics::new()),
            auth: Auth::open(),
            audit: None,
            idle_timeout: DEFAULT_IDLE_STREAM_TIMEOUT,
            max_agents: DEFAULT_MAX_AGENTS,
            streams: Arc::new(StreamsPerIdentity::new(DEFAULT_MAX_STREAMS_PER_IDENTITY)),
        }
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
        let first = tokio::select! {
            () = self.shutdown.cancelled() => {
                return Err(Status::unavailable("the server is shutting down"));
            }
            first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()) => match first {
                // Not InvalidArgument: agents give up on that, and a slow
                // first request is worth retrying.
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "node: no first request within {}s",
                        FIRST_REQUEST_TIMEOUT.as_secs()
                    )));
                }
                Ok(Err(status)) => return Err(status),
                Ok(Ok(None)) => {
                    return Err(Status::invalid_argument(
                        "node: the stream ended before its first request",
                    ));
                }
                Ok(Ok(Some(first))) => first,
            },
        };
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
                let status = match e {
                    ConnectRefused::Owned { .. } => Status::permission_denied(e.to_string()),
                    ConnectRefused::Full { .. } => Status::resource_exhausted(e.to_string()),
                };
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
        let changes = self.auth.subscribe_changes();
        if changes.is_some() {
            stream.access = Some(Box::new(Access {
                auth: self.auth.clone(),
                audit: self.audit.clone(),
                credentials,
                caller,
            }));
        }
        match head {
            Some(head) if runs_head => {
                stream.known_version = head.version;
                // Checked against our own record: a delta may start here.
                stream.acked = Some((head.version, head.hash.clone()));
            }
            head => stream.pending = head,
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

/// Largest request accepted on a watch stream (a first request with 64
/// labels, or a NACK with a long reason, is well below it).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

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

/// The response body of one watch stream: each response as gRPC frames,
/// then the trailers (`grpc-status`).
#[derive(Debug)]
pub struct WatchBody {
    responses: mpsc::Receiver<Box<pb::WatchResponse>>,
    /// The shared snapshot or delta bytes of the response whose head was
    /// just yielded.
    body: Option<bytes::Bytes>,
    /// The status the stream task ends with (dropped: OK).
    end: Option<oneshot::Receiver<Status>>,
}

/// Bodies up to this size are copied behind their response's fields (one
/// frame); larger ones go as their own frame, shared, not copied.
const COPY_BODY_BELOW: usize = 1024;

impl http_body::Body for WatchBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(body) = self.body.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(body))));
        }
        match self.responses.poll_recv(cx) {
            Poll::Ready(Some(response)) => {
                let (head, body) = encode_response(*response)?;
                self.body = body;
                return Poll::Ready(Some(Ok(http_body::Frame::data(head))));
            }
            Poll::Ready(None) => {}
            Poll::Pending => return Poll::Pending,
        }
        // The stream task ended: its status, if it set one, goes in the
        // trailers.
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        let status = match Pin::new(end).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(status)) => status,
            Poll::Ready(Err(_)) => Status::ok(""),
        };
        self.end = None;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            tracing::warn!(error = %e, "cannot encode the final status of a watch stream");
            trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.end.is_none() && self.body.is_none()
    }
}

/// One response as a gRPC message: the frame header (no compression, the
/// length) and every field but the body, encoded here, then the body's key
/// and length; the body itself is returned apart (shared, not copied)
/// unless it is small. Protobuf fields may come in any order, so this is
/// exactly a `WatchResponse` to any decoder.
fn encode_response(
    mut response: pb::WatchResponse,
) -> Result<(bytes::Bytes, Option<bytes::Bytes>), Status> {
    use bytes::BufMut as _;
    use prost::Message as _;
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

    let (tag, body) = match response.body.take() {
        Some(pb::watch_response::Body::Snapshot(b)) => (5, Some(b)),
        Some(pb::watch_response::Body::Delta(b)) => (6, Some(b)),
        None => (0, None),
    };
    let fields = response.encoded_len();
    let body_len = body.as_ref().map_or(0, |b| {
        key_len(tag) + encoded_len_varint(b.len() as u64) + b.len()
    });
    let message_len = u32::try_from(fields + body_len)
        .map_err(|_| Status::internal("response: larger than a gRPC message can be"))?;
    let copy = body.as_ref().is_some_and(|b| b.len() < COPY_BODY_BELOW);
    let mut head =
        bytes::BytesMut::with_capacity(5 + fields + 16 + if copy { body_len } else { 0 });
    head.put_u8(0);
    head.put_u32(message_len);
    response
        .encode(&mut head)
        .map_err(|e| Status::internal(format!("response: {e}")))?;
    let body = match body {
        Some(b) => {
            encode_key(tag, WireType::LengthDelimited, &mut head);
            encode_varint(b.len() as u64, &mut head);
            if copy {
                head.put_slice(&b);
                None
            } else {
                Some(b)
            }
        }
        None => None,
    };
    Ok((head.freeze(), body))
}

/// Checks the node of a stream's first request (public for the fuzz
/// targets). The error names the field.
pub fn check_first_request(first: &pb::WatchRequest) -> Result<NodeInfo, String> {
    let Some(node) = &first.node else {
        return Err("node: required on the first request".into());
    };
    check_text("node.id", &node.id)?;
    vane_model::names::check_group(&node.group).map_err(|e| format!("node.group: {e}"))?;
    if node.labels.len() > MAX_LABELS {
        return Err(format!(
            "node.labels: {} labels, over the limit of {MAX_LABELS}",
            node.labels.len()
        ));
    }
    for (k, v) in &node.labels {
        check_text("node.labels key", k)?;
        if v.len() > MAX_NODE_FIELD_LEN {
            return Err(format!(
                "node.labels[{k:?}]: is {} bytes long, over the limit of {MAX_NODE_FIELD_LEN}",
                v.len()
            ));
        }
    }
    if node.agent_build.len() > MAX_NODE_FIELD_LEN {
        return Err(format!(
            "node.agent_build: is {} bytes long, over the limit of {MAX_NODE_FIELD_LEN}",
            node.agent_build.len()
        ));
    }
    Ok(NodeInfo {
        id: node.id.clone(),
        group: node.group.clone(),
        labels: node.labels.clone(),
        agent_build: node.agent_build.clone(),
    })
}

fn check_text(field: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err(format!("{field}: must not be empty"))
    } else if s.len() > MAX_NODE_FIELD_LEN {
        Err(format!(
            "{field}: is {} bytes long, over the limit of {MAX_NODE_FIELD_LEN}",
            s.len()
        ))
    } else if s.chars().any(char::is_control) {
        Err(format!("{field}: must not contain control characters"))
    } else {
        Ok(())
    }
}

/// The last response sent on a stream.
#[derive(Debug, Clone)]
struct Sent {
    version: u64,
    hash: String,
    /// When its version was published, if after the stream opened (the
    /// start of its push-to-ACK time).
    pushed_at: Option<Instant>,
    /// Whether the agent answered it (ACK or NACK).
    answered: bool,
}

/// One stream's protocol state.
struct WatchState {
    agents: Arc<AgentRegistry>,
    key: StreamKey,
    node: NodeInfo,
    nonce_prefix: String,
    next_nonce: u64,
    /// Nonce of the last response sent ("" before the first).
    last_nonce: String,
    /// The last response sent.
    sent: Option<Sent>,
    /// Highest version sent or known to run on the agent: only newer heads
    /// are sent.
    known_version: u64,
    /// The version waiting for room in the channel.
    pending: Option<Arc<Published>>,
    /// Whether the agent applies deltas (its first request said so).
    accept_delta: bool,
    /// (version, hash) the agent runs as far as this stream knows: the last
    /// version it acked here, or the head it said it ran on connecting.
    acked: Option<(u64, String)>,
    /// The next response must be a full snapshot: the agent asked for one.
    want_full: bool,
    /// When the stream opened.
    opened_at: Instant,
    metrics: StreamMetrics,
    /// The stream's span (group, node, peer), parent of its log lines.
    span: tracing::Span,
    /// How to check the caller again when the policy or tokens change
    /// (`None` when nothing can change).
    access: Option<Box<Access>>,
}

/// What a request proved about its caller: the connection (with the client
/// certificate's identity) and the `authorization` header, kept so a stream
/// can be authorized again against a reloaded policy or token file.
#[derive(Debug, Clone)]
struct Credentials {
    conn: Option<ConnInfo>,
    authorization: Option<http::HeaderValue>,
}

/// A stream's standing: who opened it and how, to be checked again.
#[derive(Debug)]
struct Access {
    auth: Auth,
    audit: Option<Arc<AuditLog>>,
    credentials: Credentials,
    /// The caller as established when the stream opened.
    caller: Caller,
}

impl Access {
    /// Whether the caller may still watch `group` under the policy and
    /// tokens now in force; the status to end the stream with if not.
    fn recheck(&self, group: &str) -> Result<(), Status> {
        let authorization = self
            .credentials
            .authorization
            .as_ref()
            .map(http::HeaderValue::as_bytes);
        let result = self
            .auth
            .caller(self.credentials.conn.as_ref(), authorization)
            .and_then(|caller| self.auth.authorize(&caller, Action::Watch, group));
        result.map_err(|status| {
            let status = Status::new(
                status.code(),
                format!(
                    "{} (access withdrawn while the stream was open)",
                    status.message()
                ),
            );
            if let Some(audit) = &self.audit {
                audit.refused(&self.caller, "watch", group, "", &status);
            }
            status
        })
    }
}

/// What a request after the first asks of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Nothing to send.
    Nothing,
    /// Send the head again, whole (the agent could not use a delta).
    ResendFull,
}

impl WatchState {
    fn new(
        agents: Arc<AgentRegistry>,
        key: StreamKey,
        node: NodeInfo,
        accept_delta: bool,
        metrics: StreamMetrics,
    ) -> Self {
        Self {
            agents,
            nonce_prefix: format!("{:x}", key.generation()),
            key,
            node,
            next_nonce: 0,
            last_nonce: String::new(),
            sent: None,
            known_version: 0,
            pending: None,
            accept_delta,
            acked: None,
            want_full: false,
            opened_at: Instant::now(),
            metrics,
            span: tracing::Span::none(),
            access: None,
        }
    }

    /// Drives the stream until the agent leaves or the server shuts down.
    /// Returns the status to end the stream with, if any.
    async fn run(
        &mut self,
        mut inbound: impl Stream<Item = Result<pb::WatchRequest, Status>> + Unpin,
        heads: watch::Receiver<Head>,
        changes: Option<watch::Receiver<u64>>,
        tx: mpsc::Sender<Box<pb::WatchResponse>>,
        shutdown: CancellationToken,
        idle_timeout: Duration,
    ) -> Option<Status> {
        // The futures that outlive one turn of the loop are made once: the
        // shutdown token and the group's channel are shared by every stream,
        // and registering with them anew on every wake-up (an ACK, a send)
        // would take their locks ten thousand times per push.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let closed = tx.closed();
        tokio::pin!(closed);
        let current = heads.clone();
        let mut heads = tokio_stream::wrappers::WatchStream::from_changes(heads);
        let mut changes = changes.map(tokio_stream::wrappers::WatchStream::from_changes);
        // Reset by every request (heartbeats included); a stream silent for
        // the whole timeout belongs to a peer that is gone or idle on purpose.
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let end = loop {
            tokio::select! {
                // Shutdown first, so a busy stream cannot delay it.
                biased;
                () = &mut cancelled => {
                    break Some(Status::unavailable("the server is shutting down"));
                }
                permit = tx.reserve(), if self.pending.is_some() => match permit {
                    Ok(permit) => {
                        if let Some(published) = self.pending.take() {
                            let delta = self.delta_for(&published).await;
                            permit.send(Box::new(self.response(&published, delta)));
                        }
                    }
                    // The response stream was dropped: the agent is gone.
                    Err(_) => break None,
                },
                head = heads.next() => match head {
                    Some(head) => self.offer(head),
                    // The hub is gone, which only happens at shutdown.
                    None => break Some(Status::unavailable("the server is shutting down")),
                },
                change = next_change(&mut changes) => match change {
                    Some(_) => {
                        if let Err(status) = self.recheck_access() {
                            tracing::info!(parent: &self.span, reason = status.message(), "access withdrawn; closing the stream");
                            break Some(status);
                        }
                    }
                    // The server's Auth is gone: nothing will change again.
                    None => changes = None,
                },
                () = &mut idle => {
                    tracing::info!(parent: &self.span, timeout = ?idle_timeout, "stream idle; closing it");
                    break Some(Status::unavailable(format!(
                        "idle stream: no request for {}",
                        humantime::format_duration(idle_timeout)
                    )));
                }
                request = inbound.next() => match request {
                    Some(Ok(request)) => match self.on_request_at(request, idle.as_mut(), idle_timeout) {
                        Ok(Answer::Nothing) => {}
                        Ok(Answer::ResendFull) => {
                            // The head, even if this stream carried it; a
                            // newer pending version is the head anyway.
                            if let Some(head) = current.borrow().clone() {
                                self.pending = Some(head);
                            }
                        }
                        Err(status) => break Some(status),
                    },
                    None => break None,
                    // An oversize or undecodable request: the agent hears
                    // why (if it is still there).
                    Some(Err(status)) => {
                        tracing::debug!(parent: &self.span, %status, "agent stream failed");
                        break Some(status);
                    }
                },
                () = &mut closed => break None,
            }
        };
        self.agents.disconnect(&self.key);
        tracing::info!(
            parent: &self.span,
            reason = end.as_ref().map_or("agent left", |s| s.message()),
            "agent disconnected"
        );
        end
    }

    /// Checks the caller again after a policy or token reload.
    fn recheck_access(&self) -> Result<(), Status> {
        match &self.access {
            Some(access) => access.recheck(&self.node.group),
            None => Ok(()),
        }
    }

    /// A new head: make it the pending version if it is newer than anything
    /// sent or pending.
    fn offer(&mut self, head: Head) {
        let Some(head) = head else { return };
        let newer_than_pending = self
            .pending
            .as_ref()
            .is_none_or(|p| head.version > p.version);
        if head.version > self.known_version && newer_than_pending {
            self.pending = Some(head);
        }
    }

    /// The version the agent will run when it reads the next response, if
    /// a delta may start from it.
    fn delta_base(&self) -> Option<(u64, String)> {
        if !self.accept_delta || self.want_full {
            return None;
        }
        match &self.sent {
            Some(sent) if !sent.answered => Some((sent.version, sent.hash.clone())),
            _ => self.acked.clone(),
        }
    }

    /// The delta to send instead of `published`'s full snapshot, if any:
    /// (base version, base hash, encoded delta).
    async fn delta_for(&self, published: &Published) -> Option<(u64, String, bytes::Bytes)> {
        let (version, hash) = self.delta_base()?;
        if version >= published.version {
            return None;
        }
        let delta = published.delta_from(version, &hash).await?;
        Some((version, hash, delta))
    }

    fn response(
        &mut self,
        published: &Published,
        delta: Option<(u64, String, bytes::Bytes)>,
    ) -> pb::WatchResponse {
        self.next_nonce += 1;
        // `<stream>-<n>`, without the formatting machinery: this runs once
        // per agent per push.
        self.last_nonce.clear();
        self.last_nonce.push_str(&self.nonce_prefix);
        self.last_nonce.push('-');
        push_decimal(&mut self.last_nonce, self.next_nonce);
        let nonce = self.last_nonce.clone();
        self.sent = Some(Sent {
            version: published.version,
            hash: published.hash.clone(),
            pushed_at: (published.published_at >= self.opened_at).then_some(published.published_at),
            answered: false,
        });
        self.known_version = published.version;
        self.want_full = false;
        self.agents.record_sent(&self.key, published.version);
        // Either way the body shares the hub's buffer: no copy per stream.
        let (body, base_version, base_hash) = match delta {
            Some((base_version, base_hash, delta)) => {
                tracing::debug!(parent: &self.span, version = published.version, base_version, %nonce, "sent delta");
                self.metrics.sent_delta(delta.len());
                (
                    pb::watch_response::Body::Delta(delta),
                    base_version,
                    base_hash,
                )
            }
            None => {
                tracing::debug!(parent: &self.span, version = published.version, %nonce, "sent");
                self.metrics.sent_full(published.snapshot.len());
                (
                    pb::watch_response::Body::Snapshot(published.snapshot.clone()),
                    0,
                    String::new(),
                )
            }
        };
        pb::WatchResponse {
            group: published.group.clone(),
            version: published.version,
            hash: published.hash.clone(),
            nonce,
            body: Some(body),
            base_version,
            base_hash,
            created_at_unix_ms: published.created_at_unix_ms,
        }
    }

    /// [`Self::on_request`], after pushing the idle deadline back.
    fn on_request_at(
        &mut self,
        request: pb::WatchRequest,
        idle: std::pin::Pin<&mut tokio::time::Sleep>,
        idle_timeout: Duration,
    ) -> Result<Answer, Status> {
        idle.reset(Instant::now() + idle_timeout);
        self.on_request(request)
    }

    /// Handles one request after the first. An error ends the stream.
    /// Every request counts as a sign of life (`last_seen`): an ACK or NACK
    /// records it with what it records, anything else by itself (one
    /// registry update per request, not two).
    fn on_request(&mut self, request: pb::WatchRequest) -> Result<Answer, Status> {
        let recorded = self.handle_request(&request)?;
        if !recorded.0 {
            self.agents.touch(&self.key);
        }
        Ok(recorded.1)
    }

    /// [`Self::on_request`] but for `last_seen`: also says whether the
    /// registry was updated.
    fn handle_request(&mut self, request: &pb::WatchRequest) -> Result<(bool, Answer), Status> {
        if let Some(node) = &request.node
            && (node.id != self.node.id || node.group != self.node.group)
        {
            return Err(Status::invalid_argument(format!(
                "node: must not change within a stream (was id {:?} group {:?})",
                self.node.id, self.node.group
            )));
        }
        if request.response_nonce.is_empty() || request.response_nonce != self.last_nonce {
            tracing::debug!(parent: &self.span, nonce = %request.response_nonce, "stale request ignored");
            return Ok((false, Answer::Nothing));
        }
        let Some(sent) = self.sent.take() else {
            return Ok((false, Answer::Nothing));
        };
        let (version, answer) = (
            sent.version,
            Sent {
                answered: true,
                ..sent
            },
        );
        let sent = &answer;
        let outcome = if request.want_full {
            // Not a refusal of the content: the agent could not rebuild it
            // from the delta. It keeps what it runs; send it the whole head.
            tracing::info!(
                parent: &self.span,
                version,
                reason = request
                    .error_detail
                    .as_ref()
                    .map_or("", |e| e.message.as_str()),
                "agent could not apply a delta; sending the full snapshot"
            );
            self.metrics.delta_fallback();
            self.want_full = true;
            (false, Answer::ResendFull)
        } else if let Some(error) = &request.error_detail {
            let reason = nack_reason(&error.message);
            tracing::warn!(parent: &self.span, version, code = error.code, %reason, "agent refused version (NACK)");
            self.metrics.nacked();
            self.agents.record_nack(&self.key, version, &reason);
            (true, Answer::Nothing)
        } else if request.version_info == version
            && (request.hash.is_empty() || request.hash == sent.hash)
        {
            tracing::debug!(parent: &self.span, version, "acked");
            self.metrics.acked(sent.pushed_at.map(|at| at.elapsed()));
            self.agents.record_ack(&self.key, version, &sent.hash);
            self.acked = Some((version, sent.hash.clone()));
            (true, Answer::Nothing)
        } else {
            if request.version_info == version {
                tracing::warn!(
                    parent: &self.span,
                    version,
                    sent = %sent.hash,
                    acked = %request.hash,
                    "ACK names another hash than the one sent; not recorded"
                );
            } else {
                tracing::debug!(
                    parent: &self.span,
                    version,
                    version_info = request.version_info,
                    "answer neither acks nor nacks the last response"
                );
            }
            // Not an answer: the response still waits for one.
            self.sent = Some(Sent {
                answered: false,
                ..answer
            });
            return Ok((false, Answer::Nothing));
        };
        self.sent = Some(answer);
        Ok(outcome)
    }
}

/// One stream's request handling without a network or a hub: the server's
/// side of a watch stream after its first request, driven step by step.
/// For the `watch_stream` fuzz target (crate `vane-fuzzing`), which feeds it
/// hostile ACKs, NACKs, heartbeats and node changes between responses and
/// checks what the agent registry records.
#[doc(hidden)]
pub struct StreamReplay {
    state: WatchState,
    group: String,
}

impl std::fmt::Debug for StreamReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReplay")
            .field("group", &self.group)
            .field("node", &self.state.node.id)
            .finish_non_exhaustive()
    }
}

impl StreamReplay {
    /// A stream opened by `first`, as the server checks and records it;
    /// the reason when the server would refuse it.
    pub fn open(first: &pb::WatchRequest) -> Result<Self, String> {
        let node = check_first_request(first)?;
        let agents = Arc::new(AgentRegistry::default());
        let key = agents.connect(&node, "fuzz", None);
        let group = node.group.clone();
        let metrics = Metrics::new().stream(&group);
        let state = WatchState::new(agents, key, node, first.accept_delta, metrics);
        Ok(Self { state, group })
    }

    /// Sends `version` (with `hash` and a small body) as the next response.
    pub fn send(&mut self, version: u64, hash: &str) -> pb::WatchResponse {
        let published = Published::new(
            self.group.clone(),
            version,
            hash.to_owned(),
            0,
            bytes::Bytes::from_static(b"replayed snapshot"),
        );
        self.state.response(&published, None)
    }

    /// Handles one request after the first; `Err` ends the stream.
    pub fn request(&mut self, request: pb::WatchRequest) -> Result<(), Status> {
        self.state.on_request(request).map(|_| ())
    }

    /// What the registry holds for this stream's agent.
    pub fn record(&self) -> Option<crate::agents::AgentRecord> {
        self.state
            .agents
            .list(Some(&self.group))
            .into_iter()
            .find(|r| r.node_id == self.state.node.id)
    }
}

/// The next change of the policy or tokens; never, when they cannot change.
async fn next_change(
    changes: &mut Option<tokio_stream::wrappers::WatchStream<u64>>,
) -> Option<u64> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

fn nack_reason(message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        return "(no reason given)".into();
    }
    if message.len() <= MAX_NACK_REASON_LEN {
        return message.to_owned();
    }
    let mut end = MAX_NACK_REASON_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Response;
    use tonic::transport::server::TcpIncoming;

    use super::*;
    use crate::agents::AgentState;

    const STEP: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(300);

    struct Harness {
        hub: Arc<Hub>,
        agents: Arc<AgentRegistry>,
        shutdown: CancellationToken,
        addr: SocketAddr,
        server: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        async fn start() -> Self {
            Self::start_with(Auth::open()).await
        }

        async fn start_with(auth: Auth) -> Self {
            let hub = Arc::new(Hub::new());
            let agents = Arc::new(AgentRegistry::default());
            let shutdown = CancellationToken::new();
            let service = DiscoveryService::new(
                Arc::clone(&hub),
                Arc::clone(&agents),
                shutdown.clone(),
                TaskTracker::new(),
            )
            .with_auth(auth, None);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let incoming = TcpIncoming::from(listener);
            let signal = shutdown.clone();
            let server = tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(service.into_server())
                    .serve_with_incoming_shutdown(incoming, signal.cancelled_owned())
                    .await
                    .unwrap();
            });
            Self {
                hub,
                agents,
                shutdown,
                addr,
                server,
            }
        }

        fn publish(&self, version: u64) {
            self.hub.publish(Published::new(
                "edge".into(),
                version,
                hash(version),
                1000 + version as i64,
                Bytes::from(format!("snapshot {version}")),
            ));
        }

        async fn connect(&self, first: pb::WatchRequest) -> Agent {
            self.connect_with_token(first, None).await
        }

        async fn connect_with_token(&self, first: pb::WatchRequest, token: Option<&str>) -> Agent {
            let mut client = pb::config_discovery_client::ConfigDiscoveryClient::connect(format!(
                "http://{}",
                self.addr
            ))
            .await
            .unwrap();
            let (tx, rx) = mpsc::channel(8);
            tx.send(first).await.unwrap();
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            let responses = client.watch(request).await.map(Response::into_inner);
            Agent { tx, responses }
        }

        fn agent(&self, id: &str) -> crate::agents::AgentRecord {
            self.agents
                .list(Some("edge"))
                .into_iter()
                .find(|a| a.node_id == id)
                .unwrap()
        }

        /// Waits until the registry shows what the test expects.
        async fn wait_for(&self, id: &str, ok: impl Fn(&crate::agents::AgentRecord) -> bool) {
            tokio::time::timeout(STEP, async {
                loop {
                    if self
                        .agents
                        .list(Some("edge"))
                        .iter()
                        .any(|a| a.node_id == id && ok(a))
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "agent {id} never reached the expected state: {:?}",
                    self.agent(id)
                )
            });
        }
    }

    struct Agent {
        tx: mpsc::Sender<pb::WatchRequest>,
        responses: Result<Streaming<pb::WatchResponse>, Status>,
    }

    impl Agent {
        fn stream(&mut self) -> &mut Streaming<pb::WatchResponse> {
            self.responses.as_mut().expect("the watch call failed")
        }

        async fn next(&mut self) -> pb::WatchResponse {
            tokio::time::timeout(STEP, self.stream().message())
                .await
                .expect("no response in time")
                .expect("stream failed")
                .expect("stream ended")
        }

        async fn nothing_for_a_while(&mut self) {
            if let Ok(got) = tokio::time::timeout(QUIET, self.stream().message()).await {
                panic!("expected nothing, got {got:?}");
            }
        }

        async fn ack(&self, r: &pb::WatchResponse) {
            self.tx
                .send(pb::WatchRequest {
                    version_info: r.version,
                    hash: r.hash.clone(),
                    response_nonce: r.nonce.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }

        async fn nack(&self, r: &pb::WatchRequest, reason: &str) {
            let mut request = r.clone();
            request.error_detail = Some(pb::ErrorDetail {
                code: 3,
                message: reason.into(),
            });
            self.tx.send(request).await.unwrap();
        }
    }

    fn hash(version: u64) -> String {
        format!("{version:064x}")
    }

    fn first(id: &str, version: u64, hash: &str) -> pb::WatchRequest {
        pb::WatchRequest {
            node: Some(pb::Node {
                id: id.into(),
                group: "edge".into(),
                labels: BTreeMap::from([("zone".into(), "a".into())]),
                agent_build: "test/1".into(),
            }),
            version_info: version,
            hash: hash.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn head_ack_next_push_nack() {
        let h = Harness::start().await;
        h.publish(1);
        let mut agent = h.connect(first("a", 0, "")).await;

        let r1 = agent.next().await;
        assert_eq!((r1.group.as_str(), r1.version), ("edge", 1));
        assert_eq!(r1.hash, hash(1));
        assert_eq!(r1.created_at_unix_ms, 1001);
        assert_eq!(
            r1.body,
            Some(pb::watch_response::Body::Snapshot(Bytes::from(
                "snapshot 1"
            )))
        );
        assert!(!r1.nonce.is_empty());
        h.wait_for("a", |a| a.sent_version == 1).await;
        assert_eq!(h.agent("a").state(1), AgentState::Stale);

        agent.ack(&r1).await;
        h.wait_for("a", |a| a.acked_version == 1).await;
        let a = h.agent("a");
        assert_eq!(a.state(1), AgentState::Synced);
        assert_eq!(a.acked_hash, hash(1));
        assert!(a.connected);
        assert_eq!(a.agent_build, "test/1");
        assert!(a.peer.starts_with("127.0.0.1:"));

        h.publish(2);
        let r2 = agent.next().await;
        assert_eq!(r2.version, 2);
        assert_ne!(r2.nonce, r1.nonce);

        // NACK: the agent keeps running 1.
        let refuse = pb::WatchRequest {
            version_info: 1,
            hash: hash(1),
            response_nonce: r2.nonce.clone(),
            ..Default::default()
        };
        agent
            .nack(
                &refuse,
                r#"clusters[0].endpoints[0].address: cannot resolve"#,
            )
            .await;
        h.wait_for("a", |a| a.last_nacked_version == 2).await;
        let a = h.agent("a");
        assert_eq!(a.acked_version, 1, "a NACK must not move the acked version");
        assert_eq!(
            a.nack_reason,
            "clusters[0].endpoints[0].address: cannot resolve"
        );
        assert_eq!(a.state(2), AgentState::Nacked);

        // The refused version is not sent again; the next one is.
        agent.nothing_for_a_while().await;
        h.publish(3);
        let r3 = agent.next().await;
        assert_eq!(r3.version, 3);
        agent.ack(&r3).await;
        h.wait_for("a", |a| a.acked_version == 3).await;
        assert_eq!(h.agent("a").state(3), AgentState::Synced);

        drop(agent);
        h.wait_for("a", |a| !a.connected).await;
        h.shutdown.cancel();
        h.server.await.unwrap();
    }

    #[tokio::test]
    async fn reconnect_running_the_head_gets_nothing() {
        let h = Harness::start().await;
        h.publish(4);
        let mut agent = h.connect(first("b", 4, &hash(4))).await;
        agent.nothing_for_a_while().await;
        let b = h.agent("b");
        assert_eq!((b.acked_version, b.sent_version), (4, 0));
        assert_eq!(b.state(4), AgentState::Synced);

        // Same version number, another hash: the head is sent.
        let mut other = h.connect(first("c", 4, &hash(9))).await;
        assert_eq!(other.next().await.version, 4);
        assert_eq!(h.agent("c").acked_version, 0);

        // An older version: sent the head, shown as running the old one.
        let mut old = h.connect(first("d", 2, &hash(2))).await;
        assert_eq!(old.next().await.version, 4);
        assert_eq!(h.agent("d").acked_version, 2);
        assert_eq!(h.agent("d").state(4), AgentState::Stale);

        h.publish(5);
        assert_eq!(agent.next().await.version, 5);
        h.shutdown.cancel();
        h.server.await.unwrap();
    }

    #[tokio::test]
    async fn stale_nonce_is_ignored() {
        let h = Harness::start().await;
        h.publish(1);
        let mut agent = h.connect(first("a", 0, "")).await;
        let r1 = agent.next().await;
        h.publish(2);
        let r2 = agent.next().await;
        // Answering the first response after the second was sent.
        agent.ack(&r1).await;
        agent
            .nack(
                &pb::WatchRequest {
                    response_nonce: r1.nonce.clone(),
                    ..Default::default()
                },
                "late",
            )
            .await;
        agent.ack(&r2).await;
        h.wait_for("a", |a| a.acked_version == 2).await;
        let a = h.agent("a");
        assert_eq!(a.last_nacked_version, 0);
        assert_eq!(a.nack_reason, "");
        h.shutdown.cancel();
        h.server.await.unwrap();
    }

    #[tokio::test]
    async fn group_without_versions_waits_for_the_first_push() {
        let h = Harness::start().await;
        let mut agent = h.connect(first("a", 0, "")).await;
        agent.nothing_for_a_while().await;
        assert_eq!(h.agent("a").state(0), AgentState::NotSent);
        h.publish(1);
        assert_eq!(agent.next().await.version, 1);
        h.shutdown.cancel();
        h.server.await.unwrap();
    }

    #[tokio::test]
    async fn bad_first_requests_are_refused() {
        let h = Harness::start().await;
        let cases = [
            (pb::WatchRequest::default(), "node: required"),
            (first("", 0, ""), "node.id: must not be empty"),
            (
                {
                    let mut r = first("a", 0, "");
                    r.node.as_mut().unwrap().group = "bad group".into();
                    r
                },
                "node.group:",
            ),
            (
                {
                    let mut r = first("a", 0, "");
                    r.node.as_mut().unwrap().group = String::new();
                    r
                },
                "node.group: must not be empty",
            ),
        ];
        for (request, expected) in cases {
            let agent = h.connect(request).await;
            let status = match agent.responses {
                Err(status) => status,
                Ok(mut stream) => stream.message().await.unwrap_err(),
            };
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().starts_with(expected), "{status:?}");
        }
        h.shutdown.cancel();
        h.server.await.unwrap();
    }

    #[tokio::test]
    async fn changing_node_mid_stream_ends_it() {
        let h = Harness::start().await;
        h.publish(1);
        let mut agent = h.connect(first("a", 0, "")).await;
        let r1 = agent.next().await;
        let mut request = first("someone-else", 1, &r1.hash);
        request.response_nonce = r1.nonce.clone();
        agent.tx.send(request).await.unwrap();
        let status = tokio::time::timeout(STEP, agent.stream().message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("node: must not change"));
        h.wait_for("a", |a| !a.connected).await;
        h.shutdown.cancel();
        h.server.await.unwrap();
    }

    /// A policy and token file in force, swapped by the test as a reload would.
    #[allow(clippy::type_complexity)]
    fn auth_with(
        policy: &str,
        tokens: &[(&str, &str)],
    ) -> (
        Auth,
        Arc<arc_swap::ArcSwap<crate::auth::Policy>>,
        Arc<arc_swap::ArcSwap<crate::auth::Tokens>>,
    ) {
        let policy = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::auth::Policy::parse(policy).unwrap(),
        ));
        let tokens = Arc::new(arc_swap::ArcSwap::from_pointee(token_file(tokens)));
        let auth = Auth::new(Some(Arc::clone(&policy)), Some(Arc::clone(&tokens)));
        (auth, policy, tokens)
    }

    fn token_file(tokens: &[(&str, &str)]) -> crate::auth::Tokens {
        use sha2::Digest as _;
        let entries: String = tokens
            .iter()
            .map(|(identity, token)| {
                format!(
                    "{{identity: {identity}, sha256: {}}},",
                    hex::encode(sha2::Sha256::digest(token.as_bytes()))
                )
            })
            .collect();
        crate::auth::Tokens::parse(&format!("tokens: [{entries}]")).unwrap()
    }

    #[tokio::test]
    async fn a_reloaded_policy_or_token_file_ends_streams_no_longer_allowed() {
        const BOTH: &str = "bindings: [{identity: a, role: agent, groups: [edge]}, {identity: b, role: agent, groups: [edge]}]";
        let (auth, policy, tokens) = auth_with(BOTH, &[("a", "token-a"), ("b", "token-b")]);
        let h = Harness::start_with(auth.clone()).await;
        h.publish(1);
        let mut a = h
            .connect_with_token(first("node-a", 0, ""), Some("token-a"))
            .await;
        let mut b = h
            .connect_with_token(first("node-b", 0, ""), Some("token-b"))
            .await;
        a.next().await;
        b.next().await;

        // A reload that changes nothing for them: both stay.
        auth.changed();
        a.nothing_for_a_while().await;
        b.nothing_for_a_while().await;

        // b loses its binding: b's stream ends, a's goes on.
        policy.store(Arc::new(
            crate::auth::Policy::parse("bindings: [{identity: a, role: agent, groups: [edge]}]")
                .unwrap(),
        ));
        auth.changed();
        let status = tokio::time::timeout(STEP, b.stream().message())
            .await
            .expect("b's stream did not end")
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "identity \"b\" may not watch group \"edge\" (access withdrawn while the stream was open)"
        );
        h.publish(2);
        assert_eq!(a.next().await.version, 2);

        // a's token is withdrawn: a's stream ends as unauthenticated.
        tokens.store(Arc::new(token_file(&[("b", "token-b")])));
        auth.changed();
        let status = tokio::time::timeout(STEP, a.stream().message())
            .await
            .expect("a's stream did not end")
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(
            status.message().contains("not known"),
            "{}",
            status.message()
        );
        h.shutdown.cancel();
    }

    #[test]
    fn replayed_stream_records_only_genuine_answers() {
        let mut replay = StreamReplay::open(&first("n1", 0, "")).unwrap();
        let r1 = replay.send(1, &hash(1));
        // A forged ACK (right nonce, wrong hash) and a replayed one (old
        // nonce) record nothing.
        let forged = pb::WatchRequest {
            version_info: 1,
            hash: hash(9),
            response_nonce: r1.nonce.clone(),
            ..Default::default()
        };
        replay.request(forged).unwrap();
        assert_eq!(replay.record().unwrap().acked_version, 0);
        let genuine = pb::WatchRequest {
            version_info: 1,
            hash: hash(1),
            response_nonce: r1.nonce.clone(),
            ..Default::default()
        };
        replay.request(genuine.clone()).unwrap();
        assert_eq!(replay.record().unwrap().acked_version, 1);
        let r2 = replay.send(2, &hash(2));
        let replayed = pb::WatchRequest {
            version_info: 2,
            hash: hash(2),
            ..genuine
        };
        replay.request(replayed).unwrap();
        assert_eq!(replay.record().unwrap().acked_version, 1);
        // A NACK of the last response is recorded, its reason bounded.
        let nack = pb::WatchRequest {
            version_info: 1,
            hash: hash(1),
            response_nonce: r2.nonce,
            error_detail: Some(pb::ErrorDetail {
                code: 3,
                message: "x".repeat(MAX_NACK_REASON_LEN * 2),
            }),
            ..Default::default()
        };
        replay.request(nack).unwrap();
        let record = replay.record().unwrap();
        assert_eq!(record.last_nacked_version, 2);
        assert!(record.nack_reason.len() <= MAX_NACK_REASON_LEN + '…'.len_utf8());
        // Another node mid-stream ends it.
        let mut other = first("n2", 1, &hash(1));
        other.response_nonce = "x".into();
        assert!(replay.request(other).is_err());
        assert!(StreamReplay::open(&pb::WatchRequest::default()).is_err());
    }

    #[tokio::test]
    async fn shutdown_ends_streams_with_unavailable() {
        let h = Harness::start().await;
        h.publish(1);
        let mut agent = h.connect(first("a", 0, "")).await;
        agent.next().await;
        h.shutdown.cancel();
        let status = tokio::time::timeout(STEP, agent.stream().message())
            .await
            .expect("stream did not end on shutdown")
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        tokio::time::timeout(STEP, h.server)
            .await
            .expect("server did not stop")
            .unwrap();
    }

    /// A real snapshot: `routes` routes, the first `edited` of them with
    /// another timeout. Returns (encoded canonical bytes, hash).
    fn real(routes: usize, edited: usize) -> (Bytes, String) {
        let routes: Vec<String> = (0..routes)
            .map(|i| {
                let timeout = if i < edited { 7000 } else { 1000 };
                format!(r#"{{"match": {{"path_prefix": "/r{i}"}}, "cluster": "c", "timeout_ms": {timeout}}}"#)
            })
            .collect();
        let json = format!(
            r#"{{"clusters": [{{"name": "c", "endpoints": [{{"address": "127.0.0.1:1"}}]}}],
                "route_tables": [{{"name": "main", "routes": [{}]}}]}}"#,
            routes.join(",")
        );
        let spec = vane_model::parse_file(json.as_bytes(), vane_model::Format::Json).unwrap();
        let s = vane_model::validate(spec).unwrap();
        (Bytes::from(s.encode()), s.content_hash().to_hex())
    }

    impl Harness {
        /// Publishes version `edited + 1` of a 40-route snapshot whose
        /// first `edited` routes differ from the base. Returns its hash.
        fn publish_real(&self, edited: usize) -> String {
            let (bytes, hash) = real(40, edited);
            self.hub.publish(Published::new(
                "edge".into(),
                edited as u64 + 1,
                hash.clone(),
                0,
                bytes,
            ));
            hash
        }
    }

    fn delta_first(id: &str, version: u64, hash: &str) -> pb::WatchRequest {
        let mut r = first(id, version, hash);
        r.accept_delta = true;
        r
    }

    /// What an agent runs after a response: the full body, or the delta
    /// applied to what it ran (which must be the response's base).
    fn rebuild(running: Option<&Bytes>, r: &pb::WatchResponse) -> Bytes {
        match r.body.as_ref().unwrap() {
            pb::watch_response::Body::Snapshot(b) => {
                assert_eq!((r.base_version, r.base_hash.as_str()), (0, ""));
                b.clone()
            }
            pb::watch_response::Body::Delta(d) => {
                let base = vane_model::Snapshot::decode(running.unwrap()).unwrap();
                let full = vane_model::delta::apply_encoded(&base, d).unwrap();
                let s = vane_model::Snapshot::decode(&full).unwrap();
                assert_eq!(
                    s.content_hash().to_hex(),
                    r.hash,
                    "rebuilt content hashes right"
                );
                Bytes::from(full)
            }
        }
    }

    fn is_delta(r: &pb::WatchResponse) -> bool {
        matches!(r.body, Some(pb::watch_response::Body::Delta(_)))
    }

    #[tokio::test]
    async fn deltas_follow_the_first_full_and_want_full_gets_the_whole_head() {
        let h = Harness::start().await;
        let h1 = h.publish_real(0);
        let mut agent = h.connect(delta_first("a", 0, "")).await;
        let r1 = agent.next().await;
        assert!(!is_delta(&r1), "a stream opens with a full snapshot");
        let mut running = rebuild(None, &r1);
        agent.ack(&r1).await;
        h.wait_for("a", |a| a.acked_version == 1).await;

        let h2 = h.publish_real(1);
        let r2 = agent.next().await;
        assert!(is_delta(&r2));
        assert_eq!(
            (r2.version, r2.base_version, r2.base_hash.as_str()),
            (2, 1, h1.as_str())
        );
        let size = match r2.body.as_ref().unwrap() {
            pb::watch_response::Body::Delta(d) => d.len(),
            pb::watch_response::Body::Snapshot(_) => unreachable!(),
        };
        assert!(
            size * 10 < running.len(),
            "delta {size} bytes, full {}",
            running.len()
        );
        rebuild(Some(&running), &r2);
        agent.ack(&r2).await;
        h.wait_for("a", |a| a.acked_version == 2).await;

        // The agent cannot use the next delta (say its rebuild hashed wrong):
        // it keeps 2 and asks for the whole snapshot, which comes at once.
        h.publish_real(2);
        let r3 = agent.next().await;
        assert!(is_delta(&r3));
        assert_eq!(r3.base_version, 2);
        agent
            .tx
            .send(pb::WatchRequest {
                version_info: 2,
                hash: h2.clone(),
                response_nonce: r3.nonce.clone(),
                error_detail: Some(pb::ErrorDetail {
                    code: 9,
                    message: "hash mismatch: rebuilt content hashes to 00…".into(),
                }),
                want_full: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let full3 = agent.next().await;
        assert!(
            !is_delta(&full3),
            "want_full is answered with the full snapshot"
        );
        assert_eq!((full3.version, &full3.hash), (3, &r3.hash));
        assert_ne!(full3.nonce, r3.nonce);
        running = rebuild(None, &full3);
        agent.ack(&full3).await;
        h.wait_for("a", |a| a.acked_version == 3).await;
        let a = h.agent("a");
        assert_eq!(
            a.last_nacked_version, 0,
            "asking for the full snapshot is no refusal"
        );
        assert_eq!(a.state(3), AgentState::Synced);

        // Back to deltas, based on what the agent runs now.
        h.publish_real(3);
        let r4 = agent.next().await;
        assert!(is_delta(&r4));
        assert_eq!(r4.base_version, 3);
        running = rebuild(Some(&running), &r4);

        // Not answered yet: the next one is based on the version in flight,
        // which the agent runs once it has read it.
        h.publish_real(4);
        let r5 = agent.next().await;
        assert_eq!((r5.version, r5.base_version), (5, 4));
        rebuild(Some(&running), &r5);

        // An agent that does not accept deltas only ever gets full snapshots.
        let mut old = h.connect(first("old", 5, &r5.hash)).await;
        old.nothing_for_a_while().await;
        h.publish_real(5);
        let r6 = old.next().await;
        assert!(!is_delta(&r6));

        // Reconnecting while running the head: the next push is a delta from it.
        let mut back = h.connect(delta_first("back", 6, &r6.hash)).await;
        back.nothing_for_a_while().await;
        h.publish_real(6);
        let r7 = back.next().await;
        assert!(is_delta(&r7));
        assert_eq!(r7.base_version, 6);

        h.shutdown.cancel();
        h.server.await.unwrap();
    }

    #[tokio::test]
    async fn a_delta_is_not_sent_when_the_base_is_unknown() {
        let h = Harness::start().await;
        for edited in 0..8 {
            h.publish_real(edited);
        }
        // Claims version 2, with its real hash: too old for the hub's bases,
        // and a stream opens with a full snapshot anyway.
        let (_, hash2) = real(40, 1);
        let mut agent = h.connect(delta_first("a", 2, &hash2)).await;
        let r = agent.next().await;
        assert!(!is_delta(&r));
        assert_eq!(r.version, 8);
        h.shutdown.cancel();
        h.server.await.unwrap();
    }

    /// An agent that never reads: however many versions are pushed, its
    /// stream holds one response in the channel and at most one pending
    /// version, and every older version is freed.
    #[tokio::test]
    async fn a_stuck_agent_holds_at_most_two_versions() {
        let hub = Arc::new(Hub::new());
        let agents = Arc::new(AgentRegistry::default());
        let node = NodeInfo {
            id: "stuck".into(),
            group: "edge".into(),
            labels: BTreeMap::new(),
            agent_build: String::new(),
        };
        let key = agents.connect(&node, "", None);
        let mut state = WatchState::new(
            Arc::clone(&agents),
            key,
            node,
            true,
            Metrics::new().stream("edge"),
        );
        let heads = hub.subscribe("edge");
        // The agent never reads `responses`; its requests never end.
        let (tx, responses) = mpsc::channel(1);
        let (_requests_tx, requests_rx) = mpsc::channel::<Result<pb::WatchRequest, Status>>(1);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let inbound = ReceiverStream::new(requests_rx);
            state
                .run(inbound, heads, None, tx, stop, DEFAULT_IDLE_STREAM_TIMEOUT)
                .await;
            state
        });

        let mut published = Vec::new();
        for v in 1..=500u64 {
            hub.publish(Published::new(
                "edge".into(),
                v,
                hash(v),
                0,
                Bytes::from(vec![0u8; 64 * 1024]),
            ));
            published.push(Arc::downgrade(&hub.head("edge").unwrap()));
            tokio::task::yield_now().await;
        }
        // Wait until the stream task has taken the last head as pending:
        // then nothing holds the version before it any more.
        tokio::time::timeout(STEP, async {
            while published[498].strong_count() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the stream never caught up with the head");
        let alive = published.iter().filter(|w| w.strong_count() > 0).count();
        assert!(
            alive <= 2,
            "{alive} versions still held (the head and one pending at most)"
        );
        assert_eq!(responses.len(), 1, "one response waits in the channel");

        shutdown.cancel();
        let state = task.await.unwrap();
        assert_eq!(state.pending.as_ref().map(|p| p.version), Some(500));
        assert_eq!(
            state.known_version, 1,
            "only the first version was ever sent"
        );
    }

    #[test]
    fn latest_wins_while_the_agent_is_slow() {
        let agents = Arc::new(AgentRegistry::default());
        let node = NodeInfo {
            id: "a".into(),
            group: "edge".into(),
            labels: BTreeMap::new(),
            agent_build: String::new(),
        };
        let key = agents.connect(&node, "", None);
        let mut state = WatchState::new(agents, key, node, false, Metrics::new().stream("edge"));
        state.nonce_prefix = "x".into();
        let p = |v: u64| {
            Some(Arc::new(Published::new(
                "edge".into(),
                v,
                hash(v),
                0,
                Bytes::new(),
            )))
        };
        state.offer(p(1));
        let next = state.pending.take().unwrap();
        let sent = state.response(&next, None);
        assert_eq!((sent.version, sent.nonce.as_str()), (1, "x-1"));
        for v in 2..=10 {
            state.offer(p(v));
        }
        assert_eq!(state.pending.as_ref().unwrap().version, 10);
        state.offer(p(1));
        assert_eq!(state.pending.as_ref().unwrap().version, 10);
        let next = state.pending.take().unwrap();
        let sent = state.response(&next, None);
        assert_eq!((sent.version, sent.nonce.as_str()), (10, "x-2"));
        state.offer(p(10));
        assert!(
            state.pending.is_none(),
            "an already sent version is not resent"
        );
    }

    #[test]
    fn responses_are_framed_without_copying_large_bodies() {
        use prost::Message as _;
        for (size, delta) in [(10usize, false), (5000, false), (100, true), (70_000, true)] {
            let shared = Bytes::from(vec![7u8; size]);
            let body = if delta {
                pb::watch_response::Body::Delta(shared.clone())
            } else {
                pb::watch_response::Body::Snapshot(shared.clone())
            };
            let response = pb::WatchResponse {
                group: "edge".into(),
                version: 9,
                hash: hash(9),
                nonce: "n-1".into(),
                body: Some(body),
                base_version: u64::from(delta) * 8,
                base_hash: if delta { hash(8) } else { String::new() },
                created_at_unix_ms: 1234,
            };
            let (head, body) = encode_response(response.clone()).unwrap();
            let mut wire = head.to_vec();
            if let Some(b) = &body {
                assert_eq!(b.as_ptr(), shared.as_ptr(), "the shared bytes themselves");
                wire.extend_from_slice(b);
            } else {
                assert!(size < COPY_BODY_BELOW);
            }
            assert_eq!(wire[0], 0, "not compressed");
            let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
            assert_eq!(len, wire.len() - 5);
            assert_eq!(pb::WatchResponse::decode(&wire[5..]).unwrap(), response);
        }
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 12_345, u64::MAX] {
            let mut s = String::from("x-");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x-{n}"));
        }
    }

    #[test]
    fn long_nack_reasons_are_cut() {
        assert_eq!(nack_reason("  "), "(no reason given)");
        let long = "é".repeat(MAX_NACK_REASON_LEN);
        let cut = nack_reason(&long);
        assert!(cut.len() <= MAX_NACK_REASON_LEN + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
