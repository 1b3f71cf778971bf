//! A watch stream without a network, for the `watch_stream` fuzz target:
//! the server's own handling of the requests after the first.

use std::sync::Arc;

use tonic::Status;
use vane_proto as pb;

use crate::agents::{AgentRecord, AgentRegistry};
use crate::hub::Published;
use crate::metrics::Metrics;
use crate::watch::admission::check_first_request;
use crate::watch::state::WatchState;

/// One stream's request handling without a network or a hub: the server's
/// side of a watch stream after its first request, driven step by step.
/// For the `watch_stream` fuzz target (crate `vane-fuzzing`), which feeds it
/// hostile ACKs, NACKs, heartbeats and node changes between responses and
/// checks what the agent registry records.
#[doc(hidden)]
pub struct StreamReplay {
    state: WatchState,
    group: String,
}

impl std::fmt::Debug for StreamReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReplay")
            .field("group", &self.group)
            .field("node", &self.state.node.id)
            .finish_non_exhaustive()
    }
}

impl StreamReplay {
    /// A stream opened by `first`, as the server checks and records it;
    /// the reason when the server would refuse it.
    pub fn open(first: &pb::WatchRequest) -> Result<Self, String> {
        let node = check_first_request(first)?;
        let agents = Arc::new(AgentRegistry::default());
        let key = agents.connect(&node, "fuzz", None);
        let group = node.group.clone();
        let metrics = Metrics::new().stream(&group);
        let state = WatchState::new(agents, key, node, first.accept_delta, metrics);
        Ok(Self { state, group })
    }

    /// Sends `version` (with `hash` and a small body) as the next response.
    pub fn send(&mut self, version: u64, hash: &str) -> pb::WatchResponse {
        let published = Published::new(
            self.group.clone(),
            version,
            hash.to_owned(),
            0,
            bytes::Bytes::from_static(b"replayed snapshot"),
        );
        self.state.response(&published, None)
    }

    /// Handles one request after the first; `Err` ends the stream.
    pub fn request(&mut self, request: pb::WatchRequest) -> Result<(), Status> {
        self.state.on_request(request).map(|_| ())
    }

    /// What the registry holds for this stream's agent.
    pub fn record(&self) -> Option<AgentRecord> {
        self.state
            .agents
            .list(Some(&self.group))
            .into_iter()
            .find(|r| r.node_id == self.state.node.id)
    }
}
