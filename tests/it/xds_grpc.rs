//! gRPC's proxyless clients following Vane: grpcio (Python) and
//! grpc-js-xds (Node), installed by `cargo xtask test`, call
//! `xds:///web` with a bootstrap naming Vane; their calls reach backend A,
//! and after a push backend B; each is listed in `vanectl status` as a
//! `grpc` client, SYNCED; TLS clusters beside their plaintext ones do not
//! touch them, and one they are routed to is refused (NACKED), never used
//! in plaintext. First, the tools themselves without Vane (Envoy
//! with a static config, the clients straight to a backend), so a broken
//! install fails apart from a broken server.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use vane_model::SnapshotSpec;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, HttpClient, push};
use vane_testkit::xds::{Envoy, GrpcBackend, GrpcClient, Lang, XDS_WAIT, grpc_bootstrap};
use vane_testkit::{ControlServer, wait_for_status};

const GROUP: &str = "grpc";

/// Listener `web` (the name gRPC clients ask for: `xds:///web`), all
/// calls to cluster `echo` on `backend`.
fn spec(backend: SocketAddr) -> SnapshotSpec {
    SnapshotSpec {
        listeners: vec![http_listener("web", free_addr(), "main")],
        route_tables: vec![table("main", vec![prefix("all", "/", "echo")])],
        clusters: vec![cluster("echo", "round_robin", &[(backend, 1)])],
        ..SnapshotSpec::default()
    }
}

#[test]
fn grpcio_follows_pushes() {
    follows_pushes(Lang::Python, "grpcio-1");
}

#[test]
fn grpc_js_xds_follows_pushes() {
    follows_pushes(Lang::Node, "grpc-js-1");
}

