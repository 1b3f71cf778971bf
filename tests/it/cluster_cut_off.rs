//! A replica cut off from etcd while its agents still reach it: it tells
//! them so (docs/protocol.md#store-reachability). An agent with only that
//! replica keeps what it runs but stops claiming to be current: past its
//! staleness threshold it reports `degraded` with the reason `control
//! server <url> cannot reach its store`, and is current again once the
//! replica is. An agent given several `--control` URLs moves to a replica
//! that reaches the store, and is SYNCED on the new version within 10 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use vane_model::SnapshotSpec;
use vane_testkit::etcd::{EtcdCluster, Relay, start_replica};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures, vanectl, wait_for_status};

const GROUP: &str = "edge";

/// The staleness threshold the agents run with here (the default is 5 m).
const STALE_AFTER: Duration = Duration::from_secs(3);

fn marked(dir: &Path, base: &SnapshotSpec, marker: &str) -> PathBuf {
    let mut spec = base.clone();
    spec.values.insert("test.marker".into(), json!(marker));
    fixtures::write_json(dir, &format!("{marker}.json"), &spec)
}

/// Pushes `marker` through `server` until it is stored; returns the version.
#[track_caller]
fn push(server: &str, dir: &Path, marker: &str) -> u64 {
    let file = marked(dir, &fixtures::example_spec(), marker);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = vanectl(
            server,
            &["push", GROUP, "-f", file.to_str().unwrap(), "-o", "json"],
        );
        if out.code == 0 {
            return out.json()["version"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "the push never succeeded: {out}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn start_sidecar(node: &str, control: &[String], dir: &Path) -> Sidecar {
    let stale_after = format!("{}s", STALE_AFTER.as_secs());
    Sidecar::follow(node, GROUP, control, dir, &["--stale-after", &stale_after])
}

/// A one-member etcd, replica A on it directly and replica B through a
/// relay the test can cut, and version 1 pushed.
fn cluster() -> (EtcdCluster, Relay, ControlServer, ControlServer, u64) {
    let etcd = EtcdCluster::start(1);
    let relay = Relay::start(etcd.client_addr(0));
    let a = start_replica("replica-a", &etcd.endpoints(), &[]);
    let b = start_replica("replica-b", &[relay.url()], &[]);
    let v1 = push(&a.url(), &a.scratch(), "v1");
    (etcd, relay, a, b, v1)
}

#[test]
fn an_agent_behind_a_replica_cut_off_from_etcd_reports_it_past_its_threshold() {
    let (_etcd, relay, a, b, v1) = cluster();
    let dir = a.scratch();
    let agent = start_sidecar("on-b", &[b.url()], &dir);
    agent.wait_status("version 1, current", |s| {
        s["version"] == v1 && s["state"] == "healthy" && s["staleness_ms"] == 0
    });

    // B loses etcd; A goes on taking pushes B cannot see.
    relay.cut();
    let cut = Instant::now();
    let mut head = v1;
    for i in 2..=4 {
        head = push(&a.url(), &dir, &format!("v{i}"));
    }

    // The agent hears it from B: from then on it does not claim to be
    // current, although its stream to B is up and B sent nothing newer.
    let told = agent.wait_status("told that B cannot reach its store", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach its store"))
    });
    println!("agent told {:?} after the cut", cut.elapsed());
    assert_eq!(told["connected"], true, "{told}");
    // Staleness counts from when B lost etcd, which may be the very
    // millisecond the agent was told: it is 0 at most then, and grows.
    thread::sleep(Duration::from_millis(20));
    let after = agent.status();
    assert!(
        after["staleness_ms"].as_u64().unwrap() >= 20,
        "no longer confirmed, its staleness grows: {after}"
    );
    assert_eq!(after["connected"], true, "{after}");
    let reason = format!("control server {} cannot reach its store", b.url());
    let degraded = agent.wait_status("degraded, naming B", |s| s["state"] == "degraded");
    let degraded_after = cut.elapsed();
    assert_eq!(degraded["reason"], reason.as_str(), "{degraded}");
    assert!(
        degraded["staleness_ms"].as_u64().unwrap() > STALE_AFTER.as_millis() as u64,
        "{degraded}"
    );
    assert_eq!(degraded["version"], v1, "B could not have sent anything");
    assert_eq!(degraded["connected"], true);
    assert_eq!(degraded["server"], b.url().as_str());
    println!(
        "agent degraded {degraded_after:?} after the cut (threshold {STALE_AFTER:?}): {reason}"
    );
    // Staying there keeps it degraded, its staleness growing.
    thread::sleep(Duration::from_secs(1));
    let later = agent.status();
    assert_eq!(later["state"], "degraded", "{later}");
    assert!(later["staleness_ms"].as_u64() > degraded["staleness_ms"].as_u64());

    // What B's operators see: B degraded, its agent on what B has.
    let table = b.ctl(&["status"]).ok().stdout;
    assert!(table.contains("DEGRADED, read-only"), "{table}");
    let entry = wait_for_status(&b.url(), GROUP, "on-b", "on B's view", |e| {
        e["control_degraded"] == true
    });
    assert_eq!(entry["acked_version"], v1);

    // B reaches etcd again: the agent gets the head and is current again.
    relay.restore();
    let restored = Instant::now();
    let s = agent.wait_status("the head, current", |s| {
        s["version"] == head && s["state"] == "healthy" && s["staleness_ms"] == 0
    });
    assert_eq!(s["reason"], "");
    println!(
        "agent current on version {head} {:?} after B reached etcd again",
        restored.elapsed()
    );
    wait_for_status(
        &a.url(),
        GROUP,
        "on-b",
        "SYNCED on the head, seen from A",
        |e| e["state"] == "SYNCED" && e["acked_version"] == head,
    );
}

#[test]
fn an_agent_with_several_servers_moves_off_a_replica_cut_off_from_etcd() {
    let (_etcd, relay, a, b, v1) = cluster();
    let dir = a.scratch();
    // B first: that is where the agent starts.
    let agent = start_sidecar("mover", &[b.url(), a.url()], &dir);
    agent.wait_status("version 1 from B", |s| {
        s["version"] == v1 && s["server"] == b.url().as_str() && s["staleness_ms"] == 0
    });

    relay.cut();
    let cut = Instant::now();
    let v2 = push(&a.url(), &dir, "v2");
    let s = agent.wait_status("version 2 from A", |s| {
        s["version"] == v2 && s["server"] == a.url().as_str() && s["connected"] == true
    });
    let moved = cut.elapsed();
    let entry = wait_for_status(&a.url(), GROUP, "mover", "SYNCED on version 2", |e| {
        e["state"] == "SYNCED" && e["acked_version"] == v2
    });
    let synced = cut.elapsed();
    println!(
        "agent on A with version {v2} {moved:?} after B was cut off; SYNCED in A's status {synced:?} after"
    );
    assert!(
        synced <= Duration::from_secs(10),
        "the agent took {synced:?} to move and be SYNCED (at most 10 s): {s}"
    );
    assert_eq!(entry["connected"], true);
    let table = a.ctl(&["status", GROUP]).ok().stdout;
    let row = table
        .lines()
        .find(|l| l.contains("mover"))
        .unwrap_or_else(|| panic!("no row for the agent:\n{table}"));
    assert!(row.contains("SYNCED"), "{table}");
    let s = agent.wait_status("current on A", |s| {
        s["staleness_ms"] == 0 && s["state"] == "healthy"
    });
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{}: ", b.url()))
                && e.contains("cannot reach its store")),
        "{s}"
    );
}
