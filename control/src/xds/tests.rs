//! The xDS protocols without a network: subscriptions, ACK/NACK by nonce,
//! what is (not) resent, deltas against what the client has, the node's
//! record, and the stream's loop under a paused clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use vane_xds::{Resource, ResourceType, Resources};

use super::delta::Delta;
use super::sotw::Sotw;
use super::stream::{Protocol, Target};
use super::tracker::{Present, State, Tracker};
use crate::agents::{AgentRegistry, AgentState, NodeInfo};
use crate::hub::Published;
use crate::metrics::Metrics;

fn resource(ty: ResourceType, name: &str, content: &str) -> Arc<Resource> {
    Arc::new(Resource {
        name: name.into(),
        body: Any {
            type_url: ty.type_url().into(),
            value: format!("{name}={content}").into_bytes(),
        },
        hash: format!("{name}-{content}"),
    })
}

/// A version with clusters `clusters` (name, content) and one listener,
/// route table and API listener "web".
fn target(version: u64, clusters: &[(&str, &str)]) -> Target {
    let mut r = Resources::default();
    for (name, content) in clusters {
        r.clusters.insert(
            (*name).into(),
            resource(ResourceType::Cluster, name, content),
        );
        r.endpoints.insert(
            (*name).into(),
            resource(ResourceType::Endpoint, name, content),
        );
    }
    r.listeners.insert(
        "web".into(),
        resource(ResourceType::Listener, "web", "socket"),
    );
    r.api_listeners
        .insert("web".into(), resource(ResourceType::Listener, "web", "api"));
    r.routes
        .insert("main".into(), resource(ResourceType::Route, "main", "v"));
    Target {
        published: Arc::new(Published::new(
            "edge".into(),
            version,
            format!("hash{version}"),
            0,
            Bytes::new(),
        )),
        resources: Arc::new(r),
    }
}

struct Fixture {
    agents: Arc<AgentRegistry>,
    tracker: Tracker,
}

fn fixture() -> Fixture {
    let agents = Arc::new(AgentRegistry::new(Duration::from_secs(60)));
    let node = NodeInfo {
        id: "envoy-1".into(),
        group: "edge".into(),
        labels: BTreeMap::new(),
        agent_build: "envoy/1.40.0".into(),
        client: "envoy".into(),
    };
    let key = agents.connect(&node, "127.0.0.1:1", None);
    let tracker = Tracker::new(
        Arc::clone(&agents),
        key,
        Metrics::new().stream("edge"),
        false,
    );
    Fixture { agents, tracker }
}

impl Fixture {
    fn record(&self) -> crate::agents::AgentRecord {
        self.agents.list(Some("edge")).remove(0)
    }
    /// Serves `t`, counting none of its types as needed beyond what the
    /// client subscribes to (the protocol tests' view).
    fn retarget(&mut self, t: &Target) {
        self.tracker.retarget(
            t.version(),
            &t.published.hash,
            t.published.published_at,
            Present::default(),
        );
    }
}

fn sotw(ty: ResourceType, names: &[&str], nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| RpcStatus {
            code: 13,
            message: m.into(),
            details: vec![],
        }),
        ..DiscoveryRequest::default()
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
        .collect()
}

