//! Stock Envoy (1.40.0, installed by `cargo xtask test`) following Vane
//! over ADS, state of the world and delta: it routes as pushed, moves
//! traffic on a push, drops a removed cluster, shows Vane's version in
//! `/config_dump` and appears in `vanectl status` as an `envoy` client;
//! a snapshot it refuses (a port already taken) is NACKED with Envoy's
//! reason and not resent, while traffic stays on the old listeners; a bad
//! token is refused; and a SIGKILLed control server costs no request.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use vane_model::SnapshotSpec;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, HttpClient, Load, push};
use vane_testkit::xds::{Envoy, EnvoyOptions, XDS_WAIT};
use vane_testkit::{ControlServer, agent_status, wait_for_status};

const GROUP: &str = "web";

/// `/api` → cluster `api` (on `api`), everything else → cluster `site`
/// (on `site`), on the HTTP listener `web` at `listen`.
fn spec(listen: SocketAddr, api: &Backend, site: &Backend) -> SnapshotSpec {
    SnapshotSpec {
        listeners: vec![http_listener("web", listen, "main")],
        route_tables: vec![table(
            "main",
            vec![prefix("api", "/api", "api"), prefix("site", "/", "site")],
        )],
        clusters: vec![
            cluster("api", "round_robin", &[(api.addr, 1)]),
            cluster("site", "round_robin", &[(site.addr, 1)]),
        ],
        ..SnapshotSpec::default()
    }
}

/// Which backend answers `GET path` through Envoy's listener, by
/// `x-backend` ("status N" or "error …" otherwise).
async fn answered_by(client: &HttpClient, listen: SocketAddr, path: &str) -> String {
    match client.get(listen, path, &[]).await {
        Ok(r) if !r.header("x-backend").is_empty() => r.header("x-backend").to_owned(),
        Ok(r) => format!("status {}", r.status),
        Err(e) => format!("error {e}"),
    }
}

/// Waits until `path` is answered by `backend` through `listen`; returns
/// how long that took. Panics after `within`.
async fn wait_routed(
    envoy: &Envoy,
    listen: SocketAddr,
    path: &str,
    backend: &str,
    within: Duration,
) -> Duration {
    let client = HttpClient::http1();
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        last = answered_by(&client, listen, path).await;
        if last == backend {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "Envoy {} did not route {path} to {backend} within {within:?} (last answer: {last}); \
         its log:\n{}",
        envoy.node_id,
        vane_testkit::xds::tail(&envoy.logs(), 40)
    );
}

/// `n` GETs of `path` through `listen`, counted by backend.
async fn tally(listen: SocketAddr, path: &str, n: usize) -> BTreeMap<String, usize> {
    HttpClient::http1().tally(listen, path, &[], n).await
}

