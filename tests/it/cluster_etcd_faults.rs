//! etcd itself failing under the replicas: the leader SIGKILLed during a
//! burst of pushes, every member stopped (agents and proxies keep serving,
//! pushes fail with a clear error, everything resumes with etcd), and the
//! history compacted while a replica was cut off from etcd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use vane_model::SnapshotSpec;
use vane_testkit::etcd::{EtcdCluster, Relay, start_replica};
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, Load, ProxyProcess};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{Output, fixtures, vanectl, wait_for_status};

const GROUP: &str = "edge";

fn marked(dir: &Path, base: &SnapshotSpec, marker: &str) -> PathBuf {
    let mut spec = base.clone();
    spec.values.insert("test.marker".into(), json!(marker));
    fixtures::write_json(dir, &format!("{marker}.json"), &spec)
}

fn push_file(server: &str, file: &Path) -> Output {
    vanectl(
        server,
        &["push", GROUP, "-f", file.to_str().unwrap(), "-o", "json"],
    )
}

/// Pushes `file` until it succeeds (etcd may still be electing or
/// reconnecting); returns the version.
#[track_caller]
fn push_until_ok(server: &str, file: &Path, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let out = push_file(server, file);
        if out.code == 0 {
            return out.json()["version"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "the push never succeeded: {out}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn start_sidecar(node: &str, control: &str, dir: &Path) -> Sidecar {
    Sidecar::follow(node, GROUP, &[control.to_owned()], dir, &[])
}

/// `(version, hash, marker)` of every push that returned success.
type Acked = Vec<(u64, String, String)>;

fn check_history(server: &str, acked: &Acked) -> Vec<u64> {
    let history = vane_testkit::history(server, GROUP);
    let versions: Vec<u64> = history.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        (1..=versions.len() as u64).collect::<Vec<_>>(),
        "versions are not gap-free and unique"
    );
    let by_version: BTreeMap<u64, &str> = history.iter().map(|(v, h)| (*v, h.as_str())).collect();
    for (version, hash, marker) in acked {
        assert_eq!(
            by_version.get(version),
            Some(&hash.as_str()),
            "push {marker}, acknowledged as version {version}, is not in the history"
        );
    }
    let mut hashes: Vec<&str> = history.iter().map(|(_, h)| h.as_str()).collect();
    hashes.sort_unstable();
    let n = hashes.len();
    hashes.dedup();
    assert_eq!(hashes.len(), n, "a push was stored twice");
    versions
}

#[test]
fn the_etcd_leader_killed_mid_burst_loses_no_acknowledged_push() {
    let mut etcd = EtcdCluster::start(3);
    let a = start_replica("replica-a", &etcd.endpoints(), &[]);
    let b = start_replica("replica-b", &etcd.endpoints(), &[]);
    let dir = a.scratch();
    let base = fixtures::example_spec();

    let successes = Arc::new(AtomicUsize::new(0));
    let pushers: Vec<_> = [a.url(), b.url()]
        .into_iter()
        .enumerate()
        .map(|(t, url)| {
            let (dir, base, successes) = (dir.clone(), base.clone(), Arc::clone(&successes));
            thread::spawn(move || {
                let mut acked: Acked = Vec::new();
                let mut failed = Vec::new();
                for i in 0..30 {
                    let marker = format!("r{t}-{i}");
                    let out = push_file(&url, &marked(&dir, &base, &marker));
                    match out.code {
                        0 => {
                            let json = out.json();
                            acked.push((
                                json["version"].as_u64().unwrap(),
                                json["hash"].as_str().unwrap().to_owned(),
                                marker,
                            ));
                            successes.fetch_add(1, Ordering::SeqCst);
                        }
                        // During the election: refused with the reason.
                        1 => failed.push(out.one_error_line().to_owned()),
                        _ => panic!("unexpected failure: {out}"),
                    }
                }
                (acked, failed)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while successes.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline, "the burst did not start");
        thread::sleep(Duration::from_millis(5));
    }
    let leader = etcd.wait_leader();
    etcd.kill(leader);
    let killed = Instant::now();
    let new_leader = etcd.wait_leader();
    assert_ne!(new_leader, leader);
    println!(
        "a new etcd leader within {:?} of the SIGKILL ({} pushes acknowledged before it)",
        killed.elapsed(),
        successes.load(Ordering::SeqCst)
    );

    let mut acked: Acked = Vec::new();
    for pusher in pushers {
        let (ok, failed) = pusher.join().unwrap();
        for line in &failed {
            assert!(line.contains("store unavailable"), "{line}");
        }
        println!(
            "{} pushes acknowledged, {} refused during the election{}",
            ok.len(),
            failed.len(),
            failed.first().map(|f| format!(": {f}")).unwrap_or_default()
        );
        acked.extend(ok);
    }
    // After the election every acknowledged push is there once, and the
    // next push continues the sequence.
    let versions = check_history(&b.url(), &acked);
    let next = push_until_ok(
        &a.url(),
        &marked(&dir, &base, "after"),
        Duration::from_secs(20),
    );
    assert_eq!(next, versions.len() as u64 + 1);
    assert!(
        acked.len() >= 30,
        "only {} of 60 pushes succeeded",
        acked.len()
    );
    check_history(&a.url(), &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_etcd_member_stopped_agents_serve_and_pushes_fail_clearly() {
    let mut etcd = EtcdCluster::start(3);
    let a = start_replica("replica-a", &etcd.endpoints(), &[]);
    let b = start_replica("replica-b", &etcd.endpoints(), &[]);
    let dir = a.scratch();

    let backend = Backend::start("app").await;
    let web = free_addr();
    let base = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("all", "/", "app")])],
        clusters: vec![cluster("app", "round_robin", &[(backend.addr, 1)])],
        ..SnapshotSpec::default()
    };
    let v1 = push_until_ok(
        &a.url(),
        &marked(&dir, &base, "v1"),
        Duration::from_secs(10),
    );
    let proxy = ProxyProcess::start(
        &[a.url()],
        "proxy-a",
        GROUP,
        &dir.join("proxy-cache"),
        &dir.join("logs"),
        &[],
    );
    let sidecar = start_sidecar("sidecar-b", &b.url(), &dir);
    proxy.wait_version(v1);
    sidecar.wait_status("version 1", |s| s["version"] == v1);
    let load = Load::start(4, web, "/", &[], "app");

    etcd.kill_all();
    let stopped = Instant::now();

    // Pushes fail fast, exit 1, and say what happened in one line.
    let started = Instant::now();
    let out = push_file(&a.url(), &marked(&dir, &base, "refused"));
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(
        line.contains("store unavailable: etcd at http://127.0.0.1:"),
        "{line}"
    );
    assert!(line.contains("did not answer within 3s"), "{line}");
    assert!(line.ends_with("nothing was stored"), "{line}");
    assert!(
        took < Duration::from_secs(6),
        "the push took {took:?} to fail"
    );
    println!("with etcd down a push failed after {took:?}: {line}");

    // Status reports the replicas degraded; agents keep their version.
    // Without etcd a replica knows only its own agents.
    for (server, node) in [(&a, "proxy-a"), (&b, "sidecar-b")] {
        let table = server.ctl(&["status"]).ok().stdout;
        assert!(table.contains("DEGRADED, read-only"), "{table}");
        let entry = wait_for_status(&server.url(), GROUP, node, "degraded", |e| {
            e["control_degraded"] == true
        });
        assert_eq!(entry["acked_version"], v1);
    }
    assert_eq!(proxy.config_dump()["version"], v1);
    assert_eq!(sidecar.status()["version"], v1);
    assert_eq!(sidecar.status()["source"], "live");

    // The proxy keeps serving without etcd: requests succeed after every
    // check above, with all members still stopped.
    let before = load.ok();
    assert!(
        load.wait_ok(before + 50, Duration::from_secs(20)).await,
        "the proxy stopped serving while etcd was down: {} ok, {} failed",
        load.ok(),
        load.failed()
    );

    // etcd returns: a new push reaches every agent.
    etcd.restart_all();
    println!("etcd was down for {:?}", stopped.elapsed());
    let back = Instant::now();
    let v2 = push_until_ok(
        &b.url(),
        &marked(&dir, &base, "v2"),
        Duration::from_secs(30),
    );
    assert_eq!(v2, v1 + 1);
    println!(
        "first push accepted {:?} after etcd was healthy again",
        back.elapsed()
    );
    proxy.wait_version(v2);
    sidecar.wait_status("version 2", |s| s["version"] == v2);
    for server in [&a, &b] {
        wait_for_status(&server.url(), GROUP, "sidecar-b", "healthy again", |e| {
            e["control_degraded"] == false && e["acked_version"] == v2
        });
    }
    let report = load.stop().await;
    println!(
        "load through the outage: {} ok, {} failed",
        report.ok, report.failed
    );
    assert!(report.ok > 0);
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.samples);
}

