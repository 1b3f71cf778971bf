//! Vane's ADS server spoken to by a hand-driven xDS client over real gRPC
//! (what Envoy and gRPC send, one message at a time): the node's identity
//! and its refusals, per-type ACK and NACK as `vanectl status` shows them,
//! a refused version never sent again, and a delta stream that resumes
//! from what the client has. Stock Envoy and gRPC clients are in
//! `xds_envoy.rs` and `xds_grpc.rs`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vane_testkit::{ControlServer, agent_status, fixtures};

use crate::hostile_grpc::{channel, with_token};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The names a real Envoy asks for by name with the example snapshot.
fn names_of(type_url: &str) -> Vec<String> {
    let names: &[&str] = match type_url {
        EDS => &["api", "postgres", "web"],
        RDS => &["main"],
        _ => &[],
    };
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn node(id: &str, group: Option<&str>) -> Node {
    Node {
        id: id.into(),
        user_agent_name: "envoy".into(),
        metadata: Some(Struct {
            fields: group
                .map(|g| {
                    (
                        "vane.group".to_owned(),
                        Value {
                            kind: Some(Kind::StringValue(g.into())),
                        },
                    )
                })
                .into_iter()
                .collect(),
        }),
        ..Node::default()
    }
}

fn request(type_url: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names_of(type_url),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| RpcStatus {
            code: 13,
            message: m.into(),
            details: vec![],
        }),
        ..DiscoveryRequest::default()
    }
}

/// One state-of-the-world stream.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(
        url: &str,
        token: Option<&str>,
        first: DiscoveryRequest,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let mut client = AggregatedDiscoveryServiceClient::new(channel(url).await);
        let rx = client
            .stream_aggregated_resources(with_token(ReceiverStream::new(rx), token))
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    async fn next(&mut self, within: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(other) => panic!("the stream ended: {other:?}"),
            Err(_) => None,
        }
    }

    async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }

    /// Opens a stream as Envoy does: clusters, endpoints, listeners, routes.
    async fn like_envoy(url: &str, id: &str) -> Self {
        let mut first = request(CDS, "", None);
        first.node = Some(node(id, Some("edge")));
        let s = Self::open(url, None, first).await.unwrap();
        for t in [EDS, LDS, RDS] {
            s.send(request(t, "", None)).await;
        }
        s
    }

    /// Answers every response until none comes for `quiet`: ACKs, or a
    /// NACK of the first response of type `refuse`. Returns the (type,
    /// version) of each response in order.
    async fn drain(&mut self, quiet: Duration, refuse: Option<&str>) -> Vec<(String, String)> {
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut refused = false;
        while let Some(r) = self.next(quiet).await {
            let nack = refuse == Some(r.type_url.as_str()) && !refused;
            refused |= nack;
            let error = nack.then_some("cluster api: unsupported thing");
            self.send(request(&r.type_url, &r.nonce, error)).await;
            seen.push((r.type_url.clone(), r.version_info.clone()));
        }
        seen
    }
}

/// The position of the first response of `type_url` in `seen`.
fn first_of(seen: &[(String, String)], type_url: &str) -> usize {
    seen.iter()
        .position(|(t, _)| t == type_url)
        .unwrap_or_else(|| panic!("no {type_url} in {seen:?}"))
}

fn push(server: &ControlServer, group: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let spec = fixtures::example_with_value(key, serde_json::json!(true));
    let path = fixtures::write_json(dir.path(), "s.json", &spec);
    server
        .ctl(&["push", group, "-f", path.to_str().unwrap()])
        .ok();
}

