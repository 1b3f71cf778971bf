//! The behaviour every [`Store`] backend must show, as generic async checks.
//! Each backend's tests call every function here with an opener for a fresh,
//! empty store; calling the opener again (after `close`) must reopen the same
//! data.

// Test support (only built for tests and with the `suite` feature): a
// panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::contract::{CandidateOf, NewVersion, PushOutcome, RolloutPut, Store};
use crate::error::StoreError;

/// What an opener returns.
pub type OpenFuture = Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>>;

/// A push of `content` (the store never looks inside; the hash is derived
/// from the content so equal content means equal hash).
pub fn new_version(group: &str, content: &[u8]) -> NewVersion {
    NewVersion {
        group: group.to_owned(),
        snapshot: Bytes::copy_from_slice(content),
        hash: format!("hash-of-{}", String::from_utf8_lossy(content)),
        message: format!("push {}", String::from_utf8_lossy(content)),
        author: String::new(),
        rollback_of: None,
        expected_version: None,
        candidate: None,
        rollout: None,
    }
}

fn expecting(mut new: NewVersion, expected: u64) -> NewVersion {
    new.expected_version = Some(expected);
    new
}

async fn created(store: &dyn Store, new: NewVersion) -> u64 {
    match store.push(new).await.expect("push") {
        PushOutcome::Created(r) => r.version,
        PushOutcome::Unchanged(r) => panic!("expected a new version, got unchanged {}", r.version),
    }
}

/// Versions start at 1 and increase by one, per group.
pub async fn sequence<F: Fn() -> OpenFuture>(open: F) {
    let store = open().await;
    for (i, content) in [b"a", b"b", b"c"].iter().enumerate() {
        let v = created(store.as_ref(), new_version("edge", *content)).await;
        assert_eq!(v, i as u64 + 1);
    }
    assert_eq!(created(store.as_ref(), new_version("core", b"a")).await, 1);

    let head = store.get("edge", None).await.unwrap().unwrap();
    assert_eq!(head.version, 3);
    assert_eq!(head.snapshot, Bytes::from_static(b"c"));
    assert_eq!(head.hash, "hash-of-c");
    assert_eq!(head.message, "push c");
    assert_eq!(head.rollback_of, None);
    assert!(head.created_at_unix_ms > 0);
    let v2 = store.get("edge", Some(2)).await.unwrap().unwrap();
    assert_eq!((v2.version, v2.snapshot), (2, Bytes::from_static(b"b")));
    assert!(store.get("edge", Some(4)).await.unwrap().is_none());
    assert!(store.get("edge", Some(0)).await.unwrap().is_none());
    store.close().await.unwrap();
}

/// Content equal to the head stores nothing and returns the head; content
/// equal to an older version is a new version.
pub async fn unchanged<F: Fn() -> OpenFuture>(open: F) {
    let store = open().await;
    assert_eq!(created(store.as_ref(), new_version("g", b"a")).await, 1);
    match store.push(new_version("g", b"a")).await.unwrap() {
        PushOutcome::Unchanged(r) => {
            assert_eq!(r.version, 1);
            assert_eq!(r.snapshot, Bytes::from_static(b"a"));
        }
        other => panic!("expected unchanged, got {other:?}"),
    }
    assert_eq!(store.history("g", 0).await.unwrap().len(), 1);
    assert_eq!(created(store.as_ref(), new_version("g", b"b")).await, 2);
    assert_eq!(created(store.as_ref(), new_version("g", b"a")).await, 3);
    store.close().await.unwrap();
}

/// Compare-and-set: only the expected head is accepted, 0 means absent, a
/// conflict stores nothing and wins over "unchanged".
pub async fn conflict<F: Fn() -> OpenFuture>(open: F) {
    let store = open().await;
    assert_eq!(
        created(store.as_ref(), expecting(new_version("g", b"a"), 0)).await,
        1
    );
    let err = store
        .push(expecting(new_version("g", b"b"), 0))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            group: "g".into(),
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(
        err.to_string(),
        r#"conflict: group "g" is at version 1, expected 0"#
    );
    assert_eq!(
        created(store.as_ref(), expecting(new_version("g", b"b"), 1)).await,
        2
    );
    // Same content as the head, stale expectation: the caller must learn
    // that its view is stale.
    let err = store
        .push(expecting(new_version("g", b"b"), 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 2, .. }),
        "{err:?}"
    );
    let err = store
        .push(expecting(new_version("absent", b"b"), 3))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Conflict {
            actual: 0,
            expected: 3,
            ..
        }
    ));
    assert_eq!(store.history("g", 0).await.unwrap().len(), 2);
    assert!(store.get("absent", None).await.unwrap().is_none());
    assert_eq!(store.groups().await.unwrap(), vec!["g".to_owned()]);
    store.close().await.unwrap();
}

