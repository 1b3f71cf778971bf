//! Target `watch_stream`: the requests an agent sends on an open watch
//! stream after its first one (ACKs, NACKs, heartbeats, `want_full`, a
//! changed node), interleaved with the server's responses, through the
//! server's own handling (`vane_control::watch::StreamReplay`). What the
//! agent registry records must follow from what was sent: an ACK counts
//! only for the last response's nonce, version and hash; a NACK only for
//! the last response, with a bounded reason; another node ends the stream.

use prost::Message;
use vane_control::watch::{MAX_NACK_REASON_LEN, StreamReplay};
use vane_proto as pb;

use crate::fixtures::GROUP;

/// The first request every replayed stream opens with.
pub(crate) fn first_request() -> pb::WatchRequest {
    pb::WatchRequest {
        node: Some(pb::Node {
            id: "fuzz-node".to_owned(),
            group: GROUP.to_owned(),
            labels: Default::default(),
            agent_build: "vane-fuzzing".to_owned(),
        }),
        accept_delta: true,
        ..Default::default()
    }
}

fn hash_of(version: u64) -> String {
    format!("{version:064x}")
}

/// Steps, each `[op, len_lo, len_hi, body…]`. `op % 4 == 0`: the server
/// sends the next version (the body is ignored). Otherwise the body is a
/// `WatchRequest`; bit 2 of `op` puts the last response's nonce in it and
/// bit 3 its version and hash, so that the fuzzer reaches real answers
/// without guessing nonces. A refused request ends the stream, and the
/// input.
pub fn watch_stream(data: &[u8]) {
    replay(data);
}

/// [`watch_stream`], returning what the registry holds for the agent at
/// the end (`None` when a changed node ended the stream), so that a test
/// can see that the seeds reach the recording paths.
pub fn replay(data: &[u8]) -> Option<vane_control::agents::AgentRecord> {
    let Ok(mut stream) = StreamReplay::open(&first_request()) else {
        panic!("the fixed first request was refused");
    };
    let mut last: Option<pb::WatchResponse> = None;
    let mut next_version = 1u64;
    let mut rest = data;
    while let [op, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (body, after) = tail.split_at(len);
        rest = after;
        if op % 4 == 0 {
            last = Some(stream.send(next_version, &hash_of(next_version)));
            next_version += 1;
            continue;
        }
        let Ok(mut request) = pb::WatchRequest::decode(body) else {
            continue;
        };
        if let Some(sent) = &last {
            if op & 4 != 0 {
                request.response_nonce = sent.nonce.clone();
            }
            if op & 8 != 0 {
                request.version_info = sent.version;
                request.hash = sent.hash.clone();
            }
        }
        let before = stream.record().expect("the stream's agent is recorded");
        let changed_node = request
            .node
            .as_ref()
            .is_some_and(|n| n.id != "fuzz-node" || n.group != GROUP);
        let result = stream.request(request.clone());
        if changed_node {
            assert!(result.is_err(), "a changed node was accepted mid-stream");
            return None;
        }
        if let Err(status) = result {
            panic!("a request of the same node ended the stream: {status:?}");
        }
        let after = stream.record().expect("the stream's agent is recorded");
        let answers_last = last.as_ref().is_some_and(|s| {
            !request.response_nonce.is_empty() && request.response_nonce == s.nonce
        });
        if (after.acked_version, &after.acked_hash) != (before.acked_version, &before.acked_hash) {
            let sent = last.as_ref().expect("an ACK recorded before any response");
            assert!(answers_last, "an ACK recorded for another nonce");
            assert_eq!(after.acked_version, sent.version, "acked another version");
            assert_eq!(after.acked_hash, sent.hash, "acked another hash");
            assert_eq!(request.version_info, sent.version);
            assert!(request.hash.is_empty() || request.hash == sent.hash);
            assert!(request.error_detail.is_none() && !request.want_full);
        }
        if (after.last_nacked_version, &after.nack_reason)
            != (before.last_nacked_version, &before.nack_reason)
        {
            let sent = last.as_ref().expect("a NACK recorded before any response");
            assert!(answers_last, "a NACK recorded for another nonce");
            assert_eq!(after.last_nacked_version, sent.version);
            assert!(request.error_detail.is_some() && !request.want_full);
            assert!(!after.nack_reason.is_empty());
            assert!(
                after.nack_reason.len() <= MAX_NACK_REASON_LEN + '…'.len_utf8(),
                "a NACK reason of {} bytes kept",
                after.nack_reason.len()
            );
        }
    }
    stream.record()
}

/// An input for [`watch_stream`]: a step `op` with `request` as its body.
pub fn step(op: u8, request: &pb::WatchRequest) -> Vec<u8> {
    let body = request.encode_to_vec();
    let len = u16::try_from(body.len()).expect("a seed step under 64 KiB");
    let mut out = vec![op];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    out
}
