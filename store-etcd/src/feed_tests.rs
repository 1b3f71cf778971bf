//! The feed against a real etcd: a push's body is already in the hub, so
//! the feed reports the version without reading the body back; another
//! replica's push is read from etcd; a delete through another replica is
//! reported as it happens and after a re-read, retention's removals are not.

#![cfg(test)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use vane_store::suite;
use vane_store::{DeleteGroup, FeedEvent, Pinned, PushOutcome, Retention, Store};
use vane_testkit::etcd::EtcdCluster;

use crate::{EtcdConfig, EtcdStore};

async fn next_heads(feed: &mut vane_store::HeadFeed) -> Vec<vane_store::VersionRecord> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("the feed reports within 10 s")
            .expect("the feed goes on");
        match event {
            FeedEvent::Heads(heads) => return heads,
            FeedEvent::Resynced(_) | FeedEvent::Resumed | FeedEvent::Deleted(_) => {}
            FeedEvent::Lost { error, .. } => panic!("the feed lost etcd: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_does_not_read_back_this_replicas_own_pushes() {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .expect("etcd starts");
    let config = EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: "/own".into(),
        ..EtcdConfig::default()
    };
    let a = Arc::new(EtcdStore::connect(config.clone()).await.expect("connect a"));
    let b = Arc::new(EtcdStore::connect(config).await.expect("connect b"));
    let mut feed = a.feed().expect("etcd has a feed");
    assert!(matches!(feed.next().await, Some(FeedEvent::Resynced(_))));
    let reads = || a.shared.body_reads.load(Ordering::Relaxed);
    let before = reads();

    // Its own push: reported with its body, which was not read back.
    let pushed = a.push(suite::new_version("g", b"own")).await.expect("push");
    assert!(matches!(pushed, PushOutcome::Created(_)));
    let heads = next_heads(&mut feed).await;
    assert_eq!(
        heads
            .iter()
            .map(|h| (h.version, h.snapshot.as_ref()))
            .collect::<Vec<_>>(),
        [(1, &b"own"[..])]
    );
    assert_eq!(
        reads(),
        before,
        "the feed read back this replica's own body"
    );
    assert!(
        a.shared.own_bodies.lock().expect("not poisoned").is_empty(),
        "the kept body was handed to the feed"
    );

    // Another replica's push: its body is read from etcd.
    b.push(suite::new_version("g", b"other"))
        .await
        .expect("push");
    let heads = next_heads(&mut feed).await;
    assert_eq!(heads.len(), 1);
    assert_eq!(
        (heads[0].version, heads[0].snapshot.as_ref()),
        (2, &b"other"[..])
    );
    assert_eq!(reads(), before + 1);

    // A push that stores nothing keeps nothing.
    let unchanged = a
        .push(suite::new_version("g", b"other"))
        .await
        .expect("push");
    assert!(matches!(unchanged, PushOutcome::Unchanged(_)));
    assert!(a.shared.own_bodies.lock().expect("not poisoned").is_empty());
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// The next event that is not about connectivity.
async fn next_change(feed: &mut vane_store::HeadFeed) -> FeedEvent {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("the feed reports within 10 s")
            .expect("the feed goes on");
        match event {
            FeedEvent::Resumed => {}
            FeedEvent::Lost { error, .. } => panic!("the feed lost etcd: {error}"),
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_through_another_replica_is_reported_and_pruning_is_not() {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .expect("etcd starts");
    let config = EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: "/deletes".into(),
        ..EtcdConfig::default()
    };
    let a = Arc::new(EtcdStore::connect(config.clone()).await.expect("connect a"));
    let b = Arc::new(EtcdStore::connect(config).await.expect("connect b"));
    for body in [&b"one"[..], b"two", b"three"] {
        b.push(suite::new_version("g", body)).await.expect("push g");
    }
    b.push(suite::new_version("h", b"one"))
        .await
        .expect("push h");
    let mut feed = a.feed().expect("etcd has a feed");
    assert!(matches!(next_change(&mut feed).await, FeedEvent::Resynced(h) if h.len() == 2));

    // Retention removes g's first two versions: no group was deleted.
    let keep_one = Retention {
        keep_versions: 1,
        keep_age: Duration::ZERO,
    };
    let report = b.prune(keep_one, &Pinned::new()).await.expect("prune");
    assert_eq!(report.versions, 2, "{report:?}");
    // B deletes g: A's feed says so, with g's last version; h stays.
    b.delete_group(DeleteGroup {
        group: "g".into(),
        expected_version: None,
        rollout: None,
    })
    .await
    .expect("delete");
    match next_change(&mut feed).await {
        FeedEvent::Deleted(groups) => assert_eq!(groups, [("g".to_owned(), 3)]),
        other => panic!("expected g's delete first (pruning deletes no group): {other:?}"),
    }

    // A feed started later (as after a compaction) reports the heads, then
    // the deleted groups.
    let mut later = a.feed().expect("etcd has a feed");
    match next_change(&mut later).await {
        FeedEvent::Resynced(heads) => {
            assert_eq!(
                heads.iter().map(|h| h.group.as_str()).collect::<Vec<_>>(),
                ["h"]
            );
        }
        other => panic!("expected the re-read: {other:?}"),
    }
    match next_change(&mut later).await {
        FeedEvent::Deleted(groups) => assert_eq!(groups, [("g".to_owned(), 3)]),
        other => panic!("expected the deleted groups after the re-read: {other:?}"),
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
}
