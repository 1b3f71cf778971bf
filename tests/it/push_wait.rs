//! `vanectl push --wait` over real processes: three sidecars, one of which
//! refuses some content with `--check-cmd`. A good push waits for all three
//! ACKs (exit 0); a push the checker refuses ends at its NACK (exit 1,
//! naming the node and the reason); a push that a frozen (SIGSTOPped, still
//! connected) sidecar cannot ACK times out (exit 4, naming it); a group with
//! no agent has nothing to wait for (exit 0).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures, wait_for_status};

/// Sends `signal` (`-STOP`, `-CONT`) to the sidecar.
fn signal(agent: &Sidecar, signal: &str) {
    let pid = agent.pid().unwrap().to_string();
    let status = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

#[test]
fn push_wait_exits_0_on_acks_1_on_a_nack_4_on_a_timeout() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    let file = |name: &str, key: &str, value: serde_json::Value| {
        let path = fixtures::write_json(&dir, name, &fixtures::example_with_value(key, value));
        path.to_str().unwrap().to_owned()
    };
    let v1 = file("v1.json", "step", serde_json::json!(1));
    server.ctl(&["push", "edge", "-f", &v1]).ok();
    let check = dir.join("check.sh");
    std::fs::write(
        &check,
        "if grep -q forbidden \"$1\"; then echo 'refusing: forbidden is set' >&2; exit 1; fi\n",
    )
    .unwrap();
    let check_cmd = format!("sh {}", check.display());
    let agents: Vec<Sidecar> = ["w1", "w2", "w3"]
        .iter()
        .map(|node| {
            let out = dir.join(format!("{node}.json"));
            let mut extra = vec!["--output", out.to_str().unwrap()];
            if *node == "w3" {
                extra.extend(["--check-cmd", check_cmd.as_str()]);
            }
            Sidecar::follow(node, "edge", std::slice::from_ref(&url), &dir, &extra)
        })
        .collect();
    for node in ["w1", "w2", "w3"] {
        wait_for_status(&url, "edge", node, "SYNCED on 1", |a| {
            a["state"] == "SYNCED" && a["acked_version"] == 1
        });
    }

    // Every connected agent ACKs: exit 0.
    let v2 = file("v2.json", "step", serde_json::json!(2));
    let out = server.ctl(&["push", "edge", "-f", &v2, "--wait=30s"]).ok();
    assert!(out.stdout.starts_with("pushed edge version 2"), "{out}");
    assert!(
        out.stdout
            .ends_with("all 3 connected agents of edge ACKed version 2\n"),
        "{out}"
    );
    for node in ["w1", "w2", "w3"] {
        let a = vane_testkit::agent_status(&url, "edge", node).unwrap();
        assert_eq!(a["acked_version"], 2, "{node}: {a}");
    }

    // w3's checker refuses: exit 1, naming w3 and its reason.
    let bad = file("bad.json", "forbidden", serde_json::json!(true));
    let out = server.ctl(&["push", "edge", "-f", &bad, "--wait=30s"]);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.one_error_line(),
        "error: version 3 of edge was NACKed by 1 of 3 connected agents: w3: refusing: forbidden is set"
    );
    assert!(
        out.stdout
            .contains("w3    v3      refusing: forbidden is set"),
        "{out}"
    );

    // w1 is frozen (connected, but it cannot ACK): exit 4 after the
    // timeout, naming w1 only. (w1 and w2 took version 3; only w3 refused it.)
    wait_for_status(&url, "edge", "w1", "SYNCED on 3", |a| {
        a["acked_version"] == 3
    });
    signal(&agents[0], "-STOP");
    let v4 = file("v4.json", "step", serde_json::json!(4));
    let out = server.ctl(&["push", "edge", "-f", &v4, "--wait=3s", "-o", "json"]);
    signal(&agents[0], "-CONT");
    assert_eq!(out.code, 4, "{out}");
    assert_eq!(
        out.one_error_line(),
        "error: after 3s, 1 of 3 connected agents of edge had not ACKed version 4: w1 (STALE, runs v3)"
    );
    let v = out.json();
    assert_eq!(v["version"], 4);
    assert_eq!(v["wait"]["result"], "timeout");
    assert_eq!(v["wait"]["agents"], 3);
    assert_eq!(v["wait"]["missing"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(v["wait"]["missing"][0]["node_id"], "w1");
    assert_eq!(v["wait"]["missing"][0]["acked_version"], 3);
    // Thawed, it catches up: the wait was for a real, pending ACK.
    wait_for_status(&url, "edge", "w1", "SYNCED on 4", |a| {
        a["acked_version"] == 4
    });

    // A group nobody follows: nothing to wait for.
    let out = server.ctl(&["push", "lonely", "-f", &v1, "--wait"]).ok();
    assert!(
        out.stdout
            .ends_with("no connected agents in lonely: nothing to wait for\n"),
        "{out}"
    );
}
