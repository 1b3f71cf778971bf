//! Small runs of both scenarios against an in-process control server, so
//! the benchmarks cannot rot: a few dozen agents, a few pushes, seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vane_control::{Config, Server};
use vane_loadgen::fanout::{self, FanoutConfig};
use vane_loadgen::fleet::Verify;
use vane_loadgen::push::{self, PushConfig};

async fn server(dir: &std::path::Path) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let server = Server::bind(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_path_buf(),
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(async move {
        server.serve(signal.cancelled_owned()).await.unwrap();
    });
    (url, stop, task)
}

fn fanout_config(url: &str, agents: usize, connections: usize, verify: Verify) -> FanoutConfig {
    FanoutConfig {
        server: url.to_owned(),
        server_pid: Some(std::process::id()),
        group: format!("smoke-{verify:?}"),
        agents,
        connections,
        routes: 30,
        pushes: 2,
        phases: fanout::Phases::default(),
        verify,
        accept_delta: true,
        settle: Duration::ZERO,
        between_pushes: Duration::from_millis(1),
        ack_timeout: Duration::from_secs(30),
        connect_parallelism: 8,
        verify_threads: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, task) = server(dir.path()).await;

    let report = fanout::run(&fanout_config(&url, 24, 8, Verify::Shared))
        .await
        .unwrap();
    assert_eq!(
        (report.agents, report.connections, report.routes),
        (24, 8, 30)
    );
    assert_eq!(report.full_phase_responses, [24, 0], "{report:?}");
    assert_eq!(report.delta_phase_responses, [0, 24], "{report:?}");
    assert_eq!(report.nacks, [0, 0]);
    assert!(report.delta_bytes * 10 < report.full_bytes, "{report:?}");
    assert!(report.full_acked_max_ms >= report.full_received_p50_ms);
    assert!(report.server_rss_idle_kib > 0);
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "agents",
        "connections",
        "routes",
        "full_received_p99_ms",
        "full_acked_p99_ms",
        "delta_received_p99_ms",
        "delta_acked_p99_ms",
        "rss_per_agent_kib",
        "full_bytes",
        "delta_bytes",
    ] {
        assert!(json.get(field).is_some(), "missing {field}");
    }

    // Every agent checking every response itself, one agent per connection.
    let report = fanout::run(&fanout_config(&url, 6, 6, Verify::Every))
        .await
        .unwrap();
    assert_eq!(report.delta_phase_responses, [0, 6], "{report:?}");
    assert_eq!(report.nacks, [0, 0]);

    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, task) = server(dir.path()).await;
    let report = push::run(&PushConfig {
        server: url,
        concurrency: vec![1, 4],
        duration: Duration::from_millis(300),
        fsync_dir: Some(dir.path().to_path_buf()),
    })
    .await
    .unwrap();
    for k in ["1", "4"] {
        assert!(report.pushes_per_sec[k] > 0.0, "{report:?}");
        assert!(report.pushes_per_sec_one_group[k] > 0.0, "{report:?}");
    }
    assert!(report.fsync_p50_ms.unwrap() >= 0.0);
    stop.cancel();
    task.await.unwrap();
}
