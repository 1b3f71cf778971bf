//! `push --wait`: after the push, poll the group's status until every
//! connected agent ACKed the new version (exit 0), one NACKed it (exit 1) or
//! the time to wait passed (exit 4). [`decide`] is the pure decision over
//! one status answer.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use vane_proto as pb;

use crate::args::{Cli, OutputFormat};
use crate::client::Admin;
use crate::commands::follow::{self, Outage, POLL};
use crate::error::CliError;
use crate::output::{self, PushView};

/// What one status answer says about the agents and `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The group has no connected agent: nothing to wait for.
    NoAgents,
    /// Every connected agent ACKed.
    Acked { agents: usize },
    /// At least one connected agent NACKed the version.
    Nacked { agents: usize, nacked: Vec<Refusal> },
    /// Some connected agents have not ACKed yet.
    Waiting {
        agents: usize,
        missing: Vec<Missing>,
    },
}

/// An agent that NACKed the version, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Refusal {
    pub(crate) node_id: String,
    pub(crate) reason: String,
    /// The NACK's gRPC code (3: invalid content).
    pub(crate) code: i32,
}

/// An agent that has not ACKed the version yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Missing {
    pub(crate) node_id: String,
    pub(crate) state: &'static str,
    pub(crate) acked_version: u64,
    pub(crate) target_version: u64,
}

/// Whether the connected agents of `group` in `status` ACKed `version`.
///
/// An agent counts as done when it ACKed `version`, or when it ACKed the
/// version the server says it should run (`target_version`) and that is not
/// an older head: a newer push, or, during a rollout, its cohort's version.
/// A NACK of `version` (`last_nacked_version`) by any connected agent
/// decides at once: the agent keeps its old version and will not retry.
/// Disconnected agents are not waited for, nor clients whose protocol has
/// no acknowledgement (OpenFeature's flagd providers: state `UNACKED`).
pub(crate) fn decide(status: &pb::StatusResponse, group: &str, version: u64) -> Decision {
    let agents: Vec<&pb::AgentStatus> = status
        .agents
        .iter()
        .filter(|a| a.group == group && a.connected && a.client != FLAGD_CLIENT)
        .collect();
    if agents.is_empty() {
        return Decision::NoAgents;
    }
    let mut nacked: Vec<Refusal> = agents
        .iter()
        .filter(|a| a.last_nacked_version == version && a.acked_version != version)
        .map(|a| Refusal {
            node_id: a.node_id.clone(),
            reason: a.nack_reason.clone(),
            code: a.nack_code,
        })
        .collect();
    if !nacked.is_empty() {
        nacked.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        return Decision::Nacked {
            agents: agents.len(),
            nacked,
        };
    }
    let mut missing: Vec<Missing> = agents
        .iter()
        .filter(|a| !acked(a, version))
        .map(|a| Missing {
            node_id: a.node_id.clone(),
            state: output::state_name(a.state()),
            acked_version: a.acked_version,
            target_version: a.target_version,
        })
        .collect();
    if missing.is_empty() {
        return Decision::Acked {
            agents: agents.len(),
        };
    }
    missing.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Decision::Waiting {
        agents: agents.len(),
        missing,
    }
}

/// The `client` of nodes that cannot acknowledge (flagd sync).
const FLAGD_CLIENT: &str = "flagd";

fn acked(a: &pb::AgentStatus, version: u64) -> bool {
    // A replica with a stale view could report an older head as the
    // target: only a newer target, or a rollout's, stands in for `version`.
    a.acked_version == version
        || (a.target_version != 0
            && a.acked_version == a.target_version
            && (a.target_version > version || !a.role.is_empty()))
}

/// `push --wait` in JSON and YAML: the push's object plus `wait`.
#[derive(Debug, Serialize)]
struct PushWaitView<'a> {
    #[serde(flatten)]
    push: &'a PushView,
    wait: WaitView,
}

#[derive(Debug, Serialize)]
struct WaitView {
    /// `acked`, `no_agents`, `nacked` or `timeout`.
    result: &'static str,
    version: u64,
    /// Connected agents of the group at the last look.
    agents: usize,
    nacked: Vec<Refusal>,
    missing: Vec<Missing>,
    waited_ms: u64,
}

