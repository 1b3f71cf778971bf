//! Every renderer in every format, from fixed answers and a fixed "now".

#![cfg(test)]

use std::time::SystemTime;

use vane_model::Snapshot;
use vane_proto as pb;

use crate::args::OutputFormat;

use crate::output::format::*;
use crate::output::render::*;
use crate::output::rollout::*;
use crate::output::views::*;

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
        warnings: Vec::new(),
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
    let v: serde_json::Value = yaml_serde::from_str(&out).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["dry_run"], true);
}

fn example() -> Snapshot {
    let spec = vane_model::parse_file(
        include_bytes!("../../../examples/snapshot.yaml"),
        vane_model::Format::Yaml,
    )
    .unwrap();
    vane_model::validate(spec).unwrap()
}

fn info(version: u64, rollback_of: u64, message: &str) -> pb::VersionInfo {
    pb::VersionInfo {
        rollout_id: String::new(),
        rollout_stable_version: 0,
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
    let entries: Vec<VersionView> = [info(3, 1, "rollback"), info(2, 0, ""), info(1, 0, "first")]
        .iter()
        .map(VersionView::from)
        .collect();
    let v: serde_json::Value =
        serde_json::from_str(&history(&entries, 7, OutputFormat::Json)).unwrap();
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

    let table = history(&entries, 0, OutputFormat::Table);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4);
    let pruned = history(&entries, 7, OutputFormat::Table);
    assert_eq!(
        pruned.lines().last(),
        Some("(7 older versions were pruned by retention)")
    );
    assert!(lines[0].starts_with("VERSION  CREATED"));
    assert!(lines[1].starts_with("3        2025-01-02T03:04:05Z  ab12cd34ef56  612 B  v1"));
    assert!(lines[1].ends_with("rollback"));
    assert!(lines[2].contains(" -  "), "{}", lines[2]);
    assert!(lines.iter().all(|l| l.trim_end() == *l));
}

#[test]
fn history_marks_a_corrupt_version() {
    let mut entries: Vec<VersionView> = [info(2, 0, "second"), info(1, 0, "first")]
        .iter()
        .map(VersionView::from)
        .collect();
    entries[0].corrupt = true;
    let v: serde_json::Value =
        serde_json::from_str(&history(&entries, 0, OutputFormat::Json)).unwrap();
    assert_eq!(v[0]["corrupt"], true);
    // Only said when true: the JSON of a healthy version is unchanged.
    assert!(v[1].get("corrupt").is_none(), "{v}");
    let table = history(&entries, 0, OutputFormat::Table);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[1].contains("ab12cd34ef56 CORRUPT"), "{}", lines[1]);
    assert!(!lines[2].contains("CORRUPT"), "{}", lines[2]);
}

#[test]
fn status_shows_a_group_with_a_corrupt_head_degraded() {
    let agents: Vec<AgentView> = [agent("n1", pb::AgentState::NotSent, 2)]
        .iter()
        .map(AgentView::from)
        .collect();
    let reason =
        r#"version 2 of group "edge" is corrupt: its content hashes to 00, not the recorded 11"#;
    let groups = [pb::GroupStatus {
        group: "edge".into(),
        degraded: true,
        corrupt_version: 2,
        reason: reason.into(),
        ..pb::GroupStatus::default()
    }];
    let now = system_time(T + 120_000).unwrap();
    let out = status(&agents, &groups, &[], None, OutputFormat::Table, now);
    assert!(
        out.contains(
            "\nedge: no version to send, 1 agent: 0 synced, 0 stale, 0 nacked, 1 not sent\n"
        ),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "edge: DEGRADED, version 2 is corrupt (agents keep what they run; push, or `vanectl rollback edge --to` a good version): {reason}\n"
        )),
        "{out}"
    );
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
        client: "vane-agent".to_owned(),
        nack_code: 0,
        role: String::new(),
        sessions: 1,
        target_version: acked,
        degraded: false,
        health_reason: String::new(),
        health_version: 0,
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
    let out = status(
        &agents,
        &[],
        &[],
        None,
        OutputFormat::Json,
        SystemTime::now(),
    );
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
        "client",
        "replica",
        "control_degraded",
        "client",
    ] {
        assert!(arr[0].get(key).is_some(), "{key}");
    }
    assert!(arr[0].get("last_seen_ms").is_none());
}

