//! The JSON the console API answers, made from the Admin service's
//! protobuf answers: the page's contract (docs/console.md lists it). Times
//! are Unix milliseconds (`*_unix_ms`), which the page shows in the
//! browser's time zone; 0 means unknown.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use vane_proto as pb;

use crate::diff;

/// `GET /ui/api/session`: who the server takes the caller for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SessionView {
    /// "" when anonymous.
    pub(crate) identity: String,
    /// "certificate", "token" or "none".
    pub(crate) source: String,
    /// "on" (a policy decides) or "off" (everyone may do everything).
    pub(crate) authorization: String,
    pub(crate) roles: Vec<RoleView>,
}

/// One role and the group patterns it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RoleView {
    pub(crate) role: String,
    pub(crate) groups: Vec<String>,
}

impl From<pb::WhoAmIResponse> for SessionView {
    fn from(who: pb::WhoAmIResponse) -> Self {
        Self {
            identity: who.identity,
            source: who.source,
            authorization: who.authorization,
            roles: who
                .roles
                .into_iter()
                .map(|r| RoleView {
                    role: r.role,
                    groups: r.groups,
                })
                .collect(),
        }
    }
}

/// How many agents of a group are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CountsView {
    pub(crate) synced: u32,
    pub(crate) stale: u32,
    pub(crate) nacked: u32,
    pub(crate) not_sent: u32,
    pub(crate) unacked: u32,
    pub(crate) disconnected: u32,
    pub(crate) total: u32,
}

impl From<Option<pb::AgentCounts>> for CountsView {
    fn from(counts: Option<pb::AgentCounts>) -> Self {
        let c = counts.unwrap_or_default();
        Self {
            synced: c.synced,
            stale: c.stale,
            nacked: c.nacked,
            not_sent: c.not_sent,
            unacked: c.unacked,
            disconnected: c.disconnected,
            total: c.total,
        }
    }
}

/// One row of `GET /ui/api/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct GroupRow {
    pub(crate) group: String,
    pub(crate) head_version: u64,
    pub(crate) head_hash: String,
    pub(crate) head_created_at_unix_ms: i64,
    pub(crate) agents: CountsView,
    /// The group's current or last rollout: state and step.
    pub(crate) rollout: Option<RolloutBrief>,
    /// Whether the caller may roll back and steer rollouts here.
    pub(crate) may_operate: bool,
}

/// A rollout in one line of the groups page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RolloutBrief {
    pub(crate) state: &'static str,
    pub(crate) active: bool,
    pub(crate) step: u32,
    pub(crate) steps: u32,
    pub(crate) percent: u32,
    pub(crate) candidate_version: u64,
}

impl From<&pb::Rollout> for RolloutBrief {
    fn from(r: &pb::Rollout) -> Self {
        Self {
            state: rollout_state(r.state()),
            active: rollout_active(r.state()),
            step: r.step,
            steps: r
                .spec
                .as_ref()
                .map_or(0, |s| u32::try_from(s.steps.len()).unwrap_or(u32::MAX)),
            percent: r.percent,
            candidate_version: r.candidate_version,
        }
    }
}

/// `GET /ui/api/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct GroupsView {
    pub(crate) groups: Vec<GroupRow>,
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VersionView {
    pub(crate) version: u64,
    pub(crate) hash: String,
    pub(crate) message: String,
    pub(crate) created_at_unix_ms: i64,
    /// The identity that pushed it ("" when unauthenticated).
    pub(crate) author: String,
    /// For a rollback: the version whose content it restored (else 0).
    pub(crate) rollback_of: u64,
    pub(crate) size_bytes: u64,
    /// Set when it was stored as a rollout's candidate.
    pub(crate) rollout_id: String,
    /// The server found its stored content corrupt.
    pub(crate) corrupt: bool,
}

impl VersionView {
    pub(crate) fn new(info: pb::VersionInfo, corrupt: bool) -> Self {
        Self {
            version: info.version,
            hash: info.hash,
            message: info.message,
            created_at_unix_ms: info.created_at_unix_ms,
            author: info.author,
            rollback_of: info.rollback_of,
            size_bytes: info.size_bytes,
            rollout_id: info.rollout_id,
            corrupt,
        }
    }
}

