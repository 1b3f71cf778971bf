//! Stored content is checked against its hash: one byte changed inside a
//! stored snapshot body (the record still decodes) is never sent to an
//! agent nor printed as valid; the group shows DEGRADED with the reason,
//! `vane_control_corrupt_versions` counts it, `vane-control check` lists
//! it, and a rollback to a good version heals the group. The same with
//! etcd, where a damaged body no longer matches its checksum.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use vane_testkit::etcd::{EtcdCluster, start_replica};
use vane_testkit::fixtures::{example_with_value, write_json};
use vane_testkit::net::free_addr;
use vane_testkit::process::{Captured, bin_path, run_captured};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, agent_status, wait_for_status};

const GROUP: &str = "edge";
/// Unique in the store: the bytes the test changes in version 2's body.
const MARKER_TWO: &str = "integrity-marker-two-BBBB";

fn push(server: &ControlServer, file: &Path) -> serde_json::Value {
    server
        .ctl(&["push", GROUP, "-f", file.to_str().unwrap(), "-o", "json"])
        .ok()
        .json()
}

/// `vane-control check --data-dir DIR`.
fn check(data_dir: &Path) -> Captured {
    let mut cmd = Command::new(bin_path("vane-control"));
    cmd.arg("check").arg("--data-dir").arg(data_dir);
    run_captured(cmd, None, Duration::from_secs(60)).unwrap()
}

/// Changes the last byte of every copy of `marker` in `file` (the record
/// keeps its length, so it still decodes); returns how many copies.
fn flip_marker(file: &Path, marker: &str) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let needle = marker.as_bytes();
    let mut found = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        let end = at + i + needle.len() - 1;
        bytes[end] ^= 0x01;
        found += 1;
        at = end + 1;
    }
    std::fs::write(file, &bytes).unwrap();
    found
}

fn corrupt_gauge(admin: std::net::SocketAddr) -> f64 {
    vane_testkit::net::admin_metric(admin, "vane_control_corrupt_versions", &[])
}

fn start_agent(node: &str, control: &str, dir: &Path) -> Sidecar {
    Sidecar::follow(node, GROUP, &[control.to_owned()], dir, &[])
}

