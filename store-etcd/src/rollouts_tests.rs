//! Rollout records shared by two replicas on one real etcd: a plain push
//! racing a rollout's start never both win, a plain push never lands after
//! a record turned active, and a compare-and-set loser is told the record
//! moved.

#![cfg(test)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::Client;
use vane_store::suite;
use vane_store::{CandidateOf, PushOutcome, RolloutPut, Store, StoreError};
use vane_testkit::etcd::EtcdCluster;

use crate::layout::Keys;
use crate::{EtcdConfig, EtcdStore};

/// Race rounds per test: each is one plain push against one rollout write.
const ROUNDS: usize = 24;

/// A single etcd member and two replicas' stores on it under `prefix`.
async fn two_replicas(prefix: &str) -> (EtcdCluster, Arc<EtcdStore>, Arc<EtcdStore>) {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .expect("etcd starts");
    let config = EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: prefix.into(),
        request_timeout: Duration::from_secs(5),
        ..EtcdConfig::default()
    };
    let a = EtcdStore::connect(config.clone()).await.expect("replica a");
    let b = EtcdStore::connect(config).await.expect("replica b");
    (etcd, Arc::new(a), Arc::new(b))
}

fn put(id: &str, active: bool, expected_revision: u64) -> RolloutPut {
    RolloutPut {
        id: id.to_owned(),
        active,
        body: Bytes::from(format!("{id} active={active}")),
        expected_revision,
    }
}

