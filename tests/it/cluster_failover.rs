//! A replica SIGKILLed in the middle of a burst of pushes: every push that
//! returned success is stored exactly once, versions stay gap-free and
//! strictly increasing, and a proxy whose agent was on the dead replica moves
//! to the other one without failing a single request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use vane_model::SnapshotSpec;
use vane_testkit::etcd::{EtcdCluster, start_replica};
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table};
use vane_testkit::proxy::{Backend, Load, ProxyProcess, push};
use vane_testkit::{fixtures, vanectl};

const GROUP: &str = "edge";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_burst_loses_no_push_and_no_request() {
    let etcd = EtcdCluster::start(1);
    let mut a = start_replica("replica-a", &etcd.endpoints(), &[]);
    let b = start_replica("replica-b", &etcd.endpoints(), &[]);
    let dir = b.scratch();

    let backend = Backend::start("app").await;
    let web = free_addr();
    let base = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("all", "/", "app")])],
        clusters: vec![cluster("app", "round_robin", &[(backend.addr, 1)])],
        ..SnapshotSpec::default()
    };
    let v1 = push(&a, GROUP, &base);
    // The proxy's agent tries A first, then B.
    let proxy = ProxyProcess::start(
        &[a.url(), b.url()],
        "proxy-1",
        GROUP,
        &dir.join("proxy-cache"),
        &dir.join("logs"),
        &[],
    );
    proxy.wait_version(v1);
    assert_eq!(proxy.status()["server"], a.url(), "{}", proxy.status());
    let load = Load::start(4, web, "/", &[], "app");

    // Two pushers: each pushes distinct content to A until A stops
    // answering, then to B. Every success is recorded with its answer.
    let successes = Arc::new(AtomicUsize::new(0));
    let a_dead = Arc::new(AtomicBool::new(false));
    let pushers: Vec<_> = (0..2)
        .map(|t| {
            let (a_url, b_url) = (a.url(), b.url());
            let (dir, successes, a_dead) =
                (dir.clone(), Arc::clone(&successes), Arc::clone(&a_dead));
            let base = base.clone();
            thread::spawn(move || {
                let mut acked: Vec<(u64, String, String)> = Vec::new();
                let mut use_b = false;
                for i in 0..25 {
                    let mut spec = base.clone();
                    let marker = format!("t{t}-{i}");
                    spec.values.insert("burst".into(), json!(marker));
                    let file = fixtures::write_json(&dir, &format!("burst-{marker}.json"), &spec);
                    let url = if use_b || a_dead.load(Ordering::SeqCst) {
                        &b_url
                    } else {
                        &a_url
                    };
                    let out = vanectl(
                        url,
                        &["push", GROUP, "-f", file.to_str().unwrap(), "-o", "json"],
                    );
                    if out.code == 0 {
                        let json = out.json();
                        acked.push((
                            json["version"].as_u64().unwrap(),
                            json["hash"].as_str().unwrap().to_owned(),
                            marker,
                        ));
                        successes.fetch_add(1, Ordering::SeqCst);
                    } else {
                        // Only the dead replica may fail a push here.
                        assert_eq!(url, &a_url, "a push to B failed: {out}");
                        use_b = true;
                    }
                }
                acked
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while successes.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline, "the burst did not start");
        thread::sleep(Duration::from_millis(5));
    }
    a.kill();
    let killed = Instant::now();
    a_dead.store(true, Ordering::SeqCst);

    // The proxy's agent moves to B.
    let failover = loop {
        let s = proxy.status();
        if s["server"] == b.url() && s["connected"] == true {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the proxy's agent did not move to B: {s}\n{}",
            proxy.logs()
        );
        thread::sleep(Duration::from_millis(10));
    };
    println!(
        "the proxy's agent was streaming from replica B {failover:?} after replica A was killed"
    );

    let acked: Vec<(u64, String, String)> = pushers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let history = vane_testkit::history(&b.url(), GROUP);
    // Gap-free, strictly increasing (history() sorts; a duplicate or a gap
    // would show here).
    let versions: Vec<u64> = history.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    // Every acknowledged push is there, at the version it was told.
    let by_version: BTreeMap<u64, &str> = history.iter().map(|(v, h)| (*v, h.as_str())).collect();
    for (version, hash, marker) in &acked {
        assert_eq!(
            by_version.get(version),
            Some(&hash.as_str()),
            "push {marker} acknowledged as version {version} is not in the history"
        );
    }
    // No content stored twice: every push had its own content (the first
    // version aside, which has none of the markers).
    let mut hashes: Vec<&str> = history.iter().map(|(_, h)| h.as_str()).collect();
    hashes.sort_unstable();
    let before = hashes.len();
    hashes.dedup();
    assert_eq!(hashes.len(), before, "a push was stored twice: {history:?}");
    assert!(
        acked.len() >= 45,
        "only {} of 50 pushes succeeded",
        acked.len()
    );

    // The proxy ends on the head, served by B, and no request failed.
    let head = *versions.last().unwrap();
    proxy.wait_version(head);
    let report = load.stop().await;
    println!(
        "{} pushes acknowledged across the kill; load: {} ok, {} failed",
        acked.len(),
        report.ok,
        report.failed
    );
    assert!(report.ok > 0);
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.samples);
}