/// `GET /ui/api/groups/{group}/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct HistoryView {
    pub(crate) group: String,
    /// Newest first.
    pub(crate) versions: Vec<VersionView>,
    /// Older versions retention removed.
    pub(crate) pruned_versions: u64,
    pub(crate) may_operate: bool,
}

impl HistoryView {
    pub(crate) fn new(history: pb::HistoryResponse, may_operate: bool) -> Self {
        let corrupt: BTreeSet<u64> = history.corrupt_versions.iter().copied().collect();
        Self {
            group: history.group,
            versions: history
                .versions
                .into_iter()
                .map(|v| {
                    let bad = corrupt.contains(&v.version);
                    VersionView::new(v, bad)
                })
                .collect(),
            pruned_versions: history.pruned_versions,
            may_operate,
        }
    }
}

/// `GET /ui/api/groups/{group}/diff/{from}/{to}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DiffView {
    pub(crate) group: String,
    pub(crate) from: Option<VersionView>,
    pub(crate) to: Option<VersionView>,
    /// The unified diff of the canonical YAML ("" when equal).
    pub(crate) unified_diff: String,
    /// The same, line by line, typed and numbered.
    pub(crate) lines: Vec<diff::Line>,
}

impl From<pb::DiffResponse> for DiffView {
    fn from(d: pb::DiffResponse) -> Self {
        Self {
            lines: diff::lines(&d.unified_diff),
            group: d.group,
            from: d.from.map(|v| VersionView::new(v, false)),
            to: d.to.map(|v| VersionView::new(v, false)),
            unified_diff: d.unified_diff,
        }
    }
}

/// One agent of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AgentView {
    pub(crate) node_id: String,
    /// "synced", "stale", "nacked", "not_sent" or "unacked".
    pub(crate) state: &'static str,
    pub(crate) connected: bool,
    pub(crate) acked_version: u64,
    pub(crate) acked_hash: String,
    pub(crate) sent_version: u64,
    pub(crate) target_version: u64,
    pub(crate) last_nacked_version: u64,
    pub(crate) nack_reason: String,
    pub(crate) labels: BTreeMap<String, String>,
    /// "vane-agent", "envoy", "grpc", "xds", "http" or "flagd".
    pub(crate) client: String,
    pub(crate) last_seen_unix_ms: i64,
    pub(crate) connected_since_unix_ms: i64,
    /// During a rollout: "candidate" or "stable".
    pub(crate) role: String,
    pub(crate) degraded: bool,
    pub(crate) health_reason: String,
    pub(crate) peer: String,
    pub(crate) replica: String,
    pub(crate) agent_build: String,
}

impl From<pb::AgentStatus> for AgentView {
    fn from(a: pb::AgentStatus) -> Self {
        Self {
            state: agent_state(a.state()),
            node_id: a.node_id,
            connected: a.connected,
            acked_version: a.acked_version,
            acked_hash: a.acked_hash,
            sent_version: a.sent_version,
            target_version: a.target_version,
            last_nacked_version: a.last_nacked_version,
            nack_reason: a.nack_reason,
            labels: a.labels.into_iter().collect(),
            client: a.client,
            last_seen_unix_ms: a.last_seen_unix_ms,
            connected_since_unix_ms: a.connected_since_unix_ms,
            role: a.role,
            degraded: a.degraded,
            health_reason: a.health_reason,
            peer: a.peer,
            replica: a.replica,
            agent_build: a.agent_build,
        }
    }
}

/// `GET /ui/api/groups/{group}/agents[?selector=...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AgentsView {
    pub(crate) group: String,
    pub(crate) head_version: u64,
    /// The label selector the list was filtered by ("" for none).
    pub(crate) selector: String,
    pub(crate) agents: Vec<AgentView>,
    /// Every label key of the listed agents, with the values seen: the
    /// filter's suggestions.
    pub(crate) labels: BTreeMap<String, BTreeSet<String>>,
}

