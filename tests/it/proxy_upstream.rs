//! vane-proxy's upstream side end to end: gRPC (unary and server
//! streaming, trailers included) through the proxy to an HTTP/2 cluster;
//! TLS upstreams checked against a private CA (by SNI name or by IP), with
//! a client certificate, refused with the wrong CA (502, the configuration
//! still ACKed), and a secret file that cannot be read NACKed naming the
//! cluster; `auto` picking HTTP/2 or HTTP/1.1 by ALPN; the route's whole
//! response and idle timeouts on response bodies; and a dead endpoint that
//! fails no request under concurrent POSTs.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vane_model::SnapshotSpec;
use vane_model::spec::{ClusterSpec, RouteSpec, SecretSpec, UpstreamTlsSpec};
use vane_pki::{Ca, LeafParams, Pair};
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{
    Backend, GrpcBackend, HttpClient, ProxyProcess, SlowBackend, TlsBackend, TlsBackendConfig,
    WAIT, get_streamed, push, raw_health_check,
};
use vane_testkit::{ControlServer, wait_for_status};

const GROUP: &str = "edge";

/// Listener `web` with `routes`, and `clusters`.
fn snapshot(web: SocketAddr, routes: Vec<RouteSpec>, clusters: Vec<ClusterSpec>) -> SnapshotSpec {
    SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", routes)],
        clusters,
        ..SnapshotSpec::default()
    }
}

fn one_endpoint(name: &str, addr: SocketAddr, protocol: &str) -> ClusterSpec {
    let mut c = cluster(name, "round_robin", &[(addr, 1)]);
    c.protocol = Some(protocol.to_owned());
    c
}

fn tls(sni: Option<&str>, ca: &str, client_cert: Option<&str>) -> Option<UpstreamTlsSpec> {
    Some(UpstreamTlsSpec {
        sni: sni.map(str::to_owned),
        ca: Some(ca.to_owned()),
        client_cert: client_cert.map(str::to_owned),
    })
}

fn ca_secret(name: &str, ca: &Ca) -> SecretSpec {
    SecretSpec {
        name: name.to_owned(),
        trusted_ca: Some(ca.cert_pem()),
        ..SecretSpec::default()
    }
}

