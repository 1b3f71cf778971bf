//! vane-proxy's default retries and panic mode end to end: a request that
//! reached no upstream (a dead endpoint) is sent to another endpoint for
//! every method, body included, on a route without `retries` (also under
//! wrk, GET and POST); a request an
//! upstream received before dying is not retried (the line between safe and
//! unsafe); and a cluster whose endpoints are all ejected keeps serving over
//! all of them (panic mode), counted in `vane_proxy_cluster_panic_total`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use vane_model::SnapshotSpec;
use vane_testkit::ControlServer;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, outlier, prefix, table};
use vane_testkit::proxy::{Backend, HttpClient, Load, ProxyProcess, WAIT, push};

const GROUP: &str = "edge";

/// A route without `retries` to cluster `c` of `endpoints`, round robin.
fn one_cluster(
    web: SocketAddr,
    endpoints: &[(SocketAddr, u32)],
    ejection: (u32, u64, u32),
) -> SnapshotSpec {
    let mut c = cluster("c", "round_robin", endpoints);
    let (failures, ms, percent) = ejection;
    c.outlier_detection = Some(outlier(failures, ms, ms, percent));
    let route = prefix("all", "/", "c");
    assert_eq!(route.retries, None, "the route must not set retries");
    SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![route])],
        clusters: vec![c],
        ..SnapshotSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_fails_no_request_on_a_route_without_retries() {
    let server = ControlServer::start();
    let alive = Backend::start("alive").await;
    let dead = free_addr(); // nothing listens here
    let web = free_addr();
    // Three refusals eject the dead endpoint for 200 ms, after which it is
    // tried again: it keeps costing retries for the whole test.
    let v = push(
        &server,
        GROUP,
        &one_cluster(web, &[(dead, 1), (alive.addr, 1)], (3, 200, 50)),
    );
    let proxy = ProxyProcess::follow(&server, "dead", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();

    // POST with a body: round robin starts at the dead endpoint, so the
    // first requests are refused there and sent, body and all, to the live
    // one. The backend says how many body bytes it read.
    for i in 0..300usize {
        let body = format!("payload {i} ").repeat(1 + i % 50);
        let len = body.len().to_string();
        let r = http
            .request_with_body("POST", web, "/orders", &[], body)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.header("x-backend")),
            (200, "alive"),
            "POST {i}: {r:?}"
        );
        assert_eq!(r.header("x-seen-body-bytes"), len, "POST {i}: {r:?}");
        if i % 100 == 99 {
            // Let the ejection lapse so the dead endpoint is tried again.
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    let post_retries = proxy.metric("vane_proxy_upstream_retries_total", &["cluster=\"c\""]);
    // Three refusals per ejection, three ejections at least.
    assert!(post_retries >= 9.0, "POSTs were retried: {post_retries}");

    // GETs from eight clients at once for at least 600 answers: zero failed.
    let load = Load::start(8, web, "/", &[], "alive");
    let sampled = load.wait_ok(600, WAIT).await;
    let report = load.stop().await;
    assert!(sampled, "too few answers: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");

    // Every refused connect was retried (one retry each: no request met two
    // refusals), none were sent twice.
    let connect = proxy.metric(
        "vane_proxy_upstream_errors_total",
        &["cluster=\"c\"", "kind=\"connect\""],
    );
    let retries = proxy.metric("vane_proxy_upstream_retries_total", &["cluster=\"c\""]);
    assert!(connect >= 9.0, "{connect}");
    assert_eq!(retries, connect);
    assert_eq!(
        proxy.metric(
            "vane_proxy_upstream_errors_total",
            &["cluster=\"c\"", "kind=\"protocol\""]
        ),
        0.0
    );
    assert_eq!(
        proxy.metric(
            "vane_proxy_retry_budget_exhausted_total",
            &["cluster=\"c\""]
        ),
        0.0
    );

    // Under wrk, as a user would try it: GETs, then POSTs with a body,
    // eight connections for two seconds each; not one answer other than 200
    // and no socket error.
    for (what, script) in [
        ("GET", None),
        (
            "POST",
            Some(
                "wrk.method = \"POST\"\nwrk.body = string.rep(\"order \", 200)\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n",
            ),
        ),
    ] {
        let (requests, report) = wrk(web, script).await;
        assert!(requests >= 100, "{what}: too few requests:\n{report}");
        assert!(
            !report.contains("Non-2xx") && !report.contains("Socket errors"),
            "{what}: requests failed:\n{report}"
        );
    }
    let after = proxy.metric("vane_proxy_upstream_retries_total", &["cluster=\"c\""]);
    assert!(
        after > retries,
        "wrk's requests met the dead endpoint too: {after}"
    );
}

/// Runs wrk against `web` for two seconds (with the Lua `script`, if any);
/// returns the number of requests and wrk's report.
async fn wrk(web: SocketAddr, script: Option<&str>) -> (u64, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args(["-t1", "-c8", "-d2s", "--timeout", "5s"]);
    if let Some(script) = script {
        let path = dir.path().join("post.lua");
        std::fs::write(&path, script).unwrap();
        cmd.arg("-s").arg(path);
    }
    cmd.arg(format!("http://{web}/orders"));
    let out = cmd
        .output()
        .await
        .expect("wrk (installed by cargo xtask test) runs");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "  1234 requests in 2.00s, 1.2MB read"
    let requests = report
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.to_owned())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{report}"));
    (requests, report)
}

