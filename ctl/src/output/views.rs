//! What vanectl shows of each answer (the views), built from the server's
//! messages. Their serde field names are the JSON contract scripts read.

use std::collections::BTreeMap;

use serde::Serialize;
use vane_proto as pb;

use crate::output::format::*;
use crate::output::rollout::RolloutView;

/// The result of a push or a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PushView {
    pub(crate) group: String,
    /// The new version; the head when `unchanged`; on a dry run, the version
    /// a real push would have produced.
    pub(crate) version: u64,
    pub(crate) hash: String,
    pub(crate) unchanged: bool,
    pub(crate) dry_run: bool,
    pub(crate) created_at: Option<String>,
    /// For a rollback: the version whose content was restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rollback_of: Option<u64>,
    /// Dry run: the unified diff of the head's canonical YAML and the
    /// pushed content's (empty when equal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) diff: Option<String>,
    /// Dry run: listeners, routes and clusters added, removed, changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) summary: Option<crate::compare::Summary>,
    /// Dry run: what to read before pushing (every listener or route
    /// removed), and the server's warnings; also on stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) warnings: Option<Vec<String>>,
}

impl PushView {
    pub(crate) fn new(resp: &pb::PushResponse, rollback_of: Option<u64>) -> Self {
        Self {
            group: resp.group.clone(),
            version: resp.version,
            hash: resp.hash.clone(),
            unchanged: resp.unchanged,
            dry_run: resp.dry_run,
            created_at: rfc3339(resp.created_at_unix_ms),
            rollback_of,
            diff: None,
            summary: None,
            warnings: None,
        }
    }
}

/// One stored version: an entry of `history`, and the two sides of `diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VersionView {
    pub(crate) version: u64,
    pub(crate) hash: String,
    pub(crate) message: String,
    pub(crate) created_at: Option<String>,
    pub(crate) author: String,
    /// The version whose content a rollback restored (0 for a push).
    pub(crate) rollback_of: u64,
    pub(crate) size_bytes: u64,
    /// The server found this version's stored content corrupt (it does not
    /// match its hash). In the JSON only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) corrupt: bool,
}

impl From<&pb::VersionInfo> for VersionView {
    fn from(info: &pb::VersionInfo) -> Self {
        Self {
            version: info.version,
            hash: info.hash.clone(),
            message: info.message.clone(),
            created_at: rfc3339(info.created_at_unix_ms),
            author: info.author.clone(),
            rollback_of: info.rollback_of,
            size_bytes: info.size_bytes,
            corrupt: false,
        }
    }
}

/// The result of `diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DiffView {
    pub(crate) group: String,
    pub(crate) from: VersionView,
    pub(crate) to: VersionView,
    /// Unified diff of the canonical YAML; empty when the contents are equal.
    pub(crate) diff: String,
}

/// One agent in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AgentView {
    pub(crate) node_id: String,
    pub(crate) group: String,
    /// What kind of client the node is: `vane-agent` (Vane's own watch;
    /// also for records older than this field), `envoy`, `grpc`, `xds`
    /// (another xDS client) or `http` (an HTTP long-poll client).
    pub(crate) client: String,
    pub(crate) state: &'static str,
    pub(crate) acked_version: u64,
    pub(crate) acked_hash: String,
    pub(crate) sent_version: u64,
    pub(crate) last_nacked_version: u64,
    pub(crate) nack_reason: String,
    pub(crate) connected: bool,
    pub(crate) connected_since: Option<String>,
    pub(crate) last_seen: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) peer: String,
    pub(crate) agent_build: String,
    /// The control server (replica) holding the agent's stream.
    pub(crate) replica: String,
    /// True when the server that answered cannot reach its store (etcd): it
    /// keeps streaming the last known snapshots, pushes fail, and it may not
    /// list the other replicas' agents.
    pub(crate) control_degraded: bool,
    /// During a rollout of its group: `candidate` (in the cohort) or
    /// `stable`; empty otherwise.
    pub(crate) role: String,
    /// The version the agent should run now (its cohort's version).
    pub(crate) target_version: u64,
    /// The data plane reports degraded health for `health_version`, with
    /// `health_reason`.
    pub(crate) degraded: bool,
    pub(crate) health_reason: String,
    pub(crate) health_version: u64,
    /// The gRPC code of the last NACK (3: invalid content).
    pub(crate) nack_code: i32,
    /// Streams the agent opened since the server first saw it (reconnects + 1).
    pub(crate) sessions: u64,
    /// The group's current (or last) rollout, on each agent of that group
    /// (absent when the group never had one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rollout: Option<RolloutView>,
    /// For relative times in the table; not part of the JSON contract.
    #[serde(skip)]
    pub(crate) connected_since_ms: i64,
    #[serde(skip)]
    pub(crate) last_seen_ms: i64,
}