impl AgentsView {
    pub(crate) fn new(group: String, selector: String, status: pb::StatusResponse) -> Self {
        let head_version = status
            .groups
            .iter()
            .find(|g| g.group == group)
            .map_or(0, |g| g.head_version);
        let mut agents: Vec<AgentView> = status
            .agents
            .into_iter()
            .filter(|a| a.group == group)
            .map(AgentView::from)
            .collect();
        agents.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for agent in &agents {
            for (k, v) in &agent.labels {
                labels.entry(k.clone()).or_default().insert(v.clone());
            }
        }
        Self {
            group,
            head_version,
            selector,
            agents,
            labels,
        }
    }
}

/// A rollout's cohort, as counted by the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CohortView {
    pub(crate) total: u32,
    pub(crate) synced: u32,
    pub(crate) nacked: u32,
    pub(crate) degraded: u32,
    pub(crate) disconnected: u32,
    pub(crate) target: u32,
    pub(crate) matching: u32,
}

/// One event of a rollout's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct EventView {
    pub(crate) at_unix_ms: i64,
    pub(crate) state: &'static str,
    pub(crate) step: u32,
    pub(crate) percent: u32,
    pub(crate) reason: String,
    pub(crate) identity: String,
}

/// A rollout, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RolloutView {
    pub(crate) id: String,
    pub(crate) group: String,
    /// "progressing", "baking", "paused", "aborting", "complete",
    /// "rolled_back" or "superseded".
    pub(crate) state: &'static str,
    /// Whether it still runs (progressing, baking, paused or aborting).
    pub(crate) active: bool,
    /// The current step, from 1, and the percentages of every step.
    pub(crate) step: u32,
    pub(crate) steps: Vec<u32>,
    pub(crate) percent: u32,
    pub(crate) stable_version: u64,
    pub(crate) candidate_version: u64,
    pub(crate) restored_version: u64,
    pub(crate) cohort: CohortView,
    pub(crate) reason: String,
    pub(crate) selector: String,
    pub(crate) bake_ms: u64,
    pub(crate) bake_ends_at_unix_ms: i64,
    pub(crate) step_started_at_unix_ms: i64,
    pub(crate) started_at_unix_ms: i64,
    pub(crate) updated_at_unix_ms: i64,
    pub(crate) author: String,
    pub(crate) message: String,
    pub(crate) paused_by_operator: bool,
    pub(crate) members: Vec<String>,
    /// Oldest first.
    pub(crate) events: Vec<EventView>,
}

impl From<pb::Rollout> for RolloutView {
    fn from(r: pb::Rollout) -> Self {
        let spec = r.spec.clone().unwrap_or_default();
        let cohort = r.cohort.unwrap_or_default();
        Self {
            state: rollout_state(r.state()),
            active: rollout_active(r.state()),
            id: r.id,
            group: r.group,
            step: r.step,
            steps: spec.steps,
            percent: r.percent,
            stable_version: r.stable_version,
            candidate_version: r.candidate_version,
            restored_version: r.restored_version,
            cohort: CohortView {
                total: cohort.total,
                synced: cohort.synced,
                nacked: cohort.nacked,
                degraded: cohort.degraded,
                disconnected: cohort.disconnected,
                target: cohort.target,
                matching: cohort.matching,
            },
            reason: r.reason,
            selector: spec.selector,
            bake_ms: spec.bake_ms,
            bake_ends_at_unix_ms: r.bake_ends_at_unix_ms,
            step_started_at_unix_ms: r.step_started_at_unix_ms,
            started_at_unix_ms: r.started_at_unix_ms,
            updated_at_unix_ms: r.updated_at_unix_ms,
            author: r.author,
            message: r.message,
            paused_by_operator: r.paused_by_operator,
            members: r.members,
            events: r
                .events
                .into_iter()
                .map(|e| EventView {
                    state: rollout_state(e.state()),
                    at_unix_ms: e.at_unix_ms,
                    step: e.step,
                    percent: e.percent,
                    reason: e.reason,
                    identity: e.identity,
                })
                .collect(),
        }
    }
}

