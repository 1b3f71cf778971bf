//! The `ConfigDiscovery.Watch` service: one long-lived stream per agent,
//! state-of-the-world with ACK/NACK as in xDS (docs/protocol.md).
//!
//! # Per stream
//! 1. The first request must name the node (id, valid group); otherwise the
//!    call fails with `InvalidArgument` before any response.
//! 2. The group's head is sent unless the agent already runs exactly that
//!    version and hash, in which case it is recorded as acked.
//! 3. A request whose `response_nonce` is the last response's nonce answers
//!    it: with `error_detail` it is a NACK (recorded with its reason; the
//!    agent keeps its old version), else if `version_info` equals the sent
//!    version it is an ACK. Requests answering older responses are stale and
//!    only count as a sign of life.
//! 4. Each newer head is sent when it is published.
//! 5. When the policy or the token file is reloaded, the stream checks
//!    again that its caller may watch its group, and ends with
//!    `PermissionDenied` (or `Unauthenticated` for a withdrawn token) if not.
//! 6. Every response says whether this replica reaches its store
//!    (`store_unreachable`, see [`crate::reach`]); an agent whose first
//!    request set `accept_store_notices` also gets a store notice (no body,
//!    no nonce) whenever that changes and no version response says it.
//!
//! # Deltas
//! If the first request set `accept_delta`, a newer head is sent as a delta
//! from the version the agent is known to run: the version of the last
//! response if it is not answered yet (the agent applies responses in order
//! and will run it unless it refuses it), else the last version it acked on
//! this stream, or the head it said it ran when it connected. The response
//! that opens a stream is always a full snapshot. The hub builds each
//! (base, head) delta once and every stream shares its bytes; when there is
//! no delta (base too old, delta too large), the full snapshot goes. A
//! request with `want_full` answering the last response makes the next
//! response the full head, even if this stream already carried it.
//!
//! # Backpressure
//! Responses go through an mpsc of capacity 1, and a slot is reserved only
//! when a version is pending. While the agent is slow the pending version is
//! replaced by newer heads (latest wins), so a stream holds at most one
//! pending version plus one in the channel, all sharing the hub's `Bytes`.
//!
//! # Shutdown
//! Every stream task watches the server's cancellation token; on shutdown it
//! ends the stream with `UNAVAILABLE` (agents reconnect, possibly elsewhere).
//!
//! # Layout
//! - `admission`: limits, the first request's check, streams per identity,
//!   the caller's standing.
//! - `service`: [`DiscoveryService`] and its tower service [`WatchServer`].
//! - `state`: one stream's protocol and loop.
//! - `body`: the hand-framed response body.
//! - `replay`: [`StreamReplay`], the stream without a network, for fuzzing.

pub(crate) mod admission;
mod body;
mod replay;
mod service;
pub(crate) mod state;

pub use admission::{
    DEFAULT_IDLE_STREAM_TIMEOUT, DEFAULT_MAX_AGENTS, DEFAULT_MAX_STREAMS_PER_IDENTITY,
    FIRST_REQUEST_TIMEOUT, MAX_LABELS, MAX_NACK_REASON_LEN, MAX_NODE_FIELD_LEN, MAX_REQUEST_BYTES,
    check_first_request,
};
pub use body::WatchBody;
pub use replay::StreamReplay;
pub(crate) use service::Parts;
pub use service::{DiscoveryService, WatchServer};

#[cfg(test)]
mod tests;
