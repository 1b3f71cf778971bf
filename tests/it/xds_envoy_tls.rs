//! Stock Envoy serving TLS from Vane's snapshots over ADS (state of the
//! world and delta): an `https` listener whose certificate and key arrive
//! as SDS secrets answers curl with that certificate and routes to the
//! upstream; a push rotating the certificate reaches the next handshake
//! without the listener being replaced; a cluster with `protocol: http2`
//! reaches an h2c-only upstream (a gRPC server).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use vane_model::SnapshotSpec;
use vane_model::spec::{ListenerCertificateSpec, ListenerSpec, SecretSpec};
use vane_pki::{Ca, LeafParams, Pair};
use vane_testkit::curl::curl;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, push};
use vane_testkit::xds::{Envoy, EnvoyOptions, XDS_WAIT};
use vane_testkit::{ControlServer, wait_for_status};

const GROUP: &str = "edge-tls";
const NAME: &str = "example.test";

/// `https` on `https` with the certificate `site` for example.test,
/// routed to `app`; `http` on `grpc` routed to the HTTP/2 cluster `h2`
/// (the gRPC server at `grpc_upstream`).
fn spec(
    https: SocketAddr,
    grpc: SocketAddr,
    site: &Pair,
    app: &Backend,
    grpc_upstream: SocketAddr,
) -> SnapshotSpec {
    let mut h2 = cluster("h2", "round_robin", &[(grpc_upstream, 1)]);
    h2.protocol = Some("http2".into());
    SnapshotSpec {
        secrets: vec![SecretSpec {
            name: "site".into(),
            certificate_chain: Some(site.cert_pem.clone()),
            private_key: Some(site.key_pem.clone()),
            ..SecretSpec::default()
        }],
        listeners: vec![
            ListenerSpec {
                name: "web-tls".into(),
                address: https.to_string(),
                protocol: Some("https".into()),
                route_table: Some("main".into()),
                certificates: vec![ListenerCertificateSpec {
                    secret: "site".into(),
                    server_names: vec![NAME.into()],
                }],
                ..ListenerSpec::default()
            },
            http_listener("grpc", grpc, "grpc"),
        ],
        route_tables: vec![
            table("main", vec![prefix("all", "/", "app")]),
            table("grpc", vec![prefix("grpc", "/", "h2")]),
        ],
        clusters: vec![cluster("app", "round_robin", &[(app.addr, 1)]), h2],
        ..SnapshotSpec::default()
    }
}

/// What curl sees of `https://example.test:<port>/` through Envoy, the
/// CA trusted and the name resolved to the listener: (status, backend,
/// the server certificate's serial number), or why it failed.
fn fetch(ca: &std::path::Path, https: SocketAddr) -> Result<(u16, String, String), String> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10"])
        .args(["-w", "%{http_code} %{certs}"])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("{NAME}:{}:127.0.0.1", https.port())])
        .arg(format!("https://{NAME}:{}/", https.port()))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The first certificate is the leaf.
    let serial = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial Number:"))
        .map(|s| s.trim().to_owned())
        .ok_or_else(|| format!("no serial number in curl's certificate output: {text}"))?;
    // The backend's name, by a second, plain request (the -w output holds
    // no headers).
    let answer = curl(
        &format!("https://{NAME}:{}/", https.port()),
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{NAME}:{}:127.0.0.1", https.port()),
        ],
    );
    let backend = answer.header("x-backend").unwrap_or_default().to_owned();
    Ok((status, backend, serial))
}

/// Waits until curl gets 200 from `backend` with a certificate whose serial
/// is not `old`; returns that serial.
fn wait_served(envoy: &Envoy, ca: &std::path::Path, https: SocketAddr, old: &str) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < XDS_WAIT {
        match fetch(ca, https) {
            Ok((200, backend, serial)) if backend == "app" && serial != old => return serial,
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "Envoy did not serve https with a new certificate within {XDS_WAIT:?} (last: {last}); its log:\n{}",
        vane_testkit::xds::tail(&envoy.logs(), 60)
    );
}

/// A gRPC server speaking h2c only (tonic's), answering health checks.
async fn grpc_upstream() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("vane.test.Upstream", tonic_health::ServingStatus::Serving)
        .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    (addr, stop)
}

/// A health check of the upstream's service through Envoy's `grpc`
/// listener (h2c to Envoy, HTTP/2 from Envoy to the upstream).
async fn check_through(grpc: SocketAddr) -> Result<i32, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "vane.test.Upstream".into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_https_from_sds_and_rotates_state_of_the_world() {
    serves_tls(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_https_from_sds_and_rotates_delta() {
    serves_tls(true).await;
}

async fn serves_tls(delta: bool) {
    let server = ControlServer::start();
    let app = Backend::start("app").await;
    let (upstream, stop_upstream) = grpc_upstream().await;
    let ca = Ca::new("Vane xDS TLS test CA").unwrap();
    let ca_file = server.scratch().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let site1 = ca.issue(&LeafParams::server([NAME])).unwrap();
    let (https, grpc) = (free_addr(), free_addr());
    let v1 = spec(https, grpc, &site1, &app, upstream);
    assert_eq!(push(&server, GROUP, &v1), 1);

    let node = if delta {
        "envoy-tls-delta"
    } else {
        "envoy-tls-sotw"
    };
    let mut options = EnvoyOptions::new(node, GROUP, server.addr());
    if delta {
        options = options.delta();
    }
    let envoy = Envoy::start(&options);

    // v1: HTTPS with the pushed certificate, routed to the upstream.
    let serial1 = wait_served(&envoy, &ca_file, https, "");
    println!("Envoy ({node}) serves https with the certificate of serial {serial1}");
    wait_for_status(&server.url(), GROUP, node, "SYNCED at 1", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 1
    });
    let dump = envoy.config_dump().to_string();
    assert!(dump.contains("DownstreamTlsContext"), "{dump}");
    assert!(
        !dump.contains(site1.key_pem.lines().nth(1).unwrap()),
        "Envoy's config dump must not show the private key"
    );

    // HTTP/2 to the h2c-only gRPC upstream through the `h2` cluster.
    let start = Instant::now();
    let status = loop {
        match check_through(grpc).await {
            Ok(s) => break s,
            Err(e) if start.elapsed() > XDS_WAIT => panic!(
                "no gRPC answer through Envoy: {e}; its log:\n{}",
                vane_testkit::xds::tail(&envoy.logs(), 40)
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(status, ServingStatus::Serving as i32);

    // v2 rotates the certificate (a new key, the same name): only the
    // secret changes, the listener is updated in place.
    let modified = envoy.stat_or_zero("listener_manager.listener_modified");
    let site2 = ca.issue(&LeafParams::server([NAME])).unwrap();
    let v2 = spec(https, grpc, &site2, &app, upstream);
    assert_eq!(push(&server, GROUP, &v2), 2);
    let serial2 = wait_served(&envoy, &ca_file, https, &serial1);
    println!("after the rotation Envoy serves the certificate of serial {serial2}");
    assert_ne!(serial1, serial2);
    wait_for_status(&server.url(), GROUP, node, "SYNCED at 2", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 2
    });
    assert_eq!(
        envoy.stat_or_zero("listener_manager.listener_modified"),
        modified,
        "a certificate rotation must not replace the listener"
    );
    let _ = stop_upstream.send(());
}
