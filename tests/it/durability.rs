//! The store survives restarts and SIGKILL: every acknowledged push is kept
//! with its hash, versions stay gap-free and are never reused.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use vane_testkit::fixtures::{example_path, example_with_value, expected_hash, write_json};
use vane_testkit::{ControlServer, Output, history, vanectl};

#[test]
fn restart_keeps_every_version_and_continues_the_sequence() {
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let mut pushed = Vec::new();
    for i in 0..3 {
        let file = write_json(
            &dir,
            &format!("v{i}.json"),
            &example_with_value("i", json!(i)),
        );
        let out = server
            .ctl(&["push", "keep", "-f", file.to_str().unwrap(), "-o", "json"])
            .ok();
        let v = out.json();
        assert_eq!(v["version"], i + 1, "{out}");
        assert_eq!(v["hash"], expected_hash(&file).as_str(), "{out}");
        pushed.push((i + 1, expected_hash(&file)));
    }
    server.ctl(&["rollback", "keep", "--to", "1"]).ok();
    pushed.push((4, pushed[0].1.clone()));

    // A clean stop, then a crash: both must keep everything.
    let status = server
        .terminate(Duration::from_secs(30))
        .expect("vane-control exits on SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    server.restart();
    assert_eq!(history(&server.url(), "keep"), pushed);
    server.kill();
    server.restart();
    assert_eq!(history(&server.url(), "keep"), pushed);

    // Every version's content is intact, not only its history entry.
    for (version, hash) in &pushed {
        let out = server
            .ctl(&[
                "get",
                "keep",
                "--version",
                &version.to_string(),
                "-o",
                "json",
            ])
            .ok();
        assert_eq!(out.json()["hash"], hash.as_str(), "{out}");
    }

    // The sequence continues after the last version, even after a rollback.
    let file = write_json(
        &dir,
        "after.json",
        &example_with_value("after", json!(true)),
    );
    let out = server
        .ctl(&["push", "keep", "-f", file.to_str().unwrap(), "-o", "json"])
        .ok();
    assert_eq!(out.json()["version"], 5, "{out}");
    // And an unchanged push still recognises the head after a restart.
    let out = server
        .ctl(&["push", "keep", "-f", file.to_str().unwrap(), "-o", "json"])
        .ok();
    assert_eq!(out.json()["unchanged"], true, "{out}");
    assert_eq!(out.json()["version"], 5, "{out}");
}

/// One push a burst pusher attempted.
struct Attempt {
    hash: String,
    /// `Some(version)` when vanectl reported success.
    acked: Option<u64>,
}

/// Pushers running concurrently in a burst.
const PUSHERS: usize = 4;
/// Successes to see before the kill; the kill then lands while the other
/// pushers are mid-request.
const BEFORE_KILL: usize = 24;
/// A cap, so a server that never fails cannot make a pusher loop forever.
const MAX_PER_PUSHER: usize = 500;

/// Runs `PUSHERS` concurrent `vanectl push` loops of distinct content against
/// `server` and SIGKILLs it once `BEFORE_KILL` pushes succeeded. Returns
/// every attempt (acknowledged or not).
fn burst_then_kill(server: &mut ControlServer, round: usize) -> Vec<Attempt> {
    let dir = server.scratch();
    let url = server.url();
    let attempts: Mutex<Vec<Attempt>> = Mutex::new(Vec::new());
    let successes = AtomicUsize::new(0);
    let killing = AtomicBool::new(false);
    // Failures seen while the server was certainly alive: bugs, not crashes.
    let early_failures: Mutex<Vec<Output>> = Mutex::new(Vec::new());

    std::thread::scope(|s| {
        for p in 0..PUSHERS {
            let (dir, url, attempts, successes, killing, early_failures) =
                (&dir, &url, &attempts, &successes, &killing, &early_failures);
            s.spawn(move || {
                for i in 0..MAX_PER_PUSHER {
                    if killing.load(Ordering::SeqCst) {
                        break;
                    }
                    let spec = example_with_value(
                        "burst",
                        json!({ "round": round, "pusher": p, "seq": i }),
                    );
                    let file = write_json(dir, &format!("r{round}-p{p}-{i}.json"), &spec);
                    let hash = expected_hash(&file);
                    let out = vanectl(
                        url,
                        &["push", "burst", "-f", file.to_str().unwrap(), "-o", "json"],
                    );
                    let acked = (out.code == 0).then(|| {
                        let v = out.json();
                        assert_eq!(v["hash"], hash.as_str(), "{out}");
                        assert_eq!(v["unchanged"], false, "{out}");
                        v["version"].as_u64().unwrap()
                    });
                    let failed = acked.is_none();
                    attempts.lock().unwrap().push(Attempt { hash, acked });
                    if failed {
                        if !killing.load(Ordering::SeqCst) {
                            early_failures.lock().unwrap().push(out);
                        } else {
                            // A push cut off by the kill reports the server
                            // unreachable.
                            assert_eq!(out.code, 3, "a push cut off by SIGKILL: {out}");
                        }
                        break;
                    }
                    successes.fetch_add(1, Ordering::SeqCst);
                }
            });
        }

        let deadline = Instant::now() + Duration::from_secs(180);
        while successes.load(Ordering::SeqCst) < BEFORE_KILL
            && early_failures.lock().unwrap().is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        killing.store(true, Ordering::SeqCst);
        server.kill();
    });

    let early = early_failures.into_inner().unwrap();
    assert!(
        early.is_empty(),
        "round {round}: pushes failed while the server was up: {}",
        early
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let attempts = attempts.into_inner().unwrap();
    let acked = attempts.iter().filter(|a| a.acked.is_some()).count();
    assert!(
        acked >= BEFORE_KILL,
        "round {round}: only {acked} pushes succeeded before the deadline"
    );
    eprintln!(
        "round {round}: {acked} pushes acknowledged, {} cut off by SIGKILL",
        attempts.len() - acked
    );
    attempts
}

/// Checks the store after a crash: versions 1..=head, every acknowledged push
/// at its version with its hash, every stored version something pushed.
/// Returns the head.
fn check_after_crash(url: &str, base_hash: &str, attempts: &[Attempt]) -> u64 {
    let stored: BTreeMap<u64, String> = history(url, "burst").into_iter().collect();
    let head = *stored.keys().last().expect("history is not empty");

    let versions: Vec<u64> = stored.keys().copied().collect();
    assert_eq!(
        versions,
        (1..=head).collect::<Vec<_>>(),
        "versions have gaps"
    );
    assert_eq!(stored[&1], base_hash);

    // Every acknowledged push is there, at its version, with its hash; no
    // version was handed to two pushes.
    let mut seen = BTreeSet::new();
    for (version, hash) in attempts
        .iter()
        .filter_map(|a| a.acked.map(|v| (v, a.hash.as_str())))
    {
        assert!(seen.insert(version), "version {version} acknowledged twice");
        assert_eq!(
            stored.get(&version).map(String::as_str),
            Some(hash),
            "acknowledged push of version {version} is missing or changed"
        );
    }

    // Every stored version is something that was pushed (an acknowledged push,
    // or one in flight at the kill), and its content is whole.
    let attempted: BTreeSet<&str> = attempts
        .iter()
        .map(|a| a.hash.as_str())
        .chain([base_hash])
        .collect();
    for (version, hash) in &stored {
        assert!(
            attempted.contains(hash.as_str()),
            "version {version} holds content nobody pushed: {hash}"
        );
        let out = vanectl(
            url,
            &[
                "get",
                "burst",
                "--version",
                &version.to_string(),
                "-o",
                "json",
            ],
        )
        .ok();
        assert_eq!(out.json()["hash"], hash.as_str(), "{out}");
    }
    let out = vanectl(url, &["get", "burst", "-o", "json"]).ok();
    assert_eq!(out.json()["version"], head, "{out}");
    head
}

#[test]
fn sigkill_during_a_burst_of_pushes_loses_no_acknowledged_push() {
    const ROUNDS: usize = 3;
    let mut server = ControlServer::start();
    let example = example_path();
    let base = server
        .ctl(&[
            "push",
            "burst",
            "-f",
            example.to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok()
        .json();
    let base_hash = base["hash"].as_str().unwrap().to_owned();

    // Crash, recover, crash again: each recovery must keep everything
    // acknowledged in every round so far.
    let mut attempts = Vec::new();
    let mut head = 1;
    for round in 0..ROUNDS {
        attempts.extend(burst_then_kill(&mut server, round));
        server.restart();
        let new_head = check_after_crash(&server.url(), &base_hash, &attempts);
        assert!(new_head > head, "round {round} stored nothing");
        head = new_head;
    }

    // New pushes continue after the head: no version is reused.
    let url = server.url();
    let file = write_json(
        &server.scratch(),
        "after.json",
        &example_with_value("after", json!(1)),
    );
    let out = vanectl(
        &url,
        &["push", "burst", "-f", file.to_str().unwrap(), "-o", "json"],
    )
    .ok();
    assert_eq!(out.json()["version"], head + 1, "{out}");
    vanectl(&url, &["rollback", "burst", "--to", "1"]).ok();
    let out = vanectl(&url, &["get", "burst", "-o", "json"]).ok();
    assert_eq!(out.json()["version"], head + 2, "{out}");
    assert_eq!(out.json()["hash"], base_hash.as_str(), "{out}");
}