/// History, heads and groups.
pub async fn reads<F: Fn() -> OpenFuture>(open: F) {
    let store = open().await;
    assert!(store.heads().await.unwrap().is_empty());
    assert!(store.groups().await.unwrap().is_empty());
    assert!(store.get("nope", None).await.unwrap().is_none());
    assert!(store.history("nope", 0).await.unwrap().is_empty());

    for content in [b"a", b"b", b"c", b"d"] {
        created(store.as_ref(), new_version("b-group", content)).await;
    }
    created(store.as_ref(), new_version("a-group", b"x")).await;
    // A group whose name is a prefix of another must not see its versions.
    created(store.as_ref(), new_version("b", b"y")).await;

    let history = store.history("b-group", 0).await.unwrap();
    let versions: Vec<u64> = history.iter().map(|m| m.version).collect();
    assert_eq!(versions, vec![4, 3, 2, 1]);
    assert_eq!(history[0].hash, "hash-of-d");
    assert_eq!(history[0].message, "push d");
    assert_eq!(history[0].size_bytes, 1);
    assert!(history.iter().all(|m| m.group == "b-group"));
    let limited: Vec<u64> = store
        .history("b-group", 2)
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(limited, vec![4, 3]);
    assert_eq!(store.history("b", 0).await.unwrap().len(), 1);

    assert_eq!(
        store.groups().await.unwrap(),
        vec!["a-group".to_owned(), "b".to_owned(), "b-group".to_owned()]
    );
    let heads: Vec<(String, u64, Bytes)> = store
        .heads()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.group, r.version, r.snapshot))
        .collect();
    assert_eq!(
        heads,
        vec![
            ("a-group".into(), 1, Bytes::from_static(b"x")),
            ("b".into(), 1, Bytes::from_static(b"y")),
            ("b-group".into(), 4, Bytes::from_static(b"d")),
        ]
    );
    store.close().await.unwrap();
}

/// A rollback is a new version that records what it restored.
pub async fn rollback<F: Fn() -> OpenFuture>(open: F) {
    let store = open().await;
    created(store.as_ref(), new_version("g", b"a")).await;
    created(store.as_ref(), new_version("g", b"b")).await;
    let mut back = new_version("g", b"a");
    back.rollback_of = Some(1);
    back.message = "rollback to 1".into();
    back.author = "ops".into();
    assert_eq!(created(store.as_ref(), back).await, 3);
    let head = store.get("g", None).await.unwrap().unwrap();
    assert_eq!(head.rollback_of, Some(1));
    assert_eq!(head.hash, "hash-of-a");
    assert_eq!(head.author, "ops");
    let history = store.history("g", 1).await.unwrap();
    assert_eq!(history[0].rollback_of, Some(1));
    assert_eq!(history[0].message, "rollback to 1");
    store.close().await.unwrap();
}

/// Closing and reopening keeps every version and continues the sequence.
pub async fn reopen<F: Fn() -> OpenFuture>(open: F) {
    let store = open().await;
    created(store.as_ref(), new_version("g", b"a")).await;
    created(store.as_ref(), new_version("g", b"b")).await;
    let before = store.history("g", 0).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = open().await;
    assert_eq!(store.history("g", 0).await.unwrap(), before);
    match store.push(new_version("g", b"b")).await.unwrap() {
        PushOutcome::Unchanged(r) => assert_eq!(r.version, 2),
        other => panic!("expected unchanged, got {other:?}"),
    }
    assert_eq!(created(store.as_ref(), new_version("g", b"c")).await, 3);
    store.close().await.unwrap();
    drop(store);

    let store = open().await;
    assert_eq!(store.get("g", None).await.unwrap().unwrap().version, 3);
    store.close().await.unwrap();
}

