//! Observability over real processes: the three `/metrics` endpoints
//! (vane-control's --admin-listen, the vane-agent sidecar's, vane-proxy's)
//! pass `promtool check metrics` after traffic (a push, an agent sync, a
//! proxied request, a refused Admin call) and carry the shared series;
//! `Accept: application/openmetrics-text` gets OpenMetrics; the log files
//! have no ANSI codes and the agents' lines name node and group;
//! `--log-level` is checked and obeyed; `--version` and `vanectl version`
//! name the build commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vane_model::SnapshotSpec;
use vane_testkit::ControlServer;
use vane_testkit::net::{free_addr, http_get, metric_in};
use vane_testkit::process::bin_path;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, HttpClient, ProxyProcess, WAIT, push};
use vane_testkit::sidecar::Sidecar;

const GROUP: &str = "obs";

/// `GET path` on `addr` with `Accept: accept`: the response head and body.
fn get_accepting(addr: SocketAddr, path: &str, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}

/// Runs `promtool check metrics` on `text`; panics with its findings
/// unless it exits 0.
#[track_caller]
fn promtool_passes(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` (cargo xtask test does)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed on {what} ({}):\n{}{}\n--- metrics ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The endpoint's metrics in both formats, each checked: the default is
/// the Prometheus text format (promtool passes it), OpenMetrics on
/// request (with its `# EOF`). Returns the default text.
#[track_caller]
fn scrape(what: &str, admin: SocketAddr) -> String {
    let (head, text) = get_accepting(admin, "/metrics", "*/*");
    assert!(head.starts_with("HTTP/1.1 200"), "{what}: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{what}: {head}"
    );
    let text = dechunk(&head, text);
    assert!(!text.contains("# EOF"), "{what}:\n{text}");
    promtool_passes(what, &text);
    let (head, om) = get_accepting(
        admin,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{what}: {head}"
    );
    let om = dechunk(&head, om);
    assert!(om.ends_with("# EOF\n"), "{what}:\n{om}");
    // CPU time is counted in clock ticks (10 ms): a quiet process may have
    // used none yet, so it must be there, not above 0.
    assert!(
        metric_in(&text, "process_cpu_seconds_total", &[]).is_some_and(|v| v >= 0.0),
        "{what}: no process_cpu_seconds_total:\n{text}"
    );
    for series in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            metric_in(&text, series, &[]).is_some_and(|v| v > 0.0),
            "{what}: no {series}:\n{text}"
        );
    }
    let build = format!(
        "vane_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        vane_build_info::VERSION,
        vane_build_info::COMMIT
    );
    assert!(text.contains(&build), "{what}: no {build}:\n{text}");
    text
}

/// A chunked body decoded (the admin endpoints stream large answers).
fn dechunk(head: &str, body: String) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

fn spec(web: SocketAddr, backend: &Backend) -> SnapshotSpec {
    SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("x", "/x", "a")])],
        clusters: vec![cluster("a", "round_robin", &[(backend.addr, 1)])],
        ..SnapshotSpec::default()
    }
}