fn http1_backend(pair: Pair) -> TlsBackendConfig {
    TlsBackendConfig {
        pair,
        alpn: vec![b"http/1.1".to_vec()],
        client_ca: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_reach_an_h2c_cluster_with_their_trailers() {
    let server = ControlServer::start();
    let grpc = GrpcBackend::start().await;
    let web = free_addr();
    let mut route = prefix("grpc", "/", "grpc");
    // Watch streams live as long as the client wants: no whole-response
    // limit (the idle timeout still bounds a silent one).
    route.timeout_ms = Some(0);
    let v = push(
        &server,
        GROUP,
        &snapshot(
            web,
            vec![route],
            vec![one_endpoint("grpc", grpc.addr, "http2")],
        ),
    );
    let proxy = ProxyProcess::follow(&server, "grpc", GROUP, &[]);
    proxy.wait_version(v);

    // The raw call: grpc-status arrives as a trailer, through the proxy.
    let raw = raw_health_check(web).await.unwrap();
    assert_eq!(raw.status, 200, "{raw:?}");
    assert_eq!(raw.content_type, "application/grpc", "{raw:?}");
    assert_eq!(raw.trailer_status.as_deref(), Some("0"), "{raw:?}");
    // One message: SERVING (field 1 = 1) in its 5-byte frame.
    assert_eq!(&raw.body[..], &[0, 0, 0, 0, 2, 8, 1], "{raw:?}");

    // tonic's client (h2c with prior knowledge) to the proxy's listener.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{web}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let overall = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.status(), ServingStatus::Serving);
    // An error status comes back as such (a trailers-only answer).
    let unknown = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // Server streaming: Watch sees the current status, then a change.
    grpc.set("orders", true).await;
    let mut watch = client
        .watch(HealthCheckRequest {
            service: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    tokio::time::sleep(Duration::from_millis(300)).await;
    grpc.set("orders", false).await;
    let next = tokio::time::timeout(WAIT, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);

    let opened = proxy.metric(
        "vane_proxy_upstream_h2_connections_total",
        &["cluster=\"grpc\""],
    );
    assert!(opened >= 1.0, "{opened}");
    grpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_are_checked_against_a_private_ca_by_name_or_ip() {
    let server = ControlServer::start();
    let ca = Ca::new("upstream-ca").unwrap();
    let by_name = TlsBackend::start(
        "by-name",
        http1_backend(ca.issue(&LeafParams::server(["api.internal"])).unwrap()),
    )
    .await;
    let by_ip = TlsBackend::start(
        "by-ip",
        http1_backend(ca.issue(&LeafParams::server(["127.0.0.1"])).unwrap()),
    )
    .await;
    let web = free_addr();
    let build = |ca_name: &str| {
        let mut named = one_endpoint("named", by_name.addr, "http1");
        named.tls = tls(Some("api.internal"), ca_name, None);
        let mut ip = one_endpoint("ip", by_ip.addr, "http1");
        ip.tls = tls(None, ca_name, None);
        let mut s = snapshot(
            web,
            vec![prefix("ip", "/ip", "ip"), prefix("named", "/", "named")],
            vec![named, ip],
        );
        s.secrets = vec![
            ca_secret("upstream-ca", &ca),
            ca_secret("other-ca", &Ca::new("other-ca").unwrap()),
        ];
        s
    };
    let v1 = push(&server, GROUP, &build("upstream-ca"));
    let proxy = ProxyProcess::follow(&server, "tls", GROUP, &[]);
    proxy.wait_version(v1);
    let http = HttpClient::http1();
    for _ in 0..3 {
        let r = http.get(web, "/", &[]).await.unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, "by-name"), "{r:?}");
        assert_eq!(r.header("x-seen-version"), "HTTP/1.1", "{r:?}");
        let r = http.get(web, "/ip", &[]).await.unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, "by-ip"), "{r:?}");
    }

    // The wrong CA: the snapshot is valid (ACKed, it runs), and every
    // request fails its TLS handshake: 502, counted.
    let v2 = push(&server, GROUP, &build("other-ca"));
    proxy.wait_version(v2);
    let r = http.get(web, "/", &[]).await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(!r.header("x-vane-error").is_empty(), "{r:?}");
    let failures = proxy.metric(
        "vane_proxy_upstream_tls_handshake_failures_total",
        &["cluster=\"named\""],
    );
    assert!(failures >= 1.0, "{failures}");
    assert!(by_name.handshake_failures() >= 1);
    let entry = wait_for_status(&server.url(), GROUP, "tls", "ACKED v2", |a| {
        a["acked_version"] == v2
    });
    assert_ne!(entry["state"], "NACKED", "{entry}");

    // A CA file that is not there: NACKed naming the cluster and field,
    // and the running version stays.
    let mut missing = build("upstream-ca");
    missing.secrets[0].trusted_ca = None;
    missing.secrets[0].trusted_ca_file = Some("/nonexistent/vane-test/ca.pem".into());
    push(&server, GROUP, &missing);
    let entry = wait_for_status(&server.url(), GROUP, "tls", "NACKED", |a| {
        a["state"] == "NACKED"
    });
    let reason = entry["nack_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("tls.ca"), "{entry}");
    assert!(reason.contains("/nonexistent/vane-test/ca.pem"), "{entry}");
    assert!(
        reason.contains("clusters[named].tls.ca") || reason.contains("clusters[ip].tls.ca"),
        "{entry}"
    );
    assert_eq!(entry["acked_version"], v2, "{entry}");
    assert_eq!(proxy.config_dump()["version"], v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_that_requires_a_client_certificate_gets_the_clusters() {
    let server = ControlServer::start();
    let ca = Ca::new("mesh-ca").unwrap();
    let backend = TlsBackend::start(
        "mtls",
        TlsBackendConfig {
            pair: ca.issue(&LeafParams::server(["api.internal"])).unwrap(),
            alpn: vec![b"http/1.1".to_vec()],
            client_ca: Some(ca.cert_pem()),
        },
    )
    .await;
    // The client certificate as files on the proxy's host.
    let dir = server.scratch().join("client-cert");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("proxy.crt"), dir.join("proxy.key"));
    ca.issue(&LeafParams::client("vane-proxy"))
        .unwrap()
        .write(&cert, &key, true)
        .unwrap();
    let web = free_addr();
    let build = |client_cert: Option<&str>| {
        let mut c = one_endpoint("mtls", backend.addr, "http1");
        c.tls = tls(Some("api.internal"), "mesh-ca", client_cert);
        let mut s = snapshot(web, vec![prefix("all", "/", "mtls")], vec![c]);
        s.secrets = vec![
            ca_secret("mesh-ca", &ca),
            SecretSpec {
                name: "proxy-client".into(),
                certificate_chain_file: Some(cert.display().to_string()),
                private_key_file: Some(key.display().to_string()),
                ..SecretSpec::default()
            },
        ];
        s
    };
    let v1 = push(&server, GROUP, &build(None));
    let proxy = ProxyProcess::follow(&server, "mtls", GROUP, &[]);
    proxy.wait_version(v1);
    let http = HttpClient::http1();
    let r = http.get(web, "/", &[]).await.unwrap();
    assert_eq!(r.status, 502, "no client certificate: {r:?}");

    // A TLS change makes new connections (the pool is keyed by it).
    let v2 = push(&server, GROUP, &build(Some("proxy-client")));
    proxy.wait_version(v2);
    let r = http.get(web, "/", &[]).await.unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, "mtls"), "{r:?}");
    assert_eq!(r.header("x-seen-client-cert"), "yes", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_speaks_http2_to_an_h2_capable_tls_backend_and_http1_to_the_others() {
    let server = ControlServer::start();
    let ca = Ca::new("upstream-ca").unwrap();
    let pair = || ca.issue(&LeafParams::server(["api.internal"])).unwrap();
    let h2 = TlsBackend::start(
        "h2",
        TlsBackendConfig {
            pair: pair(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            client_ca: None,
        },
    )
    .await;
    let h1 = TlsBackend::start("h1", http1_backend(pair())).await;
    let web = free_addr();
    let mut a = one_endpoint("a", h2.addr, "auto");
    a.tls = tls(Some("api.internal"), "upstream-ca", None);
    let mut b = one_endpoint("b", h1.addr, "auto");
    b.tls = tls(Some("api.internal"), "upstream-ca", None);
    let mut s = snapshot(
        web,
        vec![prefix("old", "/old", "b"), prefix("new", "/", "a")],
        vec![a, b],
    );
    s.secrets = vec![ca_secret("upstream-ca", &ca)];
    let v = push(&server, GROUP, &s);
    let proxy = ProxyProcess::follow(&server, "auto", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();
    for _ in 0..5 {
        let r = http.get(web, "/", &[]).await.unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, "h2"), "{r:?}");
        assert_eq!(r.header("x-seen-version"), "HTTP/2.0", "{r:?}");
        let r = http.get(web, "/old", &[]).await.unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, "h1"), "{r:?}");
        assert_eq!(r.header("x-seen-version"), "HTTP/1.1", "{r:?}");
    }
    // Multiplexed: one HTTP/2 connection per endpoint and worker at most.
    let opened = proxy.metric(
        "vane_proxy_upstream_h2_connections_total",
        &["cluster=\"a\""],
    );
    assert!((1.0..=4.0).contains(&opened), "{opened}");
    assert_eq!(
        proxy.metric(
            "vane_proxy_upstream_h2_connections_total",
            &["cluster=\"b\""]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_covers_the_whole_response_and_idle_timeout_the_pauses() {
    let server = ControlServer::start();
    let slow = SlowBackend::start().await;
    let web = free_addr();
    let mut whole = prefix("whole", "/whole", "slow");
    whole.timeout_ms = Some(600);
    let mut steady = prefix("steady", "/steady", "slow");
    steady.timeout_ms = Some(0);
    steady.idle_timeout_ms = Some(500);
    let mut idle = prefix("idle", "/idle", "slow");
    idle.timeout_ms = Some(0);
    idle.idle_timeout_ms = Some(500);
    let v = push(
        &server,
        GROUP,
        &snapshot(
            web,
            vec![whole, steady, idle],
            vec![one_endpoint("slow", slow.addr, "http1")],
        ),
    );
    let proxy = ProxyProcess::follow(&server, "timeouts", GROUP, &[]);
    proxy.wait_version(v);
    let within = Duration::from_secs(10);

    // The head came, then the body stalled: cut at the route's timeout.
    let o = get_streamed(web, "/whole/stall", within).await.unwrap();
    assert_eq!(o.status, 200, "{o:?}");
    assert!(o.error.is_some(), "the body must end broken: {o:?}");
    assert!(o.bytes > 0, "{o:?}");
    assert!(
        o.elapsed >= Duration::from_millis(500) && o.elapsed < Duration::from_secs(3),
        "{o:?}"
    );
    // A body that streams without pause is cut by it too.
    let o = get_streamed(web, "/whole/drip/40/50", within)
        .await
        .unwrap();
    assert!(o.error.is_some(), "{o:?}");
    assert!(o.elapsed < Duration::from_secs(3), "{o:?}");
    let cut = proxy.metric(
        "vane_proxy_upstream_errors_total",
        &["cluster=\"slow\"", "kind=\"response_timeout\""],
    );
    assert_eq!(cut, 2.0);

    // No whole-response limit: a slow but steady body (2.4 s, a chunk every
    // 200 ms, under the 500 ms idle timeout) goes to its end.
    let o = get_streamed(web, "/steady/drip/12/200", within)
        .await
        .unwrap();
    assert_eq!((o.status, o.error.as_deref()), (200, None), "{o:?}");
    assert_eq!(o.bytes, 12 * 5, "{o:?}");
    assert!(o.elapsed >= Duration::from_secs(2), "{o:?}");

    // A stalled one is cut after the idle timeout.
    let o = get_streamed(web, "/idle/stall", within).await.unwrap();
    assert!(o.error.is_some(), "{o:?}");
    assert!(
        o.elapsed >= Duration::from_millis(400) && o.elapsed < Duration::from_secs(3),
        "{o:?}"
    );
    let idle_cut = proxy.metric(
        "vane_proxy_upstream_errors_total",
        &["cluster=\"slow\"", "kind=\"response_idle\""],
    );
    assert_eq!(idle_cut, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_fails_no_concurrent_post_on_a_route_without_retries() {
    // Concurrent POSTs with bodies from 16 clients (hyper's pooled client:
    // no external load tool is assumed on the machine).
    let server = ControlServer::start();
    let alive = Backend::start("alive").await;
    let dead = free_addr(); // nothing listens here
    let web = free_addr();
    let c = cluster("c", "round_robin", &[(dead, 1), (alive.addr, 1)]);
    let route = prefix("all", "/", "c");
    assert_eq!(route.retries, None);
    let v = push(&server, GROUP, &snapshot(web, vec![route], vec![c]));
    let proxy = ProxyProcess::follow(&server, "post-load", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();
    let mut clients = Vec::new();
    for client in 0..16usize {
        let http = http.clone();
        clients.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in 0..60usize {
                let body = format!("client {client} request {i} ").repeat(1 + i % 20);
                let len = body.len().to_string();
                match http
                    .request_with_body("POST", web, "/orders", &[], body)
                    .await
                {
                    Ok(r) if r.status == 200 && r.header("x-seen-body-bytes") == len => {}
                    other => failed.push(format!("{other:?}")),
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(alive.hits(), 16 * 60);
    let retried = proxy.metric("vane_proxy_upstream_retries_total", &["cluster=\"c\""]);
    assert!(
        retried >= 1.0,
        "the dead endpoint was never tried: {retried}"
    );
}
