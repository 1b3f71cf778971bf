//! Callers of the control server's gRPC endpoint with bearer tokens they
//! should not use, over real sockets: a token for another group, an
//! identity whose access the policy withdraws while its stream is open,
//! more streams than an identity may hold, and an identity claiming another
//! agent's node id. Each is refused with the reason, audited, and changes
//! nothing.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vane_proto as pb;
use vane_testkit::{ControlServer, Next, WatchClient};

use crate::hostile_grpc::{channel, push_request, status_of, with_token};

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
    vane_testkit::policy::start_with_policy(TOKENS, POLICY, extra)
}

fn token(identity: &str) -> &'static str {
    TOKENS.iter().find(|(id, _)| *id == identity).unwrap().1
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
