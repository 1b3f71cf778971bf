//! vane-proxy (and the admin ports of the sidecar and the control server)
//! against hostile clients, over real processes: slowloris clients on an
//! HTTP listener and on the admin ports, oversize and malformed request heads, garbage after the HTTP/2
//! preface, and more connections than `--max-connections`.
//!
//! Every hostile client gets a 4xx or a closed connection, a well-behaved
//! client running meanwhile sees no failed request, and the process stays
//! up. Waits are generous; what is asserted is outcomes (counts), plus that
//! no slowloris connection outlived its timeout by more than a wide margin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vane_model::SnapshotSpec;
use vane_testkit::net::{free_addr, http_get};
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{
    Backend, HttpClient, Load, LoadReport, OneConnection, ProxyProcess, push,
};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures};

const GROUP: &str = "edge";
/// Slowloris connections per target (the admin ports allow 256).
const ATTACKERS: usize = 220;
/// A slowloris connection still open this long after connecting fails the test.
const GIVE_UP: Duration = Duration::from_secs(15);

/// A control server, one backend, and a proxy serving one HTTP listener
/// (`web`) that routes everything to the backend.
struct Setup {
    _server: ControlServer,
    _backend: Backend,
    web: SocketAddr,
    proxy: ProxyProcess,
}

async fn setup(node: &str, flags: &[&str]) -> Setup {
    let server = ControlServer::start();
    let backend = Backend::start("a").await;
    let web = free_addr();
    let spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("all", "/", "a")])],
        clusters: vec![cluster("a", "round_robin", &[(backend.addr, 1)])],
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let dir = server.scratch();
    let proxy = ProxyProcess::start(
        &[server.url()],
        node,
        GROUP,
        &dir.join("cache"),
        &dir.join("logs"),
        flags,
    );
    proxy.wait_version(v);
    Setup {
        _server: server,
        _backend: backend,
        web,
        proxy,
    }
}

/// How a slowloris connection ended.
#[derive(Debug)]
enum Ended {
    /// The server closed it (EOF or reset) this long after the connect.
    Closed(Duration),
    /// Still open at [`GIVE_UP`].
    StillOpen,
    /// The server answered a head it never received whole: a bug.
    Answered(String),
    /// Could not even connect.
    NoConnect(String),
}

/// What a slowloris client trickles.
#[derive(Debug, Clone, Copy)]
enum Slow {
    /// A request line and a header, then one more byte of a header line
    /// at a time, never finishing the head.
    Http1Head,
    /// The HTTP/2 preface, one byte at a time (the protocol detection
    /// waits for all 24).
    H2Preface,
    /// Nothing at all.
    Silent,
}

/// One slowloris client: sends one byte every `every` as `kind` says,
/// until the server closes the connection.
async fn slowloris(addr: SocketAddr, kind: Slow, every: Duration) -> Ended {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let started = Instant::now();
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Ended::NoConnect(e.to_string()),
    };
    if let Slow::Http1Head = kind
        && s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .is_err()
    {
        return Ended::Closed(started.elapsed());
    }
    let mut sent = 0;
    let mut tick = tokio::time::interval(every);
    let give_up = tokio::time::Instant::from_std(started + GIVE_UP);
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => return match r {
                Ok(0) | Err(_) => Ended::Closed(started.elapsed()),
                Ok(n) => Ended::Answered(String::from_utf8_lossy(&buf[..n]).into_owned()),
            },
            _ = tick.tick() => {
                let byte = match kind {
                    Slow::Http1Head => &b"a"[..],
                    // Stops one byte short of the whole preface.
                    Slow::H2Preface => &PREFACE[sent..(sent + 1).min(PREFACE.len() - 1)],
                    Slow::Silent => &[][..],
                };
                sent += byte.len();
                if s.write_all(byte).await.is_err() {
                    return Ended::Closed(started.elapsed());
                }
            }
            () = tokio::time::sleep_until(give_up) => return Ended::StillOpen,
        }
    }
}

/// Runs [`ATTACKERS`] slowloris clients against `addr` at once (one in
/// eleven silent, one in eleven on the HTTP/2 preface, the rest on an
/// HTTP/1 head); returns how long each connection lived, sorted, and
/// panics on any other ending.
async fn attack(addr: SocketAddr, what: &str) -> Vec<Duration> {
    let tasks: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let kind = match i % 11 {
                0 => Slow::Silent,
                1 => Slow::H2Preface,
                _ => Slow::Http1Head,
            };
            tokio::spawn(slowloris(addr, kind, Duration::from_millis(100)))
        })
        .collect();
    let mut lived = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ended::Closed(d) => lived.push(d),
            Ended::StillOpen => panic!("a slowloris connection to the {what} outlived {GIVE_UP:?}"),
            Ended::Answered(a) => {
                panic!("the {what} answered a slowloris head it never got whole: {a:?}")
            }
            Ended::NoConnect(e) => panic!("cannot connect to the {what}: {e}"),
        }
    }
    lived.sort();
    println!(
        "slowloris on the {what}: {} connections closed by the server after {:?} (min) / {:?} (median) / {:?} (max)",
        lived.len(),
        lived[0],
        lived[lived.len() / 2],
        lived[lived.len() - 1]
    );
    lived
}