fn revision(record: Option<&vane_store::RolloutRecord>) -> u64 {
    record.map_or(0, |r| r.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_push_and_a_rollout_start_on_two_replicas_never_both_win() {
    let (_etcd, a, b) = two_replicas("/start-race").await;
    a.push(suite::new_version("g", b"v1")).await.unwrap();
    let (mut plain_won, mut start_won) = (0, 0);
    for round in 0..ROUNDS {
        let head = a.get("g", None).await.unwrap().unwrap().version;
        let record = b.rollout("g").await.unwrap();
        let id = format!("r{round}");
        let mut start = suite::new_version("g", format!("candidate {round}").as_bytes());
        start.expected_version = Some(head);
        start.candidate = Some(CandidateOf {
            rollout_id: id.clone(),
            stable_version: head,
        });
        start.rollout = Some(put(&id, true, revision(record.as_ref())));
        let plain = suite::new_version("g", format!("plain {round}").as_bytes());
        // Either may be sent first. The start writes its body before its
        // commit, so in odd rounds the plain push waits a little: both
        // orders happen.
        let (plain, start) = if round % 2 == 0 {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            let p = tokio::spawn(async move { a.push(plain).await });
            let s = tokio::spawn(async move { b.push(start).await });
            (p.await.unwrap(), s.await.unwrap())
        } else {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            let stagger = Duration::from_millis(round as u64 % 5);
            let s = tokio::spawn(async move { b.push(start).await });
            let p = tokio::spawn(async move {
                tokio::time::sleep(stagger).await;
                a.push(plain).await
            });
            (p.await.unwrap(), s.await.unwrap())
        };
        match (plain, start) {
            (
                Ok(PushOutcome::Created(p)),
                Err(StoreError::Conflict {
                    expected, actual, ..
                }),
            ) => {
                assert_eq!((p.version, p.candidate), (head + 1, None));
                assert_eq!((expected, actual), (head, head + 1));
                assert_eq!(b.rollout("g").await.unwrap(), record, "round {round}");
                plain_won += 1;
            }
            (Err(StoreError::RolloutActive { group, id: active }), Ok(PushOutcome::Created(s))) => {
                assert_eq!((group.as_str(), active.as_str()), ("g", id.as_str()));
                assert_eq!(s.version, head + 1);
                let stored = a.rollout("g").await.unwrap().unwrap();
                assert_eq!((stored.id.as_str(), stored.active), (id.as_str(), true));
                assert!(stored.revision > revision(record.as_ref()));
                // The other replica reads the candidate mark back.
                let candidate = a.get("g", Some(s.version)).await.unwrap().unwrap();
                assert_eq!(candidate.candidate, s.candidate);
                // End it so that the next round starts from a quiet group.
                a.put_rollout("g", put(&id, false, stored.revision))
                    .await
                    .unwrap();
                start_won += 1;
            }
            (plain, start) => panic!("round {round}: plain {plain:?}, start {start:?}"),
        }
    }
    assert_eq!(plain_won + start_won, ROUNDS);
    // One version per round, marked exactly when the start won.
    let history = b.history("g", 0).await.unwrap();
    assert_eq!(history.len(), ROUNDS + 1);
    let marked = history.iter().filter(|m| m.candidate.is_some()).count();
    assert_eq!(marked, start_won);
    for meta in history.iter().filter(|m| m.candidate.is_some()) {
        let candidate = meta.candidate.as_ref().unwrap();
        assert_eq!(candidate.stable_version, meta.version - 1);
    }
    let heads = b.heads().await.unwrap();
    assert_eq!(heads[0].candidate, history[0].candidate);
    eprintln!("plain push won {plain_won} rounds, the rollout start {start_won}");
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// The check of a plain push holds at its commit: a record turned active
/// between the push's read and its commit fails the commit. Told apart by
/// etcd's revisions: a plain push that succeeded wrote its version before
/// the record's activating write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_push_never_lands_after_the_record_turned_active() {
    let (etcd, a, b) = two_replicas("/active-race").await;
    let keys = Keys {
        prefix: "/active-race".into(),
    };
    let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
    a.push(suite::new_version("g", b"v1")).await.unwrap();
    let mut revision = b
        .put_rollout("g", put("r", false, 0))
        .await
        .unwrap()
        .revision;
    let (mut landed, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let plain = suite::new_version("g", format!("plain {round}").as_bytes());
        let a2 = Arc::clone(&a);
        let pushing = tokio::spawn(async move { a2.push(plain).await });
        let activated = b.put_rollout("g", put("r", true, revision)).await.unwrap();
        match pushing.await.unwrap() {
            Ok(PushOutcome::Created(v)) => {
                let key = keys.version("g", v.version);
                let written = client.get(key, None).await.unwrap().kvs()[0].mod_revision();
                assert!(
                    u64::try_from(written).unwrap() < activated.revision,
                    "round {round}: version {} written at revision {written}, after the \
                     record turned active at {}",
                    v.version,
                    activated.revision
                );
                landed += 1;
            }
            Err(StoreError::RolloutActive { id, .. }) => {
                assert_eq!(id, "r");
                refused += 1;
            }
            other => panic!("round {round}: {other:?}"),
        }
        revision = b
            .put_rollout("g", put("r", false, activated.revision))
            .await
            .unwrap()
            .revision;
    }
    assert_eq!(landed + refused, ROUNDS);
    assert_eq!(a.history("g", 0).await.unwrap().len(), landed + 1);
    eprintln!("plain push landed first in {landed} rounds, refused in {refused}");
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_write_that_loses_the_race_is_told_the_record_moved() {
    let (_etcd, a, b) = two_replicas("/cas-race").await;
    a.push(suite::new_version("g", b"v1")).await.unwrap();

    // Two starts, one per replica, both expecting no record.
    let start = |store: &Arc<EtcdStore>, id: &str| {
        let store = Arc::clone(store);
        let mut new = suite::new_version("g", format!("candidate of {id}").as_bytes());
        new.candidate = Some(CandidateOf {
            rollout_id: id.to_owned(),
            stable_version: 1,
        });
        new.rollout = Some(put(id, true, 0));
        tokio::spawn(async move { store.push(new).await })
    };
    let (sa, sb) = (start(&a, "ra"), start(&b, "rb"));
    let (sa, sb) = (sa.await.unwrap(), sb.await.unwrap());
    let stored = a.rollout("g").await.unwrap().unwrap();
    let (winner, loser) = match (&sa, &sb) {
        (Ok(PushOutcome::Created(w)), Err(l)) | (Err(l), Ok(PushOutcome::Created(w))) => (w, l),
        _ => panic!("expected one start to win: {sa:?}, {sb:?}"),
    };
    let winner_id = &winner.candidate.as_ref().unwrap().rollout_id;
    assert_eq!((&stored.id, winner.version), (winner_id, 2));
    match loser {
        StoreError::RolloutMoved {
            group,
            expected,
            actual,
        } => assert_eq!(
            (group.as_str(), *expected, *actual),
            ("g", 0, stored.revision)
        ),
        other => panic!("expected RolloutMoved, got {other:?}"),
    }
    assert_eq!(b.history("g", 0).await.unwrap().len(), 2);

    // Record writes alone: many racers on both replicas, one revision.
    let mut racers = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
        let put = put(&format!("step {i}"), true, stored.revision);
        racers.push(tokio::spawn(
            async move { store.put_rollout("g", put).await },
        ));
    }
    let mut won = Vec::new();
    let mut moved = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(record) => won.push(record),
            Err(StoreError::RolloutMoved {
                expected, actual, ..
            }) => {
                assert_eq!(expected, stored.revision);
                moved.push(actual);
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(moved, vec![won[0].revision; 7]);
    assert!(won[0].revision > stored.revision);
    assert_eq!(b.rollout("g").await.unwrap().as_ref(), Some(&won[0]));
    assert_eq!(a.rollouts().await.unwrap(), vec![won[0].clone()]);
    a.close().await.unwrap();
    b.close().await.unwrap();
}