/// `GET /ui/api/groups/{group}/rollout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RolloutPage {
    pub(crate) group: String,
    /// `null` when the group never had a rollout.
    pub(crate) rollout: Option<RolloutView>,
    pub(crate) may_operate: bool,
    /// The server's clock, so the page counts the bake down without
    /// trusting the browser's.
    pub(crate) now_unix_ms: i64,
}

/// One entry of `GET /ui/api/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AuditView {
    pub(crate) at_unix_ms: i64,
    pub(crate) identity: String,
    pub(crate) action: String,
    pub(crate) group: String,
    pub(crate) version: u64,
    pub(crate) hash: String,
    pub(crate) message: String,
    /// "created", "unchanged" or "refused".
    pub(crate) result: String,
    pub(crate) code: String,
    pub(crate) reason: String,
    pub(crate) peer: String,
    pub(crate) replica: String,
    pub(crate) rollback_of: u64,
}

impl From<pb::AuditEntry> for AuditView {
    fn from(e: pb::AuditEntry) -> Self {
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
        } = e;
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

/// `GET /ui/api/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AuditLogView {
    /// The group asked for ("" for every group the caller may read).
    pub(crate) group: String,
    /// Newest first.
    pub(crate) entries: Vec<AuditView>,
}

/// What `POST /ui/api/groups/{group}/rollback` created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PushView {
    pub(crate) group: String,
    pub(crate) version: u64,
    pub(crate) hash: String,
    pub(crate) unchanged: bool,
    pub(crate) created_at_unix_ms: i64,
    pub(crate) warnings: Vec<String>,
}

impl From<pb::PushResponse> for PushView {
    fn from(p: pb::PushResponse) -> Self {
        Self {
            group: p.group,
            version: p.version,
            hash: p.hash,
            unchanged: p.unchanged,
            created_at_unix_ms: p.created_at_unix_ms,
            warnings: p.warnings,
        }
    }
}

/// An agent's state as the page names it.
pub(crate) fn agent_state(state: pb::AgentState) -> &'static str {
    match state {
        pb::AgentState::Synced => "synced",
        pb::AgentState::Stale => "stale",
        pb::AgentState::Nacked => "nacked",
        pb::AgentState::NotSent => "not_sent",
        pb::AgentState::Unacked => "unacked",
        pb::AgentState::Unspecified => "unknown",
    }
}

/// A rollout's state as the page names it.
pub(crate) fn rollout_state(state: pb::RolloutState) -> &'static str {
    match state {
        pb::RolloutState::Progressing => "progressing",
        pb::RolloutState::Baking => "baking",
        pb::RolloutState::Paused => "paused",
        pb::RolloutState::Aborting => "aborting",
        pb::RolloutState::Complete => "complete",
        pb::RolloutState::RolledBack => "rolled_back",
        pb::RolloutState::Superseded => "superseded",
        pb::RolloutState::Unspecified => "unknown",
    }
}

