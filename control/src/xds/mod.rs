//! Envoy's xDS, served to stock clients: `envoy.service.discovery.v3.
//! AggregatedDiscoveryService`, both state of the world
//! (`StreamAggregatedResources`) and incremental (`DeltaAggregatedResources`),
//! on the main port beside Vane's own watch, with the same TLS, identities,
//! policy and agent records.
//!
//! - `node.rs` — who the client is: `node.id`, the group from
//!   `node.metadata["vane.group"]`, the client kind from `user_agent_name`.
//! - `tracker.rs` — per resource type, what was sent and what the client
//!   answered (a documented `State` machine), and from that the node's
//!   record: SYNCED at N once every type it subscribed to acked N, NACKED
//!   with the type and the client's reason.
//! - `sotw.rs`, `delta.rs` — the two protocols: subscriptions, nonces,
//!   which responses to send; pure, with no I/O.
//! - `stream.rs` — one stream's loop: requests, the group's head and
//!   rollout cohort, the caller's standing, shutdown; latest wins.
//! - `service.rs` — the tonic service: authentication, the first request,
//!   authorization, caps, the agent record, the stream's task.
//!
//! Every version is translated once ([`crate::hub::Published::xds`]) and
//! its resources shared by every stream; `version_info` is the Vane version,
//! and on delta streams a resource's version is the hash of its content, so
//! a client is sent only what changed.

use std::sync::Arc;

use bytes::Bytes;

mod delta;
mod node;
mod service;
mod sotw;
mod stream;
mod tracker;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sds;

pub use node::{GROUP_METADATA_KEY, NodeError};
pub use service::XdsService;

/// A version as xDS resources, or why it has none (shared: every stream of
/// the version holds the same).
pub type Translated = Result<Arc<vane_xds::Resources>, Arc<str>>;

/// Translates an encoded canonical snapshot on the blocking pool.
pub(crate) async fn translate(snapshot: Bytes) -> Translated {
    let done = tokio::task::spawn_blocking(move || {
        let snapshot = vane_model::Snapshot::decode(&snapshot)
            .map_err(|e| format!("the stored content does not decode: {e}"))?;
        vane_xds::translate(&snapshot)
            .map(Arc::new)
            .map_err(|e| format!("it has no xDS form: {e}"))
    })
    .await;
    match done {
        Ok(Ok(resources)) => Ok(resources),
        Ok(Err(reason)) => Err(reason.into()),
        Err(e) => Err(format!("its translation failed: {e}").into()),
    }
}
