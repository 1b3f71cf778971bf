//! Health from the data plane, over real processes: a sidecar's failing
//! `--health-cmd` shows its agent degraded (with the command's stderr and
//! the version) on the control server until the command passes; vane-proxy
//! routing to a dead port under a little traffic reports itself degraded,
//! naming the error ratio, and healthy again on a version that works; a
//! node's streams (`sessions`) count its reconnects, also across replicas
//! of an etcd cluster; and a NACK's code is recorded (9 for a
//! `--check-cmd` refusal, 3 for invalid content).
//!
//! The agents' records are read from `Admin.Status` (the `AgentStatus`
//! fields `degraded`, `health_reason`, `health_version`, `nack_code`,
//! `sessions`, which `vanectl status -o json` prints).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use vane_model::SnapshotSpec;
use vane_proto as pb;
use vane_testkit::etcd::{EtcdCluster, start_replica};
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, HttpClient, ProxyProcess, push};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, WatchClient, fixtures, vanectl};

const GROUP: &str = "health";
const WAIT: Duration = Duration::from_secs(20);

/// `node`'s record on the server at `url`, from `Admin.Status`.
async fn agent(url: &str, node: &str) -> Option<pb::AgentStatus> {
    let mut admin = pb::admin_client::AdminClient::connect(url.to_owned())
        .await
        .unwrap();
    let status = admin
        .status(pb::StatusRequest {
            group: GROUP.into(),
            ..pb::StatusRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    status.agents.into_iter().find(|a| a.node_id == node)
}

/// Polls `node`'s record until `pred` holds; panics with the last one
/// after [`WAIT`].
async fn wait_agent(
    url: &str,
    node: &str,
    what: &str,
    pred: impl Fn(&pb::AgentStatus) -> bool,
) -> pb::AgentStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = agent(url, node).await;
        if let Some(a) = &a
            && pred(a)
        {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{node} did not reach {what}: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn push_file(url: &str, file: &Path) -> u64 {
    let out = vanectl(
        url,
        &["push", GROUP, "-f", file.to_str().unwrap(), "-o", "json"],
    )
    .ok();
    out.json()["version"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_cmd_shows_the_agent_degraded_until_it_passes() {
    let server = ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let v1 = push_file(
        &url,
        &fixtures::write_json(&dir, "v1.json", &fixtures::example_spec()),
    );
    let flag = dir.join("healthy");
    let cmd = format!(
        "test -f {f} || {{ echo '  {f} is missing  ' >&2; exit 1; }}",
        f = flag.display()
    );
    let sidecar = Sidecar::follow(
        "side-h",
        GROUP,
        std::slice::from_ref(&url),
        &dir,
        &["--health-cmd", &cmd, "--health-interval", "200ms"],
    );
    let missing = format!("{} is missing", flag.display());
    let a = wait_agent(&url, "side-h", "degraded on v1", |a| {
        a.degraded && a.health_version == v1
    })
    .await;
    assert_eq!(a.health_reason, missing, "the trimmed stderr");
    assert_eq!(a.acked_version, v1);
    let status = sidecar.status();
    assert_eq!(
        status["data_plane_health"],
        json!({"degraded": true, "reason": missing, "version": v1})
    );
    assert_eq!(
        status["state"], "healthy",
        "the agent's own health is apart"
    );

    // The command passes: healthy again, within a few intervals.
    std::fs::write(&flag, "").unwrap();
    let fixed = Instant::now();
    let a = wait_agent(&url, "side-h", "healthy on v1", |a| !a.degraded).await;
    println!(
        "health-cmd passing -> healthy on the server: {:?}",
        fixed.elapsed()
    );
    assert_eq!((a.health_reason.as_str(), a.health_version), ("", v1));

    // A new version is checked after its apply: the report follows it.
    let v2 = push_file(
        &url,
        &fixtures::write_json(
            &dir,
            "v2.json",
            &fixtures::example_with_value("mode", json!("v2")),
        ),
    );
    wait_agent(&url, "side-h", "healthy on v2", |a| {
        a.acked_version == v2 && a.health_version == v2 && !a.degraded
    })
    .await;
    std::fs::remove_file(&flag).unwrap();
    let a = wait_agent(&url, "side-h", "degraded on v2", |a| a.degraded).await;
    assert_eq!(
        (a.health_reason.as_str(), a.health_version),
        (missing.as_str(), v2)
    );
}

/// Listener `web` routing `/api` to `target`.
fn routing(
    web: std::net::SocketAddr,
    dead: std::net::SocketAddr,
    good: &Backend,
    target: &str,
) -> SnapshotSpec {
    SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("api", "/api", target)])],
        clusters: vec![
            cluster("dead", "round_robin", &[(dead, 1)]),
            cluster("good", "round_robin", &[(good.addr, 1)]),
        ],
        ..SnapshotSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vane_proxy_routing_to_a_dead_port_reports_itself_degraded() {
    let server = ControlServer::start();
    let url = server.url();
    let good = Backend::start("good").await;
    // Nothing listens there.
    let dead = free_addr();
    let web = free_addr();
    let v1 = push(&server, GROUP, &routing(web, dead, &good, "dead"));
    let dir = server.scratch();
    let proxy = ProxyProcess::start(
        std::slice::from_ref(&url),
        "p1",
        GROUP,
        &dir.join("cache"),
        &dir.join("logs"),
        &[],
    );
    proxy.wait_version(v1);
    // Healthy while there is no traffic: too little evidence either way.
    wait_agent(&url, "p1", "healthy on v1", |a| {
        a.acked_version == v1 && a.health_version == v1 && !a.degraded
    })
    .await;

    let http = HttpClient::http1();
    let mut failed = 0;
    for _ in 0..30 {
        let r = http.get(web, "/api", &[]).await.unwrap();
        failed += u32::from(matches!(r.status, 502..=504));
    }
    assert_eq!(failed, 30, "every request to the dead port fails");
    let a = wait_agent(&url, "p1", "degraded on v1", |a| a.degraded).await;
    assert_eq!(a.health_version, v1);
    assert!(
        a.health_reason
            .starts_with("error ratio 1.00 over the last 10s: ")
            && a.health_reason
                .ends_with("(limit --unhealthy-error-ratio 0.2)"),
        "{}",
        a.health_reason
    );
    assert_eq!(proxy.status()["data_plane_health"]["degraded"], true);
    assert_eq!(proxy.metric("vane_proxy_degraded", &[]), 1.0);
    assert_eq!(proxy.metric("vane_proxy_error_ratio", &[]), 1.0);

    // A version that routes to a live backend: judged on its own traffic
    // (the window starts over), healthy.
    let v2 = push(&server, GROUP, &routing(web, dead, &good, "good"));
    proxy.wait_version(v2);
    for _ in 0..30 {
        let r = http.get(web, "/api", &[]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let a = wait_agent(&url, "p1", "healthy on v2", |a| {
        a.health_version == v2 && !a.degraded
    })
    .await;
    assert_eq!(a.health_reason, "");
    assert_eq!(proxy.metric("vane_proxy_degraded", &[]), 0.0);
    assert_eq!(proxy.metric("vane_proxy_error_ratio", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_count_reconnects_and_nack_codes_are_recorded() {
    let server = ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let v1 = push_file(
        &url,
        &fixtures::write_json(&dir, "v1.json", &fixtures::example_spec()),
    );

    // A --check-cmd refusal: the agent cannot apply it here (9,
    // FAILED_PRECONDITION), not invalid content.
    let refuse = ["--check-cmd", "echo 'port 80 is taken' >&2; false"];
    let mut sidecar = Sidecar::follow("side-n", GROUP, std::slice::from_ref(&url), &dir, &refuse);
    let a = wait_agent(&url, "side-n", "NACK of v1", |a| {
        a.last_nacked_version == v1
    })
    .await;
    assert_eq!(
        (a.nack_code, a.nack_reason.as_str()),
        (9, "port 80 is taken")
    );
    assert_eq!(a.sessions, 1);

    // The process restarts twice: three streams of the node.
    for n in 2..=3u64 {
        sidecar.terminate(Duration::from_secs(5));
        wait_agent(&url, "side-n", "disconnected", |a| !a.connected).await;
        sidecar = Sidecar::follow("side-n", GROUP, std::slice::from_ref(&url), &dir, &refuse);
        wait_agent(&url, "side-n", "reconnected", |a| {
            a.connected && a.sessions == n
        })
        .await;
    }

    // An agent refusing content as invalid (a scripted one: the real agent
    // validates with the same model as the server, so it never gets such
    // content): code 3, what a rollout aborts on at once.
    let mut scripted = WatchClient::connect(&url, "scripted", GROUP, None).await;
    let response = scripted.recv().await;
    scripted
        .nack(&response, (0, ""), "clusters[0]: unknown load balancer")
        .await;
    let a = wait_agent(&url, "scripted", "NACK of v1", |a| {
        a.last_nacked_version == v1
    })
    .await;
    assert_eq!(a.nack_code, 3);
    drop(sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_sessions_replicate_across_etcd_replicas() {
    let etcd = EtcdCluster::start(1);
    let a = start_replica("replica-a", &etcd.endpoints(), &[]);
    let b = start_replica("replica-b", &etcd.endpoints(), &[]);
    let dir = a.scratch();
    let v1 = push_file(
        &a.url(),
        &fixtures::write_json(&dir, "v1.json", &fixtures::example_spec()),
    );
    let health = [
        "--health-cmd",
        "echo 'disk full' >&2; exit 1",
        "--health-interval",
        "200ms",
    ];
    // On replica A, then on replica B.
    let mut sidecar = Sidecar::follow("side-r", GROUP, &[a.url()], &dir, &health);
    let on_a = wait_agent(&b.url(), "side-r", "degraded, seen from B", |r| {
        r.degraded && r.health_version == v1
    })
    .await;
    assert_eq!(
        (on_a.replica.as_str(), on_a.health_reason.as_str()),
        ("replica-a", "disk full")
    );
    assert_eq!(on_a.sessions, 1);
    sidecar.terminate(Duration::from_secs(5));
    let _sidecar = Sidecar::follow("side-r", GROUP, &[b.url()], &dir, &health);
    // Seen from A: the stream on B, counted with the one A held.
    let on_b = wait_agent(&a.url(), "side-r", "on B, degraded", |r| {
        r.replica == "replica-b" && r.connected && r.degraded
    })
    .await;
    assert_eq!(on_b.sessions, 2, "one stream on each replica");
    assert_eq!(
        (on_b.health_reason.as_str(), on_b.health_version),
        ("disk full", v1)
    );
}