/// Polls until `f` holds; panics with `what` after [`WAIT`].
#[track_caller]
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_metrics_endpoints_pass_promtool_after_traffic() {
    let control_admin = free_addr();
    let server = ControlServer::start_with(&["--admin-listen", &control_admin.to_string()]);
    let backend = Backend::start("a").await;
    let web = free_addr();
    let v1 = push(&server, GROUP, &spec(web, &backend));
    // An Admin call that fails: NOT_FOUND.
    let missing = server.ctl(&["get", "no-such-group"]);
    assert_ne!(missing.code, 0, "{missing}");

    let dir = server.scratch();
    let mut agent = Sidecar::follow(
        "side-1",
        GROUP,
        &[server.url()],
        &dir,
        &["--check-cmd", "true", "--on-change", "true"],
    );
    agent.wait_status("the first version", |s| s["version"] == v1);
    let proxy = ProxyProcess::start(
        &[server.url()],
        "proxy-1",
        GROUP,
        &dir.join("proxy-cache"),
        &dir.join("proxy-logs"),
        &[],
    );
    proxy.wait_version(v1);
    let http = HttpClient::http1();
    let r = http.get(web, "/x", &[]).await.expect("a proxied request");
    assert_eq!(r.header("x-backend"), "a");

    // Control: Admin calls by method and code, their latency, the store's.
    let mut text = String::new();
    eventually("the control server counts the refused Get", || {
        text = scrape("vane-control", control_admin);
        metric_in(
            &text,
            "vane_control_admin_calls_total",
            &[r#"method="Get""#, r#"code="NotFound""#],
        )
        .is_some_and(|n| n >= 1.0)
    });
    for (series, labels) in [
        (
            "vane_control_admin_calls_total",
            &[r#"method="Push""#, r#"code="OK""#][..],
        ),
        (
            "vane_control_admin_call_duration_seconds_count",
            &[r#"method="Push""#][..],
        ),
        (
            "vane_control_store_operation_duration_seconds_count",
            &[r#"operation="push""#, r#"backend="embedded""#][..],
        ),
        (
            "vane_control_store_operation_duration_seconds_count",
            &[r#"operation="get""#][..],
        ),
    ] {
        assert!(
            metric_in(&text, series, labels).is_some_and(|n| n >= 1.0),
            "no {series} {labels:?}:\n{text}"
        );
    }
    let (code, body) = http_get(control_admin, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");

    // The sidecar: its commands' outcomes.
    let mut text = String::new();
    eventually("the sidecar counts its on-change run", || {
        text = scrape("vane-agent", agent.admin);
        metric_in(&text, "vane_agent_on_change_total", &[r#"outcome="ok""#])
            .is_some_and(|n| n >= 1.0)
    });
    assert!(
        metric_in(&text, "vane_agent_check_cmd_total", &[r#"outcome="ok""#])
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    scrape("vane-proxy", proxy.admin);

    // Logs: files, so no colours; every agent line names node and group.
    agent.terminate(Duration::from_secs(10));
    for (what, log) in [("vane-agent", agent.logs()), ("vane-proxy", proxy.logs())] {
        assert!(!log.contains('\x1b'), "{what}'s log has ANSI codes:\n{log}");
        let applied: Vec<&str> = log.lines().filter(|l| l.contains("applied")).collect();
        assert!(!applied.is_empty(), "{what}: no applied line:\n{log}");
        for line in applied {
            assert!(
                line.contains("node_id=") && line.contains(&format!("group={GROUP}")),
                "{what}: {line}"
            );
        }
    }
    assert!(!server.logs().contains('\x1b'), "{}", server.logs());
    // The push line names who pushed, and from where.
    let push_line = server
        .logs()
        .lines()
        .find(|l| l.contains(" push ") || l.ends_with(" push"))
        .map(str::to_owned);
    let push_line = push_line.unwrap_or_else(|| panic!("no push line:\n{}", server.logs()));
    assert!(
        push_line.contains("identity=") && push_line.contains("peer=127.0.0.1:"),
        "{push_line}"
    );
}

#[test]
fn log_level_is_checked_and_obeyed() {
    for bin in ["vane-control", "vane-agent", "vane-proxy"] {
        let out = Command::new(bin_path(bin))
            .args(["--log-level", "nonsense"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin}: {stderr}");
        assert!(
            stderr.contains("nonsense") && stderr.contains("--log-level"),
            "{bin}: {stderr}"
        );
    }

    // At debug, debug lines appear (RUST_LOG unset: it would win).
    let server = ControlServer::start();
    let dir = server.scratch();
    let log = dir.join("debug.log");
    let cache = dir.join("cache-debug");
    let mut cmd = Command::new(bin_path("vane-agent"));
    cmd.env_remove("RUST_LOG").args([
        "--node-id",
        "debug-1",
        "--group",
        GROUP,
        "--control",
        &server.url(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
        "--log-level",
        "debug",
    ]);
    let (child, _) =
        vane_testkit::process::spawn_announced(cmd, "vane-agent admin listening on ", &log);
    let mut text = String::new();
    eventually("a DEBUG line", || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(" DEBUG ")
    });
    vane_testkit::process::terminate_child(child, Duration::from_secs(10));
    assert!(!text.contains('\x1b'), "{text}");
}

#[test]
fn versions_name_the_commit_and_vanectl_version_asks_the_server() {
    for bin in ["vane-control", "vane-agent", "vane-proxy", "vanectl"] {
        let out = Command::new(bin_path(bin))
            .arg("--version")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin}: {stdout}");
        assert_eq!(
            stdout.trim(),
            format!("{bin} {}", vane_build_info::LONG_VERSION),
            "{bin}"
        );
        assert!(
            stdout.contains(&format!("(commit {}", vane_build_info::COMMIT)),
            "{stdout}"
        );
    }

    let server = ControlServer::start();
    let v = server.ctl(&["version", "-o", "json"]).ok().json();
    assert_eq!(v["client"]["commit"], vane_build_info::COMMIT, "{v}");
    assert_eq!(v["server"]["commit"], vane_build_info::COMMIT, "{v}");
    assert_eq!(v["server"]["version"], vane_build_info::VERSION, "{v}");
    let table = server.ctl(&["version"]).ok();
    assert!(table.stdout.starts_with("Client: "), "{table}");
    assert!(table.stdout.contains("\nServer: "), "{table}");

    // Nobody answers: the client's still, then exit 3.
    let nowhere = format!("http://{}", free_addr());
    let out = vane_testkit::vanectl(&nowhere, &["version"]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stdout.starts_with("Client: "), "{out}");
    assert!(!out.stdout.contains("Server:"), "{out}");
}
