//! Rendering vanectl's results: aligned tables and sentences for people, YAML
//! and JSON for scripts. Pure functions of the server's answers (and of "now"
//! for relative times), so every format is unit-tested.
//!
//! The JSON field names are a contract (tests and scripts read them); the
//! table layout is not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vane_model::Snapshot;
use vane_proto as pb;

use crate::args::OutputFormat;

/// How many hex digits of a hash tables and sentences show (as git does).
const SHORT_HASH: usize = 12;

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
    /// For relative times in the table; not part of the JSON contract.
    #[serde(skip)]
    connected_since_ms: i64,
    #[serde(skip)]
    last_seen_ms: i64,
}

impl From<&pb::AgentStatus> for AgentView {
    fn from(a: &pb::AgentStatus) -> Self {
        Self {
            node_id: a.node_id.clone(),
            group: a.group.clone(),
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

/// The contract's state names (`SYNCED`, `STALE`, `NACKED`, `NOT_SENT`).
pub(crate) fn state_name(state: pb::AgentState) -> &'static str {
    match state {
        pb::AgentState::Synced => "SYNCED",
        pb::AgentState::Stale => "STALE",
        pb::AgentState::Nacked => "NACKED",
        pb::AgentState::NotSent => "NOT_SENT",
        pb::AgentState::Unspecified => "UNKNOWN",
    }
}

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

/// `history`: newest first, as the server sends it.
pub(crate) fn history(entries: &[VersionView], format: OutputFormat) -> String {
    if format != OutputFormat::Table {
        return encode(&entries, format);
    }
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.version.to_string(),
                table_time(e.created_at.as_deref()),
                short(&e.hash).to_owned(),
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
    let mut out = String::with_capacity(view.diff.len() + 64);
    for line in view.diff.split_inclusive('\n') {
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
pub(crate) fn status(
    agents: &[AgentView],
    groups: &[pb::GroupStatus],
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
    if !agents.is_empty() {
        let mut rows: Vec<Vec<String>> = agents
            .iter()
            .map(|a| {
                vec![
                    a.group.clone(),
                    a.node_id.clone(),
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
            "STATE",
            "ACKED",
            "SENT",
            "CONNECTED",
            "LAST SEEN",
            "LABELS",
            "NACK",
        ];
        // In a cluster, which replica each agent is on (before LABELS).
        if clustered {
            headers.insert(7, "REPLICA");
            for (row, a) in rows.iter_mut().zip(agents) {
                row.insert(7, a.replica.clone());
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
            let not_sent = count("NOT_SENT");
            if not_sent > 0 {
                let _ = write!(out, ", {not_sent} not sent");
            }
            out.push('\n');
        }
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

/// JSON (pretty, with a final newline) or YAML of any view.
fn encode<T: Serialize + ?Sized>(value: &T, format: OutputFormat) -> String {
    // Every view is made of strings, integers, booleans, options and
    // string-keyed maps, which serde_json and serde_norway always encode.
    let text = match format {
        OutputFormat::Yaml => serde_norway::to_string(value).expect("views always encode as YAML"),
        OutputFormat::Json | OutputFormat::Table => {
            serde_json::to_string_pretty(value).expect("views always encode as JSON") + "\n"
        }
    };
    if text.ends_with('\n') {
        text
    } else {
        text + "\n"
    }
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn short(hash: &str) -> &str {
    hash.get(..SHORT_HASH).unwrap_or(hash)
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

fn version_cell(v: u64) -> String {
    if v == 0 { "-".into() } else { v.to_string() }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    #[allow(clippy::cast_precision_loss)] // one decimal is all a table shows
    let scaled = |unit: u64| bytes as f64 / unit as f64;
    if bytes < KIB {
        format!("{bytes} B")
    } else if bytes < KIB * KIB {
        format!("{:.1} KiB", scaled(KIB))
    } else {
        format!("{:.1} MiB", scaled(KIB * KIB))
    }
}

/// 10000-01-01T00:00:00Z: RFC 3339 has four-digit years, and humantime
/// refuses to format later instants.
const MAX_RFC3339_UNIX_MS: u64 = 253_402_300_800_000;

fn system_time(unix_ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(unix_ms)
        .ok()
        .filter(|&ms| ms > 0 && ms < MAX_RFC3339_UNIX_MS)?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339 UTC with milliseconds (`2025-11-26T14:30:00.123Z`); `None` for "never".
pub(crate) fn rfc3339(unix_ms: i64) -> Option<String> {
    system_time(unix_ms).map(|t| humantime::format_rfc3339_millis(t).to_string())
}

fn rfc3339_seconds(unix_ms: i64) -> Option<String> {
    system_time(unix_ms).map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// A table's time column: the JSON timestamp cut to seconds.
fn table_time(rfc3339: Option<&str>) -> String {
    match rfc3339 {
        Some(t) => humantime::parse_rfc3339(t)
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|_| t.to_owned()),
        None => "-".into(),
    }
}

/// How long ago `then_ms` was, roughly: `42s`, `5m`, `3h`, `2d`.
fn since(then_ms: i64, now_ms: i64) -> String {
    if then_ms <= 0 {
        return "-".into();
    }
    let secs = now_ms.saturating_sub(then_ms).max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_beyond_year_9999_are_not_shown() {
        assert_eq!(rfc3339(i64::MAX), None);
        assert_eq!(rfc3339(253_402_300_800_000), None);
        assert!(rfc3339(253_402_300_799_999).is_some());
        assert_eq!(rfc3339(0), None);
    }

    const HASH: &str = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56abcd";
    // 2025-01-02T03:04:05.678Z
    const T: i64 = 1_735_787_045_678;

    fn push_response(unchanged: bool, dry_run: bool) -> pb::PushResponse {
        pb::PushResponse {
            group: "edge".into(),
            version: 3,
            hash: HASH.into(),
            unchanged,
            dry_run,
            created_at_unix_ms: T,
        }
    }

    #[test]
    fn push_sentences() {
        let text = |u, d| {
            push(
                &PushView::new(&push_response(u, d), None),
                OutputFormat::Table,
            )
        };
        assert_eq!(
            text(false, false),
            "pushed edge version 3 (sha256 ab12cd34ef56)\n"
        );
        assert_eq!(
            text(true, false),
            "unchanged: edge is already at version 3 (sha256 ab12cd34ef56)\n"
        );
        assert_eq!(
            text(false, true),
            "dry run: edge would become version 3 (sha256 ab12cd34ef56); nothing was stored\n"
        );
        assert!(text(true, true).starts_with("dry run: unchanged: edge is already at version 3"));
        assert!(text(true, true).ends_with("nothing was stored\n"));
    }

    #[test]
    fn rollback_sentences() {
        let view = PushView::new(&push_response(false, false), Some(1));
        assert_eq!(
            push(&view, OutputFormat::Table),
            "rolled back edge to the content of version 1: new version 3 (sha256 ab12cd34ef56)\n"
        );
        let view = PushView::new(&push_response(true, false), Some(1));
        assert!(
            push(&view, OutputFormat::Table).starts_with("unchanged: edge is already at version 3")
        );
    }

    #[test]
    fn push_json_has_the_contract_fields() {
        let out = push(
            &PushView::new(&push_response(false, false), None),
            OutputFormat::Json,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["version"], 3);
        assert_eq!(v["hash"], HASH);
        assert_eq!(v["unchanged"], false);
        assert_eq!(v["dry_run"], false);
        assert_eq!(v["group"], "edge");
        assert_eq!(v["created_at"], "2025-01-02T03:04:05.678Z");
        assert!(v.get("rollback_of").is_none());

        let out = push(
            &PushView::new(&push_response(true, false), Some(1)),
            OutputFormat::Json,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["unchanged"], true);
        assert_eq!(v["rollback_of"], 1);
    }

    #[test]
    fn push_yaml_is_the_same_object() {
        let out = push(
            &PushView::new(&push_response(false, true), None),
            OutputFormat::Yaml,
        );
        let v: serde_json::Value = serde_norway::from_str(&out).unwrap();
        assert_eq!(v["version"], 3);
        assert_eq!(v["dry_run"], true);
    }

    fn example() -> Snapshot {
        let spec = vane_model::parse_file(
            include_bytes!("../../examples/snapshot.yaml"),
            vane_model::Format::Yaml,
        )
        .unwrap();
        vane_model::validate(spec).unwrap()
    }

    fn info(version: u64, rollback_of: u64, message: &str) -> pb::VersionInfo {
        pb::VersionInfo {
            version,
            hash: HASH.into(),
            message: message.into(),
            created_at_unix_ms: T,
            author: String::new(),
            rollback_of,
            size_bytes: 612,
        }
    }

    #[test]
    fn get_json_is_the_canonical_snapshot_plus_metadata() {
        let snap = example();
        let out = get("edge", &info(2, 0, "more api"), &snap, OutputFormat::Json);
        let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["group"], "edge");
        assert_eq!(v["version"], 2);
        assert_eq!(v["hash"], HASH);
        assert_eq!(v["created_at"], "2025-01-02T03:04:05.678Z");
        assert_eq!(v["message"], "more api");
        let object = v.as_object_mut().unwrap();
        for key in ["group", "version", "hash", "created_at", "message"] {
            object.remove(key);
        }
        assert_eq!(v, snap.to_json());
    }

    #[test]
    fn get_table_is_pushable_yaml() {
        let snap = example();
        let out = get("edge", &info(4, 1, "undo\nit"), &snap, OutputFormat::Table);
        assert!(out.starts_with("# group:   edge\n# version: 4 (rollback to version 1)\n"));
        assert!(out.contains(&format!("# hash:    sha256:{HASH}\n")));
        assert!(out.contains("# created: 2025-01-02T03:04:05Z\n"));
        assert!(out.contains("# message: undo it\n"));
        // Comments are ignored by the parser: the output is a valid snapshot file again.
        let spec = vane_model::parse_file(out.as_bytes(), vane_model::Format::Yaml).unwrap();
        assert_eq!(vane_model::validate(spec).unwrap(), snap);
    }

    #[test]
    fn history_json_and_table() {
        let entries: Vec<VersionView> =
            [info(3, 1, "rollback"), info(2, 0, ""), info(1, 0, "first")]
                .iter()
                .map(VersionView::from)
                .collect();
        let v: serde_json::Value =
            serde_json::from_str(&history(&entries, OutputFormat::Json)).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 3);
        assert_eq!(arr[0]["version"], 3);
        assert_eq!(arr[0]["rollback_of"], 1);
        assert_eq!(arr[0]["created_at"], "2025-01-02T03:04:05.678Z");
        assert_eq!(arr[0]["size_bytes"], 612);
        for key in [
            "version",
            "hash",
            "message",
            "created_at",
            "author",
            "rollback_of",
            "size_bytes",
        ] {
            assert!(arr[2].get(key).is_some(), "{key}");
        }

        let table = history(&entries, OutputFormat::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("VERSION  CREATED"));
        assert!(lines[1].starts_with("3        2025-01-02T03:04:05Z  ab12cd34ef56  612 B  v1"));
        assert!(lines[1].ends_with("rollback"));
        assert!(lines[2].contains(" -  "), "{}", lines[2]);
        assert!(lines.iter().all(|l| l.trim_end() == *l));
    }

    fn diff_view(text: &str) -> DiffView {
        DiffView {
            group: "edge".into(),
            from: VersionView::from(&info(1, 0, "")),
            to: VersionView::from(&info(2, 0, "")),
            diff: text.into(),
        }
    }

    #[test]
    fn diff_outputs() {
        let text = "--- edge@1\n+++ edge@2\n@@ -1 +1 @@\n-a: 1\n+a: 2\n";
        assert_eq!(diff(&diff_view(text), OutputFormat::Table, false), text);
        let colored = diff(&diff_view(text), OutputFormat::Table, true);
        assert!(colored.contains("--- edge@1\n"));
        assert!(colored.contains("\x1b[31m-a: 1\x1b[0m\n"));
        assert!(colored.contains("\x1b[32m+a: 2\x1b[0m\n"));
        assert!(diff(&diff_view(""), OutputFormat::Table, false).starts_with("no difference"));
        let v: serde_json::Value =
            serde_json::from_str(&diff(&diff_view(text), OutputFormat::Json, false)).unwrap();
        assert_eq!(v["diff"], text);
        assert_eq!(v["from"]["version"], 1);
        assert_eq!(v["to"]["version"], 2);
    }

    fn agent(node: &str, state: pb::AgentState, acked: u64) -> pb::AgentStatus {
        pb::AgentStatus {
            node_id: node.into(),
            group: "edge".into(),
            labels: [("zone".to_owned(), "a".to_owned())].into_iter().collect(),
            agent_build: "vane-agent 0.1.0".into(),
            acked_version: acked,
            acked_hash: HASH.into(),
            last_nacked_version: if state == pb::AgentState::Nacked {
                3
            } else {
                0
            },
            nack_reason: if state == pb::AgentState::Nacked {
                "clusters[0].endpoints[0].address: bad".into()
            } else {
                String::new()
            },
            connected_since_unix_ms: T,
            last_seen_unix_ms: T + 60_000,
            state: state as i32,
            connected: true,
            sent_version: 3,
            peer: "127.0.0.1:50000".into(),
            replica: "127.0.0.1:7070".into(),
        }
    }

    #[test]
    fn status_json_is_an_array_of_agents() {
        let agents: Vec<AgentView> = [
            agent("n1", pb::AgentState::Synced, 3),
            agent("n2", pb::AgentState::Nacked, 2),
        ]
        .iter()
        .map(AgentView::from)
        .collect();
        let out = status(&agents, &[], None, OutputFormat::Json, SystemTime::now());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr[0]["state"], "SYNCED");
        assert_eq!(arr[1]["state"], "NACKED");
        assert_eq!(arr[1]["acked_version"], 2);
        assert_eq!(arr[1]["last_nacked_version"], 3);
        assert_eq!(
            arr[1]["nack_reason"],
            "clusters[0].endpoints[0].address: bad"
        );
        assert_eq!(arr[0]["labels"]["zone"], "a");
        assert_eq!(arr[0]["connected_since"], "2025-01-02T03:04:05.678Z");
        for key in [
            "node_id",
            "group",
            "acked_version",
            "state",
            "nack_reason",
            "labels",
            "connected",
            "connected_since",
            "last_seen",
            "last_nacked_version",
            "sent_version",
            "acked_hash",
            "peer",
            "agent_build",
            "replica",
            "control_degraded",
        ] {
            assert!(arr[0].get(key).is_some(), "{key}");
        }
        assert!(arr[0].get("last_seen_ms").is_none());
    }

    #[test]
    fn status_table_has_rows_and_group_summaries() {
        let agents: Vec<AgentView> = [
            agent("n1", pb::AgentState::Synced, 3),
            agent("n2", pb::AgentState::Nacked, 2),
            agent("n3", pb::AgentState::Stale, 2),
        ]
        .iter()
        .map(AgentView::from)
        .collect();
        let groups = [
            pb::GroupStatus {
                group: "edge".into(),
                head_version: 3,
                head_hash: HASH.into(),
            },
            pb::GroupStatus {
                group: "lonely".into(),
                head_version: 1,
                head_hash: HASH.into(),
            },
        ];
        let now = system_time(T + 120_000).unwrap();
        let out = status(&agents, &groups, None, OutputFormat::Table, now);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("GROUP  NODE  STATE"));
        assert!(
            lines[1].starts_with("edge   n1    SYNCED  3"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("2m         1m ago"), "{}", lines[1]);
        assert!(lines[2].ends_with("v3: clusters[0].endpoints[0].address: bad"));
        assert!(out.contains(
            "\nedge: head version 3 (sha256 ab12cd34ef56), 3 agents: 1 synced, 1 stale, 1 nacked\n"
        ));
        assert!(out.ends_with("lonely: head version 1 (sha256 ab12cd34ef56), no agents\n"));
        assert_eq!(
            status(&[], &[], None, OutputFormat::Table, now),
            "no groups and no agents yet\n"
        );
    }

    #[test]
    fn status_of_a_cluster_shows_replicas_and_the_store() {
        let mut a = AgentView::from(&agent("n1", pb::AgentState::Synced, 3));
        a.control_degraded = true;
        let mut store = pb::StoreStatus {
            backend: "etcd".into(),
            location: "http://127.0.0.1:2379 prefix /vane".into(),
            degraded: false,
            reason: String::new(),
            replica: "10.0.0.1:7070".into(),
        };
        let now = system_time(T + 120_000).unwrap();
        let out = status(
            std::slice::from_ref(&a),
            &[],
            Some(&store),
            OutputFormat::Table,
            now,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].contains("LAST SEEN  REPLICA         LABELS"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("127.0.0.1:7070"), "{}", lines[1]);
        assert!(out.ends_with(
            "store: etcd http://127.0.0.1:2379 prefix /vane (answered by 10.0.0.1:7070): ok\n"
        ));
        store.degraded = true;
        store.reason = "etcd at http://127.0.0.1:2379 did not answer within 3s".into();
        let out = status(&[], &[], Some(&store), OutputFormat::Table, now);
        assert!(
            out.ends_with("DEGRADED, read-only (agents keep the last known snapshots; pushes fail): etcd at http://127.0.0.1:2379 did not answer within 3s\n"),
            "{out}"
        );
        // A single server says nothing about its store while all is well.
        store.backend = "embedded".into();
        store.degraded = false;
        let out = status(&[], &[], Some(&store), OutputFormat::Table, now);
        assert_eq!(out, "no groups and no agents yet\n");
        let json = status(&[a], &[], Some(&store), OutputFormat::Json, now);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["control_degraded"], true);
        assert_eq!(v[0]["replica"], "127.0.0.1:7070");
    }

    fn audit_entry(result: &str, code: &str, reason: &str) -> pb::AuditEntry {
        pb::AuditEntry {
            at_unix_ms: T,
            identity: "operator".into(),
            action: "push".into(),
            group: "edge".into(),
            version: if result == "refused" { 0 } else { 3 },
            hash: HASH.into(),
            message: "more api".into(),
            result: result.into(),
            code: code.into(),
            reason: reason.into(),
            peer: "127.0.0.1:50000".into(),
            replica: "127.0.0.1:7070".into(),
            rollback_of: 0,
        }
    }

    #[test]
    fn audit_json_is_the_proto_entries() {
        let entries = vec![AuditView::from(audit_entry(
            "refused",
            "PermissionDenied",
            "reader may not push group edge",
        ))];
        let v: serde_json::Value =
            serde_json::from_str(&audit(None, &entries, OutputFormat::Json)).unwrap();
        let e = &v.as_array().unwrap()[0];
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "at_unix_ms",
            "identity",
            "action",
            "group",
            "version",
            "hash",
            "message",
            "result",
            "code",
            "reason",
            "peer",
            "replica",
            "rollback_of",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(e["at_unix_ms"], T);
        assert_eq!(e["result"], "refused");
        assert_eq!(e["code"], "PermissionDenied");
        let y: serde_json::Value =
            serde_norway::from_str(&audit(None, &entries, OutputFormat::Yaml)).unwrap();
        assert_eq!(y, v);
    }

    #[test]
    fn audit_table() {
        let entries: Vec<AuditView> = [
            audit_entry("created", "", ""),
            audit_entry(
                "refused",
                "PermissionDenied",
                "reader may not\npush group edge",
            ),
        ]
        .into_iter()
        .map(AuditView::from)
        .collect();
        let out = audit(Some("edge"), &entries, OutputFormat::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "TIME                  IDENTITY  ACTION  GROUP  VERSION  RESULT   REASON"
        );
        assert_eq!(
            lines[1],
            "2025-01-02T03:04:05Z  operator  push    edge   3        created  -"
        );
        assert_eq!(
            lines[2],
            "2025-01-02T03:04:05Z  operator  push    edge   -        refused  \
             PermissionDenied: reader may not push group edge"
        );
        assert_eq!(
            audit(Some("edge"), &[], OutputFormat::Table),
            "no audit entries for edge\n"
        );
        assert_eq!(audit(None, &[], OutputFormat::Table), "no audit entries\n");
    }

    #[test]
    fn whoami_outputs() {
        let resp = pb::WhoAmIResponse {
            identity: "operator".into(),
            source: "certificate".into(),
            authorization: "on".into(),
            roles: vec![
                pb::RoleBinding {
                    role: "operator".into(),
                    groups: vec!["*".into()],
                },
                pb::RoleBinding {
                    role: "reader".into(),
                    groups: vec!["edge".into(), "api-*".into()],
                },
            ],
        };
        let view = WhoAmIView::from(resp);
        assert_eq!(
            whoami(&view, OutputFormat::Table),
            "identity:      operator (from the client certificate)\n\
             authorization: on\n\
             roles:         operator of *\n\
             \x20              reader of edge, api-*\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&whoami(&view, OutputFormat::Json)).unwrap();
        assert_eq!(v["identity"], "operator");
        assert_eq!(v["source"], "certificate");
        assert_eq!(v["authorization"], "on");
        assert_eq!(v["roles"][1]["role"], "reader");
        assert_eq!(v["roles"][1]["groups"][1], "api-*");

        let nobody = WhoAmIView {
            identity: String::new(),
            source: "none".into(),
            authorization: "off".into(),
            roles: Vec::new(),
        };
        assert_eq!(
            whoami(&nobody, OutputFormat::Table),
            "identity:      none (not authenticated)\n\
             authorization: off (every caller may do everything)\n\
             roles:         all (authorization is off)\n"
        );
    }

    #[test]
    fn state_names_follow_the_contract() {
        assert_eq!(state_name(pb::AgentState::Synced), "SYNCED");
        assert_eq!(state_name(pb::AgentState::Stale), "STALE");
        assert_eq!(state_name(pb::AgentState::Nacked), "NACKED");
        assert_eq!(state_name(pb::AgentState::NotSent), "NOT_SENT");
    }

    #[test]
    fn small_helpers() {
        assert_eq!(size(10), "10 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(3 * 1024 * 1024 + 1), "3.0 MiB");
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(-5), None);
        assert_eq!(since(T, T + 59_000), "59s");
        assert_eq!(since(T, T + 3_600_000), "1h");
        assert_eq!(since(T, T - 5_000), "0s");
        assert_eq!(short("abc"), "abc");
    }
}
