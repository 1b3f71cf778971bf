//! Progressive rollouts over real processes, driven with `vanectl rollout`:
//! twenty labelled sidecars take a good candidate in two steps and the ones
//! outside the first cohort never ran it before the 100% step (their
//! `/status` `history` says so); a candidate half the fleet's `--check-cmd`
//! refuses rolls back at the first step to a new version with the stable
//! hash; vane-proxy under traffic, sent a candidate routing `/api` to a dead
//! port, reports itself degraded and the rollout aborts by itself, the
//! failed requests bounded to the cohort's share; and a control server
//! SIGKILLed mid-rollout (redb), or the etcd replica driving it, resumes
//! and completes with no agent ever running a lower version.
//! (`vanectl push --wait` exit codes are in `push_wait`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vane_model::SnapshotSpec;
use vane_proto as pb;
use vane_testkit::etcd::{EtcdCluster, start_replica};
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, OneConnection, ProxyProcess};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{Output, fixtures, vanectl, wait_for_status};

const GROUP: &str = "edge";
const WAIT: Duration = Duration::from_secs(60);

/// The group's current (or last) rollout, from `Admin.GetRollout`.
async fn rollout(url: &str) -> pb::Rollout {
    let mut admin = pb::admin_client::AdminClient::connect(url.to_owned())
        .await
        .unwrap();
    admin
        .get_rollout(pb::GetRolloutRequest {
            group: GROUP.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap()
}

/// Polls the rollout until `pred` holds; panics with the last one after [`WAIT`].
async fn wait_rollout(url: &str, what: &str, pred: impl Fn(&pb::Rollout) -> bool) -> pb::Rollout {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = rollout(url).await;
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "rollout never {what}: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The example snapshot with `release` set to `value`, as a file.
fn release_file(dir: &Path, value: &str) -> String {
    let spec = fixtures::example_with_value("release", json!(value));
    let path = fixtures::write_json(dir, &format!("{value}.json"), &spec);
    path.to_str().unwrap().to_owned()
}

fn write_file(dir: &Path, name: &str, spec: &SnapshotSpec) -> String {
    fixtures::write_json(dir, name, spec)
        .to_str()
        .unwrap()
        .to_owned()
}

/// `vanectl rollout start` with `args` after the group and file.
fn start(url: &str, file: &str, args: &[&str]) -> Output {
    let mut all = vec!["rollout", "start", GROUP, "-f", file];
    all.extend_from_slice(args);
    vanectl(url, &all).ok()
}

/// `vanectl rollout status GROUP -w --timeout T`.
fn follow(url: &str, timeout: &str) -> Output {
    vanectl(
        url,
        &["rollout", "status", GROUP, "-w", "--timeout", timeout],
    )
}

/// A `/status` history as (version, hash, applied_at_unix_ms).
fn history(status: &Value) -> Vec<(u64, String, i64)> {
    status["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history in {status}"))
        .iter()
        .map(|a| {
            (
                a["version"].as_u64().unwrap(),
                a["hash"].as_str().unwrap().to_owned(),
                a["applied_at_unix_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Versions only ever go up on `node`.
fn assert_never_lower(node: &str, h: &[(u64, String, i64)]) {
    assert!(
        h.windows(2).all(|w| w[0].0 < w[1].0),
        "{node} ran a lower version after a higher one: {h:?}"
    );
}

/// `n` sidecars `n00`.. following the group on `controls`, zone a for
/// even, b for odd numbers; `extra(zone)` flags after those. Each is
/// SYNCED on `version` before this returns.
fn fleet(
    controls: &[String],
    dir: &Path,
    n: usize,
    version: u64,
    extra: impl Fn(&str) -> Vec<String>,
) -> Vec<(String, Sidecar)> {
    let agents: Vec<(String, Sidecar)> = (0..n)
        .map(|i| {
            let node = format!("n{i:02}");
            let zone = if i % 2 == 0 { "a" } else { "b" };
            let label = format!("zone={zone}");
            let more = extra(zone);
            let mut args = vec!["--label", &label];
            args.extend(more.iter().map(String::as_str));
            let s = Sidecar::follow(&node, GROUP, controls, dir, &args);
            (node, s)
        })
        .collect();
    for (node, _) in &agents {
        wait_for_status(
            &controls[0],
            GROUP,
            node,
            "SYNCED on the stable version",
            |a| a["state"] == "SYNCED" && a["acked_version"] == version,
        );
    }
    agents
}

/// When the rollout entered `state` at `step` (the first time).
fn entered(r: &pb::Rollout, state: pb::RolloutState, step: u32) -> i64 {
    r.events
        .iter()
        .find(|e| e.state() == state && e.step == step)
        .unwrap_or_else(|| panic!("no {state:?} at step {step}: {r:?}"))
        .at_unix_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_candidate_reaches_the_others_only_at_the_last_step() {
    let server = vane_testkit::ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let stable = release_file(&dir, "stable");
    server.ctl(&["push", GROUP, "-f", &stable]).ok();
    let agents = fleet(std::slice::from_ref(&url), &dir, 20, 1, |_| Vec::new());

    let candidate = release_file(&dir, "candidate");
    start(
        &url,
        &candidate,
        &[
            "--steps",
            "25,100",
            "--bake",
            "2s",
            "--select",
            "zone in (a,b)",
        ],
    );
    // A plain push is refused while it runs, naming the rollout.
    let refused = server.ctl(&["push", GROUP, "-f", &stable]);
    assert_eq!(refused.code, 1, "{refused}");
    assert!(
        refused.stderr.contains("rollout edge-v2 in progress"),
        "{refused}"
    );

    // Step 1: 5 of the 20 (25%) run version 2.
    let baking = wait_rollout(&url, "baked step 1", |r| {
        r.state() == pb::RolloutState::Baking && r.step == 1
    })
    .await;
    let first: BTreeSet<String> = baking.members.iter().cloned().collect();
    assert_eq!(first.len(), 5, "{baking:?}");
    assert_eq!(baking.cohort.unwrap().synced, 5);
    let follow = follow(&url, "60s");
    assert_eq!(follow.code, 0, "COMPLETE: {follow}");
    let done = rollout(&url).await;
    assert_eq!(done.state(), pb::RolloutState::Complete, "{done:?}");
    assert_eq!(done.members.len(), 20);
    assert!(
        done.members[..5].iter().all(|m| first.contains(m)),
        "members are sticky: {done:?}"
    );
    let step2 = entered(&done, pb::RolloutState::Progressing, 2);

    for (node, agent) in &agents {
        let s = agent.wait_status("the candidate", |s| s["version"] == 2);
        let h = history(&s);
        assert_never_lower(node, &h);
        let versions: Vec<u64> = h.iter().map(|a| a.0).collect();
        assert_eq!(versions, [1, 2], "{node}: {s}");
        assert_eq!(h[1].1, done.candidate_hash);
        if first.contains(node) {
            assert!(h[1].2 < step2, "{node} took v2 in step 1: {h:?}");
        } else {
            assert!(
                h[1].2 >= step2,
                "{node}, outside the first cohort, ran v2 at {} before step 2 began at {step2}",
                h[1].2
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_half_the_fleet_refuses_rolls_back_at_the_first_step() {
    let server = vane_testkit::ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let stable = release_file(&dir, "stable");
    server.ctl(&["push", GROUP, "-f", &stable]).ok();
    let check = dir.join("check.sh");
    std::fs::write(
        &check,
        "if grep -q refused-in-zone-b \"$1\"; then echo 'zone b cannot run this release' >&2; exit 1; fi\n",
    )
    .unwrap();
    let check_cmd = format!("sh {}", check.display());
    let agents = fleet(std::slice::from_ref(&url), &dir, 10, 1, |zone| {
        if zone == "b" {
            vec!["--check-cmd".into(), check_cmd.clone()]
        } else {
            Vec::new()
        }
    });

    let candidate = release_file(&dir, "refused-in-zone-b");
    start(&url, &candidate, &["--steps", "50,100"]);
    let follow = follow(&url, "60s");
    assert_eq!(follow.code, 1, "ROLLED_BACK: {follow}");
    let r = rollout(&url).await;
    assert_eq!(r.state(), pb::RolloutState::RolledBack, "{r:?}");
    assert_eq!(r.step, 1, "aborted at the first step: {r:?}");
    assert_eq!(r.members.len(), 5, "{r:?}");
    assert!(
        r.reason.contains("refused version 2 (--max-nacks 0)")
            && r.reason.contains("zone b cannot run this release")
            && r.reason.ends_with("version 3 restores version 1"),
        "{}",
        r.reason
    );
    assert_eq!((r.candidate_version, r.restored_version), (2, 3));
    let cohort: BTreeSet<&str> = r.members.iter().map(String::as_str).collect();

    let (mut saw, mut refused) = (0, 0);
    for (node, agent) in &agents {
        let s = agent.wait_status("the restored version", |s| s["version"] == 3);
        assert_eq!(
            s["hash"],
            r.stable_hash.as_str(),
            "{node}: the stable content"
        );
        let h = history(&s);
        assert_never_lower(node, &h);
        let ran_candidate = h.iter().any(|a| a.0 == 2);
        if cohort.contains(node.as_str()) {
            saw += usize::from(ran_candidate);
            refused += usize::from(s["last_nack_version"] == 2);
        } else {
            assert!(!ran_candidate, "{node} is outside the cohort: {h:?}");
            assert_eq!(s["nacks"], 0, "{node} was never sent the candidate: {s}");
        }
    }
    assert!(refused >= 1, "a zone-b member refused it");
    assert_eq!(saw + refused, 5, "every member took or refused it");
}

/// Listener `web` routing `/api` to cluster `target` (`good` or `dead`).
fn routing(web: SocketAddr, dead: SocketAddr, good: SocketAddr, target: &str) -> SnapshotSpec {
    SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("api", "/api", target)])],
        clusters: vec![
            cluster("dead", "round_robin", &[(dead, 1)]),
            cluster("good", "round_robin", &[(good, 1)]),
        ],
        ..SnapshotSpec::default()
    }
}

/// Clients sending `GET /api` on a new connection each (so the kernel
/// spreads them over the proxies sharing the port), counting answers.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(clients: usize, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match OneConnection::open(addr).await {
                            Ok(mut c) => c.get("/api").await.map(|r| r.status),
                            Err(e) => Err(e),
                        };
                        let counter = if answer == Ok(200) { &ok } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// (ok, failed) so far.
    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let counts = (self.ok.clone(), self.failed.clone());
        for t in self.tasks {
            let _ = t.await;
        }
        (
            counts.0.load(Ordering::Relaxed),
            counts.1.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_the_proxy_finds_degraded_rolls_back_by_itself() {
    let server = vane_testkit::ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let good = Backend::start("good").await;
    let (web, dead) = (free_addr(), free_addr());
    let stable = write_file(&dir, "stable.json", &routing(web, dead, good.addr, "good"));
    server.ctl(&["push", GROUP, "-f", &stable]).ok();
    // Four proxies on the same listener (SO_REUSEPORT), one worker each.
    let proxies: Vec<(String, ProxyProcess)> = (0..4)
        .map(|i| {
            let node = format!("p{i}");
            let p = ProxyProcess::start(
                std::slice::from_ref(&url),
                &node,
                GROUP,
                &dir.join(format!("cache-{node}")),
                &dir.join(format!("logs-{node}")),
                &["--workers", "1"],
            );
            p.wait_version(1);
            (node, p)
        })
        .collect();
    let traffic = Traffic::start(4, web);
    let deadline = Instant::now() + WAIT;
    while traffic.counts().0 < 200 {
        assert!(
            Instant::now() < deadline,
            "no traffic: {:?}",
            traffic.counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(traffic.counts().1, 0, "the stable version serves");

    // The candidate routes /api to a port nobody listens on. Its bake is
    // long: only the proxy's health can end the step this soon.
    let candidate = write_file(
        &dir,
        "candidate.json",
        &routing(web, dead, good.addr, "dead"),
    );
    let before = traffic.counts();
    let began = Instant::now();
    start(&url, &candidate, &["--steps", "25,100", "--bake", "5m"]);
    let r = wait_rollout(&url, "rolled back", |r| {
        r.state() == pb::RolloutState::RolledBack
    })
    .await;
    assert_eq!((r.step, r.members.len()), (1, 1), "{r:?}");
    assert!(
        r.reason
            .starts_with("1 agent(s) report degraded on version 2 (--max-degraded 0): ")
            && r.reason.contains("error ratio"),
        "{}",
        r.reason
    );
    let member = &r.members[0];
    for (_, p) in &proxies {
        p.wait_version(r.restored_version);
    }
    let during = traffic.counts();
    let incident = began.elapsed();
    // Recovered: every request from now on is answered.
    let deadline = Instant::now() + WAIT;
    while traffic.counts().0 < during.0 + 400 {
        assert!(Instant::now() < deadline, "no traffic after the rollback");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = traffic.stop().await;
    assert_eq!(after.1, during.1, "failures after every proxy runs v3");

    let sent = (during.0 + during.1) - (before.0 + before.1);
    let failed = during.1 - before.1;
    println!(
        "rollout of a broken candidate to 1 of 4 proxies: {failed} of {sent} requests failed in the {incident:?} until all ran the restored version"
    );
    assert!(
        failed > 0,
        "the candidate really broke the cohort's traffic"
    );
    // Only the cohort's proxy (1 of 4) answered with errors: a quarter of the
    // traffic on average (half allows for the kernel's spreading); a plain
    // push would have failed all of it.
    assert!(failed * 2 <= sent, "{failed} of {sent} failed");
    // Only the cohort's proxy ever ran the candidate.
    for (node, p) in &proxies {
        let h = history(&p.status());
        assert_never_lower(node, &h);
        let ran = h.iter().any(|a| a.0 == 2);
        assert_eq!(ran, node == member, "{node}: {h:?}");
    }
}

/// A rollout in three steps over six sidecars on `controls`, started on
/// `before`; `kill` stops the server driving it while step 1 bakes; the
/// rollout is then followed on `after` (the same server restarted, or
/// another replica) to COMPLETE.
async fn resumes_after(
    controls: &[String],
    (before, after): (&str, &str),
    dir: &Path,
    kill: impl FnOnce(),
) {
    let stable = release_file(dir, "stable");
    vanectl(before, &["push", GROUP, "-f", &stable]).ok();
    let agents = fleet(controls, dir, 6, 1, |_| Vec::new());
    let candidate = release_file(dir, "candidate");
    start(
        before,
        &candidate,
        &["--steps", "34,67,100", "--bake", "4s"],
    );
    let baking = wait_rollout(before, "baked step 1", |r| {
        r.state() == pb::RolloutState::Baking && r.step == 1
    })
    .await;
    assert_eq!(baking.members.len(), 3, "{baking:?}");
    let running = follow(before, "1s");
    assert_eq!(running.code, 4, "still running after 1s: {running}");
    kill();

    let follow = follow(after, "90s");
    assert_eq!(follow.code, 0, "COMPLETE after the kill: {follow}");
    let done = rollout(after).await;
    assert_eq!(done.state(), pb::RolloutState::Complete, "{done:?}");
    assert_eq!(
        done.members[..3],
        baking.members[..],
        "sticky across the kill"
    );
    assert_eq!(done.members.len(), 6);
    for (node, agent) in &agents {
        let s = agent.wait_status("the candidate", |s| s["version"] == 2);
        let h = history(&s);
        assert_never_lower(node, &h);
        assert_eq!(h.last().unwrap().1, done.candidate_hash, "{node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_after_the_control_server_is_sigkilled() {
    let mut server = vane_testkit::ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let server_ref = &mut server;
    resumes_after(std::slice::from_ref(&url), (&url, &url), &dir, || {
        server_ref.kill();
        server_ref.restart_same_port();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_after_the_replica_driving_it_is_sigkilled() {
    let etcd = EtcdCluster::start(1);
    let mut a = start_replica("replica-a", &etcd.endpoints(), &[]);
    let b = start_replica("replica-b", &etcd.endpoints(), &[]);
    let dir = a.scratch();
    // Started on A, so A holds the lease; every agent is on A until it dies.
    let (url_a, url_b) = (a.url(), b.url());
    let a_ref = &mut a;
    resumes_after(
        &[url_a.clone(), url_b.clone()],
        (&url_a, &url_b),
        &dir,
        || {
            a_ref.kill();
        },
    )
    .await;
}
