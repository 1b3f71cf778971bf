//! Group commit in the embedded store, as `cargo xtask bench push` relies
//! on it: concurrent pushes share write transactions (and so fsyncs),
//! whether they go to different groups or queue for one group, and every
//! one of them is answered only once durable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use vane_store::{NewVersion, RedbStore, Store};

const PUSHES: usize = 256;

fn new_version(group: &str, n: usize) -> NewVersion {
    NewVersion {
        candidate: None,
        rollout: None,
        group: group.to_owned(),
        snapshot: Bytes::from(format!("content {n}")),
        hash: format!("{n:064x}"),
        message: String::new(),
        author: String::new(),
        rollback_of: None,
        expected_version: None,
    }
}

/// Pushes `PUSHES` versions at once, the i-th to `group(i)`; returns the
/// number of commits the store made.
async fn burst(group: impl Fn(usize) -> String) -> (Arc<RedbStore>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path()).await.unwrap());
    let before = store.commits();
    let tasks: Vec<_> = (0..PUSHES)
        .map(|i| {
            let store = Arc::clone(&store);
            let group = group(i);
            tokio::spawn(async move { store.push(new_version(&group, i)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert!(!t.await.unwrap().is_unchanged());
    }
    let commits = store.commits() - before;
    // Reopening shows every answered push is on disk.
    store.close().await.unwrap();
    let reopened = Arc::new(RedbStore::open(dir.path()).await.unwrap());
    (reopened, commits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_to_many_groups_share_commits() {
    let (store, commits) = burst(|i| format!("g{i}")).await;
    assert!(
        commits < PUSHES as u64 / 4,
        "{commits} commits for {PUSHES} pushes"
    );
    for i in [0, PUSHES / 2, PUSHES - 1] {
        let head = store.get(&format!("g{i}"), None).await.unwrap().unwrap();
        assert_eq!(head.version, 1);
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_queued_for_one_group_share_commits() {
    let (store, commits) = burst(|_| "one".to_owned()).await;
    assert!(
        commits < PUSHES as u64 / 4,
        "{commits} commits for {PUSHES} pushes"
    );
    let head = store.get("one", None).await.unwrap().unwrap();
    assert_eq!(
        head.version, PUSHES as u64,
        "gap-free, one version per push"
    );
    store.close().await.unwrap();
}
