//! Hostile clients of the control server's gRPC endpoint, over real sockets:
//! garbage bytes and frames, a 100 MiB message, clients that never read or
//! never speak, replayed and forged ACKs, bearer tokens for the wrong group,
//! an agent claiming another's node id, and a plaintext server on a
//! non-loopback address. Each gets a clear error or a closed connection; the
//! server stays up, its memory bounded, and the store unchanged.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tonic::transport::{Channel, Endpoint};
use vane_proto as pb;
use vane_testkit::{ControlServer, Next, WatchClient, fixtures};

const TOKENS: &[(&str, &str)] = &[
    ("ci-edge", "edge-deployer-token"),
    ("agent-edge", "edge-agent-token"),
    ("agent-edge-2", "second-edge-agent-token"),
    ("agent-core", "core-agent-token"),
];

const POLICY: &str = r#"
bindings:
  - {identity: ci-edge, role: operator, groups: [edge]}
  - {identity: agent-edge, role: agent, groups: [edge]}
  - {identity: agent-edge-2, role: agent, groups: [edge]}
  - {identity: agent-core, role: agent, groups: [core]}
"#;

/// A server with the policy above and a token file for `TOKENS`.
fn server_with_tokens(extra: &[&str]) -> ControlServer {
    server_with_policy_file(extra).0
}

/// [`server_with_tokens`], and the path of its policy file (to rewrite).
fn server_with_policy_file(extra: &[&str]) -> (ControlServer, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let tokens: String = TOKENS
        .iter()
        .map(|(id, token)| {
            format!(
                "  - identity: {id}\n    sha256: {}\n",
                hex::encode(sha2::Sha256::digest(token.as_bytes()))
            )
        })
        .collect();
    let tokens_path = dir.join("tokens.yaml");
    std::fs::write(&tokens_path, format!("tokens:\n{tokens}")).unwrap();
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, POLICY).unwrap();
    let mut args = vec![
        "--policy",
        policy_path.to_str().unwrap(),
        "--tokens",
        tokens_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    // The paths outlive the call: start_with copies the strings.
    (ControlServer::start_with(&args), policy_path)
}

fn token(identity: &str) -> &'static str {
    TOKENS.iter().find(|(id, _)| *id == identity).unwrap().1
}

async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn push_request(group: &str, key: &str, value: serde_json::Value) -> pb::PushRequest {
    pb::PushRequest {
        group: group.into(),
        snapshot: Some(vane_model::proto::spec_to_proto(
            &fixtures::example_with_value(key, value),
        )),
        expected_version: None,
        dry_run: false,
        message: format!("set {key}"),
    }
}