#[test]
fn sotw_answers_each_type_in_order_and_records_synced_once_all_acked() {
    let mut f = fixture();
    let mut p = Sotw::default();
    let v1 = target(1, &[("a", "1"), ("b", "1")]);
    f.retarget(&v1);
    p.on_request(sotw(ResourceType::Listener, &[], "", None), &mut f.tracker)
        .unwrap();
    p.on_request(sotw(ResourceType::Cluster, &[], "", None), &mut f.tracker)
        .unwrap();
    p.on_target();
    // Clusters first (make before break), then listeners.
    let cds = p.next_response(&v1, &mut f.tracker).unwrap();
    assert_eq!(cds.type_url, ResourceType::Cluster.type_url());
    assert_eq!(cds.version_info, "1");
    assert_eq!(names(&cds), ["a=1", "b=1"]);
    let lds = p.next_response(&v1, &mut f.tracker).unwrap();
    assert_eq!(
        names(&lds),
        ["web=socket"],
        "wildcard LDS: no API listeners"
    );
    assert!(p.next_response(&v1, &mut f.tracker).is_none());
    assert_eq!(f.record().sent_version, 1);

    p.on_request(
        sotw(ResourceType::Cluster, &[], &cds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert_eq!(f.record().acked_version, 0, "LDS has not acked yet");
    p.on_request(
        sotw(ResourceType::Listener, &[], &lds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    let r = f.record();
    assert_eq!((r.acked_version, r.acked_hash.as_str()), (1, "hash1"));
    assert_eq!(r.state(1), AgentState::Synced);
    assert!(!p.has_due(), "an ACK asks for nothing");
}

#[test]
fn sotw_never_resends_a_refused_version_and_records_the_reason() {
    let mut f = fixture();
    let mut p = Sotw::default();
    let v1 = target(1, &[("a", "1")]);
    f.retarget(&v1);
    p.on_request(sotw(ResourceType::Listener, &[], "", None), &mut f.tracker)
        .unwrap();
    let lds = p.next_response(&v1, &mut f.tracker).unwrap();
    p.on_request(
        sotw(ResourceType::Listener, &[], &lds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    let v2 = target(2, &[("a", "2")]);
    f.retarget(&v2);
    p.on_target();
    let lds2 = p.next_response(&v2, &mut f.tracker).unwrap();
    p.on_request(
        sotw(
            ResourceType::Listener,
            &[],
            &lds2.nonce,
            Some("cannot bind 127.0.0.1:80: Address already in use"),
        ),
        &mut f.tracker,
    )
    .unwrap();
    assert!(!p.has_due(), "a NACK is not answered with the same version");
    assert!(p.next_response(&v2, &mut f.tracker).is_none());
    let r = f.record();
    assert_eq!(r.state(2), AgentState::Nacked);
    assert_eq!(r.acked_version, 1);
    assert_eq!(
        r.nack_reason,
        "LDS cannot bind 127.0.0.1:80: Address already in use"
    );
    assert_eq!(r.nack_code, 13);
    assert!(matches!(
        f.tracker.state(ResourceType::Listener),
        State::Nacked {
            version: 2,
            acked: 1,
            ..
        }
    ));
    // A newer version goes out, and its ACK makes the node SYNCED again.
    let v3 = target(3, &[("a", "3")]);
    f.retarget(&v3);
    p.on_target();
    let lds3 = p.next_response(&v3, &mut f.tracker).unwrap();
    assert_eq!(lds3.version_info, "3");
    p.on_request(
        sotw(ResourceType::Listener, &[], &lds3.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert_eq!(f.record().state(3), AgentState::Synced);
}

#[test]
fn sotw_ignores_stale_nonces_and_answers_new_names() {
    let mut f = fixture();
    let mut p = Sotw::default();
    let v1 = target(1, &[("a", "1"), ("b", "1")]);
    f.retarget(&v1);
    p.on_request(
        sotw(ResourceType::Endpoint, &["a"], "", None),
        &mut f.tracker,
    )
    .unwrap();
    let first = p.next_response(&v1, &mut f.tracker).unwrap();
    assert_eq!(names(&first), ["a=1"]);
    p.on_request(
        sotw(ResourceType::Endpoint, &["a"], &first.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    // New names at the same version: answered.
    p.on_request(
        sotw(
            ResourceType::Endpoint,
            &["a", "b", "gone"],
            &first.nonce,
            None,
        ),
        &mut f.tracker,
    )
    .unwrap();
    let second = p.next_response(&v1, &mut f.tracker).unwrap();
    assert_eq!(
        names(&second),
        ["a=1", "b=1"],
        "a name the version lacks is left out"
    );
    // An answer to the first response now is stale: nothing changes.
    p.on_request(
        sotw(ResourceType::Endpoint, &["a"], &first.nonce, Some("old")),
        &mut f.tracker,
    )
    .unwrap();
    assert!(!p.has_due());
    assert_eq!(f.record().last_nacked_version, 0);
}

#[test]
fn sotw_by_name_listeners_are_api_listeners_and_missing_names_get_an_empty_answer() {
    let mut f = fixture();
    let mut p = Sotw::default();
    let v1 = target(1, &[]);
    f.retarget(&v1);
    p.on_request(
        sotw(ResourceType::Listener, &["web"], "", None),
        &mut f.tracker,
    )
    .unwrap();
    let lds = p.next_response(&v1, &mut f.tracker).unwrap();
    assert_eq!(names(&lds), ["web=api"]);
    p.on_request(
        sotw(ResourceType::Route, &["nope"], "", None),
        &mut f.tracker,
    )
    .unwrap();
    let rds = p.next_response(&v1, &mut f.tracker).unwrap();
    assert!(rds.resources.is_empty());
    assert_eq!(rds.version_info, "1");
    // A type Vane does not serve is answered, empty.
    let mut other = sotw(ResourceType::Route, &[], "", None);
    other.type_url = "type.googleapis.com/envoy.service.runtime.v3.Runtime".into();
    p.on_request(other, &mut f.tracker).unwrap();
    let runtime = p.next_response(&v1, &mut f.tracker).unwrap();
    assert!(runtime.resources.is_empty());
    let mut empty = sotw(ResourceType::Route, &[], "", None);
    empty.type_url.clear();
    assert!(p.on_request(empty, &mut f.tracker).is_err());
}

fn delta(
    ty: ResourceType,
    subscribe: &[&str],
    nonce: &str,
    error: Option<&str>,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| RpcStatus {
            code: 13,
            message: m.into(),
            details: vec![],
        }),
        ..DeltaDiscoveryRequest::default()
    }
}

#[test]
fn delta_sends_only_what_changed_and_removes_what_is_gone() {
    let mut f = fixture();
    let mut p = Delta::default();
    let v1 = target(1, &[("a", "1"), ("b", "1")]);
    f.retarget(&v1);
    // Reconnecting: the client has a@1 and a cluster v1 lacks.
    let mut first = delta(ResourceType::Cluster, &[], "", None);
    first.initial_resource_versions = [
        ("a".to_owned(), "a-1".to_owned()),
        ("old".to_owned(), "x".to_owned()),
    ]
    .into_iter()
    .collect();
    p.on_request(first, &mut f.tracker).unwrap();
    let r1 = p.next_response(&v1, &mut f.tracker).unwrap();
    let sent: Vec<_> = r1
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.version.as_str()))
        .collect();
    assert_eq!(sent, [("b", "b-1")]);
    assert_eq!(r1.removed_resources, ["old"]);
    assert_eq!(r1.system_version_info, "1");
    p.on_request(
        delta(ResourceType::Cluster, &[], &r1.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert_eq!(f.record().state(1), AgentState::Synced);

    // v2 changes a, drops b.
    let v2 = target(2, &[("a", "2")]);
    f.retarget(&v2);
    p.on_target();
    let r2 = p.next_response(&v2, &mut f.tracker).unwrap();
    assert_eq!(r2.resources.len(), 1);
    assert_eq!(r2.resources[0].version, "a-2");
    assert_eq!(r2.removed_resources, ["b"]);
    // Refused: the client keeps v1's a and b; nothing is resent.
    p.on_request(
        delta(ResourceType::Cluster, &[], &r2.nonce, Some("bad")),
        &mut f.tracker,
    )
    .unwrap();
    assert!(p.next_response(&v2, &mut f.tracker).is_none());
    assert_eq!(f.record().state(2), AgentState::Nacked);
    // v3 equals v2: the diff is against what the client kept (v1).
    let v3 = target(3, &[("a", "2")]);
    f.retarget(&v3);
    p.on_target();
    let r3 = p.next_response(&v3, &mut f.tracker).unwrap();
    assert_eq!(r3.resources[0].version, "a-2");
    assert_eq!(r3.removed_resources, ["b"]);
    p.on_request(
        delta(ResourceType::Cluster, &[], &r3.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert_eq!(f.record().state(3), AgentState::Synced);
    // v4 changes nothing of clusters: settled without a response.
    let mut v4 = target(4, &[("a", "2")]);
    Arc::get_mut(&mut v4.resources).unwrap().routes.clear();
    f.retarget(&v4);
    p.on_target();
    assert!(p.next_response(&v4, &mut f.tracker).is_none());
    assert_eq!(f.record().state(4), AgentState::Synced);
}

#[test]
fn delta_answers_a_name_that_does_not_exist_once() {
    let mut f = fixture();
    let mut p = Delta::default();
    let v1 = target(1, &[("a", "1")]);
    f.retarget(&v1);
    p.on_request(
        delta(ResourceType::Endpoint, &["a", "ghost"], "", None),
        &mut f.tracker,
    )
    .unwrap();
    let r = p.next_response(&v1, &mut f.tracker).unwrap();
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.removed_resources, ["ghost"]);
    p.on_request(
        delta(ResourceType::Endpoint, &[], &r.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    p.on_target();
    assert!(
        p.next_response(&v1, &mut f.tracker).is_none(),
        "not repeated"
    );
    // A wildcard LDS with no listeners still gets its first answer.
    let mut p = Delta::default();
    let mut empty = target(1, &[]);
    Arc::get_mut(&mut empty.resources)
        .unwrap()
        .listeners
        .clear();
    p.on_request(delta(ResourceType::Listener, &[], "", None), &mut f.tracker)
        .unwrap();
    let r = p.next_response(&empty, &mut f.tracker).unwrap();
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
}

fn node_with_group() -> Node {
    Node {
        id: "envoy-1".into(),
        user_agent_name: "envoy".into(),
        metadata: Some(Struct {
            fields: [(
                "vane.group".to_owned(),
                Value {
                    kind: Some(Kind::StringValue("edge".into())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Node::default()
    }
}

/// The loop: a version published while the stream is open goes out, in
/// order, and a newer one replaces one the client has not read yet.
#[tokio::test(start_paused = true)]
async fn the_stream_follows_the_head_latest_wins() {
    use futures::StreamExt as _;
    use tokio::sync::mpsc;

    let f = fixture();
    let hub = Arc::new(crate::hub::Hub::new());
    let cohorts = crate::targets::Cohorts::new();
    let (req_tx, req_rx) = mpsc::channel(8);
    let (tx, mut rx) = mpsc::channel(1);
    let key = f.agents.connect(
        &super::node::node_info(Some(&node_with_group())).unwrap(),
        "p",
        None,
    );
    let tracker = Tracker::new(
        Arc::clone(&f.agents),
        key.clone(),
        Metrics::new().stream("edge"),
        false,
    );
    let mut protocol = Sotw::default();
    let mut first = sotw(ResourceType::Cluster, &[], "", None);
    first.node = Some(node_with_group());
    let mut tracker = tracker;
    protocol.on_request(first, &mut tracker).unwrap();
    let stream = super::stream::XdsStream {
        protocol,
        tracker,
        node: super::node::node_info(Some(&node_with_group())).unwrap(),
        agents: Arc::clone(&f.agents),
        key,
        heads: hub.subscribe("edge"),
        cohorts: cohorts.subscribe("edge"),
        target: None,
        untranslatable: 0,
        keys_allowed: true,
        access: None,
        span: tracing::Span::none(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let inbound = tokio_stream::wrappers::ReceiverStream::new(req_rx).map(Ok);
    let task = tokio::spawn(stream.run(inbound, tx, None, shutdown.clone()));
    // Nothing published: nothing sent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(rx.try_recv().is_err());

    let publish = |v: u64| {
        let snapshot = vane_model::Snapshot::default();
        let (bytes, hash) = snapshot.encode_and_hash();
        hub.publish(Published::new(
            "edge".into(),
            v,
            hash.to_hex(),
            0,
            Bytes::from(bytes),
        ));
    };
    publish(1);
    let r1 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r1.version_info, "1");
    // 2 and 3 published before the client reads: it gets 3 (2 was never
    // due on its own once 3 replaced it).
    publish(2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let next = rx.recv().await.unwrap().unwrap();
    let last = match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        Ok(Some(r)) => r.unwrap(),
        _ => next.clone(),
    };
    assert_eq!(last.version_info, "3");
    req_tx
        .send(sotw(ResourceType::Cluster, &[], &last.nonce, None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.agents.list(Some("edge"))[0].acked_version, 3);
    shutdown.cancel();
    let end = task.await.unwrap();
    assert_eq!(end.unwrap().code(), tonic::Code::Unavailable);
    assert!(!f.agents.list(Some("edge"))[0].connected);
}

#[test]
fn sotw_sends_endpoints_again_once_clusters_are_acked() {
    let mut f = fixture();
    let mut p = Sotw::default();
    let v1 = target(1, &[("a", "1")]);
    f.retarget(&v1);
    p.on_request(sotw(ResourceType::Cluster, &[], "", None), &mut f.tracker)
        .unwrap();
    p.on_request(
        sotw(ResourceType::Endpoint, &["a"], "", None),
        &mut f.tracker,
    )
    .unwrap();
    let cds = p.next_response(&v1, &mut f.tracker).unwrap();
    let eds = p.next_response(&v1, &mut f.tracker).unwrap();
    p.on_request(
        sotw(ResourceType::Endpoint, &["a"], &eds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert!(!p.has_due());
    p.on_request(
        sotw(ResourceType::Cluster, &[], &cds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    let again = p.next_response(&v1, &mut f.tracker).unwrap();
    assert_eq!(again.type_url, ResourceType::Endpoint.type_url());
    assert_eq!(names(&again), ["a=1"]);
    // A refused cluster update does not.
    let v2 = target(2, &[("a", "2")]);
    f.retarget(&v2);
    p.on_target();
    let cds2 = p.next_response(&v2, &mut f.tracker).unwrap();
    let eds2 = p.next_response(&v2, &mut f.tracker).unwrap();
    p.on_request(
        sotw(ResourceType::Endpoint, &["a"], &eds2.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    p.on_request(
        sotw(ResourceType::Cluster, &[], &cds2.nonce, Some("no")),
        &mut f.tracker,
    )
    .unwrap();
    assert!(!p.has_due());
}

/// A fixture serving `t` with its real needs: Envoy must have listeners,
/// clusters, and what they refer to.
fn envoy_fixture(t: &Target) -> Fixture {
    let mut f = fixture();
    f.tracker = Tracker::new(
        Arc::clone(&f.agents),
        f.agents_key(),
        Metrics::new().stream("edge"),
        true,
    );
    f.tracker.retarget(
        t.version(),
        &t.published.hash,
        t.published.published_at,
        Present::of(&t.resources),
    );
    f
}

impl Fixture {
    fn agents_key(&self) -> crate::agents::StreamKey {
        let node = NodeInfo {
            id: "envoy-1".into(),
            group: "edge".into(),
            labels: BTreeMap::new(),
            agent_build: "envoy/1.40.0".into(),
            client: "envoy".into(),
        };
        self.agents.connect(&node, "127.0.0.1:1", None)
    }
}

#[test]
fn a_node_is_not_synced_before_the_types_it_needs_and_a_late_nack_undoes_it() {
    let v1 = target(1, &[("a", "1")]);
    let mut f = envoy_fixture(&v1);
    let mut p = Sotw::default();
    // Envoy asks for clusters first; their ACK alone is not SYNCED.
    p.on_request(sotw(ResourceType::Cluster, &[], "", None), &mut f.tracker)
        .unwrap();
    let cds = p.next_response(&v1, &mut f.tracker).unwrap();
    p.on_request(
        sotw(ResourceType::Cluster, &[], &cds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert_eq!(
        f.record().acked_version,
        0,
        "listeners, endpoints, routes still to come"
    );
    let answer = |p: &mut Sotw, f: &mut Fixture, ty, names: &[&str], error| {
        p.on_request(sotw(ty, names, "", None), &mut f.tracker)
            .unwrap();
        while let Some(r) = p.next_response(&v1, &mut f.tracker) {
            let t = ResourceType::from_type_url(&r.type_url).unwrap();
            let e = (t == ty).then_some(error).flatten();
            let n: Vec<&str> = if t == ty { names.to_vec() } else { vec!["a"] };
            p.on_request(sotw(t, &n, &r.nonce, e), &mut f.tracker)
                .unwrap();
        }
    };
    answer(&mut p, &mut f, ResourceType::Endpoint, &["a"], None);
    answer(&mut p, &mut f, ResourceType::Listener, &[], None);
    assert_eq!(f.record().acked_version, 0, "routes still to come");
    answer(&mut p, &mut f, ResourceType::Route, &["main"], None);
    assert_eq!(f.record().state(1), AgentState::Synced);

    // On a gRPC-like client recorded SYNCED with what it had asked for so
    // far, a type asked for later that refuses the version undoes it.
    let mut f = fixture();
    let mut p = Sotw::default();
    f.retarget(&v1);
    p.on_request(
        sotw(ResourceType::Listener, &["web"], "", None),
        &mut f.tracker,
    )
    .unwrap();
    let lds = p.next_response(&v1, &mut f.tracker).unwrap();
    p.on_request(
        sotw(ResourceType::Listener, &["web"], &lds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert_eq!(f.record().state(1), AgentState::Synced);
    p.on_request(
        sotw(ResourceType::Route, &["main"], "", None),
        &mut f.tracker,
    )
    .unwrap();
    let rds = p.next_response(&v1, &mut f.tracker).unwrap();
    p.on_request(
        sotw(
            ResourceType::Route,
            &["main"],
            &rds.nonce,
            Some("bad regex"),
        ),
        &mut f.tracker,
    )
    .unwrap();
    let r = f.record();
    assert_eq!(r.state(1), AgentState::Nacked, "{r:?}");
    assert_eq!(r.acked_version, 0);
}

#[test]
fn delta_a_refused_response_older_than_the_last_is_recorded_and_resent_later() {
    let mut f = fixture();
    let mut p = Delta::default();
    let v1 = target(1, &[("a", "1"), ("b", "1")]);
    f.retarget(&v1);
    p.on_request(delta(ResourceType::Cluster, &[], "", None), &mut f.tracker)
        .unwrap();
    let r1 = p.next_response(&v1, &mut f.tracker).unwrap();
    p.on_request(
        delta(ResourceType::Cluster, &[], &r1.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    // v2 changes b (sent as r2); v3 changes a (r3) before the client answers.
    let v2 = target(2, &[("a", "1"), ("b", "2")]);
    f.retarget(&v2);
    p.on_target();
    let r2 = p.next_response(&v2, &mut f.tracker).unwrap();
    let v3 = target(3, &[("a", "3"), ("b", "2")]);
    f.retarget(&v3);
    p.on_target();
    let r3 = p.next_response(&v3, &mut f.tracker).unwrap();
    assert_eq!(r3.resources.len(), 1, "only a: b@2 is in flight");
    // r2 refused, r3 acked: the node refused 2 and is not SYNCED at 3.
    p.on_request(
        delta(ResourceType::Cluster, &[], &r2.nonce, Some("no")),
        &mut f.tracker,
    )
    .unwrap();
    p.on_request(
        delta(ResourceType::Cluster, &[], &r3.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    let r = f.record();
    assert_eq!(r.last_nacked_version, 2);
    // b@2 goes out again with the next version.
    let v4 = target(4, &[("a", "3"), ("b", "2")]);
    f.retarget(&v4);
    p.on_target();
    let r4 = p.next_response(&v4, &mut f.tracker).unwrap();
    let sent: Vec<_> = r4.resources.iter().map(|r| r.version.as_str()).collect();
    assert_eq!(sent, ["b-2"]);
}

#[test]
fn sotw_an_empty_list_after_names_unsubscribes_and_limits_hold() {
    let mut f = fixture();
    let mut p = Sotw::default();
    let v1 = target(1, &[("a", "1")]);
    f.retarget(&v1);
    // Named LDS (gRPC), then nothing: unsubscribed, not "everything".
    p.on_request(
        sotw(ResourceType::Listener, &["web"], "", None),
        &mut f.tracker,
    )
    .unwrap();
    let lds = p.next_response(&v1, &mut f.tracker).unwrap();
    p.on_request(
        sotw(ResourceType::Listener, &[], &lds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert!(!p.has_due());
    assert_eq!(
        *f.tracker.state(ResourceType::Listener),
        State::Unsubscribed
    );
    // The legacy wildcard keeps meaning everything on later empty lists.
    p.on_request(sotw(ResourceType::Cluster, &[], "", None), &mut f.tracker)
        .unwrap();
    let cds = p.next_response(&v1, &mut f.tracker).unwrap();
    p.on_request(
        sotw(ResourceType::Cluster, &[], &cds.nonce, None),
        &mut f.tracker,
    )
    .unwrap();
    assert!(matches!(
        f.tracker.state(ResourceType::Cluster),
        State::Acked { version: 1 }
    ));
    // Too many types Vane does not serve.
    for i in 0..16 {
        let mut r = sotw(ResourceType::Route, &[], "", None);
        r.type_url = format!("type.googleapis.com/other.T{i}");
        p.on_request(r, &mut f.tracker).unwrap();
    }
    let mut r = sotw(ResourceType::Route, &[], "", None);
    r.type_url = "type.googleapis.com/other.T16".into();
    let e = p.on_request(r, &mut f.tracker).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
}
