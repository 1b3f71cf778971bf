//! The embedded store's tests: the backend contract, and what only this
//! backend does (the file lock, group commit, retention and compaction).

use super::*;
use crate::contract::{Pinned, Retention};
use crate::suite;

fn opener(dir: &Path) -> impl Fn() -> suite::OpenFuture + Send + Sync + 'static {
    let dir = dir.to_path_buf();
    move || {
        let dir = dir.clone();
        Box::pin(async move {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir).await.expect("open"));
            store
        })
    }
}

#[tokio::test]
async fn suite_sequence() {
    let dir = tempfile::tempdir().unwrap();
    suite::sequence(opener(dir.path())).await;
}

#[tokio::test]
async fn suite_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    suite::unchanged(opener(dir.path())).await;
}

#[tokio::test]
async fn suite_conflict() {
    let dir = tempfile::tempdir().unwrap();
    suite::conflict(opener(dir.path())).await;
}

#[tokio::test]
async fn suite_reads() {
    let dir = tempfile::tempdir().unwrap();
    suite::reads(opener(dir.path())).await;
}

#[tokio::test]
async fn suite_rollback() {
    let dir = tempfile::tempdir().unwrap();
    suite::rollback(opener(dir.path())).await;
}

#[tokio::test]
async fn suite_reopen() {
    let dir = tempfile::tempdir().unwrap();
    suite::reopen(opener(dir.path())).await;
}

#[tokio::test]
async fn suite_retention() {
    let dir = tempfile::tempdir().unwrap();
    suite::retention(opener(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_concurrent() {
    let dir = tempfile::tempdir().unwrap();
    suite::concurrent(opener(dir.path())).await;
}

#[tokio::test]
async fn suite_closed() {
    let dir = tempfile::tempdir().unwrap();
    suite::closed(opener(dir.path())).await;
}

#[tokio::test]
async fn suite_rollouts() {
    let dir = tempfile::tempdir().unwrap();
    suite::rollouts(opener(dir.path())).await;
}

#[tokio::test]
async fn second_open_of_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = RedbStore::open(dir.path()).await.unwrap();
    let err = RedbStore::open(dir.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    first.close().await.unwrap();
    let again = RedbStore::open(dir.path()).await.unwrap();
    again.close().await.unwrap();
}

#[tokio::test]
async fn dropping_the_store_releases_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).await.unwrap();
    store.push(suite::new_version("g", b"a")).await.unwrap();
    drop(store);
    let store = RedbStore::open(dir.path()).await.unwrap();
    let head = store.get("g", None).await.unwrap().unwrap();
    assert_eq!(head.version, 1);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path()).await.unwrap());
    let pushes = (0..200).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .push(suite::new_version("g", format!("{i}").as_bytes()))
                .await
                .unwrap()
        })
    });
    let pushes: Vec<_> = pushes.collect();
    for p in pushes {
        p.await.unwrap();
    }
    assert_eq!(store.get("g", None).await.unwrap().unwrap().version, 200);
    let commits = store.commits();
    assert!(
        commits < 200,
        "no batching: {commits} commits for 200 pushes"
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn history_meta_matches_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).await.unwrap();
    let rec = store
        .push(suite::new_version("g", b"abc"))
        .await
        .unwrap()
        .into_record();
    let history = store.history("g", 0).await.unwrap();
    assert_eq!(history, vec![rec.meta()]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn retention_and_compaction_bound_the_file_under_churn() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).await.unwrap();
    let policy = Retention {
        keep_versions: 20,
        keep_age: Duration::ZERO,
    };
    let body = |i: u32| format!("{i:08}{}", "x".repeat(8 * 1024));
    let mut sizes = Vec::new();
    for round in 0..8u32 {
        for i in 0..50 {
            store
                .push(suite::new_version("g", body(round * 50 + i).as_bytes()))
                .await
                .unwrap();
        }
        store.prune(policy, &Pinned::new()).await.unwrap();
        sizes.push(std::fs::metadata(store.path()).unwrap().len());
    }
    let history = store.history("g", 0).await.unwrap();
    assert_eq!(history.len(), 20);
    assert_eq!(history[0].version, 400);
    assert_eq!(store.pruned("g").await.unwrap(), 380);
    // 400 versions of 8 KiB need 3.2 MiB and more; 20 of them 160 KiB in a
    // file redb grows in whole regions.
    let last = *sizes.last().unwrap();
    assert!(
        last < 8 * 1024 * 1024,
        "file grew to {last} bytes: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|s| *s <= sizes[1]),
        "the file keeps growing under churn: {sizes:?}"
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_damaged_file_is_one_clear_error_not_a_panic() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).await.unwrap();
    for i in 0..20u32 {
        store
            .push(suite::new_version("g", format!("{i}").as_bytes()))
            .await
            .unwrap();
    }
    store.close().await.unwrap();
    drop(store);
    let path = dir.path().join(DB_FILE);
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap();
    // Deterministic "random" bytes: a page type byte redb does not know,
    // then noise.
    let noise: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    file.write_all(&noise).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let err = RedbStore::open(dir.path()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("restore it from a backup"), "{text}");
    assert!(text.contains("vane-control check"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[tokio::test]
async fn suite_delete() {
    let dir = tempfile::tempdir().unwrap();
    suite::delete(opener(dir.path())).await;
}