#[test]
fn status_table_shows_each_agents_client() {
    let mut poller = agent("n2", pb::AgentState::Synced, 3);
    poller.client = "http".into();
    let agents: Vec<AgentView> = [agent("n1", pb::AgentState::Synced, 3), poller]
        .iter()
        .map(AgentView::from)
        .collect();
    let now = system_time(T + 120_000).unwrap();
    let out = status(&agents, &[], &[], None, OutputFormat::Table, now);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("GROUP  NODE  CLIENT      STATE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("edge   n1    vane-agent  SYNCED"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("edge   n2    http        SYNCED"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&status(&agents, &[], &[], None, OutputFormat::Json, now)).unwrap();
    assert_eq!(json[1]["client"], "http");
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
            ..pb::GroupStatus::default()
        },
        pb::GroupStatus {
            group: "lonely".into(),
            head_version: 1,
            head_hash: HASH.into(),
            ..pb::GroupStatus::default()
        },
    ];
    let now = system_time(T + 120_000).unwrap();
    let out = status(&agents, &groups, &[], None, OutputFormat::Table, now);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("GROUP  NODE  CLIENT      STATE"));
    assert!(
        lines[1].starts_with("edge   n1    vane-agent  SYNCED  3"),
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
        status(&[], &[], &[], None, OutputFormat::Table, now),
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
    let out = status(&[], &[], &[], Some(&store), OutputFormat::Table, now);
    assert!(
            out.ends_with("DEGRADED, read-only (agents keep the last known snapshots; pushes fail): etcd at http://127.0.0.1:2379 did not answer within 3s\n"),
            "{out}"
        );
    // A single server says nothing about its store while all is well.
    store.backend = "embedded".into();
    store.degraded = false;
    let out = status(&[], &[], &[], Some(&store), OutputFormat::Table, now);
    assert_eq!(out, "no groups and no agents yet\n");
    let json = status(&[a], &[], &[], Some(&store), OutputFormat::Json, now);
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
        yaml_serde::from_str(&audit(None, &entries, OutputFormat::Yaml)).unwrap();
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
    let v: serde_json::Value = serde_json::from_str(&whoami(&view, OutputFormat::Json)).unwrap();
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

fn a_rollout(state: pb::RolloutState) -> pb::Rollout {
    pb::Rollout {
        id: "r-0123".into(),
        group: "edge".into(),
        state: state as i32,
        step: 1,
        percent: 25,
        stable_version: 3,
        candidate_version: 4,
        cohort: Some(pb::RolloutCohort {
            total: 5,
            synced: 4,
            nacked: 1,
            degraded: 0,
            disconnected: 2,
            target: 5,
            matching: 20,
        }),
        reason: String::new(),
        spec: Some(pb::RolloutSpec {
            steps: vec![25, 100],
            bake_ms: 60_000,
            selector: "zone=a".into(),
            max_nacks: 1,
            max_disconnects: 3,
            min_agents: 1,
            progress_deadline_ms: 600_000,
            max_degraded: 0,
        }),
        stable_hash: HASH.into(),
        candidate_hash: "cd".repeat(32),
        restored_version: 0,
        started_at_unix_ms: T,
        updated_at_unix_ms: T + 1000,
        step_started_at_unix_ms: T,
        bake_ends_at_unix_ms: T + 60_000,
        author: "operator".into(),
        message: "faster timeouts".into(),
        events: vec![
            pb::RolloutEvent {
                at_unix_ms: T,
                state: pb::RolloutState::Progressing as i32,
                step: 1,
                percent: 25,
                reason: "started".into(),
                identity: "operator".into(),
            },
            pb::RolloutEvent {
                at_unix_ms: T + 1000,
                state: pb::RolloutState::Baking as i32,
                step: 1,
                percent: 25,
                reason: String::new(),
                identity: String::new(),
            },
        ],
        members: vec!["n1".into(), "n2".into()],
        paused_by_operator: false,
    }
}

#[test]
fn rollout_json_has_the_contract_fields() {
    let view = RolloutView::from(&a_rollout(pb::RolloutState::Baking));
    let out = rollout(&view, OutputFormat::Json, T);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], "r-0123");
    assert_eq!(v["state"], "BAKING");
    assert_eq!(v["step"], 1);
    assert_eq!(v["percent"], 25);
    assert_eq!(v["stable_version"], 3);
    assert_eq!(v["candidate_version"], 4);
    assert_eq!(
        v["cohort"],
        serde_json::json!({"total": 5, "synced": 4, "nacked": 1, "degraded": 0,
            "disconnected": 2, "target": 5, "matching": 20})
    );
    assert_eq!(v["reason"], "");
    assert_eq!(v["steps"], serde_json::json!([25, 100]));
    assert_eq!(v["spec"]["bake_ms"], 60_000);
    assert_eq!(v["spec"]["selector"], "zone=a");
    assert_eq!(v["bake_ends_at"], "2025-01-02T03:05:05.678Z");
    assert_eq!(v["restored_version"], 0);
    assert_eq!(v["members"], serde_json::json!(["n1", "n2"]));
    assert_eq!(v["events"][0]["state"], "PROGRESSING");
    assert_eq!(v["events"][0]["at"], "2025-01-02T03:04:05.678Z");
    assert_eq!(v["events"][1]["state"], "BAKING");
    assert!(v.get("bake_ends_ms").is_none());
    let yaml = rollout(&view, OutputFormat::Yaml, T);
    assert!(yaml.contains("state: BAKING\n"), "{yaml}");
}

