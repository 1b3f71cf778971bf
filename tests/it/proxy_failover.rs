//! vane-proxy through failures: the control server SIGKILLed, kept dead and
//! restarted under load (zero failed requests), the proxy itself restarted
//! while the control server is dead (it serves its cache at once, zero
//! failed requests), a snapshot whose listener cannot bind (NACKed with the
//! reason, nothing of it applied, traffic untouched), SIGTERM (drain, then
//! exit 0), and startup with neither cache nor control plane (embedded
//! defaults are served; with no defaults the proxy is not ready).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use vane_model::SnapshotSpec;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, HttpClient, Load, ProxyProcess, WAIT, push};
use vane_testkit::{ControlServer, wait_for_status};

const GROUP: &str = "edge";
const CLIENTS: usize = 8;

fn spec(web: SocketAddr, stable: &[&Backend], extra_route: Option<&str>) -> SnapshotSpec {
    let mut routes = vec![prefix("stable", "/stable", "stable")];
    if let Some(r) = extra_route {
        routes.push(prefix(r, &format!("/{r}"), "stable"));
    }
    SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", routes)],
        clusters: vec![cluster(
            "stable",
            "round_robin",
            &stable.iter().map(|b| (b.addr, 1)).collect::<Vec<_>>(),
        )],
        ..SnapshotSpec::default()
    }
}