/// Many concurrent pushes get distinct, gap-free versions, and of several
/// compare-and-set pushes against the same head exactly one wins.
pub async fn concurrent<F: Fn() -> OpenFuture>(open: F) {
    const TASKS: usize = 32;
    const PER_TASK: usize = 8;
    let store = open().await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..PER_TASK {
                let content = format!("{t}-{i}");
                versions.push(created(store.as_ref(), new_version("g", content.as_bytes())).await);
            }
            versions
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let versions = task.await.unwrap();
        // Each task's own pushes are ordered.
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        all.extend(versions);
    }
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), TASKS * PER_TASK);
    assert_eq!(
        distinct.into_iter().collect::<Vec<_>>(),
        (1..=(TASKS * PER_TASK) as u64).collect::<Vec<_>>()
    );

    let head = (TASKS * PER_TASK) as u64;
    let mut racers = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        racers.push(tokio::spawn(async move {
            let content = format!("race-{t}");
            store
                .push(expecting(new_version("g", content.as_bytes()), head))
                .await
        }));
    }
    let mut wins = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(PushOutcome::Created(r)) => {
                assert_eq!(r.version, head + 1);
                wins += 1;
            }
            Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, head + 1),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    store.close().await.unwrap();
}

/// After close, every call fails with `Unavailable`.
pub async fn closed<F: Fn() -> OpenFuture>(open: F) {
    let store = open().await;
    created(store.as_ref(), new_version("g", b"a")).await;
    store.close().await.unwrap();
    assert!(matches!(
        store.push(new_version("g", b"b")).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.get("g", None).await,
        Err(StoreError::Unavailable(_))
    ));
    // Closing twice is harmless.
    store.close().await.unwrap();
}

/// Retention removes what falls outside the newest N and is old enough,
/// never the head or a pinned version, counts what it removed, keeps every
/// version readable that it kept, and never frees a number.
pub async fn retention<F: Fn() -> OpenFuture>(open: F) {
    use std::time::Duration;

    use crate::contract::{Pinned, Retention};

    let store = open().await;
    for i in 1..=12u32 {
        created(
            store.as_ref(),
            new_version("edge", format!("e{i}").as_bytes()),
        )
        .await;
    }
    created(store.as_ref(), new_version("core", b"c1")).await;
    // Content equal to an older version (a rollback's body) stays readable
    // after that older version goes.
    created(store.as_ref(), new_version("edge", b"e2")).await;

    // Young versions are kept whatever their rank.
    let young = Retention {
        keep_versions: 3,
        keep_age: Duration::from_secs(3600),
    };
    let report = store.prune(young, &Pinned::new()).await.unwrap();
    assert_eq!(report.versions, 0, "{report:?}");
    assert_eq!(store.history("edge", 0).await.unwrap().len(), 13);

    let mut pinned = Pinned::new();
    pinned.entry("edge".to_owned()).or_default().insert(5);
    let policy = Retention {
        keep_versions: 3,
        keep_age: Duration::ZERO,
    };
    let report = store.prune(policy, &pinned).await.unwrap();
    // edge: 13 versions, keep 11, 12, 13 and the pinned 5: 9 removed.
    assert_eq!(report.versions, 9, "{report:?}");
    assert_eq!(report.groups, 1, "{report:?}");
    let kept: Vec<u64> = store
        .history("edge", 0)
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(kept, [13, 12, 11, 5]);
    assert_eq!(store.pruned("edge").await.unwrap(), 9);
    assert_eq!(store.pruned("core").await.unwrap(), 0);
    assert!(store.get("edge", Some(2)).await.unwrap().is_none());
    let head = store.get("edge", None).await.unwrap().unwrap();
    assert_eq!((head.version, head.snapshot.as_ref()), (13, b"e2".as_ref()));
    assert_eq!(
        store.get("edge", Some(5)).await.unwrap().unwrap().snapshot,
        Bytes::from_static(b"e5")
    );
    assert_eq!(store.get("core", None).await.unwrap().unwrap().version, 1);

    // A second pass with nothing to do removes nothing and counts nothing.
    assert_eq!(store.prune(policy, &pinned).await.unwrap().versions, 0);
    assert_eq!(store.pruned("edge").await.unwrap(), 9);

    // Numbers stay taken, also across a reopen.
    store.close().await.unwrap();
    let store = open().await;
    assert_eq!(
        created(store.as_ref(), new_version("edge", b"e14")).await,
        14
    );
    assert_eq!(store.pruned("edge").await.unwrap(), 9);
    store.close().await.unwrap();
}

