//! Tests of the watch service over real gRPC streams on loopback, and of
//! its pieces (framing, NACK reasons, the stream state).

#![cfg(test)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Response;
use tonic::transport::server::TcpIncoming;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Status, Streaming};
use vane_proto as pb;

use super::*;
use crate::agents::AgentState;
use crate::agents::{AgentRegistry, NodeInfo};
use crate::auth::Auth;
use crate::hub::{Hub, Published};
use crate::metrics::Metrics;
use crate::reach::StoreReach;
use crate::watch::admission::nack_reason;
use crate::watch::body::{COPY_BODY_BELOW, encode_response};
use crate::watch::state::{Answer, WatchState, push_decimal};

const STEP: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

struct Harness {
    hub: Arc<Hub>,
    agents: Arc<AgentRegistry>,
    shutdown: CancellationToken,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    /// What the service hears of the store's reachability.
    reach: tokio::sync::watch::Sender<StoreReach>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(Auth::open()).await
    }

    async fn start_with(auth: Auth) -> Self {
        let hub = Arc::new(Hub::new());
        let agents = Arc::new(AgentRegistry::default());
        let shutdown = CancellationToken::new();
        let (reach, reach_rx) = tokio::sync::watch::channel(StoreReach::Reachable);
        let service = DiscoveryService::new(
            Arc::clone(&hub),
            Arc::clone(&agents),
            shutdown.clone(),
            TaskTracker::new(),
        )
        .with_auth(auth, None)
        .with_store_reach(reach_rx);
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
            reach,
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

    /// A short look for a response that must not come. On its own it
    /// proves little (a slow server may send it later), so every caller
    /// then publishes a version and checks it is the next response: a
    /// stream is ordered, so anything sent wrongly before arrives first.
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
async fn agents_that_accept_notices_hear_whether_the_store_is_reachable() {
    let h = Harness::start().await;
    h.publish(1);
    let notices = |id: &str, version: u64| pb::WatchRequest {
        accept_store_notices: true,
        ..first(
            id,
            version,
            &if version == 0 {
                String::new()
            } else {
                hash(version)
            },
        )
    };
    let mut current = h.connect(notices("current", 1)).await;
    // An agent built before notices: never sent one.
    let mut old = h.connect(first("old", 1, &hash(1))).await;
    current.nothing_for_a_while().await;

    let since = tokio::time::Instant::now()
        .checked_sub(Duration::from_secs(3))
        .unwrap();
    h.reach.send_replace(StoreReach::Unreachable { since });
    let notice = current.next().await;
    assert!(notice.store_unreachable, "{notice:?}");
    assert!(notice.store_unreachable_ms >= 3000, "{notice:?}");
    assert_eq!(
        (notice.group.as_str(), notice.version, notice.nonce.as_str()),
        ("edge", 0, ""),
        "a notice names no version and needs no answer"
    );
    assert!(notice.body.is_none());

    // A version sent meanwhile says it too, to every agent.
    h.publish(2);
    let r2 = current.next().await;
    assert_eq!(r2.version, 2);
    assert!(r2.store_unreachable && r2.store_unreachable_ms >= 3000);
    let o2 = old.next().await;
    assert_eq!(o2.version, 2);
    assert!(o2.store_unreachable);

    // A new stream hears it at once: in a notice when it runs the head, on
    // the head itself (and nothing more) when it is behind.
    let mut late = h.connect(notices("late", 2)).await;
    assert!(late.next().await.store_unreachable);
    let mut behind = h.connect(notices("behind", 0)).await;
    let head = behind.next().await;
    assert_eq!(head.version, 2);
    assert!(head.store_unreachable);
    behind.nothing_for_a_while().await;

    // Reachable again: every agent that accepts notices hears it.
    h.reach.send_replace(StoreReach::Reachable);
    for agent in [&mut current, &mut late, &mut behind] {
        let back = agent.next().await;
        assert!(!back.store_unreachable && back.body.is_none(), "{back:?}");
        assert_eq!(back.store_unreachable_ms, 0);
    }
    // A notice is no response to answer: the ACK of version 2 still counts.
    current.ack(&r2).await;
    h.wait_for("current", |a| a.acked_version == 2).await;
    // The old agent got no notice: its next message is the next version.
    h.publish(3);
    let o3 = old.next().await;
    assert_eq!(o3.version, 3);
    assert!(!o3.store_unreachable);
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
    h.publish(2);
    assert_eq!(a.next().await.version, 2, "a's stream went on");
    assert_eq!(b.next().await.version, 2, "b's stream went on");

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
    h.publish(3);
    assert_eq!(a.next().await.version, 3);

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
    assert_eq!(r6.version, 6, "nothing came before the next push");
    assert!(!is_delta(&r6));

    // Reconnecting while running the head: the next push is a delta from it.
    let mut back = h.connect(delta_first("back", 6, &r6.hash)).await;
    back.nothing_for_a_while().await;
    h.publish_real(6);
    let r7 = back.next().await;
    assert_eq!(r7.version, 7, "nothing came before the next push");
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
        client: "vane-agent".to_owned(),
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
        client: "vane-agent".to_owned(),
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
            store_unreachable: delta,
            store_unreachable_ms: u64::from(delta) * 4321,
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

/// The data plane's health rides on any request: it is recorded from a
/// heartbeat-shaped request without that request being taken for an ACK
/// of what was sent; a NACK's code and every stream of the node are
/// recorded too, and a new stream starts with no health until it says one.
#[test]
fn health_nack_codes_and_sessions_are_recorded_on_the_agent() {
    let agents = Arc::new(AgentRegistry::default());
    let node = NodeInfo {
        client: "vane-agent".to_owned(),
        id: "a".into(),
        group: "edge".into(),
        labels: BTreeMap::new(),
        agent_build: String::new(),
    };
    let record = |agents: &AgentRegistry| agents.list(Some("edge")).remove(0);
    let key = agents.connect(&node, "", Some((1, &hash(1))));
    let mut state = WatchState::new(
        Arc::clone(&agents),
        key,
        node.clone(),
        false,
        Metrics::new().stream("edge"),
    );
    assert_eq!(record(&agents).sessions, 1);
    let v2 = Published::new("edge".into(), 2, hash(2), 0, Bytes::new());
    let sent = state.response(&v2, None);

    // Degraded, in a heartbeat's shape, naming what runs (version 1): the
    // health is recorded and version 2 still waits for its answer.
    let health = |degraded: bool, reason: &str, version: u64| pb::Health {
        degraded,
        reason: reason.into(),
        version,
    };
    let beat = pb::WatchRequest {
        version_info: 1,
        hash: hash(1),
        health: Some(health(true, "  5 of 20 responses failed ", 1)),
        ..Default::default()
    };
    assert_eq!(state.on_request(beat.clone()).unwrap(), Answer::Nothing);
    let r = record(&agents);
    assert!(r.health_degraded);
    assert_eq!(
        (r.health_reason.as_str(), r.health_version),
        ("5 of 20 responses failed", 1)
    );
    assert_eq!((r.acked_version, r.sent_version), (1, 2));
    assert_eq!(r.state(2), AgentState::Stale, "not taken for an ACK");

    // The NACK of version 2 for invalid content (code 3), still degraded.
    let nack = pb::WatchRequest {
        response_nonce: sent.nonce.clone(),
        error_detail: Some(pb::ErrorDetail {
            code: 3,
            message: "clusters[0]: unknown field".into(),
        }),
        ..beat
    };
    state.on_request(nack).unwrap();
    let r = record(&agents);
    assert_eq!((r.last_nacked_version, r.nack_code), (2, 3));
    assert!(r.health_degraded);

    // Healthy again, on a plain heartbeat.
    let healthy = pb::WatchRequest {
        health: Some(health(false, "ignored when healthy", 1)),
        ..Default::default()
    };
    state.on_request(healthy).unwrap();
    let r = record(&agents);
    assert!(!r.health_degraded);
    assert_eq!((r.health_reason.as_str(), r.health_version), ("", 1));

    // The node's next stream: counted, and its health is unknown until its
    // own requests say it.
    let key = agents.connect(&node, "", Some((1, &hash(1))));
    let r = record(&agents);
    assert_eq!(r.sessions, 2);
    assert_eq!((r.health_degraded, r.health_version), (false, 0));
    let mut state = WatchState::new(
        Arc::clone(&agents),
        key,
        node,
        false,
        Metrics::new().stream("edge"),
    );
    assert!(state.record_health(Some(&health(true, "check failed", 1))));
    assert!(
        !state.record_health(Some(&health(true, "check failed", 1))),
        "the same health again is no change"
    );
    assert!(record(&agents).health_degraded);
    assert!(state.record_health(None), "no longer reported");
    assert!(!record(&agents).health_degraded);
}
