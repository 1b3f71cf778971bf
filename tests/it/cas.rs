//! Compare-and-set: `--expect-version` lets exactly one of two racing pushes win.

#![allow(clippy::unwrap_used)]

use std::sync::Barrier;

use serde_json::json;
use vane_testkit::fixtures::{example_path, example_with_value, expected_hash, write_json};
use vane_testkit::{ControlServer, Output, history};

const ROUNDS: u64 = 5;

#[test]
fn two_concurrent_pushes_with_the_same_expected_version_one_wins() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    server
        .ctl(&["push", "race", "-f", example_path().to_str().unwrap()])
        .ok();

    for round in 0..ROUNDS {
        let head = round + 1;
        let files: Vec<_> = ["a", "b"]
            .iter()
            .map(|side| {
                write_json(
                    &dir,
                    &format!("r{round}-{side}.json"),
                    &example_with_value("cas", json!({ "round": round, "side": side })),
                )
            })
            .collect();
        let barrier = Barrier::new(files.len());
        let expect = head.to_string();
        let outs: Vec<Output> = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .iter()
                .map(|f| {
                    let (barrier, server, expect) = (&barrier, &server, &expect);
                    s.spawn(move || {
                        barrier.wait();
                        server.ctl(&[
                            "push",
                            "race",
                            "-f",
                            f.to_str().unwrap(),
                            "--expect-version",
                            expect,
                            "-o",
                            "json",
                        ])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });

        let winners: Vec<usize> = (0..outs.len()).filter(|i| outs[*i].code == 0).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one push must win:\n{}\n{}",
            outs[0],
            outs[1]
        );
        let (w, l) = (winners[0], 1 - winners[0]);
        let won = outs[w].json();
        assert_eq!(won["version"], head + 1, "{}", outs[w]);
        assert_eq!(
            won["hash"],
            expected_hash(&files[w]).as_str(),
            "{}",
            outs[w]
        );
        assert_eq!(
            outs[l].code, 1,
            "round {round}: the loser exits 1: {}",
            outs[l]
        );
        let line = outs[l].one_error_line();
        assert!(
            line.to_lowercase().contains("conflict"),
            "round {round}: the loser's error must say conflict: {}",
            outs[l]
        );

        let stored = history(&url, "race");
        assert_eq!(stored.len() as u64, head + 1, "round {round}: {stored:?}");
        assert_eq!(stored.last().unwrap().1, expected_hash(&files[w]));
    }
}

#[test]
fn stale_expected_version_is_refused_and_stores_nothing() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    let example = example_path();
    let example = example.to_str().unwrap();

    // 0 means "the group must not exist yet".
    let out = server
        .ctl(&[
            "push",
            "cas",
            "-f",
            example,
            "--expect-version",
            "0",
            "-o",
            "json",
        ])
        .ok();
    assert_eq!(out.json()["version"], 1, "{out}");
    let two = write_json(&dir, "two.json", &example_with_value("n", json!(2)));
    let out = server.ctl(&[
        "push",
        "cas",
        "-f",
        two.to_str().unwrap(),
        "--expect-version",
        "0",
    ]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line().to_lowercase().contains("conflict"),
        "{out}"
    );

    server
        .ctl(&[
            "push",
            "cas",
            "-f",
            two.to_str().unwrap(),
            "--expect-version",
            "1",
        ])
        .ok();
    let before = history(&url, "cas");
    let three = write_json(&dir, "three.json", &example_with_value("n", json!(3)));
    let out = server.ctl(&[
        "push",
        "cas",
        "-f",
        three.to_str().unwrap(),
        "--expect-version",
        "1",
    ]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line().to_lowercase().contains("conflict"),
        "{out}"
    );
    assert_eq!(history(&url, "cas"), before);

    // The current head as the expectation succeeds.
    let out = server
        .ctl(&[
            "push",
            "cas",
            "-f",
            three.to_str().unwrap(),
            "--expect-version",
            "2",
            "-o",
            "json",
        ])
        .ok();
    assert_eq!(out.json()["version"], 3, "{out}");
}

#[test]
fn concurrent_identical_pushes_store_one_version() {
    const PUSHERS: usize = 4;
    let server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    for round in 0..ROUNDS {
        let file = write_json(
            &dir,
            &format!("same-{round}.json"),
            &example_with_value("same", json!(round)),
        );
        let barrier = Barrier::new(PUSHERS);
        let outs: Vec<Output> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..PUSHERS)
                .map(|_| {
                    let (barrier, server, file) = (&barrier, &server, &file);
                    s.spawn(move || {
                        barrier.wait();
                        server.ctl(&["push", "same", "-f", file.to_str().unwrap(), "-o", "json"])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let results: Vec<serde_json::Value> = outs.iter().map(|o| o.clone().ok().json()).collect();
        let created = results.iter().filter(|v| v["unchanged"] == false).count();
        assert_eq!(
            created, 1,
            "round {round}: one push stores, the rest are no-ops: {results:?}"
        );
        for v in &results {
            assert_eq!(v["version"], round + 1, "round {round}: {results:?}");
            assert_eq!(v["hash"], expected_hash(&file).as_str());
        }
        assert_eq!(history(&url, "same").len() as u64, round + 1);
    }
}
