//! Tests of the Admin service on an embedded store: every call, its
//! refusals, dry runs, size limits and status.

#![cfg(test)]

use std::sync::Arc;

use pb::admin_server::Admin;
use tokio_util::task::TaskTracker;
use tonic::Request;
use vane_proto as pb;
use vane_store::{RedbStore, Store};

use super::*;
use crate::agents::AgentRegistry;
use crate::hub::Hub;

const EXAMPLE: &str = r#"
listeners:
  - { name: web, address: "127.0.0.1:18080", protocol: http, route_table: main }
route_tables:
  - name: main
    routes:
      - { match: { path_prefix: / }, cluster: web }
clusters:
  - { name: web, endpoints: [ { address: "127.0.0.1:9003" } ] }
values:
  flag: true
"#;

fn snapshot(flag: bool) -> pb::Snapshot {
    let text = EXAMPLE.replace("flag: true", &format!("flag: {flag}"));
    let spec = vane_model::parse_file(text.as_bytes(), vane_model::Format::Yaml).unwrap();
    vane_model::proto::spec_to_proto(&spec)
}

async fn service(dir: &std::path::Path) -> (AdminService, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir).await.unwrap());
    let svc = AdminService::new(
        Arc::clone(&store),
        Arc::new(Hub::new()),
        Arc::new(AgentRegistry::default()),
        TaskTracker::new(),
        vane_model::DEFAULT_MAX_SNAPSHOT_BYTES,
    );
    (svc, store)
}

fn push(group: &str, flag: bool) -> Request<pb::PushRequest> {
    Request::new(pb::PushRequest {
        supersede: false,
        group: group.into(),
        snapshot: Some(snapshot(flag)),
        expected_version: None,
        dry_run: false,
        message: "m".into(),
    })
}

