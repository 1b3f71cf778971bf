//! `vanectl groups`, `delete`, `watch`, and the `status --fail-on` gate.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use vane_backoff::{ExponentialBackoff, Jitter};
use vane_proto as pb;

use crate::args::OutputFormat;
use crate::client::Admin;
use crate::error::{CliError, Failure};
use crate::output::{self, VersionView, encode, one_line, state_name, table, unix_ms};

/// The states `--fail-on` accepts, as typed (any case).
const STATES: [(&str, pb::AgentState); 5] = [
    ("synced", pb::AgentState::Synced),
    ("stale", pb::AgentState::Stale),
    ("nacked", pb::AgentState::Nacked),
    ("not_sent", pb::AgentState::NotSent),
    ("unacked", pb::AgentState::Unacked),
];

/// First and longest pause of `watch` between two attempts to reconnect.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// One group as `groups` shows it (the JSON contract).
#[derive(Debug, Serialize)]
struct GroupView {
    group: String,
    version: u64,
    hash: String,
    created_at: Option<String>,
    /// Seconds since the head was stored.
    age_seconds: i64,
    /// Agents by state (`SYNCED`, `STALE`, `NACKED`, `NOT_SENT`,
    /// `UNACKED`), `total` and `disconnected`.
    agents: BTreeMap<String, u32>,
}

fn group_view(g: &pb::GroupSummary, now_ms: i64) -> GroupView {
    let c = g.agents.unwrap_or_default();
    let agents = [
        (pb::AgentState::Synced, c.synced),
        (pb::AgentState::Stale, c.stale),
        (pb::AgentState::Nacked, c.nacked),
        (pb::AgentState::NotSent, c.not_sent),
        (pb::AgentState::Unacked, c.unacked),
    ]
    .into_iter()
    .map(|(s, n)| (state_name(s).to_owned(), n))
    .chain([
        ("total".to_owned(), c.total),
        ("disconnected".to_owned(), c.disconnected),
    ])
    .collect();
    GroupView {
        group: g.group.clone(),
        version: g.head_version,
        hash: g.head_hash.clone(),
        created_at: output::rfc3339_seconds(g.head_created_at_unix_ms),
        age_seconds: now_ms.saturating_sub(g.head_created_at_unix_ms).max(0) / 1000,
        agents,
    }
}

