//! SDS on an xDS stream: secrets are served by name like any type, and a
//! secret carrying an inline private key never goes to a plaintext client
//! on another host (the rule [`may_send_private_keys`] states).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::mpsc;
use vane_pki::{Ca, LeafParams};
use vane_xds::ResourceType;

use super::sotw::Sotw;
use super::stream::{Protocol, XdsStream, may_send_private_keys};
use super::tracker::Tracker;
use crate::agents::AgentRegistry;
use crate::hub::{Hub, Published};
use crate::metrics::Metrics;

#[test]
fn keys_go_over_tls_or_to_this_host_only() {
    let at = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
    for (remote, tls, allowed) in [
        (at("127.0.0.1:5000"), false, true),
        (at("127.9.9.9:5000"), false, true),
        (at("[::1]:5000"), false, true),
        (at("[::ffff:127.0.0.1]:5000"), false, true),
        (at("10.0.0.5:5000"), false, false),
        (at("[2001:db8::1]:5000"), false, false),
        (at("[::ffff:10.0.0.5]:5000"), false, false),
        (None, false, false),
        (at("10.0.0.5:5000"), true, true),
        (None, true, true),
    ] {
        assert_eq!(
            may_send_private_keys(remote, tls),
            allowed,
            "{remote:?} tls={tls}"
        );
    }
}

fn node() -> Node {
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

/// A snapshot with the certificate secret `site` (inline key) and the CA
/// secret `clients`.
fn published() -> Published {
    let ca = Ca::new("sds test CA").unwrap();
    let site = ca.issue(&LeafParams::server(["example.test"])).unwrap();
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("      {l}\n")).collect() };
    let yaml = format!(
        "secrets:\n  - name: site\n    certificate_chain: |\n{}    private_key: |\n{}  - name: clients\n    trusted_ca: |\n{}",
        indent(&site.cert_pem),
        indent(&site.key_pem),
        indent(&ca.cert_pem())
    );
    let spec = vane_model::parse_file(yaml.as_bytes(), vane_model::Format::Yaml).unwrap();
    let snapshot = vane_model::validate(spec).unwrap();
    let (bytes, hash) = snapshot.encode_and_hash();
    Published::new("edge".into(), 1, hash.to_hex(), 0, Bytes::from(bytes))
}

/// The secrets a stream asking for `site` and `clients` is sent, when
/// `keys_allowed` says whether keys may go to it.
async fn secrets_sent(keys_allowed: bool) -> Vec<String> {
    let agents = Arc::new(AgentRegistry::new(Duration::from_secs(60)));
    let hub = Arc::new(Hub::new());
    let cohorts = crate::targets::Cohorts::new();
    let info = super::node::node_info(Some(&node())).unwrap();
    let key = agents.connect(&info, "p", None);
    let mut tracker = Tracker::new(
        Arc::clone(&agents),
        key.clone(),
        Metrics::new().stream("edge"),
        true,
    );
    let mut protocol = Sotw::default();
    protocol
        .on_request(
            DiscoveryRequest {
                node: Some(node()),
                type_url: ResourceType::Secret.type_url().into(),
                resource_names: vec!["site".into(), "clients".into()],
                ..DiscoveryRequest::default()
            },
            &mut tracker,
        )
        .unwrap();
    let (_req_tx, req_rx) = mpsc::channel::<DiscoveryRequest>(1);
    let (tx, mut rx) = mpsc::channel(1);
    let stream = XdsStream {
        protocol,
        tracker,
        node: info,
        agents,
        key,
        heads: hub.subscribe("edge"),
        cohorts: cohorts.subscribe("edge"),
        target: None,
        untranslatable: 0,
        keys_allowed,
        access: None,
        span: tracing::Span::none(),
    };
    hub.publish(published());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let inbound = tokio_stream::wrappers::ReceiverStream::new(req_rx).map(Ok);
    let task = tokio::spawn(stream.run(inbound, tx, None, shutdown.clone()));
    let response: DiscoveryResponse = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    shutdown.cancel();
    let _ = task.await;
    assert_eq!(response.type_url, ResourceType::Secret.type_url());
    assert_eq!(response.version_info, "1");
    response
        .resources
        .iter()
        .map(|a| Secret::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

#[tokio::test]
async fn secrets_are_served_by_name_keys_only_where_allowed() {
    assert_eq!(secrets_sent(true).await, ["clients", "site"]);
    assert_eq!(secrets_sent(false).await, ["clients"]);
}
