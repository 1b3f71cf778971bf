//! HTTP/1.1 Upgrade through vane-proxy: a WebSocket echo keeps its one
//! connection and every message across ten pushes that change other
//! routes (and outlives the route timeout and both idle timeouts, the
//! listener's and the route's, while it is busy); another protocol is
//! tunnelled the same way and closed once idle for the route's idle
//! timeout; an upgrade the backend declines with a 200 is
//! an ordinary request on a connection that stays HTTP (and `Upgrade`
//! without `Connection: upgrade` is stripped like any hop-by-hop header); a
//! removed listener ends its busy tunnels at the drain timeout.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use vane_model::SnapshotSpec;
use vane_testkit::ControlServer;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{
    AdminPusher, Backend, HttpClient, ProxyProcess, UpgradeBackend, UpgradeClient, push,
};

const GROUP: &str = "edge";
/// Short, so the tests show that neither cuts a busy tunnel.
const IDLE_TIMEOUT: &str = "1s";
const ROUTE_TIMEOUT_MS: u64 = 300;
/// The route's idle timeout: what closes a quiet tunnel.
const ROUTE_IDLE_TIMEOUT_MS: u64 = 1000;

fn start_proxy(server: &ControlServer, node: &str) -> ProxyProcess {
    let flags = ["--idle-timeout", IDLE_TIMEOUT, "--drain-timeout", "2s"];
    ProxyProcess::follow(server, node, GROUP, &flags)
}

/// Snapshot `i`: the `up` route to `upgrades` never changes; routes ahead
/// of it and the other cluster's endpoints vary with `i`.
fn spec(web: SocketAddr, upgrades: SocketAddr, others: &[SocketAddr], i: usize) -> SnapshotSpec {
    let mut routes = Vec::new();
    for k in 0..(i % 3) {
        routes.push(prefix(
            &format!("extra-{k}"),
            &format!("/extra-{k}"),
            "other",
        ));
    }
    let mut up = prefix("up", "/up", "upgrades");
    up.timeout_ms = Some(ROUTE_TIMEOUT_MS);
    up.idle_timeout_ms = Some(ROUTE_IDLE_TIMEOUT_MS);
    routes.push(up);
    routes.push(prefix(&format!("rest-{}", i % 2), "/", "other"));
    let other: Vec<(SocketAddr, u32)> = others
        .iter()
        .enumerate()
        .filter(|(k, _)| i == 0 || (i + k).is_multiple_of(2))
        .map(|(k, a)| (*a, 1 + k as u32))
        .collect();
    let mut s = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", routes)],
        clusters: vec![
            cluster("upgrades", "round_robin", &[(upgrades, 1)]),
            cluster("other", "round_robin", &other),
        ],
        ..SnapshotSpec::default()
    };
    s.values.insert("push".into(), json!(i));
    s
}