/// Whether a rollout in `state` still runs.
fn rollout_active(state: pb::RolloutState) -> bool {
    matches!(
        state,
        pb::RolloutState::Progressing
            | pb::RolloutState::Baking
            | pb::RolloutState::Paused
            | pb::RolloutState::Aborting
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn history_marks_the_corrupt_versions() {
        let history = pb::HistoryResponse {
            group: "edge".into(),
            versions: vec![
                pb::VersionInfo {
                    version: 2,
                    hash: "b".into(),
                    message: "faster".into(),
                    author: "ops".into(),
                    created_at_unix_ms: 2000,
                    ..Default::default()
                },
                pb::VersionInfo {
                    version: 1,
                    hash: "a".into(),
                    ..Default::default()
                },
            ],
            corrupt_versions: vec![1],
            pruned_versions: 0,
        };
        let view = serde_json::to_value(HistoryView::new(history, true)).unwrap();
        assert_eq!(view["group"], "edge");
        assert_eq!(view["may_operate"], true);
        assert_eq!(
            view["versions"][0],
            json!({"version": 2, "hash": "b", "message": "faster", "created_at_unix_ms": 2000,
                   "author": "ops", "rollback_of": 0, "size_bytes": 0, "rollout_id": "",
                   "corrupt": false})
        );
        assert_eq!(view["versions"][1]["corrupt"], true);
    }

    #[test]
    fn agents_keep_their_group_only_sorted_with_the_labels_seen() {
        let agent = |id: &str, group: &str, zone: &str| pb::AgentStatus {
            node_id: id.into(),
            group: group.into(),
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            state: pb::AgentState::Nacked as i32,
            nack_reason: "listeners[0].port: in use".into(),
            client: "vane-agent".into(),
            ..Default::default()
        };
        let status = pb::StatusResponse {
            agents: vec![
                agent("b", "edge", "eu"),
                agent("a", "edge", "us"),
                agent("c", "other", "ap"),
            ],
            groups: vec![pb::GroupStatus {
                group: "edge".into(),
                head_version: 7,
                ..Default::default()
            }],
            ..Default::default()
        };
        let view = AgentsView::new("edge".into(), String::new(), status);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["head_version"], 7);
        assert_eq!(json["agents"][0]["node_id"], "a");
        assert_eq!(json["agents"][1]["node_id"], "b");
        assert_eq!(json["agents"].as_array().unwrap().len(), 2);
        assert_eq!(json["agents"][0]["state"], "nacked");
        assert_eq!(
            json["agents"][0]["nack_reason"],
            "listeners[0].port: in use"
        );
        assert_eq!(json["labels"], json!({"zone": ["eu", "us"]}));
    }

    #[test]
    fn a_rollout_says_its_steps_cohort_and_whether_it_runs() {
        let rollout = pb::Rollout {
            id: "r1".into(),
            group: "edge".into(),
            state: pb::RolloutState::Baking as i32,
            step: 2,
            percent: 50,
            spec: Some(pb::RolloutSpec {
                steps: vec![10, 50, 100],
                bake_ms: 30_000,
                ..Default::default()
            }),
            cohort: Some(pb::RolloutCohort {
                total: 5,
                synced: 4,
                target: 5,
                matching: 10,
                ..Default::default()
            }),
            bake_ends_at_unix_ms: 99,
            events: vec![pb::RolloutEvent {
                state: pb::RolloutState::Progressing as i32,
                step: 1,
                reason: "started".into(),
                identity: "ops".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let brief = serde_json::to_value(RolloutBrief::from(&rollout)).unwrap();
        assert_eq!(
            brief,
            json!({"state": "baking", "active": true, "step": 2, "steps": 3, "percent": 50,
                   "candidate_version": 0})
        );
        let view = serde_json::to_value(RolloutView::from(rollout)).unwrap();
        assert_eq!(view["steps"], json!([10, 50, 100]));
        assert_eq!(view["cohort"]["synced"], 4);
        assert_eq!(view["cohort"]["matching"], 10);
        assert_eq!(view["bake_ms"], 30_000);
        assert_eq!(view["bake_ends_at_unix_ms"], 99);
        assert_eq!(view["events"][0]["state"], "progressing");
        assert_eq!(view["events"][0]["identity"], "ops");
        let ended = pb::Rollout {
            state: pb::RolloutState::RolledBack as i32,
            ..Default::default()
        };
        let ended = serde_json::to_value(RolloutView::from(ended)).unwrap();
        assert_eq!(
            (ended["state"].clone(), ended["active"].clone()),
            (json!("rolled_back"), json!(false))
        );
    }

    #[test]
    fn a_diff_carries_its_typed_lines() {
        let view = serde_json::to_value(DiffView::from(pb::DiffResponse {
            group: "edge".into(),
            from: None,
            to: None,
            unified_diff: "@@ -1 +1 @@\n-a\n+b\n".into(),
        }))
        .unwrap();
        assert_eq!(
            view["lines"][1],
            json!({"kind": "del", "text": "-a", "old": 1, "new": null})
        );
        assert_eq!(view["lines"][2]["kind"], "add");
    }
}
