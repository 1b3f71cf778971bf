//! vane-proxy's per-route protections end to end: retries (on 502/503/504
//! for idempotent methods, on connect failures for any method with an empty
//! body), the retry budget, the whole-request timeout (504), and rate limits
//! (429 with `retry-after`, buckets shared by routes and kept across
//! snapshots that do not change them).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use vane_model::SnapshotSpec;
use vane_model::spec::RouteSpec;
use vane_testkit::ControlServer;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, rate_limit, table};
use vane_testkit::proxy::{Backend, HttpClient, ProxyProcess, push};

const GROUP: &str = "edge";

fn with(mut r: RouteSpec, f: impl FnOnce(&mut RouteSpec)) -> RouteSpec {
    f(&mut r);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_the_retry_budget() {
    let server = ControlServer::start();
    let flaky = Backend::start("flaky").await;
    let always = Backend::start("always").await;
    always.set_status(503);
    let alive = Backend::start("alive").await;
    let dead = free_addr();
    let web = free_addr();
    let spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table(
            "main",
            vec![
                with(prefix("flaky", "/flaky", "flaky"), |r| r.retries = Some(2)),
                with(prefix("always", "/always", "always"), |r| {
                    r.retries = Some(3)
                }),
                with(prefix("mixed", "/mixed", "mixed"), |r| r.retries = Some(1)),
            ],
        )],
        clusters: vec![
            cluster("flaky", "round_robin", &[(flaky.addr, 1)]),
            cluster("always", "round_robin", &[(always.addr, 1)]),
            // Endpoint 0 refuses connections; round robin starts there.
            cluster("mixed", "round_robin", &[(dead, 1), (alive.addr, 1)]),
        ],
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let proxy = ProxyProcess::follow(&server, "retry", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();

    // Two 503s, then success: within the route's 2 retries.
    flaky.fail_next(2);
    let r = http.get(web, "/flaky", &[]).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "flaky"), "{r:?}");
    assert_eq!(flaky.hits(), 3);
    // Three 503s: retries exhausted, the client reads the upstream's 503
    // (no x-vane-error: it is the upstream's answer).
    flaky.fail_next(3);
    let r = http.get(web, "/flaky", &[]).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-vane-error"), "");
    assert_eq!(flaky.hits(), 6);
    // POST is not idempotent: a 503 is not retried.
    flaky.fail_next(1);
    let r = http.request("POST", web, "/flaky", &[]).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(flaky.hits(), 7);
    // PUT is.
    flaky.fail_next(1);
    let r = http.request("PUT", web, "/flaky", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(flaky.hits(), 9);

    // A refused connect sent nothing: retried even for POST, on the other
    // endpoint.
    let r = http.request("POST", web, "/mixed", &[]).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "alive"), "{r:?}");
    assert_eq!(
        proxy.metric(
            "vane_proxy_upstream_errors_total",
            &["cluster=\"mixed\"", "kind=\"connect\""]
        ),
        1.0
    );

    // The budget: an upstream that always answers 503 gets at most 20% more
    // requests than clients send, plus 10 retries a second, not 4x.
    let started = Instant::now();
    let n = 100u64;
    for _ in 0..n {
        let r = http.get(web, "/always", &[]).await.unwrap();
        assert_eq!(r.status, 503);
    }
    let secs = started.elapsed().as_secs() + 1;
    let retries = always.hits() - n;
    let bound = n / 5 + 10 * secs + 2;
    assert!(retries >= 10, "some retries were sent: {retries}");
    assert!(
        retries <= bound,
        "{retries} retries for {n} requests in {secs}s exceed the budget ({bound})"
    );
    assert!(
        proxy.metric(
            "vane_proxy_retry_budget_exhausted_total",
            &["cluster=\"always\""]
        ) > 0.0
    );
    assert_eq!(
        proxy.metric("vane_proxy_upstream_retries_total", &["cluster=\"always\""]),
        retries as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_covers_every_attempt() {
    let server = ControlServer::start();
    let slow = Backend::start("slow").await;
    slow.set_delay(Duration::from_millis(2000));
    let web = free_addr();
    let spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table(
            "main",
            vec![with(prefix("slow", "/", "slow"), |r| {
                r.timeout_ms = Some(300);
                r.retries = Some(3);
            })],
        )],
        clusters: vec![cluster("slow", "round_robin", &[(slow.addr, 1)])],
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let proxy = ProxyProcess::follow(&server, "timeout", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();
    let started = Instant::now();
    let r = http.get(web, "/", &[]).await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.header("x-vane-error"), "upstream_timeout");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(2500),
        "took {took:?}"
    );
    assert_eq!(
        proxy.metric(
            "vane_proxy_upstream_errors_total",
            &["cluster=\"slow\"", "kind=\"timeout\""]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric(
            "vane_proxy_requests_total",
            &["route=\"slow\"", "class=\"5xx\""]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let server = ControlServer::start();
    let b = Backend::start("b").await;
    let web = free_addr();
    let mut spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table(
            "main",
            vec![
                with(prefix("one", "/one", "b"), |r| {
                    r.rate_limit = Some("tight".into())
                }),
                with(prefix("two", "/two", "b"), |r| {
                    r.rate_limit = Some("tight".into())
                }),
                prefix("free", "/", "b"),
            ],
        )],
        clusters: vec![cluster("b", "round_robin", &[(b.addr, 1)])],
        // One token every 4 s: slow enough that nothing refills by accident
        // while the test looks.
        rate_limits: vec![rate_limit("tight", 0.25, 3)],
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let proxy = ProxyProcess::follow(&server, "limits", GROUP, &[]);
    proxy.wait_version(v);
    let http = HttpClient::http1();

    // A burst of 3, shared by both routes that name the limit.
    for path in ["/one", "/two", "/one"] {
        assert_eq!(http.get(web, path, &[]).await.unwrap().status, 200);
    }
    let r = http.get(web, "/two", &[]).await.unwrap();
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-vane-error"), "rate_limited");
    let retry_after: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=4).contains(&retry_after), "{r:?}");
    // Routes without the limit are not affected.
    assert_eq!(http.get(web, "/free", &[]).await.unwrap().status, 200);
    // A snapshot that leaves the limit alone keeps the bucket (still empty).
    spec.values.insert("unrelated".into(), json!(1));
    let v2 = push(&server, GROUP, &spec);
    proxy.wait_version(v2);
    let r = http.get(web, "/one", &[]).await.unwrap();
    assert_eq!(r.status, 429, "the bucket survived the snapshot: {r:?}");
    // Waiting as long as `retry-after` said is enough.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(http.get(web, "/one", &[]).await.unwrap().status, 200);
    assert_eq!(
        proxy.metric("vane_proxy_rate_limited_total", &["limit=\"tight\""]),
        2.0
    );
    // New parameters: a new, full bucket.
    spec.rate_limits = vec![rate_limit("tight", 0.25, 5)];
    let v3 = push(&server, GROUP, &spec);
    proxy.wait_version(v3);
    for _ in 0..5 {
        assert_eq!(http.get(web, "/one", &[]).await.unwrap().status, 200);
    }
    assert_eq!(http.get(web, "/one", &[]).await.unwrap().status, 429);
}