/// The node's record as `vanectl status -o json` shows it, once `done`.
async fn status_when(
    server: &ControlServer,
    group: &str,
    node: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = agent_status(&server.url(), group, node);
        if let Some(s) = &status
            && done(s)
        {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{node}'s status never got there: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_recorded_per_type_and_the_refused_version_is_never_sent_again() {
    let server = ControlServer::start();
    push(&server, "edge", "v1");
    let mut s = Sotw::like_envoy(&server.url(), "envoy-1").await;
    let seen = s.drain(Duration::from_secs(2), None).await;
    assert!(seen.iter().all(|(_, v)| v == "1"), "{seen:?}");
    assert!(
        first_of(&seen, CDS) < first_of(&seen, LDS),
        "clusters before listeners: {seen:?}"
    );
    let synced = status_when(&server, "edge", "envoy-1", |a| a["state"] == "SYNCED").await;
    assert_eq!(synced["acked_version"], 1);
    assert_eq!(synced["client"], "envoy");

    push(&server, "edge", "v2");
    let seen = s.drain(Duration::from_secs(2), Some(CDS)).await;
    assert!(seen.iter().all(|(_, v)| v == "2"), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|(t, _)| t == CDS).count(),
        1,
        "a refused version was sent again: {seen:?}"
    );
    let nacked = status_when(&server, "edge", "envoy-1", |a| a["state"] == "NACKED").await;
    assert_eq!(nacked["nack_reason"], "CDS cluster api: unsupported thing");
    assert_eq!(nacked["last_nacked_version"], 2);
    // No resend loop: nothing more for 3 s.
    assert!(
        s.next(Duration::from_secs(3)).await.is_none(),
        "a refused version was sent again"
    );
    // The next version is sent in order, and acked: SYNCED again.
    push(&server, "edge", "v3");
    let seen = s.drain(Duration::from_secs(2), None).await;
    assert!(seen.iter().all(|(_, v)| v == "3"), "{seen:?}");
    let order: Vec<usize> = [CDS, EDS, LDS, RDS]
        .iter()
        .map(|t| first_of(&seen, t))
        .collect();
    assert!(order.is_sorted(), "make before break: {seen:?}");
    let synced = status_when(&server, "edge", "envoy-1", |a| a["state"] == "SYNCED").await;
    assert_eq!(synced["acked_version"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_nodes_hear_why_and_never_appear_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let digest = |t: &str| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(t.as_bytes()))
    };
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - identity: envoy-edge\n    sha256: {}\n  - identity: ops\n    sha256: {}\n",
            digest("edge-envoy-token"),
            digest("ops-token")
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "bindings:\n  - {identity: envoy-edge, role: agent, groups: [edge]}\n  - {identity: ops, role: admin, groups: ['*']}\n",
    )
    .unwrap();
    let server = ControlServer::start_with(&[
        "--policy",
        policy.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    let url = server.url();
    let first = |id: &str, group: Option<&str>| {
        let mut r = request(CDS, "", None);
        r.node = Some(node(id, group));
        r
    };
    let status = Sotw::open(&url, Some("not-a-token"), first("bad-token", Some("edge")))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = Sotw::open(&url, Some("edge-envoy-token"), first("no-group", None))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("vane.group"), "{status:?}");
    let status = Sotw::open(&url, Some("edge-envoy-token"), first("other", Some("core")))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // The allowed node is served.
    let mut ok = Sotw::open(&url, Some("edge-envoy-token"), first("good", Some("edge")))
        .await
        .unwrap();
    let ops = dir.path().join("ops.token");
    std::fs::write(&ops, "ops-token").unwrap();
    let ops = ops.to_str().unwrap();
    let out = vane_testkit::run_vanectl(
        &[
            "--server",
            &url,
            "--token-file",
            ops,
            "push",
            "edge",
            "-f",
            fixtures::example_path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(ok.next(Duration::from_secs(10)).await.is_some());
    let out = vane_testkit::run_vanectl(
        &[
            "--server",
            &url,
            "--token-file",
            ops,
            "status",
            "edge",
            "-o",
            "json",
        ],
        &[],
    );
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let nodes: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["good"]);
}

/// One delta stream's first request.
fn delta_first(initial: &[(String, String)]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node("envoy-d", Some("edge"))),
        type_url: CDS.into(),
        initial_resource_versions: initial.iter().cloned().collect(),
        ..DeltaDiscoveryRequest::default()
    }
}

async fn open_delta(
    url: &str,
    first: DeltaDiscoveryRequest,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    tonic::Streaming<DeltaDiscoveryResponse>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel(url).await);
    let rx = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_stream_resumes_from_what_the_client_has() {
    let server = ControlServer::start();
    push(&server, "edge", "v1");
    let (tx, mut rx) = open_delta(&server.url(), delta_first(&[])).await;
    let first = rx.message().await.unwrap().unwrap();
    assert_eq!(first.system_version_info, "1");
    let had: Vec<(String, String)> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert_eq!(had.len(), 3);
    tx.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        response_nonce: first.nonce.clone(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    drop((tx, rx));

    // v2 drops the postgres cluster (and the listener using it); only the
    // removal is news to a client that kept v1.
    let dir = tempfile::tempdir().unwrap();
    let mut spec = fixtures::example_spec();
    spec.listeners.retain(|l| l.name != "db");
    spec.clusters.retain(|c| c.name != "postgres");
    let path = fixtures::write_json(dir.path(), "v2.json", &spec);
    server
        .ctl(&["push", "edge", "-f", path.to_str().unwrap()])
        .ok();
    let (_tx, mut rx) = open_delta(&server.url(), delta_first(&had)).await;
    let resumed = rx.message().await.unwrap().unwrap();
    assert_eq!(resumed.system_version_info, "2");
    assert!(
        resumed.resources.is_empty(),
        "unchanged clusters were sent again: {:?}",
        resumed
            .resources
            .iter()
            .map(|r| &r.name)
            .collect::<Vec<_>>()
    );
    assert_eq!(resumed.removed_resources, ["postgres"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_sends_its_candidate_to_its_cohort_of_xds_nodes_only() {
    let server = ControlServer::start();
    push(&server, "edge", "v1");
    let mut nodes = Vec::new();
    for id in ["envoy-a", "envoy-b"] {
        let mut s = Sotw::like_envoy(&server.url(), id).await;
        assert!(!s.drain(Duration::from_secs(2), None).await.is_empty());
        nodes.push(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = fixtures::example_with_value("candidate", serde_json::json!(true));
    let path = fixtures::write_json(dir.path(), "v2.json", &spec);
    server
        .ctl(&[
            "rollout",
            "start",
            "edge",
            "-f",
            path.to_str().unwrap(),
            "--steps",
            "50,100",
            "--bake",
            "60s",
        ])
        .ok();
    // One of the two gets version 2; the other is sent nothing new.
    let mut got = Vec::new();
    for s in &mut nodes {
        let seen = s.drain(Duration::from_secs(3), None).await;
        assert!(seen.iter().all(|(_, v)| v == "2"), "{seen:?}");
        got.push(!seen.is_empty());
    }
    assert_eq!(got.iter().filter(|g| **g).count(), 1, "{got:?}");
    let candidate = if got[0] { "envoy-a" } else { "envoy-b" };
    let status = status_when(&server, "edge", candidate, |a| a["acked_version"] == 2).await;
    assert_eq!(status["role"], "candidate");
    // Aborted: the candidate's node is sent the restored version (3).
    server.ctl(&["rollout", "abort", "edge", "-m", "test"]).ok();
    let idx = usize::from(!got[0]);
    let seen = nodes[idx].drain(Duration::from_secs(3), None).await;
    assert!(
        seen.iter().any(|(_, v)| v == "3"),
        "the restored version did not arrive: {seen:?}"
    );
    status_when(&server, "edge", candidate, |a| a["acked_version"] == 3).await;
}