fn rollout_put(id: &str, active: bool, body: &str, expected_revision: u64) -> RolloutPut {
    RolloutPut {
        id: id.to_owned(),
        active,
        body: Bytes::copy_from_slice(body.as_bytes()),
        expected_revision,
    }
}

/// Rollout records: written with a candidate atomically, compare-and-set
/// on their revision, refusing plain pushes while active, kept across a
/// reopen.
pub async fn rollouts<F: Fn() -> OpenFuture>(open: F) {
    let store = open().await;
    assert_eq!(store.rollout("edge").await.unwrap(), None);
    assert!(store.rollouts().await.unwrap().is_empty());
    assert_eq!(created(store.as_ref(), new_version("edge", b"a")).await, 1);

    // Start: the candidate and the record in one write.
    let mut start = new_version("edge", b"b");
    start.candidate = Some(CandidateOf {
        rollout_id: "r1".into(),
        stable_version: 1,
    });
    start.rollout = Some(rollout_put("r1", true, "started", 0));
    assert_eq!(created(store.as_ref(), start).await, 2);
    let record = store.rollout("edge").await.unwrap().unwrap();
    assert_eq!((record.id.as_str(), record.active), ("r1", true));
    assert_eq!(record.body, Bytes::from_static(b"started"));
    assert!(record.revision > 0);
    let candidate = store.get("edge", Some(2)).await.unwrap().unwrap();
    assert_eq!(
        candidate.candidate,
        Some(CandidateOf {
            rollout_id: "r1".into(),
            stable_version: 1
        })
    );
    assert_eq!(
        store.history("edge", 0).await.unwrap()[0].candidate,
        candidate.candidate
    );
    assert_eq!(
        store.get("edge", Some(1)).await.unwrap().unwrap().candidate,
        None
    );

    // A plain push is refused while it runs, and stores nothing.
    match store.push(new_version("edge", b"c")).await {
        Err(StoreError::RolloutActive { group, id }) => {
            assert_eq!((group.as_str(), id.as_str()), ("edge", "r1"));
        }
        other => panic!("expected RolloutActive, got {other:?}"),
    }
    // A second start (expecting no record) is refused too.
    let mut again = new_version("edge", b"c");
    again.rollout = Some(rollout_put("r2", true, "x", 0));
    assert!(matches!(
        store.push(again).await,
        Err(StoreError::RolloutMoved { expected: 0, .. })
    ));
    assert_eq!(store.get("edge", None).await.unwrap().unwrap().version, 2);

    // Compare-and-set updates.
    let stale = record.revision;
    let moved = store
        .put_rollout("edge", rollout_put("r1", true, "step 2", stale))
        .await
        .unwrap();
    assert!(moved.revision > stale);
    assert_eq!(moved.body, Bytes::from_static(b"step 2"));
    match store
        .put_rollout("edge", rollout_put("r1", true, "lost", stale))
        .await
    {
        Err(StoreError::RolloutMoved {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (stale, moved.revision)),
        other => panic!("expected RolloutMoved, got {other:?}"),
    }
    assert_eq!(
        store.rollout("edge").await.unwrap().unwrap().body,
        Bytes::from_static(b"step 2")
    );

    // Content equal to the head stores nothing, record included.
    let mut same = new_version("edge", b"b");
    same.rollout = Some(rollout_put("r1", false, "unchanged", moved.revision));
    assert!(store.push(same).await.unwrap().is_unchanged());
    assert_eq!(
        store.rollout("edge").await.unwrap().unwrap().revision,
        moved.revision
    );

    // The rollback: the stable content as a new version, ending the rollout.
    let mut restore = new_version("edge", b"a");
    restore.rollback_of = Some(1);
    restore.rollout = Some(rollout_put("r1", false, "rolled back", moved.revision));
    assert_eq!(created(store.as_ref(), restore).await, 3);
    let ended = store.rollout("edge").await.unwrap().unwrap();
    assert!(!ended.active);
    // Plain pushes work again.
    assert_eq!(created(store.as_ref(), new_version("edge", b"d")).await, 4);
    store
        .put_rollout("core", rollout_put("r9", true, "other", 0))
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = open().await;
    let all = store.rollouts().await.unwrap();
    let groups: Vec<_> = all
        .iter()
        .map(|r| (r.group.as_str(), r.id.as_str()))
        .collect();
    assert_eq!(groups, [("core", "r9"), ("edge", "r1")]);
    assert_eq!(all[1], ended);
    assert_eq!(store.get("edge", None).await.unwrap().unwrap().version, 4);
    store.close().await.unwrap();
}

/// Deleting a group removes its versions and head but keeps a tombstone:
/// a push after the delete continues the sequence, also after a reopen; a
/// running rollout refuses the delete unless the delete ends it.
pub async fn delete<F: Fn() -> OpenFuture>(open: F) {
    use crate::contract::{DeleteGroup, Deleted};

    let delete = |group: &str, expected: Option<u64>, rollout: Option<RolloutPut>| DeleteGroup {
        group: group.to_owned(),
        expected_version: expected,
        rollout,
    };
    let store = open().await;
    for content in [b"a", b"b"] {
        created(store.as_ref(), new_version("edge", content)).await;
    }
    created(store.as_ref(), new_version("core", b"a")).await;
    assert_eq!(
        store
            .delete_group(delete("nope", None, None))
            .await
            .unwrap(),
        Deleted::Absent
    );
    let err = store
        .delete_group(delete("edge", Some(1), None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store
            .delete_group(delete("edge", Some(2), None))
            .await
            .unwrap(),
        Deleted::Deleted {
            last_version: 2,
            versions: 2
        }
    );
    assert!(store.get("edge", None).await.unwrap().is_none());
    assert!(store.get("edge", Some(1)).await.unwrap().is_none());
    assert!(store.history("edge", 0).await.unwrap().is_empty());
    assert_eq!(store.groups().await.unwrap(), vec!["core".to_owned()]);
    assert_eq!(
        store
            .heads()
            .await
            .unwrap()
            .iter()
            .map(|h| h.group.as_str())
            .collect::<Vec<_>>(),
        vec!["core"]
    );
    assert_eq!(store.pruned("edge").await.unwrap(), 0);
    assert_eq!(
        store.tombstones().await.unwrap(),
        vec![("edge".to_owned(), 2)]
    );
    assert_eq!(
        store
            .delete_group(delete("edge", None, None))
            .await
            .unwrap(),
        Deleted::Absent,
        "deleting twice"
    );
    store.close().await.unwrap();

    // The tombstone survives a reopen; a push (even one expecting an
    // absent group) continues at 3 and clears it.
    let store = open().await;
    assert_eq!(
        store.tombstones().await.unwrap(),
        vec![("edge".to_owned(), 2)]
    );
    assert_eq!(
        created(store.as_ref(), expecting(new_version("edge", b"a"), 0)).await,
        3
    );
    assert!(store.tombstones().await.unwrap().is_empty());
    assert_eq!(
        store
            .history("edge", 0)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        vec![3]
    );

    // A running rollout refuses a plain delete; one that ends it goes.
    let running = RolloutPut {
        id: "r1".into(),
        active: true,
        body: Bytes::from_static(b"running"),
        expected_revision: 0,
    };
    let record = store.put_rollout("edge", running).await.unwrap();
    let err = store
        .delete_group(delete("edge", None, None))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::RolloutActive { .. }), "{err:?}");
    let ended = RolloutPut {
        id: "r1".into(),
        active: false,
        body: Bytes::from_static(b"ended"),
        expected_revision: record.revision,
    };
    assert_eq!(
        store
            .delete_group(delete("edge", None, Some(ended)))
            .await
            .unwrap(),
        Deleted::Deleted {
            last_version: 3,
            versions: 1
        }
    );
    let kept = store.rollout("edge").await.unwrap().unwrap();
    assert!(!kept.active);
    assert_eq!(kept.body, Bytes::from_static(b"ended"));
    assert_eq!(created(store.as_ref(), new_version("edge", b"z")).await, 4);
    store.close().await.unwrap();
}