#[test]
fn rollout_state_names_follow_the_contract() {
    for (state, name) in [
        (pb::RolloutState::Progressing, "PROGRESSING"),
        (pb::RolloutState::Baking, "BAKING"),
        (pb::RolloutState::Paused, "PAUSED"),
        (pb::RolloutState::Aborting, "ABORTING"),
        (pb::RolloutState::Complete, "COMPLETE"),
        (pb::RolloutState::RolledBack, "ROLLED_BACK"),
        (pb::RolloutState::Superseded, "SUPERSEDED"),
    ] {
        let view = RolloutView::from(&a_rollout(state));
        assert_eq!(view.state, name);
        assert_eq!(
            view.ended(),
            matches!(name, "COMPLETE" | "ROLLED_BACK" | "SUPERSEDED")
        );
    }
}

#[test]
fn rollout_table_is_a_header_the_plan_and_the_events() {
    let mut r = a_rollout(pb::RolloutState::Baking);
    r.reason = "waiting for the bake".into();
    let out = rollout(&RolloutView::from(&r), OutputFormat::Table, T + 18_000);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "edge rollout r-0123: BAKING, step 1/2 at 25%, stable v3 → candidate v4; \
         cohort 5 of 20 matching (target 5): 4 synced, 1 nacked, 0 degraded, 2 disconnected; \
         bake ends in 42s; waiting for the bake"
    );
    assert_eq!(
        lines[1],
        "plan: steps 25% → 100%; bake 1m; selector zone=a; max nacks 1, max degraded 0, \
         max disconnects 3, min agents 1, progress deadline 10m"
    );
    assert_eq!(
        lines[2],
        "started 2025-01-02T03:04:05Z by operator: faster timeouts"
    );
    assert_eq!(lines[3], "");
    assert_eq!(
        lines[4],
        "TIME                  STATE        STEP  PERCENT  IDENTITY  REASON"
    );
    assert_eq!(
        lines[5],
        "2025-01-02T03:04:05Z  PROGRESSING  1     25%      operator  started"
    );
    assert_eq!(
        lines[6],
        "2025-01-02T03:04:06Z  BAKING       1     25%      -         -"
    );

    let mut paused = a_rollout(pb::RolloutState::Paused);
    paused.paused_by_operator = true;
    let view = RolloutView::from(&paused);
    assert!(
        view.header(T)
            .contains(": PAUSED (by an operator), step 1/2")
    );
    paused.paused_by_operator = false;
    let view = RolloutView::from(&paused);
    assert!(
        view.header(T)
            .contains("PAUSED (too few agents, resumes by itself)")
    );
    let mut back = a_rollout(pb::RolloutState::RolledBack);
    back.restored_version = 5;
    let view = RolloutView::from(&back);
    assert!(
        view.header(T)
            .contains("ROLLED_BACK, step 1/2 at 25%, stable v3 → candidate v4 (restored as v5);"),
        "{}",
        view.header(T)
    );
    let started = rollout_started(&view, OutputFormat::Table, T);
    assert!(started.starts_with(
        "started rollout r-0123 of edge: stable v3 (sha256 ab12cd34ef56) → candidate v4 (sha256 cdcdcdcdcdcd)\n"
    ));
}