async fn status_of(url: &str, token: Option<&str>, group: &str, node: &str) -> pb::AgentStatus {
    let mut admin = pb::admin_client::AdminClient::new(channel(url).await);
    let status = admin
        .status(with_token(
            pb::StatusRequest {
                group: group.into(),
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

/// A watch of `group` as node `node` with `token`, which the server must refuse.
async fn refused_watch(url: &str, token: &str, node: &str, group: &str) -> tonic::Status {
    WatchClient::open(channel(url).await, Some(token), node, group, None)
        .await
        .err()
        .unwrap_or_else(|| panic!("a watch of {group} as {node} was accepted"))
}

/// `group`'s audit log once `done` holds for it (refusals are written in
/// the background), or at the 10 s deadline.
async fn audit_when(
    url: &str,
    token: Option<&str>,
    group: &str,
    done: impl Fn(&[pb::AuditEntry]) -> bool,
) -> Vec<pb::AuditEntry> {
    let mut admin = pb::admin_client::AdminClient::new(channel(url).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = admin
            .audit(with_token(
                pb::AuditRequest {
                    group: group.into(),
                    limit: 0,
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .entries;
        if done(&audit) || Instant::now() > deadline {
            return audit;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tokens_only_reach_their_own_groups_and_refusals_are_audited() {
    let server = server_with_tokens(&[]);
    let url = server.url();
    let mut admin = pb::admin_client::AdminClient::new(channel(&url).await);
    let ci = Some(token("ci-edge"));

    let pushed = admin
        .push(with_token(push_request("edge", "a", 1.into()), ci))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pushed.version, 1);

    // The same token, another group.
    let e = admin
        .push(with_token(push_request("core", "a", 1.into()), ci))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert_eq!(
        e.message(),
        "identity \"ci-edge\" may not push to group \"core\""
    );
    // No token, an unknown token, an agent's token.
    let e = admin
        .push(with_token(push_request("edge", "b", 1.into()), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = admin
        .push(with_token(
            push_request("edge", "b", 1.into()),
            Some("guess"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert_eq!(e.message(), "authorization: the bearer token is not known");
    let e = admin
        .push(with_token(
            push_request("edge", "b", 1.into()),
            Some(token("agent-edge")),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Reading another group is refused too.
    let e = admin
        .history(with_token(
            pb::HistoryRequest {
                group: "core".into(),
                limit: 0,
            },
            ci,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // Nothing of that was stored: edge has its one version, core none.
    let history = admin
        .history(with_token(
            pb::HistoryRequest {
                group: "edge".into(),
                limit: 0,
            },
            ci,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.versions.len(), 1);
    assert_eq!(history.versions[0].author, "ci-edge");

    // An agent's token may not watch another group.
    let e = refused_watch(&url, token("agent-edge"), "n1", "core").await;
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // The audit log has the push and every refusal of edge, newest first;
    // the refused push to core is in core's log (which ci-edge may not read).
    // Refusals are written in the background: wait for all four.
    let audit = audit_when(&url, ci, "edge", |a| a.len() >= 4).await;
    let results: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| (e.identity.as_str(), e.result.as_str(), e.code.as_str()))
        .collect();
    assert_eq!(
        results,
        vec![
            ("agent-edge", "refused", "PermissionDenied"),
            ("", "refused", "Unauthenticated"),
            ("", "refused", "Unauthenticated"),
            ("ci-edge", "created", ""),
        ],
        "{audit:#?}"
    );
    assert_eq!(audit[3].version, 1);
    assert_eq!(audit[3].hash, pushed.hash);
    assert_eq!(audit[3].message, "set a");
    let e = admin
        .audit(with_token(
            pb::AuditRequest {
                group: "core".into(),
                limit: 0,
            },
            ci,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // WhoAmI tells the caller what it may do.
    let me = admin
        .who_am_i(with_token(pb::WhoAmIRequest {}, ci))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            me.identity.as_str(),
            me.source.as_str(),
            me.authorization.as_str()
        ),
        ("ci-edge", "token", "on")
    );
    assert_eq!(me.roles.len(), 1);
    assert_eq!(me.roles[0].role, "operator");
}

#[tokio::test]
async fn a_policy_reload_ends_watch_streams_it_no_longer_allows() {
    let (server, policy_path) = server_with_policy_file(&[]);
    let url = server.url();
    let mut admin = pb::admin_client::AdminClient::new(channel(&url).await);
    let ci = Some(token("ci-edge"));
    admin
        .push(with_token(push_request("edge", "a", 1.into()), ci))
        .await
        .unwrap();
    let mut kept = WatchClient::open(
        channel(&url).await,
        Some(token("agent-edge")),
        "kept",
        "edge",
        None,
    )
    .await
    .unwrap();
    let mut dropped = WatchClient::open(
        channel(&url).await,
        Some(token("agent-edge-2")),
        "dropped",
        "edge",
        None,
    )
    .await
    .unwrap();
    assert_eq!(kept.recv().await.version, 1);
    assert_eq!(dropped.recv().await.version, 1);

    // agent-edge-2 loses its binding; the server reloads within a second
    // or two and ends its open stream.
    std::fs::write(
        &policy_path,
        POLICY
            .lines()
            .filter(|l| !l.contains("agent-edge-2"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    match dropped.next(Duration::from_secs(15)).await {
        Next::Ended(Some(status)) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            assert_eq!(
                status.message(),
                "identity \"agent-edge-2\" may not watch group \"edge\" (access withdrawn while the stream was open)"
            );
        }
        other => panic!("expected the withdrawn stream to end, got {other:?}"),
    }
    // The other stream still gets new versions; a new stream of the
    // withdrawn identity is refused.
    admin
        .push(with_token(push_request("edge", "a", 2.into()), ci))
        .await
        .unwrap();
    assert_eq!(kept.recv().await.version, 2);
    let e = refused_watch(&url, token("agent-edge-2"), "dropped", "edge").await;
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // The withdrawal is in the audit log.
    let withdrawn = |e: &pb::AuditEntry| {
        e.identity == "agent-edge-2" && e.action == "watch" && e.reason.contains("access withdrawn")
    };
    let audit = audit_when(&url, ci, "edge", |a| a.iter().any(withdrawn)).await;
    assert!(audit.iter().any(withdrawn), "no audit entry: {audit:#?}");
}

#[tokio::test]
async fn watch_streams_per_identity_are_capped() {
    let server = server_with_tokens(&["--max-streams-per-identity", "2"]);
    let url = server.url();
    let agent = token("agent-edge");
    let mut held = Vec::new();
    for node in ["a", "b"] {
        let c = WatchClient::open(channel(&url).await, Some(agent), node, "edge", None).await;
        held.push(c.unwrap());
    }
    let e = refused_watch(&url, agent, "c", "edge").await;
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.message(),
        "identity \"agent-edge\" holds its maximum of 2 watch streams (--max-streams-per-identity)"
    );
    // Other identities are not affected.
    WatchClient::open(
        channel(&url).await,
        Some(token("agent-edge-2")),
        "d",
        "edge",
        None,
    )
    .await
    .unwrap();
    // A stream ends: its slot is free again (once the server has noticed).
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match WatchClient::open(channel(&url).await, Some(agent), "c", "edge", None).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                assert!(Instant::now() < deadline, "the slot was never released");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let audit = audit_when(&url, Some(token("ci-edge")), "edge", |a| {
        a.iter().any(|e| e.code == "ResourceExhausted")
    })
    .await;
    assert!(
        audit
            .iter()
            .any(|e| e.code == "ResourceExhausted" && e.identity == "agent-edge"),
        "{audit:#?}"
    );
}

#[tokio::test]
async fn an_agent_cannot_claim_another_agents_node_id() {
    let server = server_with_tokens(&[]);
    let url = server.url();
    let mut admin = pb::admin_client::AdminClient::new(channel(&url).await);
    admin
        .push(with_token(
            push_request("edge", "a", 1.into()),
            Some(token("ci-edge")),
        ))
        .await
        .unwrap();
    let mut owner = WatchClient::open(
        channel(&url).await,
        Some(token("agent-edge")),
        "n1",
        "edge",
        None,
    )
    .await
    .unwrap();
    let r1 = owner.recv().await;
    owner.ack(&r1).await;

    // Another identity, allowed to watch edge, claims n1: refused, and n1's
    // record (acked version 1) is untouched, also after a forged claim of a
    // version in the first request.
    let e = WatchClient::open(
        channel(&url).await,
        Some(token("agent-edge-2")),
        "n1",
        "edge",
        Some((1, "forged")),
    )
    .await
    .err()
    .expect("claiming n1 with another identity is refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert_eq!(
        e.message(),
        "node.id: this node id is held by identity \"agent-edge\""
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n1 = status_of(&url, Some(token("ci-edge")), "edge", "n1").await;
        if n1.acked_version == 1 {
            assert_eq!(n1.acked_hash, r1.hash);
            assert!(n1.connected);
            break;
        }
        assert!(Instant::now() < deadline, "n1 never acked: {n1:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The owner itself may reconnect.
    drop(owner);
    WatchClient::open(
        channel(&url).await,
        Some(token("agent-edge")),
        "n1",
        "edge",
        Some((1, &r1.hash)),
    )
    .await
    .unwrap();
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
        node: None,
        version_info: version,
        hash: hash.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: None,
        want_full: false,
        accept_delta: false,
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
        vane_testkit::Next::Ended(Some(status)) => {
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
    // A stream that sends heartbeats stays open past the timeout.
    let agent = WatchClient::connect(&server.url(), "chatty", "edge", None).await;
    let mut agent = agent;
    for _ in 0..6 {
        agent.send(pb::WatchRequest::default()).await;
        agent.expect_quiet(Duration::from_millis(400)).await;
    }
}

#[test]
fn plaintext_on_a_non_loopback_address_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(vane_testkit::bin_path("vane-control"))
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
    let mut cmd = std::process::Command::new(vane_testkit::bin_path("vane-control"));
    cmd.args(["--listen", "0.0.0.0:0", "--insecure", "--data-dir"])
        .arg(dir.path().join("data"));
    let (child, addr) = vane_testkit::spawn_announced(cmd, "vane-control listening on ", &log);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    let status = vane_testkit::terminate_child(child, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged
            .contains("--insecure: serving a non-loopback address without TLS or without a policy"),
        "{logged}"
    );
}
