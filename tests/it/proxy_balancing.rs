//! vane-proxy load balancing end to end: weights under each policy
//! (round_robin exactly, random and least_request within generous
//! statistical bounds), least_request steering away from a slow endpoint,
//! passive outlier detection (ejection on 5xx and on connect failures, the
//! ejection cap, recovery after the interval), and panic mode when every
//! endpoint left in a cluster is ejected.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vane_model::SnapshotSpec;
use vane_testkit::ControlServer;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, outlier, prefix, table};
use vane_testkit::proxy::{Backend, HttpClient, Load, ProxyProcess, WAIT, push};

const GROUP: &str = "edge";

fn share(counts: &BTreeMap<String, usize>, id: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(id).copied().unwrap_or(0) as f64 / total as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_shape_every_policy() {
    let server = ControlServer::start();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let slow = Backend::start("slow").await;
    let fast = Backend::start("fast").await;
    slow.set_delay(Duration::from_millis(100));
    let web = free_addr();
    let mut spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table(
            "main",
            vec![
                prefix("rr", "/rr", "rr"),
                prefix("random", "/random", "random"),
                prefix("lr", "/lr", "lr"),
                prefix("lr-speed", "/speed", "lr-speed"),
                prefix("rr-speed", "/rr-speed", "rr-speed"),
            ],
        )],
        clusters: vec![
            cluster("rr", "round_robin", &[(a.addr, 1), (b.addr, 3)]),
            cluster("random", "random", &[(a.addr, 1), (b.addr, 3)]),
            cluster("lr", "least_request", &[(a.addr, 1), (b.addr, 3)]),
            cluster(
                "lr-speed",
                "least_request",
                &[(slow.addr, 1), (fast.addr, 1)],
            ),
            cluster("rr-speed", "round_robin", &[(slow.addr, 1), (fast.addr, 1)]),
        ],
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let proxy = ProxyProcess::follow(&server, "lb", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();

    // Smooth weighted round robin is exact.
    let rr = http.tally(web, "/rr", &[], 400).await;
    assert_eq!(rr.get("a"), Some(&100), "{rr:?}");
    assert_eq!(rr.get("b"), Some(&300), "{rr:?}");
    // Random and least_request (idle endpoints: the weighted first draw
    // wins) follow the weights: expected share of b 0.75, sd ~0.014.
    for path in ["/random", "/lr"] {
        let t = http.tally(web, path, &[], 1000).await;
        let s = share(&t, "b");
        assert!((0.68..=0.82).contains(&s), "{path}: {t:?}");
    }

    // Under concurrency least_request sends most requests to the fast
    // endpoint; round robin splits picks evenly whatever the speed. Shares
    // are taken over a number of answers, not a time: a slow machine gets
    // as large a sample as a fast one.
    let load = Load::start(8, web, "/speed", &[], "");
    let sampled = load.wait_ok(1000, WAIT).await;
    let report = load.stop().await;
    assert!(sampled, "too few answers: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    let fast_share = report.by_backend.get("fast").copied().unwrap_or(0) as f64 / report.ok as f64;
    assert!(fast_share > 0.85, "least_request: {report:?}");
    let load = Load::start(8, web, "/rr-speed", &[], "");
    let sampled = load.wait_ok(200, WAIT).await;
    let report = load.stop().await;
    assert!(sampled, "too few answers: {report:?}");
    let rr_fast_share =
        report.by_backend.get("fast").copied().unwrap_or(0) as f64 / report.ok as f64;
    assert!(
        rr_fast_share < fast_share,
        "round robin {rr_fast_share} vs least_request {fast_share}"
    );

    // A weight change applies on the next snapshot, and the cursor goes on.
    spec.clusters[0] = cluster("rr", "round_robin", &[(a.addr, 3), (b.addr, 1)]);
    let v2 = push(&server, GROUP, &spec);
    proxy.wait_version(v2);
    let rr = http.tally(web, "/rr", &[], 400).await;
    assert_eq!(rr.get("a"), Some(&300), "{rr:?}");
    assert_eq!(rr.get("b"), Some(&100), "{rr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundreds_eject_within_the_cap_and_endpoints_return() {
    let server = ControlServer::start();
    let x = Backend::start("x").await;
    let y = Backend::start("y").await;
    let z = Backend::start("z").await;
    let web = free_addr();
    let mut svc = cluster(
        "svc",
        "round_robin",
        &[(x.addr, 1), (y.addr, 1), (z.addr, 1)],
    );
    // Three 5xx in a row eject for 3 s; at most 50% of 3 = 1 endpoint out.
    svc.outlier_detection = Some(outlier(3, 3000, 10_000, 50));
    let spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("all", "/", "svc")])],
        clusters: vec![svc],
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let proxy = ProxyProcess::follow(&server, "outlier", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();

    y.set_status(500);
    // Round robin: y sees every third request; its third failure ejects it.
    let t = http.tally(web, "/", &[], 9).await;
    assert_eq!(t.get("y"), Some(&3), "{t:?}");
    let ejected_at = Instant::now();
    assert_eq!(
        proxy.metric("vane_proxy_outlier_ejections_total", &["cluster=\"svc\""]),
        1.0
    );
    assert_eq!(
        proxy.metric("vane_proxy_outlier_ejected_endpoints", &["cluster=\"svc\""]),
        1.0
    );
    let hits = y.hits();
    let t = http.tally(web, "/", &[], 30).await;
    assert_eq!(y.hits(), hits, "an ejected endpoint gets no traffic: {t:?}");
    assert_eq!(t.get("x"), Some(&15), "{t:?}");
    assert_eq!(t.get("z"), Some(&15), "{t:?}");

    // z fails too, but the cap keeps it in: never more than 1 of 3 out.
    z.set_status(500);
    let t = http.tally(web, "/", &[], 12).await;
    assert!(
        ejected_at.elapsed() < Duration::from_millis(2500),
        "too slow to observe the ejection window"
    );
    assert_eq!(t.get("z"), Some(&6), "{t:?}");
    assert_eq!(
        proxy.metric("vane_proxy_outlier_ejections_total", &["cluster=\"svc\""]),
        1.0
    );

    // After its interval y returns by itself.
    y.set_status(200);
    z.set_status(200);
    tokio::time::sleep(
        Duration::from_millis(3000).saturating_sub(ejected_at.elapsed())
            + Duration::from_millis(100),
    )
    .await;
    let t = http.tally(web, "/", &[], 30).await;
    assert_eq!(t.get("y"), Some(&10), "{t:?}");
    assert_eq!(
        proxy.metric("vane_proxy_outlier_ejected_endpoints", &["cluster=\"svc\""]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_eject_and_a_cluster_of_ejected_endpoints_panics() {
    let server = ControlServer::start();
    let alive = Backend::start("alive").await;
    let dead = free_addr(); // nothing listens here
    let web = free_addr();
    let mut c = cluster("c", "round_robin", &[(alive.addr, 1), (dead, 1)]);
    c.outlier_detection = Some(outlier(2, 4000, 10_000, 100));
    let mut route = prefix("all", "/", "c");
    route.retries = Some(1);
    let mut spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![route])],
        clusters: vec![c],
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let proxy = ProxyProcess::follow(&server, "connect", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();

    // Every request succeeds: a refused connect is retried on the other
    // endpoint. Two refusals eject the dead endpoint, then no more retries.
    let t = http.tally(web, "/", &[], 20).await;
    assert_eq!(t.get("alive"), Some(&20), "{t:?}");
    let ejected_at = Instant::now();
    assert_eq!(
        proxy.metric(
            "vane_proxy_upstream_errors_total",
            &["cluster=\"c\"", "kind=\"connect\""]
        ),
        2.0
    );
    assert_eq!(
        proxy.metric("vane_proxy_upstream_retries_total", &["cluster=\"c\""]),
        2.0
    );
    assert_eq!(
        proxy.metric("vane_proxy_outlier_ejections_total", &["cluster=\"c\""]),
        1.0
    );

    // A new snapshot keeps the endpoint's state (same cluster, same
    // address): with only the ejected endpoint left, the cluster balances
    // over its ejected endpoints (panic mode) rather than refusing; this
    // one still refuses connections, so the client reads 502.
    spec.clusters[0].endpoints.remove(0);
    let v2 = push(&server, GROUP, &spec);
    proxy.wait_version(v2);
    let r = http.get(web, "/", &[]).await.unwrap();
    assert!(ejected_at.elapsed() < Duration::from_secs(3), "too slow");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-vane-error"), "upstream_failed");
    // The request and its retry (the route's `retries: 1`; no other
    // endpoint to go to) were each a pick in panic mode.
    assert_eq!(
        proxy.metric("vane_proxy_cluster_panic_total", &["cluster=\"c\""]),
        2.0
    );

    // Once the ejection ends the endpoint is tried again, in rotation: it
    // still refuses, so the client reads 502. That refusal ejects it again
    // (at 100% the only endpoint may go), so only the retry is a panic pick.
    tokio::time::sleep(
        Duration::from_secs(4).saturating_sub(ejected_at.elapsed()) + Duration::from_millis(200),
    )
    .await;
    let r = http.get(web, "/", &[]).await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-vane-error"), "upstream_failed");
    assert_eq!(
        proxy.metric("vane_proxy_cluster_panic_total", &["cluster=\"c\""]),
        3.0,
        "back in rotation: the first pick was no panic"
    );
}