#[test]
fn a_replica_behind_a_compaction_rereads_the_heads_and_its_agents_converge() {
    let etcd = EtcdCluster::start(1);
    // B reaches etcd only through a relay the test can cut.
    let relay = Relay::start(etcd.client_addr(0));
    let a = start_replica("replica-a", &etcd.endpoints(), &[]);
    let b = start_replica("replica-b", &[relay.url()], &[]);
    let dir = a.scratch();
    let base = fixtures::example_spec();
    let v1 = push_until_ok(
        &a.url(),
        &marked(&dir, &base, "v1"),
        Duration::from_secs(10),
    );
    let agent = start_sidecar("on-b", &b.url(), &dir);
    agent.wait_status("version 1", |s| s["version"] == v1);

    // B loses etcd; meanwhile A pushes, and the history B has not read is
    // compacted away.
    relay.cut();
    wait_for_status(&b.url(), GROUP, "on-b", "B degraded", |e| {
        e["control_degraded"] == true
    });
    let mut head = v1;
    for i in 2..=4 {
        head = push_until_ok(
            &a.url(),
            &marked(&dir, &base, &format!("v{i}")),
            Duration::from_secs(10),
        );
    }
    let compacted = etcd.compact(0);
    assert_eq!(
        agent.status()["version"],
        v1,
        "B could not have sent anything"
    );

    relay.restore();
    let restored = Instant::now();
    agent.wait_status("the head after the compaction", |s| s["version"] == head);
    println!(
        "agent on B converged to version {head} {:?} after B could reach etcd again (history compacted at revision {compacted})",
        restored.elapsed()
    );
    assert!(
        b.logs()
            .contains("etcd compacted the history this replica had not read yet"),
        "B did not go through the compaction path:\n{}",
        b.logs()
    );
    // And B keeps following afterwards.
    let next = push_until_ok(
        &a.url(),
        &marked(&dir, &base, "v5"),
        Duration::from_secs(10),
    );
    agent.wait_status("the next push", |s| s["version"] == next);
    wait_for_status(&b.url(), GROUP, "on-b", "B healthy", |e| {
        e["control_degraded"] == false && e["state"] == "SYNCED"
    });
}
