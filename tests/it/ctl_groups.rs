//! `vanectl groups`, `delete`, `watch` and the `status` gates against real
//! `vane-control` processes and sidecars: counts by state, a delete refused
//! while agents are connected and forced past them (the agents keep
//! serving), numbers that continue after a delete (also across a restart),
//! the audit entry, a reader refused, `--fail-on` and `-l`, an unknown
//! group's nearest name, and a watcher that prints every version once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vane_testkit::policy::{start_with_policy, token_file};
use vane_testkit::process::bin_path;
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures, wait_for_status};

fn write(dir: &std::path::Path, name: &str, key: &str, value: serde_json::Value) -> String {
    let path = fixtures::write_json(dir, name, &fixtures::example_with_value(key, value));
    path.to_str().unwrap().to_owned()
}

#[test]
fn groups_status_gates_and_delete_with_connected_agents() {
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    let v1 = write(&dir, "v1.json", "step", serde_json::json!(1));
    let v2 = write(&dir, "v2.json", "step", serde_json::json!(2));
    server.ctl(&["push", "edge", "-f", &v1]).ok();
    server.ctl(&["push", "edge", "-f", &v2]).ok();
    server.ctl(&["push", "core", "-f", &v1]).ok();
    let check = dir.join("check.sh");
    std::fs::write(
        &check,
        "if grep -q forbidden \"$1\"; then echo 'refusing: forbidden is set' >&2; exit 1; fi\n",
    )
    .unwrap();
    let check_cmd = format!("sh {}", check.display());
    let out_a = dir.join("a.json");
    let out_b = dir.join("b.json");
    let a = Sidecar::follow(
        "a",
        "edge",
        std::slice::from_ref(&url),
        &dir,
        &["--output", out_a.to_str().unwrap(), "--label", "env=prod"],
    );
    let _b = Sidecar::follow(
        "b",
        "edge",
        std::slice::from_ref(&url),
        &dir,
        &[
            "--output",
            out_b.to_str().unwrap(),
            "--label",
            "env=dev",
            "--check-cmd",
            &check_cmd,
        ],
    );
    for node in ["a", "b"] {
        wait_for_status(&url, "edge", node, "SYNCED on 2", |s| {
            s["state"] == "SYNCED" && s["acked_version"] == 2
        });
    }

    // groups: heads and agents by state, sorted.
    let out = server.ctl(&["groups", "-o", "json"]).ok();
    let groups = out.json();
    assert_eq!(groups.as_array().unwrap().len(), 2, "{out}");
    assert_eq!(groups[0]["group"], "core", "{out}");
    assert_eq!(groups[0]["agents"]["total"], 0, "{out}");
    assert_eq!(groups[1]["group"], "edge", "{out}");
    assert_eq!(groups[1]["version"], 2, "{out}");
    assert_eq!(groups[1]["agents"]["SYNCED"], 2, "{out}");
    assert_eq!(groups[1]["agents"]["NACKED"], 0, "{out}");
    assert_eq!(groups[1]["hash"].as_str().unwrap().len(), 64, "{out}");
    let out = server.ctl(&["groups"]).ok();
    assert!(out.stdout.starts_with("GROUP"), "{out}");
    assert!(out.stdout.contains("\nedge "), "{out}");

    // --fail-on: nothing NACKed yet.
    server
        .ctl(&["status", "edge", "--fail-on", "nacked,stale"])
        .ok();
    // b refuses version 3: the gate fails, after the table.
    let bad = write(&dir, "bad.json", "forbidden", serde_json::json!(true));
    server.ctl(&["push", "edge", "-f", &bad]).ok();
    wait_for_status(&url, "edge", "b", "NACKED", |s| s["state"] == "NACKED");
    wait_for_status(&url, "edge", "a", "SYNCED on 3", |s| {
        s["acked_version"] == 3
    });
    let out = server.ctl(&["status", "edge", "--fail-on", "NACKED"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stdout.contains("NACKED"),
        "the table comes first: {out}"
    );
    assert!(out.one_error_line().contains("edge/b (NACKED)"), "{out}");
    // -l: only a (env=prod), which is SYNCED.
    let out = server
        .ctl(&[
            "status",
            "edge",
            "-l",
            "env=prod",
            "--fail-on",
            "nacked",
            "-o",
            "json",
        ])
        .ok();
    let agents = out.json();
    assert_eq!(agents.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(agents[0]["node_id"], "a", "{out}");
    // Every group without G.
    let out = server.ctl(&["status", "-o", "json"]).ok();
    assert_eq!(out.json().as_array().unwrap().len(), 2, "{out}");
    // An unknown state is a usage error naming it and the valid ones.
    let out = server.ctl(&["status", "edge", "--fail-on", "nacked,broken"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.one_error_line().contains("\"broken\""), "{out}");
    assert!(out.one_error_line().contains("not_sent"), "{out}");
    // A typo: exit 1, the nearest name.
    let out = server.ctl(&["status", "egde"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line()
            .contains("unknown group \"egde\"; did you mean edge?"),
        "{out}"
    );

    // delete: refused while agents are connected (and audited).
    let out = server.ctl(&["delete", "edge", "-m", "cleanup"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line().contains("2 connected agents")
            && out.one_error_line().contains("--force"),
        "{out}"
    );
    let out = server
        .ctl(&["delete", "edge", "--force", "-m", "cleanup", "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["last_version"], 3, "{out}");
    assert_eq!(v["versions"], 3, "{out}");
    assert_eq!(v["connected_agents"], 2, "{out}");
    // Gone from groups and get; the agents keep serving what they have.
    let out = server.ctl(&["groups", "-o", "json"]).ok();
    assert_eq!(out.json().as_array().unwrap().len(), 1, "{out}");
    let out = server.ctl(&["get", "edge"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.one_error_line().contains("unknown group"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.status()["version"], 3, "{}", a.status());
    let out = server.ctl(&["audit", "edge", "-o", "json"]).ok();
    let entries = out.json();
    let entries = entries.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "delete" && e["result"] == "deleted" && e["version"] == 3),
        "{out}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "delete" && e["result"] == "refused"),
        "{out}"
    );

    // Pushed again, the group continues the sequence; the agent gets it.
    let out = server.ctl(&["push", "edge", "-f", &v1, "-o", "json"]).ok();
    assert_eq!(out.json()["version"], 4, "{out}");
    wait_for_status(&url, "edge", "a", "SYNCED on 4", |s| {
        s["acked_version"] == 4
    });
    // Deleted again, then a restart: the tombstone holds.
    server.ctl(&["delete", "edge", "--force"]).ok();
    drop(a);
    drop(_b);
    server.kill();
    server.restart();
    let out = server.ctl(&["push", "edge", "-f", &v2, "-o", "json"]).ok();
    assert_eq!(out.json()["version"], 5, "{out}");
    let out = server.ctl(&["history", "edge", "-o", "json"]).ok();
    assert_eq!(out.json().as_array().unwrap().len(), 1, "{out}");
}

#[test]
fn a_reader_lists_groups_but_cannot_delete() {
    let tokens = [("reader", "reader-token"), ("operator", "operator-token")];
    let policy = "bindings:\n  - {identity: reader, role: reader, groups: [edge]}\n  - {identity: operator, role: operator, groups: [edge, core]}\n";
    let (server, policy_path) = start_with_policy(&tokens, policy, &[]);
    let reader = token_file(&policy_path, "reader.token", "reader-token");
    let operator = token_file(&policy_path, "operator.token", "operator-token");
    let as_ = |token: &std::path::Path, args: &[&str]| {
        let mut all = vec!["--token-file", token.to_str().unwrap()];
        all.extend_from_slice(args);
        server.ctl(&all)
    };
    let v1 = write(&server.scratch(), "v1.json", "step", serde_json::json!(1));
    as_(&operator, &["push", "edge", "-f", &v1]).ok();
    as_(&operator, &["push", "core", "-f", &v1]).ok();
    // The reader sees only edge: filtered, not refused.
    let out = as_(&reader, &["groups", "-o", "json"]).ok();
    let groups = out.json();
    assert_eq!(groups.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(groups[0]["group"], "edge", "{out}");
    let out = as_(&reader, &["delete", "edge"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.one_error_line().contains("reader"), "{out}");
    // The operator can; the refusal is in the audit log.
    as_(&operator, &["delete", "core"]).ok();
    let out = as_(&operator, &["audit", "edge", "-o", "json"]).ok();
    assert!(
        out.json()
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "delete"
                && e["identity"] == "reader"
                && e["result"] == "refused"),
        "{out}"
    );
}

/// Reads `vanectl watch` lines on a thread (a bounded channel; the thread
/// ends with the process's stdout).
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_version(lines: &mpsc::Receiver<String>) -> u64 {
    let line = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("a line from vanectl watch");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(v["group"], "edge", "{line}");
    v["version"].as_u64().unwrap()
}

#[test]
fn watch_prints_the_head_then_every_new_version_once() {
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let push = |server: &ControlServer, step: u32| {
        let file = write(
            &dir,
            &format!("v{step}.json"),
            "step",
            serde_json::json!(step),
        );
        server
            .ctl(&["push", "edge", "-f", &file, "-m", &format!("step {step}")])
            .ok();
    };
    push(&server, 1);
    let mut child = Command::new(bin_path("vanectl"))
        .args(["--server", &server.url(), "watch", "edge", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);
    assert_eq!(next_version(&lines), 1, "the head first");
    push(&server, 2);
    assert_eq!(next_version(&lines), 2);
    push(&server, 3);
    assert_eq!(next_version(&lines), 3);
    // An observer is no agent.
    let out = server.ctl(&["status", "edge", "-o", "json"]).ok();
    assert_eq!(out.json().as_array().unwrap().len(), 0, "{out}");
    // The server goes away and comes back with two new versions: both
    // printed, once each, in order.
    server.kill();
    server.restart_same_port();
    push(&server, 4);
    push(&server, 5);
    assert_eq!(next_version(&lines), 4);
    assert_eq!(next_version(&lines), 5);
    assert!(
        lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "no duplicates"
    );
    // Ctrl-C: exit 0.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}
