//! vane-proxy's ACK means its data plane has switched: once the control
//! server shows the proxy ACKed a version, every request the proxy answers
//! follows that version's routes, none the previous one's.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vane_model::SnapshotSpec;
use vane_testkit::ControlServer;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, HttpClient, ProxyProcess, WAIT, push};

const GROUP: &str = "ack";
const NODE: &str = "p1";

/// Listener `web` routing `/x` to `target`; both clusters exist in every
/// version, so a change of `target` changes the route and nothing else.
fn routing(web: std::net::SocketAddr, a: &Backend, b: &Backend, target: &str) -> SnapshotSpec {
    SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("x", "/x", target)])],
        clusters: vec![
            cluster("a", "round_robin", &[(a.addr, 1)]),
            cluster("b", "round_robin", &[(b.addr, 1)]),
        ],
        ..SnapshotSpec::default()
    }
}

/// Polls `vanectl status GROUP -o json` back to back (no pause: the test
/// wants the first moment the ACK is visible) until `node` has ACKed
/// `version`.
fn wait_acked(server: &ControlServer, node: &str, version: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = server.ctl(&["status", GROUP, "-o", "json"]).ok().json();
        let acked = status.as_array().into_iter().flatten().any(|a| {
            a["node_id"] == node && a["acked_version"].as_u64().is_some_and(|v| v >= version)
        });
        if acked {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never ACKed version {version}: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_after_the_ack_follows_the_acked_version() {
    let server = ControlServer::start();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let web = free_addr();

    let v1 = push(&server, GROUP, &routing(web, &a, &b, "a"));
    let dir = server.scratch();
    let proxy = ProxyProcess::start(
        &[server.url()],
        NODE,
        GROUP,
        &dir.join("cache"),
        &dir.join("logs"),
        &[],
    );
    proxy.wait_version(v1);
    let http = HttpClient::http1();
    let deadline = Instant::now() + WAIT;
    loop {
        match http.get(web, "/x", &[]).await {
            Ok(r) if r.header("x-backend") == "a" => break,
            other => assert!(
                Instant::now() < deadline,
                "/x never reached a: {other:?}\n{}",
                proxy.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_acked(&server, NODE, v1);

    let v2 = push(&server, GROUP, &routing(web, &a, &b, "b"));
    assert!(v2 > v1);
    wait_acked(&server, NODE, v2);
    // From the ACK on, the data plane must be on v2: no request may still
    // take v1's route. The keep-alive client also checks that connections
    // opened before the change follow it.
    let mut counts: BTreeMap<String, usize> = http.tally(web, "/x", &[], 100).await;
    let to_b = counts.remove("b").unwrap_or(0);
    let to_a = counts.remove("a").unwrap_or(0);
    assert_eq!(
        (to_b, to_a),
        (100, 0),
        "after the ACK of v{v2}: {to_b} requests reached b, {to_a} a, others {counts:?}\n{}",
        proxy.logs()
    );
}