/// Pushes, then waits up to `wait` (see [`decide`]).
pub(crate) async fn push_and_wait(
    admin: &mut Admin,
    cli: &Cli,
    url: &str,
    request: pb::PushRequest,
    wait: Duration,
    live: &mut dyn FnMut(&str),
) -> Result<String, CliError> {
    let fmt = cli.output;
    let timeout = cli.call_timeout();
    let group = request.group.clone();
    let resp = follow::bounded(timeout, url, admin.push(request)).await?;
    super::warn(&resp.warnings);
    let push = PushView::new(&resp, None);
    let version = resp.version;
    if fmt == OutputFormat::Table {
        live(&output::push(&push, fmt));
        live(&format!(
            "waiting up to {} for every connected agent of {group} to ACK version {version}\n",
            humantime::format_duration(wait)
        ));
    }
    let started = Instant::now();
    let deadline = started + wait;
    let mut outage = Outage::default();
    let mut last = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let request = pb::StatusRequest {
            group: group.clone(),
            ..pb::StatusRequest::default()
        };
        match follow::bounded(timeout.min(remaining.max(POLL)), url, admin.status(request)).await {
            Ok(status) => {
                outage.answered();
                let decision = decide(&status, &group, version);
                if !matches!(decision, Decision::Waiting { .. }) {
                    return finish(&push, &group, version, decision, started.elapsed(), fmt);
                }
                last = Some(decision);
            }
            Err(e) => outage.failed(e, Instant::now())?,
        }
        let now = Instant::now();
        if now >= deadline {
            let decision = last.unwrap_or(Decision::Waiting {
                agents: 0,
                missing: Vec::new(),
            });
            return finish(&push, &group, version, decision, wait, fmt);
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// The result of the wait: text (exit 0) or the failure with its output.
fn finish(
    push: &PushView,
    group: &str,
    version: u64,
    decision: Decision,
    waited: Duration,
    fmt: OutputFormat,
) -> Result<String, CliError> {
    let (result, agents, nacked, missing) = match decision.clone() {
        Decision::NoAgents => ("no_agents", 0, Vec::new(), Vec::new()),
        Decision::Acked { agents } => ("acked", agents, Vec::new(), Vec::new()),
        Decision::Nacked { agents, nacked } => ("nacked", agents, nacked, Vec::new()),
        Decision::Waiting { agents, missing } => ("timeout", agents, Vec::new(), missing),
    };
    let text = if fmt == OutputFormat::Table {
        table_text(group, version, &decision)
    } else {
        let view = PushWaitView {
            push,
            wait: WaitView {
                result,
                version,
                agents,
                nacked: nacked.clone(),
                missing: missing.clone(),
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            },
        };
        output::encode(&view, fmt)
    };
    match decision {
        Decision::NoAgents | Decision::Acked { .. } => Ok(text),
        Decision::Nacked { agents, nacked } => {
            let who: Vec<String> = nacked
                .iter()
                .map(|r| format!("{}: {}", r.node_id, output::one_line(&r.reason)))
                .collect();
            Err(CliError::refused(format!(
                "version {version} of {group} was NACKed by {} of {agents} connected agent{}: {}",
                nacked.len(),
                plural(agents),
                who.join("; ")
            ))
            .with_output(text))
        }
        Decision::Waiting { agents, missing } => {
            let message = if agents == 0 {
                format!(
                    "could not learn within {} which agents of {group} ACKed version {version}",
                    humantime::format_duration(waited)
                )
            } else {
                let who: Vec<String> = missing.iter().map(missing_text).collect();
                format!(
                    "after {}, {} of {agents} connected agent{} of {group} had not ACKed version {version}: {}",
                    humantime::format_duration(waited),
                    missing.len(),
                    plural(agents),
                    who.join(", ")
                )
            };
            Err(CliError::timed_out(message).with_output(text))
        }
    }
}

fn table_text(group: &str, version: u64, decision: &Decision) -> String {
    match decision {
        Decision::NoAgents => {
            format!("no connected agents in {group}: nothing to wait for\n")
        }
        Decision::Acked { agents: 1 } => {
            format!("the connected agent of {group} ACKed version {version}\n")
        }
        Decision::Acked { agents } => {
            format!("all {agents} connected agents of {group} ACKed version {version}\n")
        }
        Decision::Nacked { nacked, .. } => output::table(
            &["NODE", "NACKED", "REASON"],
            nacked
                .iter()
                .map(|r| {
                    vec![
                        r.node_id.clone(),
                        format!("v{version}"),
                        output::one_line(&r.reason),
                    ]
                })
                .collect(),
        ),
        Decision::Waiting { missing, .. } if missing.is_empty() => String::new(),
        Decision::Waiting { missing, .. } => output::table(
            &["NODE", "STATE", "ACKED", "TARGET"],
            missing
                .iter()
                .map(|m| {
                    vec![
                        m.node_id.clone(),
                        m.state.to_owned(),
                        version_text(m.acked_version),
                        version_text(m.target_version),
                    ]
                })
                .collect(),
        ),
    }
}

fn missing_text(m: &Missing) -> String {
    format!(
        "{} ({}, runs {})",
        m.node_id,
        m.state,
        version_text(m.acked_version)
    )
}

fn version_text(v: u64) -> String {
    if v == 0 {
        "nothing".to_owned()
    } else {
        format!("v{v}")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;

    fn push_view(version: u64) -> PushView {
        PushView::new(
            &pb::PushResponse {
                group: "edge".into(),
                version,
                hash: "ab".repeat(32),
                ..pb::PushResponse::default()
            },
            None,
        )
    }

    fn agent(node: &str, acked: u64, target: u64, connected: bool) -> pb::AgentStatus {
        pb::AgentStatus {
            node_id: node.into(),
            group: "edge".into(),
            acked_version: acked,
            target_version: target,
            connected,
            state: if acked == target {
                pb::AgentState::Synced
            } else {
                pb::AgentState::Stale
            } as i32,
            ..pb::AgentStatus::default()
        }
    }

    fn status(agents: Vec<pb::AgentStatus>) -> pb::StatusResponse {
        pb::StatusResponse {
            agents,
            ..pb::StatusResponse::default()
        }
    }

    #[test]
    fn every_connected_agent_acked() {
        let s = status(vec![
            agent("n1", 5, 5, true),
            agent("n2", 5, 5, true),
            // Disconnected agents are not waited for; other groups neither.
            agent("gone", 4, 5, false),
            pb::AgentStatus {
                group: "other".into(),
                ..agent("x", 1, 2, true)
            },
            // A flagd provider never ACKs: not waited for either.
            pb::AgentStatus {
                client: "flagd".into(),
                state: pb::AgentState::Unacked as i32,
                ..agent("flagd-10.0.0.1:5000", 0, 5, true)
            },
        ]);
        assert_eq!(decide(&s, "edge", 5), Decision::Acked { agents: 2 });
        assert_eq!(decide(&status(vec![]), "edge", 5), Decision::NoAgents);
        assert_eq!(
            decide(&status(vec![agent("gone", 4, 5, false)]), "edge", 5),
            Decision::NoAgents
        );
    }

    #[test]
    fn missing_agents_are_named_with_their_state() {
        let s = status(vec![
            agent("n2", 4, 5, true),
            agent("n1", 5, 5, true),
            agent("n3", 0, 5, true),
        ]);
        assert_eq!(
            decide(&s, "edge", 5),
            Decision::Waiting {
                agents: 3,
                missing: vec![
                    Missing {
                        node_id: "n2".into(),
                        state: "STALE",
                        acked_version: 4,
                        target_version: 5
                    },
                    Missing {
                        node_id: "n3".into(),
                        state: "STALE",
                        acked_version: 0,
                        target_version: 5
                    },
                ]
            }
        );
        // A replica whose head is still the old version does not count the
        // old version as ours.
        let stale_view = status(vec![agent("n1", 4, 4, true)]);
        assert!(matches!(
            decide(&stale_view, "edge", 5),
            Decision::Waiting { .. }
        ));
    }

    #[test]
    fn a_newer_version_or_the_cohorts_version_counts() {
        // Pushed 5; someone pushed 6 since, and the agent runs it.
        assert_eq!(
            decide(&status(vec![agent("n1", 6, 6, true)]), "edge", 5),
            Decision::Acked { agents: 1 }
        );
        // A rollout started since: a stable agent runs 5, a candidate 6.
        let stable = pb::AgentStatus {
            role: "stable".into(),
            ..agent("n1", 5, 5, true)
        };
        let candidate = pb::AgentStatus {
            role: "candidate".into(),
            ..agent("n2", 6, 6, true)
        };
        assert_eq!(
            decide(&status(vec![stable, candidate]), "edge", 5),
            Decision::Acked { agents: 2 }
        );
        // Pushed 6 as it happens to be a rollout's stable side for agent n1
        // (target 5, role stable): n1 runs what it should.
        let on_stable = pb::AgentStatus {
            role: "stable".into(),
            ..agent("n1", 5, 5, true)
        };
        assert_eq!(
            decide(&status(vec![on_stable]), "edge", 6),
            Decision::Acked { agents: 1 }
        );
    }

    #[test]
    fn any_nack_of_the_version_decides() {
        let nack = pb::AgentStatus {
            last_nacked_version: 5,
            nack_reason: "clusters[0]: bad".into(),
            nack_code: 3,
            state: pb::AgentState::Nacked as i32,
            ..agent("n2", 4, 5, true)
        };
        // An older NACK does not count.
        let old_nack = pb::AgentStatus {
            last_nacked_version: 3,
            nack_reason: "old".into(),
            ..agent("n3", 5, 5, true)
        };
        let s = status(vec![agent("n1", 4, 5, true), nack, old_nack]);
        assert_eq!(
            decide(&s, "edge", 5),
            Decision::Nacked {
                agents: 3,
                nacked: vec![Refusal {
                    node_id: "n2".into(),
                    reason: "clusters[0]: bad".into(),
                    code: 3
                }]
            }
        );
    }

    #[test]
    fn results_and_exit_codes() {
        let push = push_view(5);
        let ok = finish(
            &push,
            "edge",
            5,
            Decision::Acked { agents: 2 },
            Duration::from_secs(1),
            OutputFormat::Table,
        )
        .unwrap();
        assert_eq!(ok, "all 2 connected agents of edge ACKed version 5\n");
        let none = finish(
            &push,
            "edge",
            5,
            Decision::NoAgents,
            Duration::ZERO,
            OutputFormat::Json,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&none).unwrap();
        assert_eq!(v["version"], 5);
        assert_eq!(v["group"], "edge");
        assert_eq!(v["wait"]["result"], "no_agents");

        let e = finish(
            &push,
            "edge",
            5,
            Decision::Nacked {
                agents: 3,
                nacked: vec![Refusal {
                    node_id: "n2".into(),
                    reason: "clusters[0]:\n bad".into(),
                    code: 3,
                }],
            },
            Duration::from_secs(1),
            OutputFormat::Table,
        )
        .unwrap_err();
        assert_eq!(e.kind, Failure::Refused);
        assert_eq!(
            e.message,
            "version 5 of edge was NACKed by 1 of 3 connected agents: n2: clusters[0]: bad"
        );
        assert_eq!(
            e.output,
            "NODE  NACKED  REASON\nn2    v5      clusters[0]: bad\n"
        );

        let missing = Decision::Waiting {
            agents: 2,
            missing: vec![Missing {
                node_id: "n2".into(),
                state: "STALE",
                acked_version: 4,
                target_version: 5,
            }],
        };
        let e = finish(
            &push,
            "edge",
            5,
            missing.clone(),
            Duration::from_secs(120),
            OutputFormat::Table,
        )
        .unwrap_err();
        assert_eq!(e.kind, Failure::TimedOut);
        assert_eq!(
            e.message,
            "after 2m, 1 of 2 connected agents of edge had not ACKed version 5: n2 (STALE, runs v4)"
        );
        assert_eq!(
            e.output,
            "NODE  STATE  ACKED  TARGET\nn2    STALE  v4     v5\n"
        );
        let e = finish(
            &push,
            "edge",
            5,
            missing,
            Duration::from_secs(120),
            OutputFormat::Json,
        )
        .unwrap_err();
        let v: serde_json::Value = serde_json::from_str(&e.output).unwrap();
        assert_eq!(v["wait"]["result"], "timeout");
        assert_eq!(v["wait"]["missing"][0]["node_id"], "n2");
        assert_eq!(v["wait"]["missing"][0]["state"], "STALE");
        assert_eq!(v["wait"]["waited_ms"], 120_000);
    }
}
