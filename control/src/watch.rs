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

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use vane_proto as pb;

use crate::agents::{AgentRegistry, NodeInfo, StreamKey};
use crate::hub::{Head, Hub, Published};

/// How long a new stream may take to send its first request.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest node id, label key or value, and agent build accepted.
pub const MAX_NODE_FIELD_LEN: usize = 256;
/// Most labels a node may carry.
pub const MAX_LABELS: usize = 64;
/// NACK reasons longer than this are cut, so an agent cannot make the
/// registry hold arbitrary amounts of text.
pub const MAX_NACK_REASON_LEN: usize = 4096;

/// The response stream type of `Watch`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// The `ConfigDiscovery` gRPC service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    hub: Arc<Hub>,
    agents: Arc<AgentRegistry>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
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
        }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> pb::config_discovery_server::ConfigDiscoveryServer<Self> {
        pb::config_discovery_server::ConfigDiscoveryServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::config_discovery_server::ConfigDiscovery for DiscoveryService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
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
        let key = self.agents.connect(&node, &peer, running);

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

        let (tx, rx) = mpsc::channel(1);
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        let mut stream = WatchState {
            agents: Arc::clone(&self.agents),
            nonce_prefix: format!("{:x}", key.generation()),
            key,
            node,
            next_nonce: 0,
            last_nonce: String::new(),
            sent: None,
            known_version: 0,
            pending: None,
        };
        if runs_head {
            stream.known_version = head.as_ref().map_or(0, |h| h.version);
        } else {
            stream.pending = head;
        }
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(
            async move {
                let end = stream.run(inbound, heads, tx, shutdown).await;
                if let Some(status) = end {
                    // The agent may be gone already; nothing to tell then.
                    let _ = end_tx.send(status);
                }
            }
            .instrument(span),
        );

        // Responses, then the final status if the task set one.
        let responses = ReceiverStream::new(rx).map(Ok).chain(
            futures::stream::once(end_rx)
                .filter_map(|end| futures::future::ready(end.ok().map(Err))),
        );
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Checks the node of a stream's first request. The error names the field.
fn check_first_request(first: &pb::WatchRequest) -> Result<NodeInfo, String> {
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

/// One stream's protocol state.
struct WatchState {
    agents: Arc<AgentRegistry>,
    key: StreamKey,
    node: NodeInfo,
    nonce_prefix: String,
    next_nonce: u64,
    /// Nonce of the last response sent ("" before the first).
    last_nonce: String,
    /// (version, hash) of the last response sent.
    sent: Option<(u64, String)>,
    /// Highest version sent or known to run on the agent: only newer heads
    /// are sent.
    known_version: u64,
    /// The version waiting for room in the channel.
    pending: Option<Arc<Published>>,
}

impl WatchState {
    /// Drives the stream until the agent leaves or the server shuts down.
    /// Returns the status to end the stream with, if any.
    async fn run(
        &mut self,
        mut inbound: Streaming<pb::WatchRequest>,
        mut heads: watch::Receiver<Head>,
        tx: mpsc::Sender<pb::WatchResponse>,
        shutdown: CancellationToken,
    ) -> Option<Status> {
        let end = loop {
            tokio::select! {
                // Shutdown first, so a busy stream cannot delay it.
                biased;
                () = shutdown.cancelled() => {
                    break Some(Status::unavailable("the server is shutting down"));
                }
                permit = tx.reserve(), if self.pending.is_some() => match permit {
                    Ok(permit) => {
                        if let Some(published) = self.pending.take() {
                            permit.send(self.response(&published));
                        }
                    }
                    // The response stream was dropped: the agent is gone.
                    Err(_) => break None,
                },
                changed = heads.changed() => match changed {
                    Ok(()) => {
                        let head = heads.borrow_and_update().clone();
                        self.offer(head);
                    }
                    // The hub is gone, which only happens at shutdown.
                    Err(_) => break Some(Status::unavailable("the server is shutting down")),
                },
                request = inbound.message() => match request {
                    Ok(Some(request)) => {
                        if let Err(status) = self.on_request(request) {
                            break Some(status);
                        }
                    }
                    Ok(None) => break None,
                    Err(status) => {
                        tracing::debug!(%status, "agent stream failed");
                        break None;
                    }
                },
                () = tx.closed() => break None,
            }
        };
        self.agents.disconnect(&self.key);
        tracing::info!(
            reason = end.as_ref().map_or("agent left", |s| s.message()),
            "agent disconnected"
        );
        end
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

    fn response(&mut self, published: &Published) -> pb::WatchResponse {
        self.next_nonce += 1;
        let nonce = format!("{}-{}", self.nonce_prefix, self.next_nonce);
        self.last_nonce.clone_from(&nonce);
        self.sent = Some((published.version, published.hash.clone()));
        self.known_version = published.version;
        self.agents.record_sent(&self.key, published.version);
        tracing::debug!(version = published.version, %nonce, "sent");
        pb::WatchResponse {
            group: published.group.clone(),
            version: published.version,
            hash: published.hash.clone(),
            nonce,
            // Shares the hub's buffer: no copy per stream.
            body: Some(pb::watch_response::Body::Snapshot(
                published.snapshot.clone(),
            )),
            created_at_unix_ms: published.created_at_unix_ms,
        }
    }

    /// Handles one request after the first. An error ends the stream.
    fn on_request(&mut self, request: pb::WatchRequest) -> Result<(), Status> {
        self.agents.touch(&self.key);
        if let Some(node) = &request.node
            && (node.id != self.node.id || node.group != self.node.group)
        {
            return Err(Status::invalid_argument(format!(
                "node: must not change within a stream (was id {:?} group {:?})",
                self.node.id, self.node.group
            )));
        }
        if request.response_nonce.is_empty() || request.response_nonce != self.last_nonce {
            tracing::debug!(nonce = %request.response_nonce, "stale request ignored");
            return Ok(());
        }
        let Some((version, hash)) = &self.sent else {
            return Ok(());
        };
        if let Some(error) = &request.error_detail {
            let reason = nack_reason(&error.message);
            tracing::warn!(version, code = error.code, %reason, "agent refused version (NACK)");
            self.agents.record_nack(&self.key, *version, &reason);
        } else if request.version_info == *version {
            if request.hash.is_empty() || request.hash == *hash {
                tracing::debug!(version, "acked");
                self.agents.record_ack(&self.key, *version, hash);
            } else {
                tracing::warn!(
                    version,
                    sent = %hash,
                    acked = %request.hash,
                    "ACK names another hash than the one sent; not recorded"
                );
            }
        } else {
            tracing::debug!(
                version,
                version_info = request.version_info,
                "answer neither acks nor nacks the last response"
            );
        }
        Ok(())
    }
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
            let hub = Arc::new(Hub::new());
            let agents = Arc::new(AgentRegistry::default());
            let shutdown = CancellationToken::new();
            let service = DiscoveryService::new(
                Arc::clone(&hub),
                Arc::clone(&agents),
                shutdown.clone(),
                TaskTracker::new(),
            );
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
            self.hub.publish(Published {
                group: "edge".into(),
                version,
                hash: hash(version),
                created_at_unix_ms: 1000 + version as i64,
                snapshot: Bytes::from(format!("snapshot {version}")),
            });
        }

        async fn connect(&self, first: pb::WatchRequest) -> Agent {
            let mut client = pb::config_discovery_client::ConfigDiscoveryClient::connect(format!(
                "http://{}",
                self.addr
            ))
            .await
            .unwrap();
            let (tx, rx) = mpsc::channel(8);
            tx.send(first).await.unwrap();
            let responses = client
                .watch(ReceiverStream::new(rx))
                .await
                .map(Response::into_inner);
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
        let mut state = WatchState {
            agents,
            key,
            node,
            nonce_prefix: "x".into(),
            next_nonce: 0,
            last_nonce: String::new(),
            sent: None,
            known_version: 0,
            pending: None,
        };
        let p = |v: u64| {
            Some(Arc::new(Published {
                group: "edge".into(),
                version: v,
                hash: hash(v),
                created_at_unix_ms: 0,
                snapshot: Bytes::new(),
            }))
        };
        state.offer(p(1));
        let next = state.pending.take().unwrap();
        let sent = state.response(&next);
        assert_eq!((sent.version, sent.nonce.as_str()), (1, "x-1"));
        for v in 2..=10 {
            state.offer(p(v));
        }
        assert_eq!(state.pending.as_ref().unwrap().version, 10);
        state.offer(p(1));
        assert_eq!(state.pending.as_ref().unwrap().version, 10);
        let next = state.pending.take().unwrap();
        let sent = state.response(&next);
        assert_eq!((sent.version, sent.nonce.as_str()), (10, "x-2"));
        state.offer(p(10));
        assert!(
            state.pending.is_none(),
            "an already sent version is not resent"
        );
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
