//! SIGTERM drains and exits 0 within a bounded time, open watch streams or not.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use vane_testkit::fixtures::{example_path, example_with_value, expected_hash, write_json};
use vane_testkit::{ControlServer, Next, WatchClient, history, vanectl};

/// The bound on a graceful exit. Generous: the point is "bounded", not "fast".
const GRACE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_connected_watch_stream_exits_0() {
    let mut server = ControlServer::start();
    server
        .ctl(&["push", "bye", "-f", example_path().to_str().unwrap()])
        .ok();
    let mut agent = WatchClient::connect(&server.url(), "n1", "bye", None).await;
    let r = agent.recv().await;
    agent.ack(&r).await;
    // A second agent that never answers.
    let mut idle = WatchClient::connect(&server.url(), "n2", "bye", None).await;
    idle.recv().await;

    let started = Instant::now();
    let status = tokio::task::block_in_place(|| server.terminate(GRACE))
        .unwrap_or_else(|| panic!("vane-control still runs {GRACE:?} after SIGTERM"));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    eprintln!("vane-control exited {:?} after SIGTERM", started.elapsed());

    // Both streams end (the server is gone), rather than hang.
    for a in [&mut agent, &mut idle] {
        match a.next(GRACE).await {
            Next::Ended(_) => {}
            other => panic!("the watch stream did not end after shutdown: {other:?}"),
        }
    }

    // And the data is still there afterwards.
    server.restart();
    let out = server.ctl(&["get", "bye", "-o", "json"]).ok();
    assert_eq!(out.json()["version"], 1, "{out}");
}

#[test]
fn sigterm_when_idle_exits_0() {
    let mut server = ControlServer::start();
    let status = server
        .terminate(GRACE)
        .unwrap_or_else(|| panic!("vane-control still runs {GRACE:?} after SIGTERM"));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn sigterm_during_pushes_exits_0_and_keeps_every_acknowledged_push() {
    const PUSHERS: usize = 3;
    const BEFORE_TERM: usize = 15;
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    let acked: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let stopping = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        for p in 0..PUSHERS {
            let (dir, url, acked, stopping) = (&dir, &url, &acked, &stopping);
            s.spawn(move || {
                for i in 0..500 {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let file = write_json(
                        dir,
                        &format!("p{p}-{i}.json"),
                        &example_with_value("term", json!([p, i])),
                    );
                    let out = vanectl(
                        url,
                        &["push", "term", "-f", file.to_str().unwrap(), "-o", "json"],
                    );
                    if out.code != 0 {
                        assert!(stopping.load(Ordering::SeqCst), "failed while up: {out}");
                        assert_eq!(out.code, 3, "a push refused by a stopping server: {out}");
                        break;
                    }
                    let v = out.json();
                    assert_eq!(v["hash"], expected_hash(&file).as_str(), "{out}");
                    acked.lock().unwrap().push((
                        v["version"].as_u64().unwrap(),
                        v["hash"].as_str().unwrap().to_owned(),
                    ));
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        while acked.lock().unwrap().len() < BEFORE_TERM && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        stopping.store(true, Ordering::SeqCst);
        server.terminate(GRACE)
    });
    let status =
        status.unwrap_or_else(|| panic!("vane-control still runs {GRACE:?} after SIGTERM"));
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() >= BEFORE_TERM,
        "only {} pushes succeeded",
        acked.len()
    );
    server.restart();
    let stored = history(&server.url(), "term");
    let versions: Vec<u64> = stored.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    for (version, hash) in &acked {
        assert!(
            stored.contains(&(*version, hash.clone())),
            "acknowledged version {version} ({hash}) is missing after a clean shutdown"
        );
    }
}