/// `groups`: a table, or the list of [`GroupView`]s.
pub(super) fn render_groups(groups: &[pb::GroupSummary], fmt: OutputFormat, now_ms: i64) -> String {
    let views: Vec<GroupView> = groups.iter().map(|g| group_view(g, now_ms)).collect();
    if fmt != OutputFormat::Table {
        return encode(&views, fmt);
    }
    if views.is_empty() {
        return "no groups\n".into();
    }
    let count = |v: &GroupView, k: &str| v.agents.get(k).copied().unwrap_or(0).to_string();
    let rows = views
        .iter()
        .map(|v| {
            vec![
                v.group.clone(),
                v.version.to_string(),
                v.hash.get(..12).unwrap_or(&v.hash).to_owned(),
                age(v.age_seconds),
                count(v, "SYNCED"),
                count(v, "STALE"),
                count(v, "NACKED"),
                count(v, "NOT_SENT"),
                count(v, "UNACKED"),
                count(v, "total"),
            ]
        })
        .collect();
    table(
        &[
            "GROUP", "VERSION", "HASH", "AGE", "SYNCED", "STALE", "NACKED", "NOT_SENT", "UNACKED",
            "AGENTS",
        ],
        rows,
    )
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub(super) async fn list(
    admin: &mut Admin,
    fmt: OutputFormat,
    refused: impl Fn(tonic::Status) -> CliError,
) -> Result<String, CliError> {
    let resp = admin
        .list_groups(pb::ListGroupsRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    Ok(render_groups(&resp.groups, fmt, unix_ms(SystemTime::now())))
}

/// What `delete` prints as JSON.
#[derive(Debug, Serialize)]
struct DeletedView {
    group: String,
    last_version: u64,
    versions: u64,
    connected_agents: u32,
    ended_rollout: String,
}

pub(super) async fn delete(
    admin: &mut Admin,
    group: &str,
    force: bool,
    message: Option<&str>,
    fmt: OutputFormat,
    refused: impl Fn(tonic::Status) -> CliError,
) -> Result<String, CliError> {
    let resp = admin
        .delete_group(pb::DeleteGroupRequest {
            group: group.to_owned(),
            force,
            message: message.unwrap_or_default().to_owned(),
            expected_version: None,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let view = DeletedView {
        group: resp.group,
        last_version: resp.last_version,
        versions: resp.versions,
        connected_agents: resp.connected_agents,
        ended_rollout: resp.ended_rollout,
    };
    if fmt != OutputFormat::Table {
        return Ok(encode(&view, fmt));
    }
    let mut out = format!(
        "deleted group {} ({} version{} removed); pushed again it continues at version {}\n",
        view.group,
        view.versions,
        if view.versions == 1 { "" } else { "s" },
        view.last_version + 1
    );
    if view.connected_agents > 0 {
        out.push_str(&format!(
            "{} connected agent{} keep{} the version {} run{}\n",
            view.connected_agents,
            if view.connected_agents == 1 { "" } else { "s" },
            if view.connected_agents == 1 { "s" } else { "" },
            if view.connected_agents == 1 {
                "it"
            } else {
                "they"
            },
            if view.connected_agents == 1 { "s" } else { "" },
        ));
    }
    if !view.ended_rollout.is_empty() {
        out.push_str(&format!(
            "rollout {} ended (SUPERSEDED)\n",
            view.ended_rollout
        ));
    }
    Ok(out)
}

/// One line of `watch -o json`.
#[derive(Debug, Serialize)]
struct WatchLine<'a> {
    group: &'a str,
    #[serde(flatten)]
    version: VersionView,
}

/// One printed version: a table line, or one JSON object per line.
pub(super) fn watch_line(group: &str, info: &pb::VersionInfo, fmt: OutputFormat) -> String {
    let view = VersionView::from(info);
    match fmt {
        OutputFormat::Table => format!(
            "{}  {}  {}  {}  {}\n",
            view.version,
            view.hash.get(..12).unwrap_or(&view.hash),
            view.created_at.as_deref().unwrap_or("-"),
            if view.author.is_empty() {
                "-"
            } else {
                &view.author
            },
            one_line(&view.message)
        ),
        _ => {
            let line = WatchLine {
                group,
                version: view,
            };
            serde_json::to_string(&line).unwrap_or_default() + "\n"
        }
    }
}

/// `watch`: follows until Ctrl-C (exit 0) or a refusal (exit 1).
pub(super) async fn watch(
    admin: &mut Admin,
    group: &str,
    fmt: OutputFormat,
    url: &str,
    live: &mut dyn FnMut(&str),
) -> Result<String, CliError> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut backoff = ExponentialBackoff::new(RECONNECT_MIN, RECONNECT_MAX, Jitter::Full)
        .map_err(|e| CliError::usage(format!("watch backoff: {e}")))?;
    let mut last = 0u64;
    loop {
        let lost = tokio::select! {
            _ = &mut interrupted => return Ok(String::new()),
            followed = follow(admin, group, fmt, url, live, &mut last, &mut backoff) => match followed {
                Ok(()) => "the server ended the stream".to_owned(),
                // Unreachable, or the server stopping: try again.
                Err(e) if e.kind == Failure::Unreachable => e.message,
                Err(e) => return Err(e),
            },
        };
        let pause = backoff.next();
        eprintln!(
            "vanectl: watch of {group}: {lost}; reconnecting in {}",
            humantime::format_duration(Duration::from_millis(pause.as_millis() as u64))
        );
        tokio::select! {
            _ = &mut interrupted => return Ok(String::new()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One stream: prints every version after `last`, filling gaps (several
/// versions published while this stream was away or behind) from the
/// history.
async fn follow(
    admin: &mut Admin,
    group: &str,
    fmt: OutputFormat,
    url: &str,
    live: &mut dyn FnMut(&str),
    last: &mut u64,
    backoff: &mut ExponentialBackoff,
) -> Result<(), CliError> {
    let status = |s: tonic::Status| CliError::from_status(&s, url);
    let mut stream = admin
        .watch_group(pb::WatchGroupRequest {
            group: group.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner();
    while let Some(message) = stream.message().await.map_err(status)? {
        backoff.reset();
        let Some(info) = message.version else {
            continue;
        };
        if info.version <= *last {
            continue;
        }
        if *last > 0 && info.version > *last + 1 {
            let history = admin
                .history(pb::HistoryRequest {
                    group: group.to_owned(),
                    limit: 0,
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut between: Vec<pb::VersionInfo> = history
                .versions
                .into_iter()
                .filter(|v| v.version > *last && v.version < info.version)
                .collect();
            between.sort_by_key(|v| v.version);
            let expected = info.version - *last - 1;
            let missed = expected.saturating_sub(between.len() as u64);
            if missed > 0 {
                eprintln!(
                    "vanectl: watch of {group}: {missed} version(s) between {} and {} were missed (removed before they could be read)",
                    *last, info.version
                );
            }
            for v in &between {
                live(&watch_line(group, v, fmt));
            }
        }
        live(&watch_line(group, &info, fmt));
        *last = info.version;
    }
    Ok(())
}

/// Parses `--fail-on`: a comma list of states, any case.
pub(super) fn parse_states(text: &str) -> Result<Vec<pb::AgentState>, CliError> {
    let valid = || {
        STATES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut states = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let lower = word.to_ascii_lowercase().replace('-', "_");
        match STATES.iter().find(|(n, _)| *n == lower) {
            Some((_, state)) => states.push(*state),
            None => {
                return Err(CliError::usage(format!(
                    "--fail-on: unknown state {word:?}; valid states: {}",
                    valid()
                )));
            }
        }
    }
    if states.is_empty() {
        return Err(CliError::usage(format!(
            "--fail-on: no state given; valid states: {}",
            valid()
        )));
    }
    Ok(states)
}

/// The `--fail-on` verdict over the agents shown: a refusal (exit 1)
/// naming them when any is in one of `states`.
pub(super) fn gate(agents: &[pb::AgentStatus], states: &[pb::AgentState]) -> Result<(), CliError> {
    let failing: Vec<String> = agents
        .iter()
        .filter(|a| states.contains(&a.state()))
        .map(|a| format!("{}/{} ({})", a.group, a.node_id, state_name(a.state())))
        .collect();
    if failing.is_empty() {
        return Ok(());
    }
    Err(CliError::refused(format!(
        "--fail-on: {} agent{} in a failing state: {}",
        failing.len(),
        if failing.len() == 1 { " is" } else { "s are" },
        failing.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(node: &str, state: pb::AgentState) -> pb::AgentStatus {
        pb::AgentStatus {
            node_id: node.into(),
            group: "edge".into(),
            state: state as i32,
            ..pb::AgentStatus::default()
        }
    }

    #[test]
    fn fail_on_parses_any_case_and_names_an_unknown_state() {
        assert_eq!(
            parse_states("NACKED, stale,Not_Sent").unwrap(),
            vec![
                pb::AgentState::Nacked,
                pb::AgentState::Stale,
                pb::AgentState::NotSent
            ]
        );
        let e = parse_states("nacked,broken").unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert!(e.message.contains("\"broken\""), "{}", e.message);
        assert!(
            e.message
                .contains("synced, stale, nacked, not_sent, unacked"),
            "{}",
            e.message
        );
        assert_eq!(parse_states(" , ").unwrap_err().kind, Failure::Usage);
    }

    #[test]
    fn the_gate_fails_only_on_listed_states() {
        let agents = [
            agent("a", pb::AgentState::Synced),
            agent("b", pb::AgentState::Nacked),
        ];
        assert!(gate(&agents, &[pb::AgentState::Stale]).is_ok());
        let e = gate(&agents, &[pb::AgentState::Nacked]).unwrap_err();
        assert_eq!(e.kind, Failure::Refused);
        assert!(e.message.contains("edge/b (NACKED)"), "{}", e.message);
        assert!(gate(&[], &[pb::AgentState::Nacked]).is_ok());
    }

    #[test]
    fn groups_render_counts_and_json() {
        let g = pb::GroupSummary {
            group: "edge".into(),
            head_version: 3,
            head_hash: "abcdef0123456789".into(),
            head_created_at_unix_ms: 1_000,
            agents: Some(pb::AgentCounts {
                synced: 2,
                nacked: 1,
                total: 3,
                ..pb::AgentCounts::default()
            }),
        };
        let text = render_groups(std::slice::from_ref(&g), OutputFormat::Table, 121_000);
        assert!(text.starts_with("GROUP"), "{text}");
        assert!(text.contains("edge"), "{text}");
        assert!(text.contains("abcdef012345  2m"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render_groups(&[g], OutputFormat::Json, 121_000)).unwrap();
        assert_eq!(json[0]["version"], 3);
        assert_eq!(json[0]["agents"]["SYNCED"], 2);
        assert_eq!(json[0]["agents"]["NACKED"], 1);
        assert_eq!(json[0]["agents"]["total"], 3);
        assert_eq!(json[0]["age_seconds"], 120);
    }

    #[test]
    fn watch_lines_are_one_per_version() {
        let info = pb::VersionInfo {
            version: 4,
            hash: "0123456789abcdef".into(),
            message: "two\nlines".into(),
            author: "ops".into(),
            created_at_unix_ms: 1_700_000_000_000,
            ..pb::VersionInfo::default()
        };
        let table = watch_line("edge", &info, OutputFormat::Table);
        assert_eq!(table.lines().count(), 1, "{table}");
        assert!(table.starts_with("4  0123456789ab  "), "{table}");
        let json = watch_line("edge", &info, OutputFormat::Json);
        assert_eq!(json.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["group"].as_str(), v["version"].as_u64()),
            (Some("edge"), Some(4))
        );
    }
}
