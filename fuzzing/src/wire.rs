//! Targets for the wire messages the control server and the agent accept:
//! `admin_request` (every `Admin` request), `watch_request` (the first
//! request of a watch stream) and `watch_response` (what an agent receives).

use bytes::Bytes;
use prost::Message;
use vane_agent::apply::check_content;
use vane_agent::{Candidate, Source};
use vane_control::watch::{MAX_LABELS, MAX_NODE_FIELD_LEN, check_first_request};
use vane_model::DEFAULT_MAX_SNAPSHOT_BYTES;
use vane_model::names::check_group;
use vane_proto as pb;

use crate::fixtures::{GROUP, RUNNING_VERSION, example};
use crate::invariants::{check_pushed, check_snapshot};

/// A small snapshot limit, so that the size refusal is reached too.
const SMALL_LIMIT: usize = 600;

/// An `Admin` request: the first byte picks the message (0 `Push`, 1 `Get`,
/// 2 `History`, 3 `Diff`, 4 `Rollback`, 5 `Status`, 6 `Audit`, 7 `WhoAmI`),
/// the rest is its encoding. A push goes through the server's
/// `admin::prepare` under two size limits: an accepted snapshot is within
/// the limit and canonical; a refusal is `InvalidArgument`. The other
/// requests carry no content beyond the group and version fields, which
/// the server checks with `names::check_group` before anything else.
pub fn admin_request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => push(body),
        1 => group_field(pb::GetRequest::decode(body).map(|r| r.group)),
        2 => group_field(pb::HistoryRequest::decode(body).map(|r| r.group)),
        3 => group_field(pb::DiffRequest::decode(body).map(|r| r.group)),
        4 => group_field(pb::RollbackRequest::decode(body).map(|r| r.group)),
        5 => group_field(pb::StatusRequest::decode(body).map(|r| r.group)),
        6 => group_field(pb::AuditRequest::decode(body).map(|r| r.group)),
        _ => {
            let _ = pb::WhoAmIRequest::decode(body);
        }
    }
}

fn group_field(group: Result<String, prost::DecodeError>) {
    if let Ok(group) = group {
        let _ = check_group(&group);
    }
}

fn push(body: &[u8]) {
    let Ok(request) = pb::PushRequest::decode(body) else {
        return;
    };
    // The server checks the group (and the message) first.
    if check_group(&request.group).is_err() {
        return;
    }
    let Some(snapshot) = request.snapshot else {
        return;
    };
    for limit in [DEFAULT_MAX_SNAPSHOT_BYTES, SMALL_LIMIT] {
        match vane_control::admin::prepare(snapshot.clone(), limit) {
            Ok((encoded, hash)) => {
                assert!(
                    encoded.len() <= limit,
                    "prepare accepted {} bytes over a limit of {limit}",
                    encoded.len()
                );
                check_pushed(&encoded, &hash);
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "a bad push must be InvalidArgument: {status:?}"
                );
                assert!(
                    !status.message().is_empty(),
                    "a refused push without a reason"
                );
            }
        }
    }
}

/// The first request of a watch stream, checked by the server's
/// `watch::check_first_request`: what it accepts is within every limit, and
/// what it refuses comes with a one-line reason naming the field.
pub fn watch_request(data: &[u8]) {
    let Ok(request) = pb::WatchRequest::decode(data) else {
        return;
    };
    match check_first_request(&request) {
        Ok(node) => {
            assert!(!node.id.is_empty() && node.id.len() <= MAX_NODE_FIELD_LEN);
            assert!(!node.id.chars().any(char::is_control));
            assert!(
                check_group(&node.group).is_ok(),
                "accepted group {:?}",
                node.group
            );
            assert!(node.labels.len() <= MAX_LABELS);
            assert!(node.agent_build.len() <= MAX_NODE_FIELD_LEN);
        }
        Err(reason) => {
            assert!(
                !reason.is_empty() && !reason.contains('\n'),
                "reason {reason:?}"
            );
        }
    }
}

/// A `WatchResponse` as the agent handles it while running
/// [`example`] as version [`RUNNING_VERSION`] of group [`GROUP`]: the same
/// steps as `handle_response` in agent/src/client.rs (group, then the body:
/// a full snapshot, or a delta from exactly the running version rebuilt
/// with `delta::apply_encoded`), then the apply path's content checks
/// (`apply::check_content`). Whatever is accepted hashes to the hash the
/// response claims, and is a valid snapshot.
pub fn watch_response(data: &[u8]) {
    let Ok(response) = pb::WatchResponse::decode(data) else {
        return;
    };
    let pb::WatchResponse {
        group,
        version,
        hash,
        nonce: _,
        body,
        base_version,
        base_hash,
        created_at_unix_ms: _,
        // Changes what confirms, never what is applied.
        store_unreachable: _,
        store_unreachable_ms: _,
    } = response;
    if group != GROUP {
        return;
    }
    let running = example();
    let body = match body {
        None => return,
        Some(pb::watch_response::Body::Snapshot(bytes)) => bytes,
        Some(pb::watch_response::Body::Delta(delta)) => {
            if base_version != RUNNING_VERSION || base_hash != running.content_hash().to_hex() {
                return;
            }
            match vane_model::delta::apply_encoded(running, &delta) {
                Ok(full) => Bytes::from(full),
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    return;
                }
            }
        }
    };
    let candidate = Candidate {
        version,
        hash: hash.clone(),
        body,
        origin: Source::Live,
    };
    match check_content(&candidate, DEFAULT_MAX_SNAPSHOT_BYTES) {
        Ok(s) => {
            assert_eq!(
                s.content_hash().to_hex(),
                hash,
                "the agent accepted content that does not hash as claimed"
            );
            check_snapshot(&s);
        }
        Err(rejection) => assert!(!rejection.reason.is_empty(), "a NACK without a reason"),
    }
}
