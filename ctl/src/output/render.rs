//! One renderer per command: a view in, text out, as a table and sentences
//! for people or YAML/JSON for scripts.

use std::fmt::Write as _;
use std::time::SystemTime;

use vane_model::Snapshot;
use vane_proto as pb;

use crate::args::OutputFormat;
use crate::output::format::*;
use crate::output::rollout::RolloutView;
use crate::output::views::*;

/// `push` and `rollback`.
pub(crate) fn push(view: &PushView, format: OutputFormat) -> String {
    if format != OutputFormat::Table {
        return encode(view, format);
    }
    let hash = format!("sha256 {}", short(&view.hash));
    let what = match (view.rollback_of, view.unchanged) {
        (Some(of), true) => format!(
            "unchanged: {} is already at version {} ({hash}), which has the content of version {of}",
            view.group, view.version
        ),
        (None, true) => format!(
            "unchanged: {} is already at version {} ({hash})",
            view.group, view.version
        ),
        (Some(of), false) if view.dry_run => format!(
            "{} would become version {} with the content of version {of} ({hash})",
            view.group, view.version
        ),
        (None, false) if view.dry_run => format!(
            "{} would become version {} ({hash})",
            view.group, view.version
        ),
        (Some(of), false) => format!(
            "rolled back {} to the content of version {of}: new version {} ({hash})",
            view.group, view.version
        ),
        (None, false) => format!("pushed {} version {} ({hash})", view.group, view.version),
    };
    if view.dry_run {
        format!("dry run: {what}; nothing was stored\n")
    } else {
        format!("{what}\n")
    }
}

/// `get`: the canonical snapshot with its version's metadata.
///
/// The table form is the canonical YAML under a commented header, so that
/// `vanectl get edge > edge.yaml`, edit, `vanectl push edge -f edge.yaml` works.
pub(crate) fn get(
    group: &str,
    info: &pb::VersionInfo,
    snapshot: &Snapshot,
    format: OutputFormat,
) -> String {
    if format != OutputFormat::Table {
        let mut object = serde_json::Map::new();
        object.insert("group".into(), group.into());
        object.insert("version".into(), info.version.into());
        object.insert("hash".into(), info.hash.clone().into());
        object.insert(
            "created_at".into(),
            rfc3339(info.created_at_unix_ms).map_or(serde_json::Value::Null, Into::into),
        );
        object.insert("message".into(), info.message.clone().into());
        if let serde_json::Value::Object(fields) = snapshot.to_json() {
            object.extend(fields);
        }
        return encode(&object, format);
    }
    let mut out = String::new();
    let _ = writeln!(out, "# group:   {group}");
    let _ = write!(out, "# version: {}", info.version);
    if info.rollback_of != 0 {
        let _ = write!(out, " (rollback to version {})", info.rollback_of);
    }
    out.push('\n');
    let _ = writeln!(out, "# hash:    sha256:{}", info.hash);
    let _ = write!(
        out,
        "# created: {}",
        rfc3339_seconds(info.created_at_unix_ms).unwrap_or_else(|| "-".into())
    );
    if !info.author.is_empty() {
        let _ = write!(out, " by {}", info.author);
    }
    out.push('\n');
    if !info.message.is_empty() {
        let _ = writeln!(out, "# message: {}", one_line(&info.message));
    }
    out.push_str(&snapshot.to_yaml());
    out
}

/// `history`: newest first, as the server sends it. The table ends with how
/// many older versions retention removed; JSON and YAML stay the list of
/// versions (the count is on stderr there, see `pruned_note`).
pub(crate) fn history(entries: &[VersionView], pruned: u64, format: OutputFormat) -> String {
    if format != OutputFormat::Table {
        return encode(&entries, format);
    }
    let mut out = history_table(entries);
    if let Some(note) = pruned_note(pruned) {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// "N older versions were pruned by retention", or nothing.
pub(crate) fn pruned_note(pruned: u64) -> Option<String> {
    match pruned {
        0 => None,
        1 => Some("(1 older version was pruned by retention)".to_owned()),
        n => Some(format!("({n} older versions were pruned by retention)")),
    }
}

fn history_table(entries: &[VersionView]) -> String {
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.version.to_string(),
                table_time(e.created_at.as_deref()),
                if e.corrupt {
                    format!("{} CORRUPT", short(&e.hash))
                } else {
                    short(&e.hash).to_owned()
                },
                size(e.size_bytes),
                if e.rollback_of == 0 {
                    "-".into()
                } else {
                    format!("v{}", e.rollback_of)
                },
                dash(&e.author),
                one_line(&e.message),
            ]
        })
        .collect();
    table(
        &[
            "VERSION", "CREATED", "HASH", "SIZE", "RESTORES", "AUTHOR", "MESSAGE",
        ],
        rows,
    )
}