/// Sends message number `sent` and expects it back.
async fn talk(client: &mut UpgradeClient, sent: &mut u32) {
    let msg = format!("message {sent}");
    client.send_text(&msg).await.unwrap();
    let echo = client.recv_text().await.unwrap();
    assert_eq!(echo.as_deref(), Some(msg.as_str()), "after {sent} messages");
    *sent += 1;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_survives_ten_pushes_on_other_routes() {
    let server = ControlServer::start();
    let ws = UpgradeBackend::start("ws").await;
    let others = [Backend::start("o-0").await, Backend::start("o-1").await];
    let other_addrs: Vec<SocketAddr> = others.iter().map(|b| b.addr).collect();
    let web = free_addr();
    let v0 = push(&server, GROUP, &spec(web, ws.addr, &other_addrs, 0));
    let proxy = start_proxy(&server, "ws");
    proxy.wait_version(v0);

    let mut client = UpgradeClient::open(web, "/up/chat", "websocket")
        .await
        .unwrap();
    assert_eq!(client.status, 101, "{:?}", client.headers);
    assert_eq!(client.header("x-backend"), Some("ws"));
    assert_eq!(
        client.header("upgrade").map(str::to_ascii_lowercase),
        Some("websocket".into())
    );

    // Ten pushes, 100 ms apart, while the client keeps talking.
    let (base, wsaddr) = (server.url(), ws.addr);
    let pushes = tokio::spawn(async move {
        let mut pusher = AdminPusher::connect(&base).await;
        let mut last = 0;
        for i in 1..=10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let s = spec(web, wsaddr, &other_addrs, i);
            last = pusher.push(GROUP, &s).await.unwrap();
        }
        last
    });
    let started = Instant::now();
    let mut sent = 0u32;
    while !pushes.is_finished() {
        talk(&mut client, &mut sent).await;
    }
    let last = pushes.await.unwrap();
    let dump = tokio::task::block_in_place(|| proxy.wait_version(last));
    assert_eq!(dump["version"], json!(last), "{dump}");
    // Still the same connection, still answering, well past the route
    // timeout and the idle timeout.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        talk(&mut client, &mut sent).await;
    }
    eprintln!(
        "websocket: {sent} messages echoed over {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() > Duration::from_millis(ROUTE_TIMEOUT_MS) + Duration::from_secs(1));
    assert!(sent >= 50, "too few messages to mean anything: {sent}");
    assert_eq!(
        ws.switched(),
        1,
        "the client's connection was re-established"
    );
    let tunnels = |p: &ProxyProcess| p.metric("vane_proxy_tunnels_active", &["listener=\"web\""]);
    assert_eq!(tunnels(&proxy), 1.0);
    assert_eq!(
        proxy.metric(
            "vane_proxy_upgrades_total",
            &["protocol=\"websocket\"", "result=\"switched\""]
        ),
        1.0
    );
    // 101 is counted as the route's answer.
    assert_eq!(
        proxy.metric(
            "vane_proxy_requests_total",
            &["route=\"up\"", "class=\"1xx\""]
        ),
        1.0
    );
    drop(client);
    let closed = Instant::now() + Duration::from_secs(5);
    while tunnels(&proxy) != 0.0 && Instant::now() < closed {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tunnels(&proxy), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_is_tunnelled_and_closed_when_idle() {
    let server = ControlServer::start();
    let echo = UpgradeBackend::start("echo").await;
    let web = free_addr();
    let v0 = push(&server, GROUP, &spec(web, echo.addr, &[echo.addr], 0));
    let proxy = start_proxy(&server, "raw");
    proxy.wait_version(v0);

    let mut client = UpgradeClient::open(web, "/up/raw", "echo/1").await.unwrap();
    assert_eq!(client.status, 101, "{:?}", client.headers);
    assert_eq!(client.header("upgrade"), Some("echo/1"));
    // Bytes both ways, for longer than the idle timeout in all.
    let started = Instant::now();
    for k in 0..30u32 {
        let bytes = format!("raw bytes {k}\n");
        client.write(bytes.as_bytes()).await.unwrap();
        assert_eq!(client.read(bytes.len()).await.unwrap(), bytes.as_bytes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(1));
    assert_eq!(
        proxy.metric(
            "vane_proxy_upgrades_total",
            &["protocol=\"other\"", "result=\"switched\""]
        ),
        1.0
    );
    // Then silence: the proxy closes the tunnel after the route's idle
    // timeout (checked every quarter of it).
    let quiet = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(10), client.read_to_close())
        .await
        .expect("the idle tunnel was not closed");
    let waited = quiet.elapsed();
    assert!(rest.map(|b| b.is_empty()).unwrap_or(true));
    // The idle time counts from the last byte, which the loop's last 50 ms
    // pause came after: at least 1 s - 50 ms, less a little scheduling.
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert_eq!(
        proxy.metric(
            "vane_proxy_connections_closed_total",
            &["listener=\"web\"", "reason=\"tunnel_idle\""]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric("vane_proxy_tunnels_active", &["listener=\"web\""]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_upgrade_is_an_ordinary_request() {
    let server = ControlServer::start();
    // An HTTP backend: it answers 200 to everything, upgrades included.
    let plain = Backend::start("plain").await;
    let web = free_addr();
    let v0 = push(&server, GROUP, &spec(web, plain.addr, &[plain.addr], 0));
    let proxy = start_proxy(&server, "declined");
    proxy.wait_version(v0);

    let mut client = UpgradeClient::open(web, "/up/x", "websocket")
        .await
        .unwrap();
    assert_eq!(client.status, 200, "{:?}", client.headers);
    assert_eq!(client.header("x-backend"), Some("plain"));
    // The backend was asked for the upgrade...
    assert_eq!(
        client
            .header("x-seen-connection")
            .map(str::to_ascii_lowercase),
        Some("upgrade".into())
    );
    assert_eq!(client.body().await.unwrap(), b"plain");
    // ...and the client's connection stays HTTP: the next request on it is
    // proxied as usual.
    let (status, body) = client.get("/up/next").await.unwrap();
    assert_eq!((status, body.as_slice()), (200, b"plain".as_slice()));
    assert_eq!(plain.hits(), 2);
    // Not an upgrade (no `Connection: upgrade`): `Upgrade` is a hop-by-hop
    // header like the others, and the backend sees none of them.
    let reply = HttpClient::http1()
        .get(
            web,
            "/up/plain",
            &[
                ("upgrade", "websocket"),
                ("connection", "x-private"),
                ("x-private", "1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    for h in ["x-seen-upgrade", "x-seen-connection", "x-seen-private"] {
        assert_eq!(reply.header(h), "", "{h}");
    }
    assert_eq!(
        proxy.metric(
            "vane_proxy_upgrades_total",
            &["protocol=\"websocket\"", "result=\"declined\""]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric("vane_proxy_tunnels_active", &["listener=\"web\""]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listener_ends_its_tunnels_at_the_drain_timeout() {
    let server = ControlServer::start();
    let echo = UpgradeBackend::start("echo").await;
    let web = free_addr();
    let v0 = push(&server, GROUP, &spec(web, echo.addr, &[echo.addr], 0));
    let proxy = start_proxy(&server, "drain");
    proxy.wait_version(v0);
    let mut client = UpgradeClient::open(web, "/up/raw", "echo/1").await.unwrap();
    assert_eq!(client.status, 101, "{:?}", client.headers);

    // The listener moves to another address: the old one drains.
    let mut moved = spec(web, echo.addr, &[echo.addr], 2);
    moved.listeners = vec![http_listener("web2", free_addr(), "main")];
    let v1 = push(&server, GROUP, &moved);
    tokio::task::block_in_place(|| proxy.wait_version(v1));
    let removed = Instant::now();
    // The busy tunnel keeps working while the listener drains, and is
    // closed at the drain timeout (2 s), not before and not much later.
    let mut k = 0u32;
    let ended = loop {
        let bytes = format!("drain {k}\n");
        k += 1;
        if client.write(bytes.as_bytes()).await.is_err() {
            break removed.elapsed();
        }
        match tokio::time::timeout(Duration::from_secs(5), client.read(bytes.len())).await {
            Ok(Ok(got)) => assert_eq!(got, bytes.as_bytes()),
            Ok(Err(_)) => break removed.elapsed(),
            Err(_) => panic!("the tunnel hung instead of closing"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ended >= Duration::from_millis(1500) && ended < Duration::from_secs(5),
        "closed {ended:?} after the listener was removed"
    );
    assert_eq!(
        proxy.metric("vane_proxy_tunnels_active", &["listener=\"web\""]),
        0.0
    );
}
