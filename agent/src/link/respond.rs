//! One response on the stream: checked against this agent, put through the
//! apply path on a blocking thread, and turned into its answer: an ACK, a
//! NACK with the reason (the old version keeps running), or a request for
//! the full snapshot after a delta this agent cannot use. Also the other
//! requests the agent sends: the hello that opens a stream and heartbeats,
//! and what a response says of its server's store.

use std::sync::Arc;
use std::time::Duration;

use vane_proto as pb;

use crate::apply::{Applier, ApplyOutcome, Candidate, DeltaCandidate, Rejection, code};
use crate::config::AgentConfig;
use crate::report::HealthReport;
use crate::state::{Current, Source};

/// What an answer means for the link, as the state machine records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The version runs (applied now, or already): ACK. The control plane
    /// confirms what runs.
    Ack,
    /// A delta this agent could not turn into exactly the version's
    /// content: nothing is wrong with the version, so this is no refusal to
    /// report; the answer asks for the whole snapshot.
    WantFull,
    /// Refused: NACK, the old version keeps running.
    Nack {
        /// The refused version.
        version: u64,
        /// Why, as the operator reads it.
        reason: String,
    },
}

/// What a response says of its server's store (docs/protocol.md#store-reachability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreReach {
    /// The server reaches its store (or predates the field): what it sends
    /// is the group's head.
    Reachable,
    /// The server has not reached its store for this long: its view of the
    /// group is that old, and it confirms nothing.
    Unreachable(Duration),
}

impl StoreReach {
    /// What `response` says.
    pub(crate) fn of(response: &pb::WatchResponse) -> Self {
        if response.store_unreachable {
            StoreReach::Unreachable(Duration::from_millis(response.store_unreachable_ms))
        } else {
            StoreReach::Reachable
        }
    }

    pub(crate) fn is_reachable(self) -> bool {
        self == StoreReach::Reachable
    }
}

/// Whether `response` is a store notice: no body and no nonce, so nothing
/// to apply and nothing to answer. (A response with no body but a nonce is
/// a broken version, NACKed as such.)
pub(crate) fn is_notice(response: &pb::WatchResponse) -> bool {
    response.body.is_none() && response.nonce.is_empty()
}

/// A response handled: what it means and the request that answers it.
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) verdict: Verdict,
    pub(crate) answer: pb::WatchRequest,
}

/// Applies one response and builds its ACK or NACK.
pub(crate) async fn respond(
    config: &AgentConfig,
    applier: &Arc<Applier>,
    response: pb::WatchResponse,
) -> Answered {
    let pb::WatchResponse {
        group,
        version,
        hash,
        nonce,
        body,
        base_version,
        base_hash,
        created_at_unix_ms: _,
        // Read by the step before the response gets here (`StoreReach::of`).
        store_unreachable: _,
        store_unreachable_ms: _,
    } = response;
    let delta = matches!(body, Some(pb::watch_response::Body::Delta(_)));
    let outcome = if body.is_some() && group != config.group {
        ApplyOutcome::Rejected(Rejection::new(
            code::INVALID_ARGUMENT,
            format!(
                "group: response is for group {group:?}, this agent follows {:?}",
                config.group
            ),
        ))
    } else {
        match body {
            Some(pb::watch_response::Body::Snapshot(body)) => {
                let c = Candidate {
                    version,
                    hash,
                    body,
                    origin: Source::Live,
                };
                on_blocking_thread(applier, move |a| a.apply(c)).await
            }
            Some(pb::watch_response::Body::Delta(delta)) => {
                let d = DeltaCandidate {
                    version,
                    hash,
                    base_version,
                    base_hash,
                    delta,
                };
                on_blocking_thread(applier, move |a| a.apply_delta(d)).await
            }
            None => ApplyOutcome::Rejected(Rejection::new(
                code::INVALID_ARGUMENT,
                "body: response carries no snapshot",
            )),
        }
    };
    let current = applier.shared.current.load();
    match outcome {
        ApplyOutcome::Applied | ApplyOutcome::AlreadyCurrent => {
            tracing::info!(version, delta, "applied; ACK");
            Answered {
                verdict: Verdict::Ack,
                answer: request(config, &current, nonce, None, false),
            }
        }
        ApplyOutcome::Rejected(rejection) if delta && rejection.hash_mismatch => {
            tracing::info!(version, reason = %rejection.reason, "cannot use the delta; asking for the full snapshot");
            let detail = pb::ErrorDetail {
                code: code::FAILED_PRECONDITION,
                message: rejection.reason,
            };
            Answered {
                verdict: Verdict::WantFull,
                answer: request(config, &current, nonce, Some(detail), true),
            }
        }
        ApplyOutcome::Rejected(rejection) => {
            tracing::warn!(version, reason = %rejection.reason, "refused; NACK, keeping the running config");
            let detail = pb::ErrorDetail {
                code: rejection.code,
                message: rejection.reason.clone(),
            };
            Answered {
                verdict: Verdict::Nack {
                    version,
                    reason: rejection.reason,
                },
                answer: request(config, &current, nonce, Some(detail), false),
            }
        }
    }
}

/// Runs `apply` on a blocking thread: decoding, rebuilding from a delta,
/// hashing, the embedder's hooks and the fsync of the cache all block.
async fn on_blocking_thread(
    applier: &Arc<Applier>,
    apply: impl FnOnce(&Applier) -> ApplyOutcome + Send + 'static,
) -> ApplyOutcome {
    let applier = applier.clone();
    // The blocking thread logs inside the caller's span (node, group).
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(|| apply(&applier))).await {
        Ok(outcome) => outcome,
        Err(e) => {
            ApplyOutcome::Rejected(Rejection::new(code::INTERNAL, format!("apply failed: {e}")))
        }
    }
}

/// The first request of a stream: who this agent is and what it runs.
pub(crate) fn hello(config: &AgentConfig, current: &Current) -> pb::WatchRequest {
    request(config, current, String::new(), None, false)
}

/// A heartbeat: no node and no nonce, so the server takes it for a sign of
/// life and nothing else (it answers only requests that carry the nonce of
/// its last response). What runs is reported all the same.
pub(crate) fn heartbeat(config: &AgentConfig, current: &Current) -> pb::WatchRequest {
    pb::WatchRequest {
        node: None,
        ..request(config, current, String::new(), None, false)
    }
}

/// The data plane's health as a request carries it (`None`: never reported).
pub(crate) fn health(report: Option<&HealthReport>) -> Option<pb::Health> {
    report.map(|r| pb::Health {
        degraded: r.degraded,
        reason: r.reason.clone(),
        version: r.version,
    })
}

/// A request naming what runs now. `want_full` asks for the full snapshot
/// after a delta that could not be used.
fn request(
    config: &AgentConfig,
    current: &Current,
    nonce: String,
    error: Option<pb::ErrorDetail>,
    want_full: bool,
) -> pb::WatchRequest {
    // Defaults are not a control-plane version: report none.
    let defaults = current.source == Source::Defaults;
    pb::WatchRequest {
        node: Some(pb::Node {
            id: config.node_id.clone(),
            group: config.group.clone(),
            labels: config.labels.clone(),
            agent_build: config.agent_build.clone(),
        }),
        version_info: if defaults { 0 } else { current.version },
        hash: if defaults {
            String::new()
        } else {
            current.hash.clone()
        },
        response_nonce: nonce,
        error_detail: error,
        want_full,
        accept_delta: true,
        accept_store_notices: true,
        // Filled in by the step that sends it, with the latest report.
        health: None,
    }
}
