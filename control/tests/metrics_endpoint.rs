//! The admin endpoint of a real server (in-process, loopback): `/metrics`
//! shows convergence (push-to-ACK), agents per state and bytes sent full vs
//! delta after an agent received a full snapshot and a delta; `/healthz`
//! answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use vane_control::{Config, Server};
use vane_proto as pb;

fn snapshot(timeout_ms: u64) -> pb::Snapshot {
    let spec = vane_model::parse_file(
        format!(
            r#"{{"clusters": [{{"name": "c", "endpoints": [{{"address": "127.0.0.1:1"}}]}}],
                "route_tables": [{{"name": "main", "routes": [
                    {{"match": {{"path_prefix": "/a"}}, "cluster": "c", "timeout_ms": {timeout_ms}}},
                    {{"match": {{"path_prefix": "/b"}}, "cluster": "c"}},
                    {{"match": {{"path_prefix": "/c"}}, "cluster": "c"}},
                    {{"match": {{"path_prefix": "/d"}}, "cluster": "c"}}]}}]}}"#
        )
        .as_bytes(),
        vane_model::Format::Json,
    )
    .unwrap();
    vane_model::proto::spec_to_proto(&spec)
}

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_convergence_states_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        data_dir: dir.path().to_path_buf(),
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    let admin_addr = server.admin_addr().expect("the admin endpoint is bound");
    let stop = CancellationToken::new();
    let running = tokio::spawn(server.serve(stop.clone().cancelled_owned()));

    let mut admin = pb::admin_client::AdminClient::connect(url.clone())
        .await
        .unwrap();
    let push = |s: pb::Snapshot| pb::PushRequest {
        supersede: false,
        group: "edge".into(),
        snapshot: Some(s),
        expected_version: None,
        dry_run: false,
        message: String::new(),
    };
    admin.push(push(snapshot(1000))).await.unwrap();

    let mut watch = pb::config_discovery_client::ConfigDiscoveryClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchRequest {
        node: Some(pb::Node {
            id: "n1".into(),
            group: "edge".into(),
            ..Default::default()
        }),
        accept_delta: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = watch
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let ack = |r: &pb::WatchResponse| pb::WatchRequest {
        version_info: r.version,
        hash: r.hash.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    };
    let r1 = responses.message().await.unwrap().unwrap();
    assert!(matches!(
        r1.body,
        Some(pb::watch_response::Body::Snapshot(_))
    ));
    tx.send(ack(&r1)).await.unwrap();

    admin.push(push(snapshot(2000))).await.unwrap();
    let r2 = responses.message().await.unwrap().unwrap();
    assert!(matches!(r2.body, Some(pb::watch_response::Body::Delta(_))));
    tx.send(ack(&r2)).await.unwrap();

    let expected = [
        r#"vane_control_agents{group="edge",state="synced"} 1"#,
        r#"vane_control_agents_connected{group="edge"} 1"#,
        r#"vane_control_head_version{group="edge"} 2"#,
        r#"vane_control_push_to_ack_seconds_count{group="edge"} 1"#,
        r#"vane_control_watch_responses_total{group="edge",kind="full"} 1"#,
        r#"vane_control_watch_responses_total{group="edge",kind="delta"} 1"#,
        r#"vane_control_watch_streams{group="edge"} 1"#,
        r#"vane_control_acks_total{group="edge"} 2"#,
    ];
    // The second ACK is recorded asynchronously: poll a little.
    let mut body = String::new();
    for _ in 0..100 {
        let (head, text) = tokio::task::spawn_blocking(move || get(admin_addr, "/metrics"))
            .await
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // The Prometheus text format unless OpenMetrics is asked for.
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        body = text;
        if expected.iter().all(|l| body.contains(l)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for line in expected {
        assert!(body.contains(line), "missing {line} in:\n{body}");
    }
    let (head, text) = tokio::task::spawn_blocking(move || get(admin_addr, "/healthz"))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200") && text.starts_with("ok"));

    stop.cancel();
    running.await.unwrap().unwrap();
}