/// The top-level `version_info` of the config dump's section `ty`
/// (`ClustersConfigDump`, `ListenersConfigDump`): the version Envoy last
/// accepted for that type.
fn dump_version(envoy: &Envoy, ty: &str) -> String {
    let dump = envoy.config_dump();
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(ty)))
        .and_then(|c| c["version_info"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_pushes_state_of_the_world() {
    follows_pushes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_pushes_delta() {
    follows_pushes(true).await;
}

/// v1 routes `/api` to A and `/` to B; v2 sends `/api` to C (a new
/// cluster `api2`); v3 removes `api2` again (`/api` to B).
async fn follows_pushes(delta: bool) {
    let server = ControlServer::start();
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let listen = free_addr();
    let v1 = spec(listen, &a, &b);
    assert_eq!(push(&server, GROUP, &v1), 1);
    let node = if delta { "envoy-delta" } else { "envoy-sotw" };
    let mut options = EnvoyOptions::new(node, GROUP, server.addr());
    if delta {
        options = options.delta();
    }
    let envoy = Envoy::start(&options);

    // v1: the routing as pushed.
    wait_routed(&envoy, listen, "/api/users", "a", XDS_WAIT).await;
    wait_routed(&envoy, listen, "/index.html", "b", XDS_WAIT).await;
    assert_eq!(
        tally(listen, "/api/users", 10).await,
        BTreeMap::from([("a".to_owned(), 10)])
    );
    assert_eq!(
        tally(listen, "/", 10).await,
        BTreeMap::from([("b".to_owned(), 10)])
    );

    // v2: /api moves to C within 5 s of the push.
    let mut v2 = v1.clone();
    v2.route_tables[0].routes[0].cluster = "api2".into();
    v2.clusters
        .push(cluster("api2", "round_robin", &[(c.addr, 1)]));
    assert_eq!(push(&server, GROUP, &v2), 2);
    let took = wait_routed(&envoy, listen, "/api/users", "c", Duration::from_secs(5)).await;
    println!("Envoy ({node}) routed /api to the new cluster {took:?} after the push returned");
    assert_eq!(
        tally(listen, "/", 10).await,
        BTreeMap::from([("b".to_owned(), 10)])
    );
    envoy.wait_until("version 2 in /config_dump", XDS_WAIT, |e| {
        dump_version(e, "ClustersConfigDump") == "2"
    });
    let entry = wait_for_status(&server.url(), GROUP, node, "SYNCED at 2", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 2
    });
    assert_eq!(entry["client"], "envoy", "{entry}");
    assert!(envoy.cluster_names().contains("api2"));

    // v3: cluster api2 removed; Envoy drops it.
    let mut v3 = v1.clone();
    v3.route_tables[0].routes[0].cluster = "site".into();
    v3.clusters.retain(|c| c.name != "api");
    assert_eq!(push(&server, GROUP, &v3), 3);
    envoy.wait_until("clusters api and api2 gone from /clusters", XDS_WAIT, |e| {
        let names = e.cluster_names();
        !names.contains("api2") && !names.contains("api")
    });
    assert!(envoy.cluster_names().contains("site"));
    wait_routed(&envoy, listen, "/api/users", "b", XDS_WAIT).await;
    wait_for_status(&server.url(), GROUP, node, "SYNCED at 3", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 3
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_envoy_cannot_bind_is_nacked_once_and_traffic_stays() {
    let server = ControlServer::start();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let listen = free_addr();
    let v1 = spec(listen, &a, &b);
    assert_eq!(push(&server, GROUP, &v1), 1);
    let envoy = Envoy::start(&EnvoyOptions::new("envoy-nack", GROUP, server.addr()));
    wait_routed(&envoy, listen, "/", "b", XDS_WAIT).await;
    wait_for_status(&server.url(), GROUP, "envoy-nack", "SYNCED at 1", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 1
    });
    // Traffic on the old listener for the whole sequence.
    let load = Load::start(2, listen, "/", &[], "b");
    assert!(load.wait_ok(20, XDS_WAIT).await, "no traffic through Envoy");

    // v2 adds a listener on a port this test holds: Envoy cannot bind it.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap();
    let mut bad = v1.clone();
    bad.listeners.push(http_listener("blocked", busy, "main"));
    assert_eq!(push(&server, GROUP, &bad), 2);
    let entry = wait_for_status(&server.url(), GROUP, "envoy-nack", "NACKED", |e| {
        e["state"] == "NACKED"
    });
    let reason = entry["nack_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("LDS") && reason.contains("blocked") && reason.contains("in use"),
        "the NACK reason should be LDS and Envoy's words: {entry}"
    );
    assert_eq!(entry["last_nacked_version"], 2, "{entry}");
    println!("vanectl status: NACKED, {reason:?}");
    envoy.wait_until("one rejected LDS update", XDS_WAIT, |e| {
        e.stat_or_zero("listener_manager.lds.update_rejected") == 1
    });
    // No resend loop: still one rejection 3 s later (the stream stays
    // open: the good version below must still arrive on it).
    let before = load.ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        envoy.stat_or_zero("listener_manager.lds.update_rejected"),
        1,
        "the refused version was sent again"
    );
    assert!(
        load.wait_ok(before + 20, XDS_WAIT).await,
        "no traffic on the old listener after the NACK"
    );

    // v3, good again: SYNCED, and the stream was the same all along.
    let mut good = v1.clone();
    good.route_tables[0].routes[0].cluster = "site".into();
    assert_eq!(push(&server, GROUP, &good), 3);
    let entry = wait_for_status(&server.url(), GROUP, "envoy-nack", "SYNCED at 3", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 3
    });
    assert_eq!(entry["sessions"], 1, "Envoy reconnected: {entry}");
    assert_eq!(
        envoy.stat_or_zero("listener_manager.lds.update_rejected"),
        1
    );
    let served = load.ok();
    assert!(load.wait_ok(served + 20, XDS_WAIT).await);
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.samples);
    println!(
        "{} requests through Envoy during the NACK sequence, 0 failed",
        report.ok
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_with_a_bad_token_is_refused_and_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let digest = hex::encode(sha2::Sha256::digest(b"web-agent-token"));
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!("tokens:\n  - identity: agent-web\n    sha256: {digest}\n  - identity: ops\n    sha256: {}\n",
            hex::encode(sha2::Sha256::digest(b"ops-token"))),
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "bindings:\n  - {identity: agent-web, role: agent, groups: [web]}\n  \
         - {identity: ops, role: operator, groups: ['*']}\n",
    )
    .unwrap();
    let server = ControlServer::start_with(&[
        "--policy",
        policy.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let listen = free_addr();
    let file =
        vane_testkit::fixtures::write_json(&server.scratch(), "v1.json", &spec(listen, &a, &b));
    let ops = |args: &[&str]| {
        let url = server.url();
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        vane_testkit::run_vanectl(&all, &[("VANE_TOKEN", "ops-token")])
    };
    ops(&["push", GROUP, "-f", file.to_str().unwrap()]).ok();

    // The good token: the node is served and listed.
    let good = Envoy::start(
        &EnvoyOptions::new("envoy-good", GROUP, server.addr()).token("web-agent-token"),
    );
    wait_routed(&good, listen, "/", "b", XDS_WAIT).await;
    // The bad one: refused as unauthenticated, in Envoy's own words.
    let bad = Envoy::start(&EnvoyOptions::new("envoy-bad", GROUP, server.addr()).token("nope"));
    bad.wait_until(
        "the stream refused with UNAUTHENTICATED (16)",
        XDS_WAIT,
        |e| {
            e.logs()
                .contains("gRPC config stream to vane-control closed: 16")
        },
    );
    assert_eq!(bad.stat_or_zero("control_plane.connected_state"), 0);
    assert!(bad.cluster_names().iter().all(|n| n == "vane-control"));

    let status = ops(&["status", GROUP, "-o", "json"]).ok().json();
    let nodes: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["node_id"].as_str())
        .collect();
    assert!(nodes.contains(&"envoy-good"), "{status}");
    assert!(!nodes.contains(&"envoy-bad"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_through_a_killed_control_server_and_reconnects() {
    let mut server = ControlServer::start();
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let listen = free_addr();
    let v1 = spec(listen, &b1, &b1);
    assert_eq!(push(&server, GROUP, &v1), 1);
    let envoy = Envoy::start(&EnvoyOptions::new("envoy-kill", GROUP, server.addr()));
    wait_routed(&envoy, listen, "/", "b1", XDS_WAIT).await;
    let load = Load::start(2, listen, "/", &[], "b");
    assert!(load.wait_ok(20, XDS_WAIT).await, "no traffic through Envoy");

    server.kill();
    envoy.wait_until("the ADS stream seen down", XDS_WAIT, |e| {
        e.stat_or_zero("control_plane.connected_state") == 0
    });
    let down = load.ok();
    assert!(
        load.wait_ok(down + 50, XDS_WAIT).await,
        "no traffic while the control server was down"
    );

    server.restart_same_port();
    envoy.wait_until("the ADS stream back", XDS_WAIT, |e| {
        e.stat_or_zero("control_plane.connected_state") == 1
    });
    let v2 = spec(listen, &b2, &b2);
    assert_eq!(push(&server, GROUP, &v2), 2);
    wait_routed(&envoy, listen, "/", "b2", XDS_WAIT).await;
    wait_for_status(&server.url(), GROUP, "envoy-kill", "SYNCED at 2", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == 2
    });
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.samples);
    assert!(report.by_backend.contains_key("b2"), "{report:?}");
    println!(
        "{} requests through Envoy across the kill and restart, 0 failed",
        report.ok
    );
    // The node is listed once, with its new session.
    let entry = agent_status(&server.url(), GROUP, "envoy-kill").unwrap();
    assert_eq!(entry["client"], "envoy", "{entry}");
}
