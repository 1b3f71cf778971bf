//! The etcd store against a real, single-member etcd on free loopback ports
//! (started by `vane-testkit`'s launcher, the one the cluster tests use):
//! the generic store suite, and what only a shared store does (bodies in
//! chunks, compare-and-set across replicas, the feed and compaction, agents
//! bound to a lease, etcd going away and coming back, mutual TLS).
//!
//! `etcd` must be on `PATH` (`cargo xtask test` installs Debian's
//! `etcd-server`); without it these tests fail and say so.

use futures::StreamExt as _;
use vane_testkit::etcd::{EtcdCluster, EtcdTls as MemberTls};

use super::*;
use vane_store::suite;

/// One etcd member, healthy. Started on a blocking thread: the launcher
/// waits for the member with blocking HTTP calls.
async fn etcd() -> EtcdCluster {
    tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .unwrap()
}

/// The store's settings for the single member of `etcd`, under `prefix`.
fn store_config(etcd: &EtcdCluster, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: prefix.into(),
        request_timeout: Duration::from_secs(3),
        lease_ttl: Duration::from_secs(3),
        tls: None,
        auth: None,
    }
}

fn opener(config: EtcdConfig) -> impl Fn() -> suite::OpenFuture + Send + Sync + 'static {
    move || {
        let config = config.clone();
        Box::pin(async move {
            let store: Arc<dyn Store> =
                Arc::new(EtcdStore::connect(config).await.expect("connect"));
            store
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_against_etcd() {
    let etcd = etcd().await;
    suite::sequence(opener(store_config(&etcd, "/t/sequence"))).await;
    suite::unchanged(opener(store_config(&etcd, "/t/unchanged"))).await;
    suite::conflict(opener(store_config(&etcd, "/t/conflict"))).await;
    suite::reads(opener(store_config(&etcd, "/t/reads"))).await;
    suite::rollback(opener(store_config(&etcd, "/t/rollback"))).await;
    suite::reopen(opener(store_config(&etcd, "/t/reopen"))).await;
    suite::concurrent(opener(store_config(&etcd, "/t/concurrent"))).await;
    suite::closed(opener(store_config(&etcd, "/t/closed"))).await;
    suite::retention(opener(store_config(&etcd, "/t/retention"))).await;
    suite::rollouts(opener(store_config(&etcd, "/t/rollouts"))).await;
    suite::delete(opener(store_config(&etcd, "/t/delete"))).await;
}

/// A tombstone written through one replica holds on another: its next push
/// of the deleted group continues the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_groups_numbers_hold_on_every_replica() {
    let etcd = etcd().await;
    let config = store_config(&etcd, "/t/delete-replicas");
    let a = EtcdStore::connect(config.clone()).await.unwrap();
    let b = EtcdStore::connect(config).await.unwrap();
    a.push(suite::new_version("g", b"one")).await.unwrap();
    a.push(suite::new_version("g", b"two")).await.unwrap();
    let deleted = b
        .delete_group(vane_store::DeleteGroup {
            group: "g".into(),
            expected_version: None,
            rollout: None,
        })
        .await
        .unwrap();
    assert_eq!(
        deleted,
        vane_store::Deleted::Deleted {
            last_version: 2,
            versions: 2
        }
    );
    assert!(a.get("g", None).await.unwrap().is_none());
    assert_eq!(a.tombstones().await.unwrap(), vec![("g".to_owned(), 2)]);
    let again = a.push(suite::new_version("g", b"one")).await.unwrap();
    assert_eq!(again.record().version, 3);
    assert!(b.tombstones().await.unwrap().is_empty());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_go_in_chunks_before_the_head() {
    let etcd = etcd().await;
    let store = EtcdStore::connect(store_config(&etcd, "/big"))
        .await
        .unwrap();
    // 3.5 MiB: four chunks, more than one etcd request may carry.
    let body: Vec<u8> = (0..(3 * CHUNK_BYTES + CHUNK_BYTES / 2))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut new = suite::new_version("g", b"x");
    new.snapshot = Bytes::from(body.clone());
    new.hash = "big".into();
    let created = store.push(new.clone()).await.unwrap();
    assert!(!created.is_unchanged());
    let head = store.get("g", None).await.unwrap().unwrap();
    assert_eq!(head.snapshot.as_ref(), body.as_slice());
    assert_eq!(
        store.history("g", 0).await.unwrap()[0].size_bytes,
        body.len() as u64
    );
    // Content-addressed: the same body pushed again after another version
    // reuses the chunks.
    store.push(suite::new_version("g", b"small")).await.unwrap();
    let again = store.push(new).await.unwrap();
    assert_eq!(again.record().version, 3);
    let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let chunks = client
        .get(
            "/big/blobs/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    // Four chunks of the big body, one of the small one.
    assert_eq!(chunks.kvs().len(), 5);
    let heads = store.heads().await.unwrap();
    assert_eq!(heads[0].snapshot.len(), body.len());
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_versions_and_exactly_one_cas_wins() {
    let etcd = etcd().await;
    let a = Arc::new(
        EtcdStore::connect(store_config(&etcd, "/shared"))
            .await
            .unwrap(),
    );
    let b = Arc::new(
        EtcdStore::connect(store_config(&etcd, "/shared"))
            .await
            .unwrap(),
    );
    let mut feed_b = b.feed().unwrap();
    match feed_b.next().await.unwrap() {
        FeedEvent::Resynced(heads) => assert!(heads.is_empty()),
        other => panic!("expected the initial resync, got {other:?}"),
    }
    a.push(suite::new_version("g", b"one")).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), feed_b.next())
        .await
        .unwrap()
        .unwrap();
    match event {
        FeedEvent::Heads(heads) => {
            assert_eq!(heads.len(), 1);
            assert_eq!(
                (heads[0].version, heads[0].snapshot.as_ref()),
                (1, &b"one"[..])
            );
        }
        other => panic!("expected a head, got {other:?}"),
    }
    // Both replicas push against version 1, many times over: one wins.
    let mut racers = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        racers.push(tokio::spawn(async move {
            let mut new = suite::new_version("g", format!("race-{i}").as_bytes());
            new.expected_version = Some(1);
            store.push(new).await
        }));
    }
    let mut wins = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(PushOutcome::Created(r)) => {
                assert_eq!(r.version, 2);
                wins += 1;
            }
            Err(StoreError::Conflict { actual: 2, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(b.history("g", 0).await.unwrap().len(), 2);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_recovers_from_compaction() {
    let etcd = etcd().await;
    let a = EtcdStore::connect(store_config(&etcd, "/compact"))
        .await
        .unwrap();
    let b = EtcdStore::connect(store_config(&etcd, "/compact"))
        .await
        .unwrap();
    a.push(suite::new_version("g", b"v1")).await.unwrap();
    let mut feed = b.feed().unwrap();
    // The feed read the heads at some revision; it opens its watch from the
    // next one only when polled again.
    match feed.next().await.unwrap() {
        FeedEvent::Resynced(heads) => assert_eq!(heads[0].version, 1),
        other => panic!("{other:?}"),
    }
    for content in [b"v2", b"v3", b"v4"] {
        a.push(suite::new_version("g", content)).await.unwrap();
    }
    tokio::task::block_in_place(|| etcd.compact(0));
    let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap();
    match event {
        FeedEvent::Resynced(heads) => {
            assert_eq!(heads.len(), 1);
            assert_eq!(
                (heads[0].version, heads[0].snapshot.as_ref()),
                (4, &b"v4"[..])
            );
        }
        other => panic!("expected a resync after compaction, got {other:?}"),
    }
    // And it keeps following.
    a.push(suite::new_version("g", b"v5")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap()
    {
        FeedEvent::Heads(heads) => assert_eq!(heads[0].version, 5),
        other => panic!("{other:?}"),
    }
}

fn agent(node: &str, connected: bool) -> AgentRecord {
    AgentRecord {
        client: "vane-agent".to_owned(),
        nack_code: 3,
        sessions: 2,
        health_degraded: true,
        health_reason: "error ratio 0.40 over 50 requests".into(),
        health_version: 1,
        node_id: node.into(),
        group: "edge".into(),
        labels: BTreeMap::from([("zone".into(), "a".into())]),
        agent_build: "t".into(),
        peer: "127.0.0.1:1".into(),
        connected,
        connected_since_unix_ms: 5,
        last_seen_unix_ms: 6,
        sent_version: 2,
        acked_version: 2,
        acked_hash: "h".into(),
        last_nacked_version: 1,
        nack_reason: "bad".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_shared_and_expire_with_the_lease() {
    let etcd = etcd().await;
    let a = EtcdStore::connect(store_config(&etcd, "/agents"))
        .await
        .unwrap();
    let b = EtcdStore::connect(store_config(&etcd, "/agents"))
        .await
        .unwrap();
    let (dir_a, dir_b) = (a.agent_directory().unwrap(), b.agent_directory().unwrap());
    let shared = SharedAgent {
        replica: "a:1".into(),
        record: agent("n1", true),
    };
    let epoch = dir_a
        .publish(&[AgentChange::Put(Box::new(shared.clone()))])
        .await
        .unwrap();
    assert_eq!(epoch, 1);
    assert_eq!(
        dir_b.others(Some("edge")).await.unwrap(),
        vec![shared.clone()]
    );
    assert!(dir_b.others(Some("core")).await.unwrap().is_empty());
    // A replica does not list its own records as others'.
    assert!(dir_a.others(None).await.unwrap().is_empty());
    assert_eq!(dir_a.renew().await.unwrap(), 1);

    dir_a
        .publish(&[AgentChange::Delete {
            group: "edge".into(),
            node_id: "n1".into(),
        }])
        .await
        .unwrap();
    assert!(dir_b.others(None).await.unwrap().is_empty());

    // Withdrawing removes everything at once.
    dir_a
        .publish(&[AgentChange::Put(Box::new(shared.clone()))])
        .await
        .unwrap();
    dir_a.withdraw().await.unwrap();
    assert!(dir_b.others(None).await.unwrap().is_empty());

    // Not renewed: gone once the lease's TTL (3s) passes; renewing later
    // binds a new lease, with a new epoch.
    let epoch = dir_a
        .publish(&[AgentChange::Put(Box::new(shared.clone()))])
        .await
        .unwrap();
    assert_eq!(dir_b.others(None).await.unwrap().len(), 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !dir_b.others(None).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the record outlived its lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dir_a.renew().await.unwrap() > epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_pushes_fail_fast_and_resume_after() {
    let mut etcd = etcd().await;
    let mut config = store_config(&etcd, "/down");
    config.request_timeout = Duration::from_secs(1);
    let store = Arc::new(EtcdStore::connect(config).await.unwrap());
    store.push(suite::new_version("g", b"a")).await.unwrap();
    assert_eq!(store.health().degraded, None);
    // (`vane_control_store_degraded` is this, read at scrape time.)
    assert!(store.health().degraded.is_none());
    let mut feed = store.feed().unwrap();
    assert!(matches!(feed.next().await, Some(FeedEvent::Resynced(_))));

    etcd.kill(0);
    let started = Instant::now();
    let err = store.push(suite::new_version("g", b"b")).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    match &err {
        StoreError::Degraded(message) => {
            assert!(message.contains(&etcd.endpoint(0)), "{message}");
            assert!(message.ends_with("nothing was stored"), "{message}");
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
    assert!(store.health().degraded.is_some());
    assert!(store.health().degraded.is_some());
    // The feed notices too.
    match tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
    {
        Some(FeedEvent::Lost { .. }) => {}
        other => panic!("expected the feed to report the loss, got {other:?}"),
    }

    // Not waited for: the pushes below retry until etcd takes one.
    etcd.restart(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        match store.push(suite::new_version("g", b"b")).await {
            Ok(outcome) => break outcome.record().version,
            Err(e) => {
                assert!(Instant::now() < deadline, "etcd did not come back: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(v, 2);
    // The feed resumes and reports the push made after etcd returned.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await
            .unwrap()
            .unwrap();
        if let FeedEvent::Heads(heads) | FeedEvent::Resynced(heads) = event
            && heads.iter().any(|h| h.version == 2)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the feed did not resume");
    }
    assert_eq!(store.health().degraded, None);
    // (`vane_control_store_degraded` is this, read at scrape time.)
    assert!(store.health().degraded.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_client_certificate_and_a_clear_refusal_without() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let ca = vane_pki::Ca::new("etcd test CA").unwrap();
    std::fs::write(path("ca.pem"), ca.cert_pem()).unwrap();
    // etcd's certificate is also a client one: its own gateway presents it.
    ca.issue(&vane_pki::LeafParams::server(["127.0.0.1", "localhost"]).also_client())
        .unwrap()
        .write(&path("etcd.pem"), &path("etcd.key"), false)
        .unwrap();
    ca.issue(&vane_pki::LeafParams::client("replica"))
        .unwrap()
        .write(&path("replica.pem"), &path("replica.key"), false)
        .unwrap();
    let member = MemberTls {
        cert: path("etcd.pem"),
        key: path("etcd.key"),
        client_ca: Some(path("ca.pem")),
    };
    let etcd = tokio::task::spawn_blocking(move || EtcdCluster::start_tls(1, member))
        .await
        .unwrap();
    let mut config = store_config(&etcd, "/tls");
    assert!(config.endpoints[0].starts_with("https://"), "{config:?}");

    config.tls = Some(
        EtcdTls::from_files(
            &path("ca.pem"),
            Some((&path("replica.pem"), &path("replica.key"))),
        )
        .unwrap(),
    );
    let store = EtcdStore::connect(config.clone()).await.unwrap();
    store
        .push(suite::new_version("g", b"over tls"))
        .await
        .unwrap();
    let head = store.get("g", None).await.unwrap().unwrap();
    assert_eq!(head.snapshot.as_ref(), b"over tls");
    store.close().await.unwrap();

    // The CA alone: etcd wants a client certificate, and the error says
    // which flags give one.
    config.tls = Some(EtcdTls::from_files(&path("ca.pem"), None).unwrap());
    let err = EtcdStore::connect(config).await.unwrap_err().to_string();
    assert!(err.contains("--etcd-cert"), "{err}");
}

#[tokio::test]
async fn configuration_errors_name_the_setting() {
    let err = EtcdStore::connect(EtcdConfig::default()).await.unwrap_err();
    assert!(err.to_string().contains("etcd endpoints"), "{err}");
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: vec!["https://127.0.0.1:1".into()],
        ..EtcdConfig::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--etcd-ca"), "{err}");
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: vec!["https://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
        ..EtcdConfig::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: vec!["127.0.0.1:1".into()],
        ..EtcdConfig::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("http:// or https://"), "{err}");
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: vec!["http://127.0.0.1:1".into()],
        prefix: "/".into(),
        ..EtcdConfig::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("etcd prefix"), "{err}");
    // Nothing listens there: a clear, bounded failure.
    let started = Instant::now();
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: vec![format!(
            "http://127.0.0.1:{}",
            vane_testkit::net::free_port()
        )],
        request_timeout: Duration::from_millis(500),
        ..EtcdConfig::default()
    })
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        err.to_string().contains("did not answer within 500ms"),
        "{err}"
    );
}

#[test]
fn plaintext_is_flagged_beyond_loopback_only() {
    for local in [
        "http://127.0.0.1:2379",
        "http://localhost:2379",
        "http://[::1]:2379",
        "https://10.0.0.1:2379",
    ] {
        assert!(!plaintext_beyond_loopback(local), "{local}");
    }
    for remote in [
        "http://10.0.0.11:2379",
        "http://etcd-1:2379",
        "http://[fd00::1]:2379",
    ] {
        assert!(plaintext_beyond_loopback(remote), "{remote}");
    }
}

#[test]
fn keys_parse_back() {
    let keys = Keys {
        prefix: "/vane".into(),
    };
    assert_eq!(
        keys.version("edge", 42),
        "/vane/versions/edge/00000000000000000042"
    );
    assert_eq!(
        keys.parse_version(keys.version("a-b.c", 7).as_bytes()),
        Some(("a-b.c".into(), 7))
    );
    assert_eq!(keys.parse_version(b"/vane/heads/edge"), None);
    assert_eq!(keys.rollout("edge"), "/vane/rollouts/edge");
    assert!(keys.rollout("edge").starts_with(&keys.rollouts()));
    assert_eq!(
        keys.agent("edge", "n/1", 255),
        "/vane/agents/edge/n/1/00000000000000ff"
    );
}