impl From<&pb::AgentStatus> for AgentView {
    fn from(a: &pb::AgentStatus) -> Self {
        Self {
            node_id: a.node_id.clone(),
            group: a.group.clone(),
            client: if a.client.is_empty() {
                "vane-agent".to_owned()
            } else {
                a.client.clone()
            },
            state: state_name(a.state()),
            acked_version: a.acked_version,
            acked_hash: a.acked_hash.clone(),
            sent_version: a.sent_version,
            last_nacked_version: a.last_nacked_version,
            nack_reason: a.nack_reason.clone(),
            connected: a.connected,
            connected_since: rfc3339(a.connected_since_unix_ms),
            last_seen: rfc3339(a.last_seen_unix_ms),
            labels: a.labels.clone().into_iter().collect(),
            peer: a.peer.clone(),
            agent_build: a.agent_build.clone(),
            replica: a.replica.clone(),
            control_degraded: false,
            role: a.role.clone(),
            target_version: a.target_version,
            degraded: a.degraded,
            health_reason: a.health_reason.clone(),
            health_version: a.health_version,
            nack_code: a.nack_code,
            sessions: a.sessions,
            rollout: None,
            connected_since_ms: a.connected_since_unix_ms,
            last_seen_ms: a.last_seen_unix_ms,
        }
    }
}

/// One entry of `audit`: the proto's fields under the proto's names (the
/// JSON contract), time included as Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AuditView {
    pub(crate) at_unix_ms: i64,
    pub(crate) identity: String,
    pub(crate) action: String,
    pub(crate) group: String,
    pub(crate) version: u64,
    pub(crate) hash: String,
    pub(crate) message: String,
    pub(crate) result: String,
    pub(crate) code: String,
    pub(crate) reason: String,
    pub(crate) peer: String,
    pub(crate) replica: String,
    pub(crate) rollback_of: u64,
}

impl From<pb::AuditEntry> for AuditView {
    fn from(entry: pb::AuditEntry) -> Self {
        // Destructured field by field: a field added to the proto breaks the
        // build here instead of going missing from the output.
        let pb::AuditEntry {
            at_unix_ms,
            identity,
            action,
            group,
            version,
            hash,
            message,
            result,
            code,
            reason,
            peer,
            replica,
            rollback_of,
        } = entry;
        Self {
            at_unix_ms,
            identity,
            action,
            group,
            version,
            hash,
            message,
            result,
            code,
            reason,
            peer,
            replica,
            rollback_of,
        }
    }
}

/// The answer of `whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct WhoAmIView {
    /// Empty when the server did not authenticate the caller.
    pub(crate) identity: String,
    /// `certificate`, `token` or `none`.
    pub(crate) source: String,
    /// `on` or `off`.
    pub(crate) authorization: String,
    pub(crate) roles: Vec<RoleView>,
}

/// One role of `whoami` and the group patterns it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RoleView {
    pub(crate) role: String,
    pub(crate) groups: Vec<String>,
}

impl From<pb::WhoAmIResponse> for WhoAmIView {
    fn from(resp: pb::WhoAmIResponse) -> Self {
        let pb::WhoAmIResponse {
            identity,
            source,
            authorization,
            roles,
        } = resp;
        Self {
            identity,
            source,
            authorization,
            roles: roles
                .into_iter()
                .map(|pb::RoleBinding { role, groups }| RoleView { role, groups })
                .collect(),
        }
    }
}

/// The contract's state names (`SYNCED`, `STALE`, `NACKED`, `NOT_SENT`,
/// `UNACKED`).
pub(crate) fn state_name(state: pb::AgentState) -> &'static str {
    match state {
        pb::AgentState::Synced => "SYNCED",
        pb::AgentState::Stale => "STALE",
        pb::AgentState::Nacked => "NACKED",
        pb::AgentState::NotSent => "NOT_SENT",
        pb::AgentState::Unacked => "UNACKED",
        pb::AgentState::Unspecified => "UNKNOWN",
    }
}