fn follows_pushes(lang: Lang, node: &str) {
    let server = ControlServer::start();
    let (a, b) = (GrpcBackend::start("a"), GrpcBackend::start("b"));
    assert_eq!(push(&server, GROUP, &spec(a.addr)), 1);
    let bootstrap = grpc_bootstrap(
        &server.scratch(),
        "bootstrap.json",
        server.addr(),
        node,
        GROUP,
    );
    let client = GrpcClient::start(lang, "xds:///web", &bootstrap);
    let seen = client.wait_answered_by("a", 5, 0, XDS_WAIT);
    let entry = wait_for_status(&server.url(), GROUP, node, "SYNCED at 1", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 1
    });
    assert_eq!(entry["client"], "grpc", "{entry}");

    assert_eq!(push(&server, GROUP, &spec(b.addr)), 2);
    let moved = client.wait_answered_by("b", 5, seen, XDS_WAIT);
    // Every call from A's answers to B's was answered, by A or then B.
    let calls = client.calls_since(0);
    let failed: Vec<&String> = calls[seen..moved]
        .iter()
        .filter(|c| *c != "ok a" && *c != "ok b")
        .collect();
    assert!(
        failed.is_empty(),
        "calls failed around the push: {failed:?}"
    );
    wait_for_status(&server.url(), GROUP, node, "SYNCED at 2", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 2
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xds_tools_run_without_vane() {
    // Envoy with a static listener routing to a backend.
    let backend = Backend::start("static").await;
    let listen = free_addr();
    let bootstrap = format!(
        r#"{{
  "admin": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": 0}}}}}},
  "static_resources": {{
    "listeners": [{{"name": "web", "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {lport}}}}},
      "filter_chains": [{{"filters": [{{"name": "envoy.filters.network.http_connection_manager", "typed_config": {{
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "web",
        "route_config": {{"name": "main", "virtual_hosts": [{{"name": "all", "domains": ["*"],
          "routes": [{{"match": {{"prefix": "/"}}, "route": {{"cluster": "site"}}}}]}}]}},
        "http_filters": [{{"name": "envoy.filters.http.router", "typed_config": {{
          "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}}]
      }}}}]}}]}}],
    "clusters": [{{"name": "site", "type": "STATIC", "connect_timeout": "1s",
      "load_assignment": {{"cluster_name": "site", "endpoints": [{{"lb_endpoints": [{{"endpoint": {{
        "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {bport}}}}}}}}}]}}]}}}}]
  }}
}}"#,
        lport = listen.port(),
        bport = backend.addr.port(),
    );
    let envoy = Envoy::start_bootstrap("static", &bootstrap);
    let tally = HttpClient::http1().tally(listen, "/", &[], 5).await;
    assert_eq!(tally.get("static"), Some(&5), "{tally:?}");
    assert!(envoy.cluster_names().contains("site"));
    assert_eq!(envoy.stat("cluster.site.upstream_rq_total"), Some(5));
    let (code, version) = envoy.admin_get("/server_info");
    assert_eq!(code, 200);
    assert!(
        version.contains(vane_testkit::xds_tools::ENVOY_VERSION),
        "{version}"
    );

    // Both gRPC clients, straight to a gRPC backend.
    let echo = GrpcBackend::start("echo");
    let target = format!("ipv4:{}", echo.addr);
    // A bootstrap that direct (non-xDS) targets never read.
    let dir = tempfile::tempdir().unwrap();
    let unused = grpc_bootstrap(dir.path(), "unused.json", free_addr(), "none", "none");
    for lang in [Lang::Python, Lang::Node] {
        let client = GrpcClient::start(lang, &target, &unused);
        client.wait_answered_by("echo", 3, 0, XDS_WAIT);
    }
}

/// Beside `web` (to the plaintext cluster `echo`), a listener `secure`
/// routed to `echo-tls`, a cluster with TLS (SNI, a CA secret over SDS)
/// and `protocol: http2`, on the same backend.
fn tls_cluster_spec(backend: SocketAddr) -> SnapshotSpec {
    let ca = vane_pki::Ca::new("gRPC TLS cluster CA").unwrap();
    let mut spec = spec(backend);
    spec.secrets = vec![vane_model::spec::SecretSpec {
        name: "upstream-ca".into(),
        trusted_ca: Some(ca.cert_pem()),
        ..Default::default()
    }];
    spec.listeners
        .push(http_listener("secure", free_addr(), "secure"));
    spec.route_tables
        .push(table("secure", vec![prefix("all", "/", "echo-tls")]));
    let mut tls = cluster("echo-tls", "round_robin", &[(backend, 1)]);
    tls.protocol = Some("http2".into());
    tls.tls = Some(vane_model::spec::UpstreamTlsSpec {
        sni: Some("echo.internal".into()),
        ca: Some("upstream-ca".into()),
        client_cert: None,
    });
    spec.clusters.push(tls);
    spec
}

#[test]
fn grpcio_uses_plain_clusters_beside_tls_ones_and_refuses_those() {
    beside_a_tls_cluster(Lang::Python, "grpcio-tls");
}

#[test]
fn grpc_js_xds_uses_plain_clusters_beside_tls_ones_and_refuses_those() {
    beside_a_tls_cluster(Lang::Node, "grpc-js-tls");
}

/// gRPC clients ask only for the clusters their routes name, so TLS
/// clusters elsewhere in the snapshot do not touch them; a TLS cluster
/// they are routed to is refused (they take a TLS context only with
/// their own certificate providers, gRFC A29), so the call fails rather
/// than going out in plaintext, and the NACK is recorded with its reason.
fn beside_a_tls_cluster(lang: Lang, node: &str) {
    let server = ControlServer::start();
    let a = GrpcBackend::start("a");
    assert_eq!(push(&server, GROUP, &tls_cluster_spec(a.addr)), 1);
    let bootstrap = grpc_bootstrap(
        &server.scratch(),
        "bootstrap.json",
        server.addr(),
        node,
        GROUP,
    );
    let plain = GrpcClient::start(lang, "xds:///web", &bootstrap);
    plain.wait_answered_by("a", 5, 0, XDS_WAIT);
    wait_for_status(&server.url(), GROUP, node, "SYNCED at 1", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 1
    });
    drop(plain);

    let secure_node = format!("{node}-secure");
    let bootstrap = grpc_bootstrap(
        &server.scratch(),
        "bootstrap-secure.json",
        server.addr(),
        &secure_node,
        GROUP,
    );
    let secure = GrpcClient::start(lang, "xds:///secure", &bootstrap);
    let entry = wait_for_status(&server.url(), GROUP, &secure_node, "NACKED", |e| {
        e["state"] == "NACKED"
    });
    let reason = entry["nack_reason"].as_str().unwrap();
    println!("{node}: a TLS cluster is refused: {reason}");
    assert!(reason.starts_with("CDS "), "{reason}");
    assert!(
        secure.calls_since(0).iter().all(|c| !c.starts_with("ok")),
        "no call may reach the TLS cluster's endpoint: {:?}",
        secure.calls_since(0)
    );
}