/// An upstream that reads each request head and body, then closes the
/// connection without answering. Counts the requests it received.
async fn dying_upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                // The whole request arrived; die without answering.
                count.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_received_is_not_retried_without_route_retries() {
    let server = ControlServer::start();
    let alive = Backend::start("alive").await;
    let (dying, received) = dying_upstream().await;
    let web = free_addr();
    let v = push(
        &server,
        GROUP,
        &one_cluster(web, &[(dying, 1), (alive.addr, 1)], (100, 1000, 50)),
    );
    let proxy = ProxyProcess::follow(&server, "unsafe", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();

    // Round robin alternates dying, alive, dying...: the requests that go
    // to the dying upstream reach it, so the client gets the error and
    // the live endpoint never sees them. Not even a GET without a body:
    // after sending, only the route's `retries` (here none) may repeat a
    // request, and only on a 502, 503 or 504 answer.
    for (i, (method, body)) in [("POST", "charge the card once"), ("POST", ""), ("GET", "")]
        .into_iter()
        .enumerate()
    {
        let before = alive.hits();

        let r = http
            .request_with_body(method, web, "/pay", &[], body)
            .await
            .unwrap();
        assert_eq!(r.status, 502, "{method} {i}: {r:?}");
        assert_eq!(r.header("x-vane-error"), "upstream_failed", "{r:?}");
        assert_eq!(alive.hits(), before, "{method} {i} was sent twice");
        assert_eq!(received.load(Ordering::SeqCst), i as u64 + 1);
        // The next pick is the live endpoint.
        let r = http
            .request_with_body(method, web, "/pay", &[], body)
            .await
            .unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, "alive"), "{r:?}");
    }
    assert_eq!(
        proxy.metric(
            "vane_proxy_upstream_errors_total",
            &["cluster=\"c\"", "kind=\"protocol\""]
        ),
        3.0
    );
    assert_eq!(
        proxy.metric("vane_proxy_upstream_retries_total", &["cluster=\"c\""]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_every_endpoint_ejected_balances_over_all_of_them() {
    let server = ControlServer::start();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.set_status(500);
    b.set_status(500);
    let web = free_addr();
    // Two 5xx in a row eject for a minute; 100%: every endpoint may go.
    let v = push(
        &server,
        GROUP,
        &one_cluster(web, &[(a.addr, 1), (b.addr, 1)], (2, 60_000, 100)),
    );
    let proxy = ProxyProcess::follow(&server, "panic", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();
    let panics = || proxy.metric("vane_proxy_cluster_panic_total", &["cluster=\"c\""]);

    let t = http.tally(web, "/", &[], 4).await;
    assert_eq!((t.get("a"), t.get("b")), (Some(&2), Some(&2)), "{t:?}");
    assert_eq!(
        proxy.metric("vane_proxy_outlier_ejected_endpoints", &["cluster=\"c\""]),
        2.0
    );
    assert_eq!(panics(), 0.0);

    // Both ejected: requests still reach them, spread over both (round
    // robin: exactly), each pick counted.
    let t = http.tally(web, "/", &[], 10).await;
    assert_eq!((t.get("a"), t.get("b")), (Some(&5), Some(&5)), "{t:?}");
    assert_eq!(panics(), 10.0);

    // The endpoints recover while still ejected: the cluster answers at
    // once instead of waiting out the ejection.
    a.set_status(200);
    b.set_status(200);
    let load = Load::start(4, web, "/", &[], "");
    let sampled = load.wait_ok(200, WAIT).await;
    let report = load.stop().await;
    assert!(sampled, "too few answers: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.by_backend.len(), 2, "{report:?}");
    assert!(panics() >= 210.0, "{}", panics());
    assert_eq!(
        proxy.metric("vane_proxy_outlier_ejected_endpoints", &["cluster=\"c\""]),
        2.0,
        "still ejected: only panic mode served them"
    );
}
