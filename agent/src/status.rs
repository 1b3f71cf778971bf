//! The agent's `/status` JSON (a contract: field names are relied on by
//! operators and tests) and its Prometheus text, shared by the sidecar and
//! the proxy.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::config::AgentConfig;
use crate::report::HealthReport;
use crate::state::{Applied, Health, HealthState};

/// The `/status` body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusReport {
    /// This node's id.
    pub node_id: String,
    /// Its group.
    pub group: String,
    /// Running version (0: defaults).
    pub version: u64,
    /// Running hash.
    pub hash: String,
    /// `live`, `cache` or `defaults`.
    pub source: &'static str,
    /// `healthy` or `degraded`.
    pub state: &'static str,
    /// Why degraded (empty when healthy).
    pub reason: String,
    /// Milliseconds since the control plane last confirmed the running version.
    pub staleness_ms: u64,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// Whether a watch stream is up.
    pub connected: bool,
    /// Control server of the current or last stream.
    pub server: Option<String>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Failed or ended watch streams since start (each one is retried).
    pub reconnects: u64,
    /// Snapshots applied since start.
    pub applies: u64,
    /// Snapshots refused since start.
    pub nacks: u64,
    /// Last refused version.
    pub last_nack_version: Option<u64>,
    /// Why it was refused.
    pub last_nack_reason: Option<String>,
    /// What the data plane last reported of its health (`degraded`,
    /// `reason`, `version`), as sent to the control plane; null until it
    /// reports. Separate from `state`, which is the agent's own.
    pub data_plane_health: Option<HealthReport>,
    /// The last 16 configurations installed, oldest first: `version`,
    /// `hash`, `applied_at_unix_ms`, `source`.
    pub history: Vec<Applied>,
}

impl StatusReport {
    /// Builds the report from a health reading.
    pub fn new(config: &AgentConfig, h: &Health) -> Self {
        let (state, reason) = match &h.state {
            HealthState::Healthy => ("healthy", String::new()),
            HealthState::Degraded { reason } => ("degraded", reason.clone()),
        };
        Self {
            node_id: config.node_id.clone(),
            group: config.group.clone(),
            version: h.version,
            hash: h.hash.clone(),
            source: h.source.as_str(),
            state,
            reason,
            staleness_ms: u64::try_from(h.staleness.as_millis()).unwrap_or(u64::MAX),
            breaker: h.breaker.as_str(),
            connected: h.connected,
            server: h.server.clone(),
            last_error: h.last_error.clone(),
            reconnects: h.reconnects,
            applies: h.applies,
            nacks: h.nacks,
            last_nack_version: h.last_nack.as_ref().map(|(v, _)| *v),
            last_nack_reason: h.last_nack.as_ref().map(|(_, r)| r.clone()),
            data_plane_health: h.data_plane.clone(),
            history: h.history.clone(),
        }
    }
}

/// Prometheus text of a registry.
pub fn render_metrics(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}