/// Polls `pred` on the proxy's `/status` (on a blocking thread).
async fn wait_proxy_status(proxy: &ProxyProcess, what: &str, pred: fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = proxy.status();
        if pred(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failures_through_control_plane_death_and_a_proxy_restart_from_cache() {
    let mut control = ControlServer::start();
    let dir = control.scratch();
    let s1 = Backend::start("stable-1").await;
    let s2 = Backend::start("stable-2").await;
    let web = free_addr();
    let v1 = push(&control, GROUP, &spec(web, &[&s1, &s2], None));
    let mut proxy = ProxyProcess::start(
        &[control.url()],
        "survivor",
        GROUP,
        &dir.join("cache"),
        &dir.join("logs"),
        &[],
    );
    proxy.wait_version(v1);

    // Phase 1: the control server dies (SIGKILL), stays dead, comes back.
    let load = Load::start(CLIENTS, web, "/stable", &[], "stable-");
    assert!(load.wait_ok(50, WAIT).await, "no traffic before the outage");
    control.kill();
    wait_proxy_status(&proxy, "disconnected", |s| s["connected"] == false).await;
    // Dead for a while (the agent goes through its reconnect backoff), and
    // traffic flows all along: counted from the disconnection on.
    let disconnected = load.ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        load.wait_ok(disconnected + 50, WAIT).await,
        "traffic stopped while the control plane was dead: {} ok in all, {} of them \
         before the disconnection; {} failed",
        load.ok(),
        disconnected,
        load.failed()
    );
    control.restart_same_port();
    wait_proxy_status(&proxy, "reconnected", |s| s["connected"] == true).await;
    // Live updates resume.
    let v2 = push(&control, GROUP, &spec(web, &[&s1, &s2], Some("added")));
    proxy.wait_version(v2);
    assert_eq!(
        HttpClient::http1()
            .get(web, "/added", &[])
            .await
            .unwrap()
            .status,
        200
    );
    // The unchanged route keeps serving after the update as well.
    let updated = load.ok();
    assert!(
        load.wait_ok(updated + 50, WAIT).await,
        "no traffic after the update"
    );
    let report = load.stop().await;
    eprintln!("control-plane death: {report:?}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.samples);

    // Phase 2: the control server dies again; the proxy restarts while it
    // is dead and serves its cache at once.
    control.kill();
    proxy.kill();
    let restarted = Instant::now();
    proxy.restart();
    proxy.wait_ready();
    let ready_after = restarted.elapsed();
    let dump = proxy.config_dump();
    assert_eq!(dump["version"], v2, "{dump}");
    assert_eq!(dump["source"], "cache");
    let status = proxy.status();
    assert_eq!(status["connected"], false);
    assert_eq!(status["source"], "cache");
    let load = Load::start(CLIENTS, web, "/added", &[], "stable-");
    let served = load.wait_ok(200, WAIT).await;
    let report = load.stop().await;
    eprintln!("restart from cache: ready after {ready_after:?}; {report:?}");
    assert!(served, "too little traffic from the cache: {report:?}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.samples);

    // The control server returns and confirms the cached version (it does
    // not resend what the agent already runs).
    control.restart_same_port();
    wait_proxy_status(&proxy, "confirmed again", |s| {
        s["connected"] == true && s["staleness_ms"] == 0 && s["state"] == "healthy"
    })
    .await;
    assert_eq!(proxy.config_dump()["version"], v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_is_nacked_and_nothing_of_it_applies() {
    let server = ControlServer::start();
    let stable = Backend::start("stable-1").await;
    let other = Backend::start("other").await;
    let web = free_addr();
    let v1 = push(&server, GROUP, &spec(web, &[&stable], None));
    let dir = server.scratch();
    let proxy = ProxyProcess::start(
        &[server.url()],
        "binder",
        GROUP,
        &dir.join("cache"),
        &dir.join("logs"),
        &[],
    );
    proxy.wait_version(v1);
    // The server has the ACK of v1 before v2 goes out (an ACK answering an
    // older response than the last one sent is stale by design).
    wait_for_status(&server.url(), GROUP, "binder", "SYNCED on v1", |a| {
        a["acked_version"] == v1
    });

    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = squatter.local_addr().unwrap();
    let free = free_addr();
    // v2 moves /stable to another cluster, adds a listener on a free port
    // and one on a port in use.
    let mut bad = spec(web, &[&stable], None);
    bad.clusters = vec![cluster("stable", "round_robin", &[(other.addr, 1)])];
    bad.listeners.push(http_listener("fresh", free, "main"));
    bad.listeners.push(http_listener("blocked", busy, "main"));
    let load = Load::start(2, web, "/stable", &[], "stable-");
    let v2 = push(&server, GROUP, &bad);
    let entry = wait_for_status(&server.url(), GROUP, "binder", "NACKED", |a| {
        a["state"] == "NACKED"
    });
    // Traffic after the NACK: the refused snapshot left the running one alone.
    let nacked = load.ok();
    let served = load.wait_ok(nacked + 20, WAIT).await;
    let report = load.stop().await;
    assert!(served, "no traffic after the NACK: {report:?}");
    assert_eq!(
        entry["nack_reason"],
        format!("listeners[blocked] {busy}: cannot bind: Address already in use"),
        "{entry}"
    );
    assert_eq!(entry["acked_version"], v1);
    // Nothing of v2 applied: same version, old routes, old listeners only,
    // and the socket bound for "fresh" was released.
    assert_eq!(report.failed, 0, "{:?}", report.samples);
    assert_eq!(proxy.config_dump()["version"], v1);
    assert_eq!(
        proxy.config_dump()["listeners"].as_array().unwrap().len(),
        1
    );
    drop(std::net::TcpListener::bind(free).expect("the refused snapshot's socket was released"));
    let status = proxy.status();
    assert_eq!(status["last_nack_version"], v2);
    assert_eq!(proxy.metric("vane_agent_nacks_total", &[]), 1.0);

    // Once the port is free, the same change pushed again applies whole.
    drop(squatter);
    bad.values.insert("retry".into(), json!(true));
    let v3 = push(&server, GROUP, &bad);
    proxy.wait_version(v3);
    let r = HttpClient::http1().get(busy, "/stable", &[]).await.unwrap();
    assert_eq!(r.header("x-backend"), "other");
    let r = HttpClient::http1().get(web, "/stable", &[]).await.unwrap();
    assert_eq!(r.header("x-backend"), "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_drains_in_flight_and_exits_zero() {
    let server = ControlServer::start();
    // Both backends hold their requests: `slow` until the test releases it
    // during the drain, `stuck` for good.
    let slow = Backend::start("slow").await;
    slow.hold();
    let stuck = Backend::start("stuck").await;
    stuck.hold();
    let web = free_addr();
    let s = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table(
            "main",
            vec![
                prefix("slow", "/slow", "slow"),
                prefix("stuck", "/stuck", "stuck"),
            ],
        )],
        clusters: vec![
            cluster("slow", "round_robin", &[(slow.addr, 1)]),
            cluster("stuck", "round_robin", &[(stuck.addr, 1)]),
        ],
        ..SnapshotSpec::default()
    };
    let mut s = s;
    s.route_tables[0].routes[1].timeout_ms = Some(60_000);
    let v = push(&server, GROUP, &s);
    let dir = server.scratch();
    let mut proxy = ProxyProcess::start(
        &[server.url()],
        "term",
        GROUP,
        &dir.join("cache"),
        &dir.join("logs"),
        &["--drain-timeout", "2s"],
    );
    proxy.wait_version(v);

    let finishing = tokio::spawn(async move { HttpClient::http1().get(web, "/slow", &[]).await });
    let cut = tokio::spawn(async move { HttpClient::http1().get(web, "/stuck", &[]).await });
    // Both are in flight before the SIGTERM: a request that had not reached
    // the proxy yet would be refused, which would look like a cut.
    for (backend, what) in [(&slow, "slow"), (&stuck, "stuck")] {
        assert!(
            backend.wait_in_flight(1, WAIT).await,
            "the {what} request never reached its backend"
        );
    }
    let started = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let status = proxy.terminate(Duration::from_secs(10));
        (status, proxy)
    });
    // New connections are refused soon after SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(web).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The request in flight, let go during the drain, completes.
    assert!(!finishing.is_finished(), "answered before it was released");
    slow.release();
    let r = finishing.await.unwrap().unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, "slow"));
    // The one that would outlive the drain timeout is cut, and the process
    // exits 0 within the drain timeout plus a grace.
    let (status, proxy) = exit.await.unwrap();
    let took = started.elapsed();
    assert!(cut.await.unwrap().is_err(), "the stuck request was cut");
    let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", proxy.logs()));
    assert!(status.success(), "{status:?}\n{}", proxy.logs());
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_are_served_without_cache_or_control_plane_and_nothing_means_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("stable-d").await;
    let web = free_addr();
    let dead_control = format!("http://{}", free_addr());
    // Nothing at all: the proxy runs but is not ready.
    let empty = ProxyProcess::start(
        std::slice::from_ref(&dead_control),
        "empty",
        GROUP,
        &dir.path().join("cache-empty"),
        &dir.path().join("logs"),
        &[],
    );
    assert_eq!(empty.readyz(), 503);
    assert_eq!(empty.status()["source"], "defaults");
    drop(empty);

    // With --defaults it serves them at once, and says it is degraded.
    let file = dir.path().join("defaults.json");
    let spec = spec(web, &[&backend], None);
    std::fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let proxy = ProxyProcess::start(
        &[dead_control],
        "defaults",
        GROUP,
        &dir.path().join("cache-defaults"),
        &dir.path().join("logs"),
        &["--defaults", &file],
    );
    proxy.wait_ready();
    let dump = proxy.config_dump();
    assert_eq!(
        (dump["version"].as_u64(), dump["source"].as_str()),
        (Some(0), Some("defaults"))
    );
    let status = proxy.status();
    assert_eq!(status["state"], "degraded", "{status}");
    let r = HttpClient::http1().get(web, "/stable", &[]).await.unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, "stable-d"));
}