#[test]
fn a_corrupt_version_is_never_served_and_a_rollback_heals_the_group() {
    let admin = free_addr();
    let admin_flag = admin.to_string();
    let mut server = ControlServer::start_with(&["--admin-listen", admin_flag.as_str()]);
    let dir = server.scratch();
    let v1 = write_json(
        &dir,
        "v1.json",
        &example_with_value("marker", json!("integrity-marker-one-AAAA")),
    );
    let v2 = write_json(
        &dir,
        "v2.json",
        &example_with_value("marker", json!(MARKER_TWO)),
    );
    let h1 = push(&server, &v1)["hash"].as_str().unwrap().to_owned();
    let url = server.url();
    let agent = start_agent("runs-2", &url, &dir);
    agent.wait_status("version 1", |s| s["version"] == 1);
    let h2 = push(&server, &v2)["hash"].as_str().unwrap().to_owned();
    agent.wait_status("version 2", |s| {
        s["version"] == 2 && s["hash"] == h2.as_str()
    });

    // A clean store passes the check.
    assert!(server.terminate(Duration::from_secs(30)).is_some());
    let clean = check(&server.data_dir());
    assert_eq!(clean.code, 0, "{clean:?}");
    assert!(
        clean
            .stdout
            .ends_with(": 1 groups, 2 versions checked, 0 corrupt\n"),
        "{clean:?}"
    );

    // One byte of version 2's body changes on disk.
    let file = server.data_dir().join("vane.redb");
    assert!(
        flip_marker(&file, MARKER_TWO) >= 1,
        "the marker is not in {file:?}"
    );
    let damaged = check(&server.data_dir());
    assert_eq!(damaged.code, 1, "{damaged:?}");
    let lines: Vec<&str> = damaged.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{damaged:?}");
    assert!(
        lines[0].starts_with(r#"version 2 of group "edge" is corrupt: its content hashes to "#),
        "{damaged:?}"
    );
    assert!(
        lines[1].ends_with(": 1 groups, 2 versions checked, 1 corrupt"),
        "{damaged:?}"
    );

    // The server starts, but never shows version 2 as valid.
    server.restart_same_port();
    for args in [&["get", GROUP][..], &["get", GROUP, "--version", "2"][..]] {
        let out = server.ctl(args);
        assert_eq!(out.code, 1, "{out}");
        let line = out.one_error_line();
        assert!(
            line.contains(r#"version 2 of group "edge" is corrupt"#),
            "{out}"
        );
        assert!(out.stdout.is_empty(), "{out}");
    }
    let out = server
        .ctl(&["get", GROUP, "--version", "1", "-o", "json"])
        .ok();
    assert_eq!(out.json()["hash"], h1.as_str(), "{out}");
    // Pushing version 2's content again cannot hide it: versions are immutable.
    let out = server.ctl(&["push", GROUP, "-f", v2.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.one_error_line().contains("is corrupt"), "{out}");

    // The group is DEGRADED with the reason, and the metric counts it.
    let status = server.ctl(&["status", GROUP]).ok();
    assert!(
        status.stdout.contains(
            "edge: DEGRADED, version 2 is corrupt (agents keep what they run; push, or `vanectl rollback edge --to` a good version): version 2 of group \"edge\" is corrupt: its content hashes to "
        ),
        "{status}"
    );
    assert_eq!(corrupt_gauge(admin), 1.0);
    let history = server.ctl(&["history", GROUP, "-o", "json"]).ok().json();
    assert_eq!(history[0]["version"], 2);
    assert_eq!(history[0]["corrupt"], true, "{history}");
    assert!(history[1].get("corrupt").is_none(), "{history}");

    // The agent that runs version 2 reconnects and keeps it; a new agent
    // with nothing is sent nothing (rather than content it would refuse).
    let fresh = start_agent("fresh", &url, &dir);
    for node in ["runs-2", "fresh"] {
        wait_for_status(&url, GROUP, node, "connected", |a| a["connected"] == true);
    }
    // Long enough for a corrupt head to have been sent and refused.
    std::thread::sleep(Duration::from_millis(500));
    let s = agent.status();
    assert_eq!(
        (s["version"].clone(), s["hash"].clone()),
        (json!(2), json!(h2)),
        "{s}"
    );
    assert_eq!(fresh.status()["version"], 0, "{}", fresh.status());
    for node in ["runs-2", "fresh"] {
        let a = agent_status(&url, GROUP, node).unwrap();
        assert_eq!(
            (a["sent_version"].clone(), a["last_nacked_version"].clone()),
            (json!(0), json!(0)),
            "{node} was sent something: {a}"
        );
    }

    // A rollback to the good version heals the group; both agents sync.
    let out = server
        .ctl(&["rollback", GROUP, "--to", "1", "-o", "json"])
        .ok();
    assert_eq!(out.json()["version"], 3, "{out}");
    for a in [&agent, &fresh] {
        a.wait_status("version 3", |s| {
            s["version"] == 3 && s["hash"] == h1.as_str()
        });
    }
    let status = server.ctl(&["status", GROUP]).ok();
    assert!(!status.stdout.contains("DEGRADED"), "{status}");
    assert!(status.stdout.contains("edge: head version 3"), "{status}");
    assert_eq!(corrupt_gauge(admin), 0.0);
    server.ctl(&["get", GROUP]).ok();

    // The damaged copy of version 2 is still in the store: the check says so.
    assert!(server.terminate(Duration::from_secs(30)).is_some());
    let after = check(&server.data_dir());
    assert_eq!(after.code, 1, "{after:?}");
    assert!(
        after
            .stdout
            .contains(r#"version 2 of group "edge" is corrupt"#)
            && after
                .stdout
                .ends_with(": 1 groups, 3 versions checked, 1 corrupt\n"),
        "{after:?}"
    );
}

#[test]
fn the_check_reads_every_version_from_etcd() {
    let etcd = EtcdCluster::start(1);
    let endpoints = etcd.endpoints();
    let mut server = start_replica("a", &endpoints, &[]);
    let dir = server.scratch();
    let v1 = write_json(
        &dir,
        "v1.json",
        &example_with_value("marker", json!("integrity-marker-one-AAAA")),
    );
    let v2 = write_json(
        &dir,
        "v2.json",
        &example_with_value("marker", json!(MARKER_TWO)),
    );
    push(&server, &v1);
    push(&server, &v2);
    let check_etcd = || {
        let mut cmd = Command::new(bin_path("vane-control"));
        cmd.args(["check", "--store", "etcd", "--etcd-endpoints"])
            .arg(endpoints.join(","));
        run_captured(cmd, None, Duration::from_secs(60)).unwrap()
    };
    let clean = check_etcd();
    assert_eq!(clean.code, 0, "{clean:?}");
    assert!(
        clean
            .stdout
            .ends_with(": 1 groups, 2 versions checked, 0 corrupt\n"),
        "{clean:?}"
    );

    // One byte of version 2's body changes in etcd.
    let (key, mut body) = etcd
        .get_prefix(0, "/vane/blobs/")
        .into_iter()
        .find(|(_, value)| {
            value
                .windows(MARKER_TWO.len())
                .any(|w| w == MARKER_TWO.as_bytes())
        })
        .expect("version 2's body is in etcd");
    let at = body
        .windows(MARKER_TWO.len())
        .position(|w| w == MARKER_TWO.as_bytes())
        .unwrap();
    body[at] ^= 0x01;
    etcd.put(0, &key, &body);

    let damaged = check_etcd();
    assert_eq!(damaged.code, 1, "{damaged:?}");
    let lines: Vec<&str> = damaged.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{damaged:?}");
    assert!(
        lines[0].starts_with(r#"version 2 of group "edge" is corrupt: "#),
        "{damaged:?}"
    );
    assert!(
        lines[1].ends_with(": 1 groups, 2 versions checked, 1 corrupt"),
        "{damaged:?}"
    );
    // The replica refuses to show it as valid too.
    let out = server.ctl(&["get", GROUP, "--version", "2"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line()
            .contains(r#"version 2 of group "edge" is corrupt"#),
        "{out}"
    );

    // A replica that starts now finds its head unreadable: it serves, with
    // the group DEGRADED, rather than refusing to start; a rollback heals it.
    server.kill();
    server.restart();
    let status = server.ctl(&["status", GROUP]).ok();
    assert!(
        status
            .stdout
            .contains("edge: DEGRADED, version 2 is corrupt (agents keep what they run;"),
        "{status}"
    );
    assert_eq!(server.ctl(&["get", GROUP]).code, 1);
    let out = server
        .ctl(&["rollback", GROUP, "--to", "1", "-o", "json"])
        .ok();
    assert_eq!(out.json()["version"], 3, "{out}");
    // The group is healthy (the etcd store's own health line may still
    // report the failed read for a while: that is the store's, not the group's).
    let status = server.ctl(&["status", GROUP]).ok();
    assert!(
        status.stdout.starts_with("edge: head version 3 ")
            && !status.stdout.contains("edge: DEGRADED"),
        "{status}"
    );
}
