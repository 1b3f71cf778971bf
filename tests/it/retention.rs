//! Retention on a real server: 5,000 pushes with `--retain-versions 100`
//! keep the database file bounded, the numbers continue, `history` says how
//! many were pruned and `get` of a pruned version says so (exit 1); the
//! version an agent runs is never pruned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use vane_testkit::{ControlServer, WatchClient, fixtures, vanectl};

const GROUP: &str = "edge";
const PUSHES: u64 = 5_000;
const KEEP: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_bounded_under_churn_and_numbers_continue() {
    let server = ControlServer::start_with(&[
        "--retain-versions",
        "100",
        "--retain-age",
        "0s",
        "--retention-interval",
        "200ms",
    ]);
    let url = server.url();
    let mut admin = vane_proto::admin_client::AdminClient::connect(url.clone())
        .await
        .unwrap();
    fn push(i: u64) -> vane_proto::PushRequest {
        vane_proto::PushRequest {
            supersede: false,
            group: GROUP.into(),
            snapshot: Some(vane_model::proto::spec_to_proto(
                &fixtures::example_with_value("test.churn", json!(i)),
            )),
            expected_version: None,
            dry_run: false,
            message: format!("churn {i}"),
        }
    }
    admin.push(push(1)).await.unwrap();
    // An agent that ACKs version 1 and stays there: 1 is never pruned.
    let mut agent = WatchClient::connect(&url, "stuck-on-1", GROUP, None).await;
    let first = agent.recv().await;
    agent.ack(&first).await;
    let _beats = agent.heartbeats(Duration::from_millis(500), Some((1, &first.hash)));
    vane_testkit::wait_for_status(&url, GROUP, "stuck-on-1", "ACKed 1", |a| {
        a["acked_version"] == 1
    });

    let db = server.data_dir().join("vane.redb");
    // Eight pushers at once (the store commits them in groups), sampling
    // the file's size as the versions go by.
    let mut pushers = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let mut admin = admin.clone();
        pushers.spawn(async move {
            let mut i = 2 + w;
            while i <= PUSHES {
                admin.push(push(i)).await.unwrap();
                i += 8;
            }
        });
    }
    let mut sizes = Vec::new();
    while !pushers.is_empty() {
        tokio::select! {
            done = pushers.join_next() => { done.unwrap().unwrap(); }
            () = tokio::time::sleep(Duration::from_secs(2)) => {
                sizes.push(std::fs::metadata(&db).unwrap().len());
            }
        }
    }
    // Let the last passes run.
    tokio::time::sleep(Duration::from_millis(800)).await;
    sizes.push(std::fs::metadata(&db).unwrap().len());
    println!("database file size every 2 s of pushing: {sizes:?}");
    // Unpruned, 5,000 versions of this snapshot take over 20 MiB.
    let max = *sizes.iter().max().unwrap();
    assert!(
        max < 4 * 1024 * 1024,
        "the file grew to {max} bytes: {sizes:?}"
    );
    // redb grows its file in steps of about 1.5x and compaction runs when
    // enough of it is free, so the second half may still take a step or
    // two (on a loaded machine the samples are few); what must not happen
    // is growth with the history, 20 MiB and more.
    assert!(
        *sizes.last().unwrap() <= (sizes[sizes.len() / 2] * 3).max(2 * 1024 * 1024),
        "the file keeps growing: {sizes:?}"
    );
    let head = vanectl(&url, &["get", GROUP, "-o", "json"]).ok();
    assert_eq!(head.json()["version"], PUSHES);

    let history = vanectl(&url, &["history", GROUP, "-o", "json"]).ok();
    let versions: Vec<u64> = history
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions.len() as u64, KEEP + 1, "{versions:?}");
    assert_eq!(versions[0], PUSHES);
    assert_eq!(
        *versions.last().unwrap(),
        1,
        "the version an agent runs stays"
    );
    let pruned = PUSHES - KEEP - 1;
    assert!(
        history.stderr.contains(&format!(
            "({pruned} older versions were pruned by retention)"
        )),
        "{}",
        history.stderr
    );
    let table = vanectl(&url, &["history", GROUP]).ok().stdout;
    assert!(
        table.trim_end().ends_with(&format!(
            "({pruned} older versions were pruned by retention)"
        )),
        "{table}"
    );

    let gone = vanectl(&url, &["get", GROUP, "--version", "2"]);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(
        gone.stderr.contains("was pruned by retention"),
        "{}",
        gone.stderr
    );
    vanectl(&url, &["get", GROUP, "--version", "1"]).ok();

    let next = admin.push(push(PUSHES + 1)).await.unwrap().into_inner();
    assert_eq!(next.version, PUSHES + 1, "numbers continue after pruning");
}