#[test]
fn status_says_a_running_rollout_first_and_an_ended_one_last() {
    let mut candidate = agent("n1", pb::AgentState::Synced, 4);
    candidate.role = "candidate".into();
    let mut stable = agent("n2", pb::AgentState::Synced, 3);
    stable.role = "stable".into();
    let running = RolloutView::from(&a_rollout(pb::RolloutState::Progressing));
    let agents: Vec<AgentView> = [candidate, stable]
        .iter()
        .map(|a| AgentView {
            rollout: Some(running.clone()),
            ..AgentView::from(a)
        })
        .collect();
    let groups = [pb::GroupStatus {
        group: "edge".into(),
        head_version: 4,
        head_hash: HASH.into(),
        ..pb::GroupStatus::default()
    }];
    let now = system_time(T + 120_000).unwrap();
    let out = status(
        &agents,
        &groups,
        std::slice::from_ref(&running),
        None,
        OutputFormat::Table,
        now,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("edge rollout r-0123: PROGRESSING, step 1/2 at 25%"),
        "{out}"
    );
    assert_eq!(lines[1], "");
    assert!(
        lines[2].starts_with("GROUP  NODE  CLIENT      STATE   ROLE       ACKED"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("edge   n1    vane-agent  SYNCED  candidate  4"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("edge   n2    vane-agent  SYNCED  stable     3"),
        "{out}"
    );
    // No one degraded: no HEALTH column.
    assert!(!lines[2].contains("HEALTH"), "{out}");

    let json = status(&agents, &groups, &[], None, OutputFormat::Json, now);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["role"], "candidate");
    assert_eq!(v[0]["target_version"], 4);
    assert_eq!(v[0]["rollout"]["state"], "PROGRESSING");
    assert_eq!(v[0]["rollout"]["cohort"]["total"], 5);
    for key in [
        "degraded",
        "health_reason",
        "health_version",
        "nack_code",
        "sessions",
    ] {
        assert!(v[0].get(key).is_some(), "{key}");
    }

    // Ended: said after the group's summary; no role column without roles.
    let mut done = a_rollout(pb::RolloutState::RolledBack);
    done.restored_version = 5;
    done.reason = "1 NACK of the candidate (max 0)".into();
    let done = RolloutView::from(&done);
    let plain: Vec<AgentView> = [agent("n1", pb::AgentState::Synced, 5)]
        .iter()
        .map(AgentView::from)
        .collect();
    let out = status(&plain, &groups, &[done], None, OutputFormat::Table, now);
    assert!(
        out.starts_with("GROUP  NODE  CLIENT      STATE   ACKED"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "edge: last rollout r-0123 ROLLED_BACK (stable v3 → candidate v4, restored as v5): 1 NACK of the candidate (max 0)\n"
        ),
        "{out}"
    );
    let json = status(&plain, &groups, &[], None, OutputFormat::Json, now);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v[0].get("rollout").is_none());
}

#[test]
fn status_names_each_nodes_client() {
    let mut envoy = agent("envoy-1", pb::AgentState::Nacked, 2);
    envoy.client = "envoy".into();
    envoy.nack_reason = "LDS error adding listener 'web': address already in use".into();
    let mut old = agent("n1", pb::AgentState::Synced, 3);
    // A record from before the field: Vane's own agent.
    old.client = String::new();
    let mut grpc = agent("svc-1", pb::AgentState::Synced, 3);
    grpc.client = "grpc".into();
    let agents: Vec<AgentView> = [envoy, old, grpc].iter().map(AgentView::from).collect();
    let now = system_time(T + 120_000).unwrap();
    let out = status(&agents, &[], &[], None, OutputFormat::Table, now);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("GROUP  NODE     CLIENT      STATE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("edge   envoy-1  envoy       NACKED"),
        "{out}"
    );
    assert!(
        lines[1].ends_with("v3: LDS error adding listener 'web': address already in use"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("edge   n1       vane-agent  SYNCED"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("edge   svc-1    grpc        SYNCED"),
        "{out}"
    );
    let json = status(&agents, &[], &[], None, OutputFormat::Json, now);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let clients: Vec<&str> = (0..3).map(|i| v[i]["client"].as_str().unwrap()).collect();
    assert_eq!(clients, ["envoy", "vane-agent", "grpc"]);
}
