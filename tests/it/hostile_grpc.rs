//! Hostile clients of the control server's gRPC endpoint, over real sockets:
//! garbage bytes and frames, a 100 MiB message, clients that never read or
//! never speak, replayed and forged ACKs, and a plaintext server on a
//! non-loopback address. Each gets a clear error or a closed connection; the
//! server stays up, its memory bounded, and the store unchanged. (Callers
//! with tokens they should not have: `hostile_tokens.rs`.)

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use vane_proto as pb;
use vane_testkit::process::{bin_path, spawn_announced, terminate_child};
use vane_testkit::{ControlServer, Next, WatchClient, fixtures};

/// A channel to the control server at `url`.
pub(crate) async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `message` as a request with `token` as its bearer token, if any.
pub(crate) fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// A push of the example snapshot to `group` with `values[key] = value`.
pub(crate) fn push_request(group: &str, key: &str, value: serde_json::Value) -> pb::PushRequest {
    pb::PushRequest {
        supersede: false,
        group: group.into(),
        snapshot: Some(vane_model::proto::spec_to_proto(
            &fixtures::example_with_value(key, value),
        )),
        expected_version: None,
        dry_run: false,
        message: format!("set {key}"),
    }
}

/// Node `node`'s entry of `group`'s status, asked with `token`.
pub(crate) async fn status_of(
    url: &str,
    token: Option<&str>,
    group: &str,
    node: &str,
) -> pb::AgentStatus {
    let mut admin = pb::admin_client::AdminClient::new(channel(url).await);
    let status = admin
        .status(with_token(
            pb::StatusRequest {
                group: group.into(),
                ..pb::StatusRequest::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    status
        .agents
        .into_iter()
        .find(|a| a.node_id == node)
        .unwrap_or_else(|| panic!("agent {node} not in status"))
}

#[tokio::test]
async fn replayed_and_forged_acks_are_not_recorded() {
    let server = ControlServer::start();
    let url = server.url();
    let mut admin = pb::admin_client::AdminClient::new(channel(&url).await);
    admin
        .push(push_request("edge", "a", 1.into()))
        .await
        .unwrap();
    let mut agent = WatchClient::connect(&url, "n1", "edge", None).await;
    let r1 = agent.recv().await;
    admin
        .push(push_request("edge", "a", 2.into()))
        .await
        .unwrap();
    let r2 = agent.recv().await;
    assert_eq!((r1.version, r2.version), (1, 2));

    let ack = |version: u64, hash: &str, nonce: &str| pb::WatchRequest {
        health: None,
        node: None,
        version_info: version,
        hash: hash.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: None,
        want_full: false,
        accept_delta: false,
        accept_store_notices: false,
    };
    // Replayed: the ACK of an older response.
    agent.send(ack(1, &r1.hash, &r1.nonce)).await;
    // Forged: the right nonce, a hash the server never sent.
    agent.send(ack(2, &"0".repeat(64), &r2.nonce)).await;
    // Forged: a nonce the server never issued.
    agent.send(ack(2, &r2.hash, "ffff-99")).await;
    // A version the response did not carry.
    agent.send(ack(7, &r2.hash, &r2.nonce)).await;
    // Then a real NACK of r2: once it shows, every request before it was
    // handled (one stream's requests are handled in order).
    agent.nack(&r2, (0, ""), "marker").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let n1 = loop {
        let n1 = status_of(&url, None, "edge", "n1").await;
        if n1.last_nacked_version == 2 {
            break n1;
        }
        assert!(Instant::now() < deadline, "the NACK never showed: {n1:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(n1.nack_reason, "marker");
    assert_eq!(
        n1.acked_version, 0,
        "a replayed or forged ACK was recorded: {n1:?}"
    );
    assert_eq!(n1.acked_hash, "");
}

/// Reads until the peer closes (Ok) or `within` passes (Err).
fn closed_within(stream: &mut TcpStream, within: Duration) -> Result<(), String> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionReset
                    || e.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                return Ok(());
            }
            Err(e) => return Err(format!("still open after {:?}: {e}", started.elapsed())),
        }
        if started.elapsed() > within {
            return Err(format!("still open after {within:?}"));
        }
    }
}

#[tokio::test]
async fn garbage_bytes_and_frames_close_the_connection() {
    let server = ControlServer::start();
    let url = server.url();
    server
        .ctl(&[
            "push",
            "edge",
            "-f",
            fixtures::example_path().to_str().unwrap(),
        ])
        .ok();

    // Not HTTP/2 at all.
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = raw.write_all(&garbage);
    closed_within(&mut raw, Duration::from_secs(10)).unwrap();

    // The HTTP/2 preface, then a frame with a bad type and a huge length.
    let mut h2 = TcpStream::connect(server.addr()).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    h2.write_all(&[0xff, 0xff, 0xff, 0x04, 0, 0, 0, 0, 0])
        .unwrap();
    let _ = h2.write_all(&[0u8; 1024]);
    closed_within(&mut h2, Duration::from_secs(10)).unwrap();

    // A gRPC call whose message frame claims 4 GiB and is cut short.
    let mut admin = pb::admin_client::AdminClient::new(channel(&url).await);
    let history = admin
        .history(pb::HistoryRequest {
            group: "edge".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.versions.len(), 1, "the store changed");
    // The server still serves pushes.
    server
        .ctl(&[
            "push",
            "edge",
            "-f",
            fixtures::write_json(
                &server.scratch(),
                "b.json",
                &fixtures::example_with_value("b", 1.into()),
            )
            .to_str()
            .unwrap(),
        ])
        .ok();
}

#[tokio::test]
async fn a_100_mib_message_is_refused_and_memory_stays_bounded() {
    let server = ControlServer::start();
    let url = server.url();
    let before = server.rss_kib();
    let mut admin = pb::admin_client::AdminClient::new(channel(&url).await)
        .max_encoding_message_size(usize::MAX);
    let huge = "x".repeat(100 * 1024 * 1024);
    let e = admin
        .push(push_request("edge", "huge", huge.clone().into()))
        .await
        .unwrap_err();
    assert_ne!(e.code(), tonic::Code::Ok);
    // On the watch stream too.
    let mut discovery =
        pb::config_discovery_client::ConfigDiscoveryClient::new(channel(&url).await)
            .max_encoding_message_size(usize::MAX);
    let first = pb::WatchRequest {
        node: Some(pb::Node {
            id: "n1".into(),
            group: "edge".into(),
            labels: Default::default(),
            agent_build: huge,
        }),
        ..Default::default()
    };
    let refused = discovery
        .watch(tokio_stream::once(first))
        .await
        .expect_err("a 100 MiB first request is refused");
    assert_ne!(refused.code(), tonic::Code::Ok);
    let after = server.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "server memory grew from {before} KiB to {after} KiB"
    );
    let history = admin
        .history(pb::HistoryRequest {
            group: "edge".into(),
            limit: 0,
        })
        .await;
    assert_eq!(
        history.unwrap_err().code(),
        tonic::Code::NotFound,
        "the store changed"
    );
    println!("100 MiB messages: server RSS {before} KiB -> {after} KiB; push refused with {e:?}");
}

#[tokio::test]
async fn clients_that_never_read_keep_server_memory_bounded() {
    let server = ControlServer::start();
    let url = server.url();
    let mut admin = pb::admin_client::AdminClient::new(channel(&url).await);
    let blob = |i: u32| serde_json::Value::from(format!("{i:08}").repeat(128 * 1024));
    // Warm up: the same pushes with no stream open, so the store's cache
    // and the allocator reach their working size first.
    for i in 0..40 {
        admin
            .push(push_request("edge", "blob", blob(i)))
            .await
            .unwrap();
    }
    let before = server.rss_kib();
    // Sixteen agents that open a stream and never read a byte of it.
    let mut stuck = Vec::new();
    for i in 0..16 {
        let mut client =
            pb::config_discovery_client::ConfigDiscoveryClient::new(channel(&url).await);
        let first = pb::WatchRequest {
            node: Some(pb::Node {
                id: format!("stuck-{i}"),
                group: "edge".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(first).await.unwrap();
        let responses = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        stuck.push((client, tx, responses));
    }
    // Forty more 1 MiB versions: 640 MiB if every stream queued every one.
    for i in 40..80 {
        admin
            .push(push_request("edge", "blob", blob(i)))
            .await
            .unwrap();
    }
    // Memory is measured once the server has handed every stuck stream a
    // version pushed after it stopped reading (it had version 40 when it
    // connected): until then a stream's queue could still be about to grow.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = admin
            .status(pb::StatusRequest {
                group: "edge".into(),
                ..pb::StatusRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .agents;
        let behind: Vec<(String, u64)> = agents
            .iter()
            .filter(|a| a.node_id.starts_with("stuck-") && a.sent_version <= 40)
            .map(|a| (a.node_id.clone(), a.sent_version))
            .collect();
        let listed = agents
            .iter()
            .filter(|a| a.node_id.starts_with("stuck-"))
            .count();
        if listed == 16 && behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck streams were never sent a newer version ({listed} of 16 listed): {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = server.rss_kib();
    assert!(
        after < before + 96 * 1024,
        "server memory grew from {before} KiB to {after} KiB with 16 stuck streams"
    );
    println!(
        "16 streams that never read, 40 pushes of 1 MiB: server RSS {before} KiB -> {after} KiB"
    );
    drop(stuck);
}

#[tokio::test]
async fn a_silent_stream_is_closed_after_the_idle_timeout() {
    let server = ControlServer::start_with(&["--idle-stream-timeout", "1s"]);
    let mut agent = WatchClient::connect(&server.url(), "quiet", "edge", None).await;
    match agent.next(Duration::from_secs(15)).await {
        Next::Ended(Some(status)) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert!(
                status
                    .message()
                    .starts_with("idle stream: no request for 1s"),
                "{status:?}"
            );
        }
        other => panic!("expected the idle stream to be closed, got {other:?}"),
    }
    // A stream that sends heartbeats stays open past the timeout: after
    // more than twice the timeout it still delivers the next push.
    let mut agent = WatchClient::connect(&server.url(), "chatty", "edge", None).await;
    let heartbeats = agent.heartbeats(Duration::from_millis(200), None);
    let quiet = agent.expect_quiet(Duration::from_millis(2500)).await;
    let mut admin = pb::admin_client::AdminClient::new(channel(&server.url()).await);
    let pushed = admin
        .push(push_request("edge", "a", 1.into()))
        .await
        .unwrap()
        .into_inner();
    quiet.then_recv(pushed.version).await;
    drop(heartbeats);
}

#[test]
fn plaintext_on_a_non_loopback_address_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin_path("vane-control"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "vane-control: --listen 0.0.0.0:0: not a loopback address, and no --tls-cert/--tls-key"
        ),
        "{stderr}"
    );
    assert!(last.contains("--insecure"), "{last}");
    // Nothing was created in the data directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // With --insecure it serves (no traffic is sent to it here: only
    // loopback is ours), and says so in its log.
    let log = dir.path().join("insecure.log");
    let mut cmd = std::process::Command::new(bin_path("vane-control"));
    cmd.args(["--listen", "0.0.0.0:0", "--insecure", "--data-dir"])
        .arg(dir.path().join("data"));
    let (child, addr) = spawn_announced(cmd, "vane-control listening on ", &log);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    let status = terminate_child(child, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged
            .contains("--insecure: serving a non-loopback address without TLS or without a policy"),
        "{logged}"
    );
}