#[tokio::test]
async fn push_get_history_diff_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, store) = service(dir.path()).await;

    let r1 = svc.push(push("edge", true)).await.unwrap().into_inner();
    assert_eq!((r1.version, r1.unchanged), (1, false));
    assert_eq!(r1.hash.len(), 64);
    assert_eq!(svc.hub.head("edge").unwrap().version, 1);
    let again = svc.push(push("edge", true)).await.unwrap().into_inner();
    assert_eq!((again.version, again.unchanged), (1, true));
    let r2 = svc.push(push("edge", false)).await.unwrap().into_inner();
    assert_eq!(r2.version, 2);

    let got = svc
        .get(Request::new(pb::GetRequest {
            group: "edge".into(),
            version: Some(1),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.info.unwrap().hash, r1.hash);
    assert!(got.snapshot.unwrap().values.contains_key("flag"));

    let history = svc
        .history(Request::new(pb::HistoryRequest {
            group: "edge".into(),
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u64> = history.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![2, 1]);

    let diff = svc
        .diff(Request::new(pb::DiffRequest {
            group: "edge".into(),
            from_version: 1,
            to_version: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        diff.unified_diff.contains("--- edge@1"),
        "{}",
        diff.unified_diff
    );
    assert!(diff.unified_diff.contains("+++ edge@2"));
    assert!(
        diff.unified_diff.contains("-  flag: true"),
        "{}",
        diff.unified_diff
    );
    assert!(diff.unified_diff.contains("+  flag: false"));

    let back = svc
        .rollback(Request::new(pb::RollbackRequest {
            group: "edge".into(),
            to_version: 1,
            expected_version: Some(2),
            message: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((back.version, back.hash.as_str()), (3, r1.hash.as_str()));
    let head = store.get("edge", None).await.unwrap().unwrap();
    assert_eq!(head.message, "rollback to 1");
    assert_eq!(head.rollback_of, Some(1));
    assert_eq!(svc.hub.head("edge").unwrap().version, 3);

    // Rolling back to content equal to the head is unchanged.
    let same = svc
        .rollback(Request::new(pb::RollbackRequest {
            group: "edge".into(),
            to_version: 1,
            expected_version: None,
            message: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((same.version, same.unchanged), (3, true));
    store.close().await.unwrap();
}

#[tokio::test]
async fn refusals_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, store) = service(dir.path()).await;
    svc.push(push("edge", true)).await.unwrap();

    let err = svc.push(push("bad group", true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("group: "), "{err:?}");

    let mut missing = push("edge", true);
    missing.get_mut().snapshot = None;
    let err = svc.push(missing).await.unwrap_err();
    assert_eq!(err.message(), "snapshot: required");

    let mut dangling = push("edge", true);
    dangling.get_mut().snapshot.as_mut().unwrap().route_tables[0].routes[0].cluster =
        "paymnets".into();
    let err = svc.push(dangling).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("paymnets"), "{err:?}");

    let mut long = push("edge", false);
    long.get_mut().message = "x".repeat(MAX_MESSAGE_LEN + 1);
    let err = svc.push(long).await.unwrap_err();
    assert!(err.message().starts_with("message: "), "{err:?}");

    let mut stale = push("edge", false);
    stale.get_mut().expected_version = Some(0);
    let err = svc.push(stale).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        r#"conflict: group "edge" is at version 1, expected it to have none (0)"#
    );
    let mut stale = push("edge", false);
    stale.get_mut().expected_version = Some(3);
    let err = svc.push(stale).await.unwrap_err();
    assert_eq!(
        err.message(),
        r#"conflict: group "edge" is at version 1, expected 3"#
    );

    let err = svc
        .get(Request::new(pb::GetRequest {
            group: "edge".into(),
            version: Some(9),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("version 9"), "{err:?}");
    let err = svc
        .history(Request::new(pb::HistoryRequest {
            group: "nope".into(),
            limit: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), r#"unknown group "nope": not found"#);
    let err = svc
        .rollback(Request::new(pb::RollbackRequest {
            group: "edge".into(),
            to_version: 7,
            expected_version: None,
            message: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Nothing above stored anything.
    assert_eq!(store.history("edge", 0).await.unwrap().len(), 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn oversize_snapshot_is_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).await.unwrap());
    let svc = AdminService::new(
        Arc::clone(&store),
        Arc::new(Hub::new()),
        Arc::new(AgentRegistry::default()),
        TaskTracker::new(),
        16,
    );
    let err = svc.push(push("edge", true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("snapshot: encoded size"),
        "{err:?}"
    );
    assert!(store.get("edge", None).await.unwrap().is_none());
    store.close().await.unwrap();
}

#[tokio::test]
async fn dry_run_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, store) = service(dir.path()).await;
    let mut dry = push("edge", true);
    dry.get_mut().dry_run = true;
    let r = svc.push(dry).await.unwrap().into_inner();
    assert_eq!((r.version, r.unchanged, r.dry_run), (1, false, true));
    assert!(store.get("edge", None).await.unwrap().is_none());
    assert!(svc.hub.head("edge").is_none());

    let real = svc.push(push("edge", true)).await.unwrap().into_inner();
    let mut dry = push("edge", true);
    dry.get_mut().dry_run = true;
    let r = svc.push(dry).await.unwrap().into_inner();
    assert_eq!((r.version, r.unchanged, r.hash), (1, true, real.hash));
    let mut dry = push("edge", false);
    dry.get_mut().dry_run = true;
    dry.get_mut().expected_version = Some(5);
    let err = svc.push(dry).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    store.close().await.unwrap();
}

#[tokio::test]
async fn status_reports_agents_and_heads() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, store) = service(dir.path()).await;
    svc.push(push("edge", true)).await.unwrap();
    let node = crate::agents::NodeInfo {
        client: "vane-agent".to_owned(),
        id: "n1".into(),
        group: "edge".into(),
        labels: Default::default(),
        agent_build: "t".into(),
    };
    let key = svc.agents.connect(&node, "127.0.0.1:1", None);
    svc.agents.record_sent(&key, 1);
    svc.agents.record_nack(&key, 1, "bad", 9);
    let status = svc
        .status(Request::new(pb::StatusRequest {
            group: "edge".into(),
            ..pb::StatusRequest::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.groups.len(), 1);
    assert_eq!(status.groups[0].head_version, 1);
    let a = &status.agents[0];
    assert_eq!(a.state, pb::AgentState::Nacked as i32);
    assert_eq!(a.nack_reason, "bad");

    // A name nobody uses is a typo: refused, with the nearest group.
    let unknown = svc
        .status(Request::new(pb::StatusRequest {
            group: "egde".into(),
            ..pb::StatusRequest::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(
        unknown.message(),
        "unknown group \"egde\"; did you mean edge?"
    );
    // The selector keeps the agents whose labels match.
    let selected = svc
        .status(Request::new(pb::StatusRequest {
            group: "edge".into(),
            selector: "env=prod".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(selected.agents.is_empty());
    assert_eq!(selected.groups.len(), 1);
    store.close().await.unwrap();
}

/// Stores the content with `flag: body` under the hash of the content with
/// `flag: hash_of`, as if a byte of the body had changed on disk: the
/// record decodes, the hash does not match.
async fn store_mismatched(store: &dyn Store, group: &str, body: &str, hash_of: &str) -> u64 {
    let encode = |flag: &str| {
        let text = EXAMPLE.replace("flag: true", &format!("flag: {flag}"));
        let spec = vane_model::parse_file(text.as_bytes(), vane_model::Format::Yaml).unwrap();
        vane_model::validate(spec).unwrap().encode_and_hash()
    };
    let (encoded, _) = encode(body);
    let (_, hash) = encode(hash_of);
    let new = vane_store::NewVersion {
        candidate: None,
        rollout: None,
        group: group.into(),
        snapshot: bytes::Bytes::from(encoded),
        hash: hash.to_hex(),
        message: String::new(),
        author: String::new(),
        rollback_of: None,
        expected_version: None,
    };
    store.push(new).await.unwrap().record().version
}

#[tokio::test]
async fn a_corrupt_version_is_data_loss_degrades_its_group_and_a_rollback_heals_it() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, store) = service(dir.path()).await;
    svc.push(push("edge", true)).await.unwrap();
    // Version 2 in the store, behind the hub's back (another replica, or
    // a server restarted on a damaged file).
    assert_eq!(
        store_mismatched(store.as_ref(), "edge", "false", "3").await,
        2
    );

    for version in [None, Some(2)] {
        let err = svc
            .get(Request::new(pb::GetRequest {
                group: "edge".into(),
                version,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
        assert!(
            err.message()
                .starts_with(r#"version 2 of group "edge" is corrupt: its content hashes to "#),
            "{}",
            err.message()
        );
    }
    // Never published: the hub still serves version 1.
    assert_eq!(svc.hub.head("edge").unwrap().version, 1);
    let status = svc
        .status(Request::new(pb::StatusRequest {
            group: "edge".into(),
            ..pb::StatusRequest::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let g = &status.groups[0];
    assert_eq!(
        (g.head_version, g.degraded, g.corrupt_version),
        (1, true, 2)
    );
    assert!(g.reason.contains("is corrupt"), "{}", g.reason);
    let history = svc
        .history(Request::new(pb::HistoryRequest {
            group: "edge".into(),
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.corrupt_versions, vec![2]);

    // A rollback to version 2 is refused; to version 1, it heals the group.
    let rollback = |to| {
        Request::new(pb::RollbackRequest {
            group: "edge".into(),
            to_version: to,
            ..Default::default()
        })
    };
    let err = svc.rollback(rollback(2)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    let healed = svc.rollback(rollback(1)).await.unwrap().into_inner();
    assert_eq!(healed.version, 3);
    assert_eq!(svc.hub.head("edge").unwrap().version, 3);
    assert_eq!(svc.hub.corrupt().heads(), vec![]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn pushing_the_content_of_a_corrupt_head_again_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, store) = service(dir.path()).await;
    // The head's recorded hash is that of `true`, its bytes are `false`'s.
    store_mismatched(store.as_ref(), "edge", "false", "true").await;
    let err = svc.push(push("edge", true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert!(err.message().contains("is corrupt"), "{}", err.message());
    assert!(svc.hub.head("edge").is_none());
    // Changed content creates a new, good version.
    let pushed = svc.push(push("edge", false)).await.unwrap().into_inner();
    assert_eq!(pushed.version, 2);
    assert_eq!(svc.hub.head("edge").unwrap().version, 2);
    store.close().await.unwrap();
}

/// A snapshot whose certificate (and key) is `pair`'s.
fn with_key(pair: &vane_pki::Pair) -> vane_model::Snapshot {
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("      {l}\n")).collect() };
    let text = format!(
        "secrets:\n  - name: site\n    certificate_chain: |\n{}    private_key: |\n{}values:\n  n: 1\n",
        indent(&pair.cert_pem),
        indent(&pair.key_pem)
    );
    let spec = vane_model::parse_file(text.as_bytes(), vane_model::Format::Yaml).unwrap();
    vane_model::validate(spec).unwrap()
}

fn get_request(
    show_secrets: bool,
    conn: Option<crate::accept::ConnInfo>,
) -> Request<pb::GetRequest> {
    let mut request = Request::new(pb::GetRequest {
        group: "edge".into(),
        version: Some(1),
        show_secrets,
    });
    if let Some(conn) = conn {
        request.extensions_mut().insert(conn);
    }
    request
}

#[tokio::test]
async fn keys_are_redacted_sent_in_clear_only_where_safe_and_expired_rollbacks_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, store) = service(dir.path()).await;
    let ca = vane_pki::Ca::new("test CA").unwrap();
    let pair = ca
        .issue(
            &vane_pki::LeafParams::server(["example.test"]).validity(vane_pki::Validity::expired()),
        )
        .unwrap();
    // An expired certificate cannot be pushed today: stored as if pushed
    // while it was valid.
    let stored = with_key(&pair);
    let e = svc
        .push(Request::new(pb::PushRequest {
            group: "edge".into(),
            snapshot: Some(stored.to_proto()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("secrets[\"site\"].certificate_chain"),
        "{e:?}"
    );
    let (bytes, hash) = stored.encode_and_hash();
    store
        .push(vane_store::NewVersion {
            group: "edge".into(),
            snapshot: bytes.into(),
            hash: hash.to_hex(),
            message: String::new(),
            author: String::new(),
            rollback_of: None,
            expected_version: None,
            candidate: None,
            rollout: None,
        })
        .await
        .unwrap();

    // Redacted by default, hashing as sent.
    let got = svc
        .get(get_request(false, None))
        .await
        .unwrap()
        .into_inner();
    assert!(got.redacted);
    let key = &got.snapshot.as_ref().unwrap().secrets[0].private_key;
    assert_eq!(*key, vane_model::redact::redacted(&pair.key_pem));
    let shown = vane_model::validate::validate_redacted(
        vane_model::SnapshotSpec::try_from(got.snapshot.unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(shown.content_hash().to_hex(), got.redacted_hash);
    assert_eq!(got.info.unwrap().hash, hash.to_hex());

    // In clear: to loopback or over TLS; never in plaintext elsewhere, nor
    // to a peer nobody knows.
    let conn = |ip: [u8; 4], tls| crate::accept::ConnInfo {
        remote: std::net::SocketAddr::from((ip, 40_000)),
        identity: None,
        tls,
    };
    for allowed in [conn([127, 0, 0, 1], false), conn([10, 0, 0, 1], true)] {
        let got = svc
            .get(get_request(true, Some(allowed)))
            .await
            .unwrap()
            .into_inner();
        assert!(!got.redacted);
        assert!(
            got.snapshot.unwrap().secrets[0]
                .private_key
                .contains("PRIVATE KEY")
        );
    }
    for refused in [Some(conn([10, 0, 0, 1], false)), None] {
        let e = svc.get(get_request(true, refused)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("--tls-cert/--tls-key"), "{e:?}");
    }

    // Rolling back to the expired version: refused, then forced.
    svc.push(push("edge", true)).await.unwrap();
    let rollback = |force| {
        Request::new(pb::RollbackRequest {
            group: "edge".into(),
            to_version: 1,
            force,
            ..Default::default()
        })
    };
    let e = svc.rollback(rollback(false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("expired on") && e.message().contains("--force"),
        "{e:?}"
    );
    let done = svc.rollback(rollback(true)).await.unwrap().into_inner();
    assert_eq!(done.version, 3);
    assert!(
        done.warnings.len() == 1 && done.warnings[0].starts_with("restored anyway (--force): "),
        "{:?}",
        done.warnings
    );
}
