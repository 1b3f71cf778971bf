//! The hold under a paused clock: answered at once, held until a push,
//! until the deadline, until shutdown; a rollout's cohort decides.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use bytes::Bytes;

use super::*;
use crate::hub::Hub;
use crate::targets::{Cohort, Cohorts, Phase};

fn published(version: u64) -> Published {
    Published::new(
        "edge".into(),
        version,
        format!("{version:064x}"),
        1,
        Bytes::from_static(b""),
    )
}

fn hold(
    hub: &Hub,
    cohorts: &Cohorts,
    known: Known,
    wait: Duration,
    stop: &CancellationToken,
) -> Hold {
    Hold {
        heads: hub.subscribe("edge"),
        cohorts: cohorts.subscribe("edge"),
        node: "n1".into(),
        group: "edge".into(),
        known,
        until: Instant::now() + wait,
        stop: stop.clone(),
        access: None,
    }
}

fn after(version: u64) -> Known {
    Known {
        after_version: version,
        if_none_match: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_newer_head_is_answered_at_once() {
    let (hub, cohorts, stop) = (Hub::new(), Cohorts::new(), CancellationToken::new());
    hub.publish(published(3));
    let started = Instant::now();
    match hold(&hub, &cohorts, after(2), Duration::from_secs(30), &stop)
        .run()
        .await
    {
        Held::Fresh(v) => assert_eq!(v.version, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn held_until_the_deadline_then_unchanged_with_the_head() {
    let (hub, cohorts, stop) = (Hub::new(), Cohorts::new(), CancellationToken::new());
    hub.publish(published(3));
    let started = Instant::now();
    match hold(&hub, &cohorts, after(3), Duration::from_secs(30), &stop)
        .run()
        .await
    {
        Held::Unchanged(Some(v)) => assert_eq!(v.version, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    // A group without a version: unchanged, with nothing.
    let empty = Hold {
        heads: hub.subscribe("core"),
        cohorts: cohorts.subscribe("core"),
        ..hold(&hub, &cohorts, after(0), Duration::from_secs(2), &stop)
    };
    assert!(matches!(empty.run().await, Held::Unchanged(None)));
}

#[tokio::test(start_paused = true)]
async fn a_push_ends_the_hold_with_the_new_version() {
    let (hub, cohorts, stop) = (
        Arc::new(Hub::new()),
        Cohorts::new(),
        CancellationToken::new(),
    );
    hub.publish(published(3));
    let held = tokio::spawn(hold(&hub, &cohorts, after(3), Duration::from_secs(30), &stop).run());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!held.is_finished());
    let pushed_at = Instant::now();
    hub.publish(published(4));
    match held.await.unwrap() {
        Held::Fresh(v) => assert_eq!(v.version, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(pushed_at.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn if_none_match_decides_over_after_version() {
    let (hub, cohorts, stop) = (Hub::new(), Cohorts::new(), CancellationToken::new());
    hub.publish(published(3));
    let head_hash = format!("{:064x}", 3);
    let same = Known {
        after_version: 0,
        if_none_match: Some(vec![head_hash]),
    };
    assert!(matches!(
        hold(&hub, &cohorts, same, Duration::from_secs(5), &stop)
            .run()
            .await,
        Held::Unchanged(Some(_))
    ));
    let other = Known {
        after_version: 3,
        if_none_match: Some(vec!["f".repeat(64)]),
    };
    assert!(matches!(
        hold(&hub, &cohorts, other, Duration::from_secs(5), &stop)
            .run()
            .await,
        Held::Fresh(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_hold() {
    let (hub, cohorts, stop) = (Hub::new(), Cohorts::new(), CancellationToken::new());
    let held = hold(&hub, &cohorts, after(0), Duration::from_secs(60), &stop);
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stopper.cancel();
    });
    let started = Instant::now();
    assert!(matches!(held.run().await, Held::Stopped));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_rollout_sends_the_candidate_to_its_cohort_only() {
    let (hub, cohorts, stop) = (
        Arc::new(Hub::new()),
        Arc::new(Cohorts::new()),
        CancellationToken::new(),
    );
    let stable = Arc::new(published(3));
    hub.publish(published(3));
    hub.publish(published(4).with_candidate(Some(vane_store::CandidateOf {
        rollout_id: "r1".into(),
        stable_version: 3,
    })));
    // The cohort is not known yet: nobody is sent the candidate.
    assert!(matches!(
        hold(&hub, &cohorts, after(3), Duration::from_secs(1), &stop)
            .run()
            .await,
        Held::Unchanged(None)
    ));
    let outsider = Hold {
        node: "n2".into(),
        ..hold(&hub, &cohorts, after(3), Duration::from_secs(30), &stop)
    };
    let member = tokio::spawn(hold(&hub, &cohorts, after(3), Duration::from_secs(30), &stop).run());
    let outsider = tokio::spawn(outsider.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    cohorts.set(
        "edge",
        Some(Arc::new(Cohort {
            rollout_id: "r1".into(),
            candidate_version: 4,
            phase: Phase::Running {
                members: HashSet::from(["n1".to_owned()]),
                stable: Some(stable),
            },
        })),
    );
    match member.await.unwrap() {
        Held::Fresh(v) => assert_eq!(v.version, 4),
        other => panic!("{other:?}"),
    }
    match outsider.await.unwrap() {
        Held::Unchanged(Some(v)) => assert_eq!(v.version, 3, "the others keep the stable version"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn holds_are_jittered_down_and_end_before_the_request_timeout() {
    let minute = Duration::from_secs(60);
    for _ in 0..100 {
        let h = hold_for(Duration::from_secs(2), minute);
        assert!(
            h <= Duration::from_secs(2) && h >= Duration::from_millis(1800),
            "{h:?}"
        );
        let h = hold_for(minute, minute);
        assert!(
            h <= Duration::from_secs(59) && h >= Duration::from_secs(58),
            "{h:?}"
        );
    }
    assert_eq!(hold_for(Duration::ZERO, minute), Duration::ZERO);
    assert!(hold_for(Duration::from_secs(30), Duration::from_secs(10)) <= Duration::from_secs(9));
}