/// A well-behaved admin client: fresh connections (`Connection: close`),
/// `GET path` back to back until stopped; returns (ok, failures described).
fn admin_poller(addr: SocketAddr, path: &'static str, stop: Arc<AtomicBool>) -> AdminPoller {
    let ok = Arc::new(AtomicU64::new(0));
    let counted = ok.clone();
    let thread = std::thread::spawn(move || {
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match http_get(addr, path) {
                Ok((200, _)) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok((code, body)) => failures.push(format!("status {code}: {body}")),
                Err(e) => failures.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        failures
    });
    AdminPoller { ok, thread }
}

struct AdminPoller {
    ok: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl AdminPoller {
    fn finish(self) -> (u64, Vec<String>) {
        let failures = self.thread.join().unwrap();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// The value of the metric line `name` in OpenMetrics text (0 if absent).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[track_caller]
fn assert_no_failures(report: &LoadReport, what: &str) {
    assert!(report.ok > 0, "{what}: no request succeeded: {report:?}");
    assert_eq!(report.failed, 0, "{what}: failed requests: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_a_listener_and_the_admin_port_is_cut_off() {
    // A short header timeout keeps the test fast; the idle timeout is long,
    // so only the header timeout can be what closes the attackers.
    let mut s = setup(
        "slowloris",
        &["--header-read-timeout", "1s", "--idle-timeout", "60s"],
    )
    .await;
    let load = Load::start(2, s.web, "/", &[], "a");
    let stop = Arc::new(AtomicBool::new(false));
    let poller = admin_poller(s.proxy.admin, "/readyz", stop.clone());

    let (web, admin) = tokio::join!(
        attack(s.web, "listener"),
        attack(s.proxy.admin, "admin port")
    );

    stop.store(true, Ordering::Relaxed);
    let report = load.stop().await;
    let (admin_ok, admin_failures) = poller.finish();
    println!(
        "during the attack: {} proxied requests ok, {} failed; {admin_ok} admin requests ok, {} failed",
        report.ok,
        report.failed,
        admin_failures.len()
    );
    assert_no_failures(&report, "the proxied client during the slowloris attack");
    assert!(admin_ok > 0);
    assert!(
        admin_failures.is_empty(),
        "admin requests failed during the attack: {admin_failures:?}"
    );
    for (lived, what) in [(&web, "listener"), (&admin, "admin port")] {
        assert_eq!(lived.len(), ATTACKERS);
        // Never before the timeout (the clock starts at the accept, after
        // our connect), and within it plus a wide margin.
        assert!(lived[0] >= Duration::from_millis(950), "{what}: {lived:?}");
        assert!(
            lived[lived.len() - 1] < Duration::from_secs(10),
            "{what}: {lived:?}"
        );
    }
    assert!(s.proxy.is_running(), "the proxy died:\n{}", s.proxy.logs());
    let timed_out = s.proxy.metric(
        "vane_proxy_connections_closed_total",
        &["listener=\"web\"", "reason=\"header_timeout\""],
    );
    assert!(timed_out >= ATTACKERS as f64, "{timed_out}");
    let admin_timed_out = s
        .proxy
        .metric("vane_proxy_admin_connections_timed_out_total", &[]);
    assert!(admin_timed_out >= ATTACKERS as f64, "{admin_timed_out}");
}

/// Sends `bytes` on a new connection, then reads until the server closes
/// it; returns what it answered ("" when it reset the connection before
/// anything could be read). Panics when the server keeps the connection.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may close before reading everything (then the write fails).
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&got).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_requests_get_a_4xx_or_a_close() {
    let mut s = setup("malformed", &["--header-read-timeout", "2s"]).await;
    let load = Load::start(2, s.web, "/", &[], "a");
    let web = s.web;

    // More than 100 header fields: 431, then a close.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = send_raw(web, many.as_bytes()).await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 431"),
        "{answer:?}"
    );

    // A 100 KiB header: 431, or a reset when the server closes with the
    // rest of the head unread (TCP then discards the 431 in flight).
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = send_raw(web, big.as_bytes()).await;
    assert!(
        answer.is_empty() || status_line(&answer).starts_with("HTTP/1.1 431"),
        "{answer:?}"
    );

    // Garbage: the start of a TLS ClientHello sent to the plaintext port,
    // a request line with a NUL, binary noise without a line end.
    let answer = send_raw(
        web,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(
        answer.is_empty() || status_line(&answer).starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    let answer = send_raw(web, b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        answer.is_empty() || status_line(&answer).starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    let noise: Vec<u8> = (0..80 * 1024u32)
        .map(|i| (i * 7 + 13) as u8 | 0x80)
        .collect();
    let answer = send_raw(web, &noise).await;
    assert!(
        answer.is_empty() || status_line(&answer).starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );

    // The HTTP/2 preface, then garbage instead of a SETTINGS frame: the
    // server's GOAWAY (or a reset), then a close.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[0xff; 64]);
    let answer = send_raw(web, &h2).await;
    println!(
        "h2 preface + garbage: {} bytes back, then closed",
        answer.len()
    );

    // An h2c request whose headers are over the 64 KiB limit: refused
    // (an error or a 431), and the next h2c request is served.
    let h2c = HttpClient::h2c();
    let big_value = "b".repeat(100 * 1024);
    match h2c.get(web, "/", &[("x-big", big_value.as_str())]).await {
        Ok(r) => assert_eq!(r.status, 431, "{r:?}"),
        Err(e) => println!("h2c request with 100 KiB of headers: {e}"),
    }
    let r = HttpClient::h2c().get(web, "/", &[]).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "a"));

    let report = load.stop().await;
    println!(
        "during the malformed requests: {} requests ok, {} failed",
        report.ok, report.failed
    );
    assert_no_failures(&report, "the client during the malformed requests");
    assert!(s.proxy.is_running(), "the proxy died:\n{}", s.proxy.logs());
    let too_large = s.proxy.metric(
        "vane_proxy_connections_closed_total",
        &["listener=\"web\"", "reason=\"header_too_large\""],
    );
    let malformed = s.proxy.metric(
        "vane_proxy_connections_closed_total",
        &["listener=\"web\"", "reason=\"malformed\""],
    );
    println!("closed: header_too_large={too_large} malformed={malformed}");
    assert!(too_large >= 2.0, "{too_large}");
    assert!(malformed >= 2.0, "{malformed}");
    // Still serving, on a new connection too.
    let r = HttpClient::http1().get(web, "/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_new_connections_are_closed_and_old_ones_kept() {
    const CAP: usize = 20;
    let cap = CAP.to_string();
    let mut s = setup("cap", &["--max-connections", cap.as_str()]).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut c = OneConnection::open(s.web).await.unwrap();
        assert_eq!(c.get("/").await.unwrap().status, 200);
        held.push(c);
    }

    // Over the cap: accepted, then closed at once without an answer.
    for _ in 0..10 {
        let answer = send_raw(s.web, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(answer, "", "a connection over the cap was served");
    }
    // The connections under the cap keep working.
    for c in &mut held {
        assert_eq!(c.get("/").await.unwrap().status, 200);
    }
    let refused = s.proxy.metric(
        "vane_proxy_connections_refused_total",
        &["listener=\"web\""],
    );
    assert!(refused >= 10.0, "{refused}");
    assert!(
        s.proxy.logs().contains("at --max-connections"),
        "the refusal is logged"
    );

    // Closing some frees their slots.
    held.truncate(CAP - 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = OneConnection::open(s.web).await
            && c.get("/").await.is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "slots were never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in &mut held {
        assert_eq!(c.get("/").await.unwrap().status, 200);
    }
    assert!(s.proxy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_sidecar_admin_port_is_cut_off() {
    // The sidecar's admin timeout is fixed (10 s): fewer attackers, the
    // same assertions.
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let v1 = fixtures::write_json(&dir, "v1.json", &fixtures::example_spec());
    server
        .ctl(&["push", GROUP, "-f", v1.to_str().unwrap()])
        .ok();
    let url = server.url();
    let cache = dir.join("cache");
    let agent = Sidecar::start(
        &[
            "--node-id",
            "side-admin",
            "--group",
            GROUP,
            "--control",
            url.as_str(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        &dir.join("agent.log"),
    );
    agent.wait_status("version 1", |s| s["version"] == 1);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = admin_poller(agent.admin, "/status", stop.clone());

    let lived = attack(agent.admin, "sidecar admin port").await;

    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = poller.finish();
    assert!(ok > 0);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(lived[0] >= Duration::from_millis(9_950), "{lived:?}");
    assert!(lived[lived.len() - 1] < GIVE_UP, "{lived:?}");
    let (code, metrics) = http_get(agent.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    let timed_out = counter(&metrics, "vane_agent_admin_connections_timed_out_total");
    assert!(timed_out >= ATTACKERS as f64, "{metrics}");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_control_servers_admin_port_is_cut_off() {
    // vane-control's --admin-listen (metrics, health) has the same guard:
    // 256 connections, 10 s per request.
    let admin = free_addr();
    let admin_flag = admin.to_string();
    let mut server = ControlServer::start_with(&["--admin-listen", admin_flag.as_str()]);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = admin_poller(admin, "/healthz", stop.clone());

    let lived = attack(admin, "control admin port").await;

    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = poller.finish();
    assert!(ok > 0);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(lived[0] >= Duration::from_millis(9_950), "{lived:?}");
    assert!(lived[lived.len() - 1] < GIVE_UP, "{lived:?}");
    // The gRPC side was never touched.
    let v1 = fixtures::write_json(&server.scratch(), "v1.json", &fixtures::example_spec());
    server
        .ctl(&["push", GROUP, "-f", v1.to_str().unwrap()])
        .ok();
    let (code, metrics) = http_get(admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    let timed_out = counter(&metrics, "vane_control_admin_connections_timed_out_total");
    assert!(timed_out >= ATTACKERS as f64, "{metrics}");
    server.kill();
}