/// `diff`: the unified diff itself (coloured on a terminal), or a sentence
/// when the two versions hold the same content.
pub(crate) fn diff(view: &DiffView, format: OutputFormat, color: bool) -> String {
    if format != OutputFormat::Table {
        return encode(view, format);
    }
    if view.diff.is_empty() {
        return format!(
            "no difference: versions {} and {} of {} have the same content (sha256 {})\n",
            view.from.version,
            view.to.version,
            view.group,
            short(&view.to.hash)
        );
    }
    paint(&view.diff, color)
}

/// A unified diff, its added lines green, removed ones red and hunk headers
/// cyan when `color`; ends with a newline.
pub(crate) fn paint(diff: &str, color: bool) -> String {
    let mut out = String::with_capacity(diff.len() + 64);
    for line in diff.split_inclusive('\n') {
        let paint = match line.as_bytes().first() {
            _ if !color => None,
            Some(b'+') if !line.starts_with("+++") => Some("32"),
            Some(b'-') if !line.starts_with("---") => Some("31"),
            Some(b'@') => Some("36"),
            _ => None,
        };
        match paint {
            Some(code) => {
                let text = line.strip_suffix('\n').unwrap_or(line);
                let _ = write!(out, "\x1b[{code}m{text}\x1b[0m");
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `status`: one row per agent, then one summary line per group, then (for
/// a cluster, or a store in trouble) a line on the store. JSON and YAML are
/// the array of agents.
///
/// A running rollout is a header line above the table (state, step, cohort
/// counts); an ended one is said after its group's summary. In JSON each
/// agent carries its group's rollout as `rollout`.
pub(crate) fn status(
    agents: &[AgentView],
    groups: &[pb::GroupStatus],
    rollouts: &[RolloutView],
    store: Option<&pb::StoreStatus>,
    format: OutputFormat,
    now: SystemTime,
) -> String {
    if format != OutputFormat::Table {
        return encode(&agents, format);
    }
    let now_ms = unix_ms(now);
    let clustered = store.is_some_and(|s| s.backend == "etcd");
    let mut out = String::new();
    for r in rollouts.iter().filter(|r| !r.ended()) {
        out.push_str(&r.header(now_ms));
        out.push('\n');
    }
    if !out.is_empty() && !agents.is_empty() {
        out.push('\n');
    }
    if !agents.is_empty() {
        let mut rows: Vec<Vec<String>> = agents
            .iter()
            .map(|a| {
                vec![
                    a.group.clone(),
                    a.node_id.clone(),
                    a.client.clone(),
                    a.state.to_owned(),
                    version_cell(a.acked_version),
                    version_cell(a.sent_version),
                    if a.connected {
                        since(a.connected_since_ms, now_ms)
                    } else {
                        "no".into()
                    },
                    if a.last_seen_ms > 0 {
                        format!("{} ago", since(a.last_seen_ms, now_ms))
                    } else {
                        "-".into()
                    },
                    labels(&a.labels),
                    if a.state == "NACKED" || !a.nack_reason.is_empty() {
                        format!("v{}: {}", a.last_nacked_version, one_line(&a.nack_reason))
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        let mut headers = vec![
            "GROUP",
            "NODE",
            "CLIENT",
            "STATE",
            "ACKED",
            "SENT",
            "CONNECTED",
            "LAST SEEN",
            "LABELS",
            "NACK",
        ];
        // The data plane's health, when any agent reports trouble (before NACK).
        if agents.iter().any(|a| a.degraded) {
            headers.insert(9, "HEALTH");
            for (row, a) in rows.iter_mut().zip(agents) {
                row.insert(9, health_cell(a));
            }
        }
        // In a cluster, which replica each agent is on (before LABELS).
        if clustered {
            headers.insert(8, "REPLICA");
            for (row, a) in rows.iter_mut().zip(agents) {
                row.insert(8, a.replica.clone());
            }
        }
        // During a rollout, which version each agent is meant to run (after STATE).
        if agents.iter().any(|a| !a.role.is_empty()) {
            headers.insert(4, "ROLE");
            for (row, a) in rows.iter_mut().zip(agents) {
                row.insert(4, dash(&a.role));
            }
        }
        out.push_str(&table(&headers, rows));
        out.push('\n');
    }
    let mut names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
    names.extend(agents.iter().map(|a| a.group.as_str()));
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        out.push_str("no groups and no agents yet\n");
    }
    for name in names {
        let head = groups.iter().find(|g| g.group == name);
        let of_group: Vec<&AgentView> = agents.iter().filter(|a| a.group == name).collect();
        let count = |state: &str| of_group.iter().filter(|a| a.state == state).count();
        let _ = write!(out, "{name}: ");
        match head {
            Some(h) if h.head_version > 0 => {
                let _ = write!(
                    out,
                    "head version {} (sha256 {})",
                    h.head_version,
                    short(&h.head_hash)
                );
            }
            Some(h) if h.degraded => out.push_str("no version to send"),
            _ => out.push_str("no version pushed yet"),
        }
        if of_group.is_empty() {
            out.push_str(", no agents\n");
        } else {
            let _ = write!(
                out,
                ", {} agent{}: {} synced, {} stale, {} nacked",
                of_group.len(),
                if of_group.len() == 1 { "" } else { "s" },
                count("SYNCED"),
                count("STALE"),
                count("NACKED"),
            );
            let unacked = count("UNACKED");
            if unacked > 0 {
                let _ = write!(out, ", {unacked} unacked");
            }
            let not_sent = count("NOT_SENT");
            if not_sent > 0 {
                let _ = write!(out, ", {not_sent} not sent");
            }
            let degraded = of_group.iter().filter(|a| a.degraded).count();
            if degraded > 0 {
                let _ = write!(out, ", {degraded} degraded");
            }
            out.push('\n');
        }
        if let Some(r) = rollouts.iter().find(|r| r.group == name && r.ended()) {
            let _ = write!(
                out,
                "{name}: last rollout {} {} (stable v{} → candidate v{}",
                r.id, r.state, r.stable_version, r.candidate_version
            );
            if r.restored_version != 0 {
                let _ = write!(out, ", restored as v{}", r.restored_version);
            }
            out.push(')');
            if !r.reason.is_empty() {
                let _ = write!(out, ": {}", one_line(&r.reason));
            }
            out.push('\n');
        }
    }
    for g in groups.iter().filter(|g| g.degraded) {
        let _ = writeln!(
            out,
            "{}: DEGRADED, version {} is corrupt (agents keep what they run; push, or `vanectl rollback {} --to` a good version): {}",
            g.group,
            g.corrupt_version,
            g.group,
            one_line(&g.reason)
        );
    }
    if let Some(store) = store
        && (clustered || store.degraded)
    {
        let _ = write!(out, "store: {} {}", store.backend, store.location);
        if !store.replica.is_empty() {
            let _ = write!(out, " (answered by {})", store.replica);
        }
        if store.degraded {
            let _ = writeln!(
                out,
                ": DEGRADED, read-only (agents keep the last known snapshots; pushes fail): {}",
                one_line(&store.reason)
            );
        } else {
            out.push_str(": ok\n");
        }
    }
    out
}

/// The HEALTH cell: `ok`, or `degraded (vN): reason`.
fn health_cell(a: &AgentView) -> String {
    if !a.degraded {
        return "ok".into();
    }
    let mut cell = "degraded".to_owned();
    if a.health_version != 0 {
        let _ = write!(cell, " (v{})", a.health_version);
    }
    if !a.health_reason.is_empty() {
        let _ = write!(cell, ": {}", one_line(&a.health_reason));
    }
    cell
}

/// `audit`: newest first, as the server sends it; refusals show the gRPC
/// code and the error the caller received.
pub(crate) fn audit(group: Option<&str>, entries: &[AuditView], format: OutputFormat) -> String {
    if format != OutputFormat::Table {
        return encode(&entries, format);
    }
    if entries.is_empty() {
        return match group {
            Some(g) => format!("no audit entries for {g}\n"),
            None => "no audit entries\n".to_owned(),
        };
    }
    let rows = entries
        .iter()
        .map(|e| {
            let reason = match (e.code.is_empty(), e.reason.is_empty()) {
                (true, true) => "-".to_owned(),
                (true, false) => one_line(&e.reason),
                (false, true) => e.code.clone(),
                (false, false) => format!("{}: {}", e.code, one_line(&e.reason)),
            };
            vec![
                rfc3339_seconds(e.at_unix_ms).unwrap_or_else(|| "-".into()),
                dash(&e.identity),
                e.action.clone(),
                dash(&e.group),
                version_cell(e.version),
                e.result.clone(),
                reason,
            ]
        })
        .collect();
    table(
        &[
            "TIME", "IDENTITY", "ACTION", "GROUP", "VERSION", "RESULT", "REASON",
        ],
        rows,
    )
}

/// `whoami`: who the server takes the caller for, and what it may do.
pub(crate) fn whoami(view: &WhoAmIView, format: OutputFormat) -> String {
    if format != OutputFormat::Table {
        return encode(view, format);
    }
    let mut out = String::new();
    if view.identity.is_empty() {
        out.push_str("identity:      none (not authenticated)\n");
    } else {
        let from = match view.source.as_str() {
            "certificate" => " (from the client certificate)",
            "token" => " (from the bearer token)",
            _ => "",
        };
        let _ = writeln!(out, "identity:      {}{from}", view.identity);
    }
    if view.authorization == "off" {
        out.push_str("authorization: off (every caller may do everything)\n");
    } else {
        let _ = writeln!(out, "authorization: {}", dash(&view.authorization));
    }
    if view.roles.is_empty() {
        out.push_str(if view.authorization == "off" {
            "roles:         all (authorization is off)\n"
        } else {
            "roles:         none\n"
        });
    }
    for (i, r) in view.roles.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{} of {}",
            if i == 0 {
                "roles:         "
            } else {
                "               "
            },
            r.role,
            r.groups.join(", ")
        );
    }
    out
}
