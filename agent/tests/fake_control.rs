//! The agent against a fake control server that each test scripts: what it
//! sends, and what the agent answers (ACK/NACK), over real gRPC on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use vane_agent::{
    Agent, AgentHandle, BackoffConfig, BreakerConfig, BreakerState, Current, HealthState, Source,
};
use vane_model::{Format, Snapshot, parse_file, validate};
use vane_proto as pb;
use vane_proto::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};

const EXAMPLE: &str = include_str!("../../examples/snapshot.yaml");
const WAIT: Duration = Duration::from_secs(10);

fn example(weight: u32) -> Snapshot {
    let mut s = validate(parse_file(EXAMPLE.as_bytes(), Format::Yaml).unwrap()).unwrap();
    s.clusters[0].endpoints[0].weight = weight;
    s
}

fn response(version: u64, s: &Snapshot, nonce: &str) -> pb::WatchResponse {
    pb::WatchResponse {
        group: "edge".into(),
        version,
        hash: s.content_hash().to_hex(),
        nonce: nonce.into(),
        body: Some(pb::watch_response::Body::Snapshot(Bytes::from(s.encode()))),
        base_version: 0,
        base_hash: String::new(),
        ..Default::default()
    }
}

/// A delta response from `base` (version `base_version`) to `target`, as
/// the control server builds it.
fn delta_response(
    version: u64,
    target: &Snapshot,
    (base_version, base): (u64, &Snapshot),
    nonce: &str,
) -> pb::WatchResponse {
    let delta = vane_model::delta::diff_encoded(&base.encode(), &target.encode()).unwrap();
    pb::WatchResponse {
        group: "edge".into(),
        version,
        hash: target.content_hash().to_hex(),
        nonce: nonce.into(),
        body: Some(pb::watch_response::Body::Delta(Bytes::from(delta))),
        base_version,
        base_hash: base.content_hash().to_hex(),
        ..Default::default()
    }
}

/// One stream the fake accepted.
struct FakeStream {
    inbound: Streaming<pb::WatchRequest>,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
}

impl FakeStream {
    async fn recv(&mut self) -> pb::WatchRequest {
        tokio::time::timeout(WAIT, self.inbound.message())
            .await
            .expect("the agent did not answer in time")
            .unwrap()
            .expect("stream ended")
    }

    async fn send(&self, r: pb::WatchResponse) {
        self.out.send(Ok(r)).await.unwrap();
    }
}

struct Fake {
    streams: mpsc::Sender<FakeStream>,
    deny: Option<tonic::Code>,
    attempts: Arc<AtomicUsize>,
    /// When each watch call arrived.
    calls: Arc<std::sync::Mutex<Vec<Instant>>>,
}

#[tonic::async_trait]
impl ConfigDiscovery for Fake {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.calls.lock().unwrap().push(Instant::now());
        if let Some(code) = self.deny {
            return Err(Status::new(code, "not allowed to watch group edge"));
        }
        let (tx, rx) = mpsc::channel(8);
        let _ = self
            .streams
            .send(FakeStream {
                inbound: request.into_inner(),
                out: tx,
            })
            .await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct FakeServer {
    url: String,
    streams: Mutex<mpsc::Receiver<FakeStream>>,
    attempts: Arc<AtomicUsize>,
    calls: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl FakeServer {
    async fn start(deny: Option<tonic::Code>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel(8);
        let attempts = Arc::new(AtomicUsize::new(0));
        let calls = Arc::default();
        let fake = Fake {
            streams: tx,
            deny,
            attempts: attempts.clone(),
            calls: Arc::clone(&calls),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ConfigDiscoveryServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self {
            url,
            streams: Mutex::new(rx),
            attempts,
            calls,
        }
    }

    async fn accept(&self) -> FakeStream {
        tokio::time::timeout(WAIT, self.streams.lock().await.recv())
            .await
            .expect("the agent did not connect in time")
            .unwrap()
    }
}

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
    }
}

fn agent(url: &str, cache: &std::path::Path) -> vane_agent::AgentBuilder {
    Agent::builder()
        .servers([url.to_string()])
        .node_id("n1")
        .group("edge")
        .cache_dir(cache)
        .backoff(fast_backoff())
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `f` until it gives a value, for at most [`WAIT`].
async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The instant the breaker reopens at, while it is open.
fn open_until(a: &AgentHandle) -> Option<Instant> {
    match a.health().breaker {
        BreakerState::Open { until } => Some(until),
        BreakerState::Closed | BreakerState::HalfOpen => None,
    }
}

#[tokio::test]
async fn good_update_is_acked_after_apply_and_cached() {
    let fake = FakeServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&fake.url, dir.path()).start().unwrap();
    let mut s = fake.accept().await;
    let first = s.recv().await;
    assert_eq!(first.version_info, 0);
    assert_eq!(first.node.as_ref().unwrap().id, "n1");
    assert_eq!(first.node.as_ref().unwrap().group, "edge");
    assert!(first.response_nonce.is_empty());

    s.send(response(1, &example(1), "a")).await;
    let ack = s.recv().await;
    assert_eq!(ack.response_nonce, "a");
    assert_eq!(ack.version_info, 1);
    assert!(ack.error_detail.is_none());
    // ACK comes after apply: the new config is already visible.
    let cur = a.current();
    assert_eq!(cur.version, 1);
    assert_eq!(cur.source, Source::Live);
    assert_eq!(ack.hash, cur.hash);
    assert_eq!(*a.snapshot(), example(1));
    assert!(dir.path().join("edge.snapshot.pb").exists());
    assert_eq!(a.health().state, HealthState::Healthy);
    assert_eq!(a.status().source, "live");
    assert!(a.is_running());
    a.shutdown().await;
    assert!(!a.is_running(), "stopped after shutdown");
}

#[tokio::test]
async fn bad_hash_lower_version_and_validator_refusals_are_nacked() {
    let fake = FakeServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&fake.url, dir.path())
        .validator(|c: &Current, _: &Current| {
            if c.snapshot.clusters[0].endpoints[0].weight == 7 {
                Err("listener web: 127.0.0.1:18080 is already in use".to_string())
            } else {
                Ok(())
            }
        })
        .start()
        .unwrap();
    let mut s = fake.accept().await;
    s.recv().await;
    s.send(response(3, &example(1), "1")).await;
    assert!(s.recv().await.error_detail.is_none());

    // Hash mismatch.
    let mut bad = response(4, &example(2), "2");
    bad.hash = example(1).content_hash().to_hex();
    s.send(bad).await;
    let nack = s.recv().await;
    assert_eq!(nack.response_nonce, "2");
    assert_eq!(
        nack.version_info, 3,
        "a NACK reports the version still running"
    );
    let detail = nack.error_detail.unwrap();
    assert!(
        detail.message.contains("hash mismatch"),
        "{}",
        detail.message
    );

    // Lower version.
    s.send(response(2, &example(2), "3")).await;
    let detail = s.recv().await.error_detail.unwrap();
    assert!(detail.message.contains("older than the running version 3"));

    // The embedder's validator.
    s.send(response(5, &example(7), "4")).await;
    let detail = s.recv().await.error_detail.unwrap();
    assert_eq!(
        detail.message,
        "listener web: 127.0.0.1:18080 is already in use"
    );

    let cur = a.current();
    assert_eq!(cur.version, 3);
    assert_eq!(*cur.snapshot, example(1));
    assert_eq!(a.health().last_nack.unwrap().0, 5);

    // And a good one still goes through afterwards.
    s.send(response(6, &example(2), "5")).await;
    assert_eq!(s.recv().await.version_info, 6);
    a.shutdown().await;
}

#[tokio::test]
async fn same_version_is_acked_without_reapplying() {
    let fake = FakeServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let commits = Arc::new(AtomicUsize::new(0));
    let c2 = commits.clone();
    let a = agent(&fake.url, dir.path())
        .sink(move |_: &Current| {
            c2.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .start()
        .unwrap();
    let mut s = fake.accept().await;
    s.recv().await;
    s.send(response(1, &example(1), "x")).await;
    s.recv().await;
    s.send(response(1, &example(1), "y")).await;
    let ack = s.recv().await;
    assert_eq!((ack.version_info, ack.response_nonce.as_str()), (1, "y"));
    assert!(ack.error_detail.is_none());
    assert_eq!(commits.load(Ordering::SeqCst), 1, "applied once");
    a.shutdown().await;
}

#[tokio::test]
async fn a_broken_stream_keeps_the_config_and_reconnects_with_it() {
    let fake = FakeServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&fake.url, dir.path()).start().unwrap();
    let mut s = fake.accept().await;
    s.recv().await;
    s.send(response(2, &example(3), "n")).await;
    s.recv().await;
    // The server fails the stream in the middle of the conversation.
    s.out
        .send(Err(Status::internal("replica going away")))
        .await
        .unwrap();
    let mut again = fake.accept().await;
    let hello = again.recv().await;
    assert_eq!(hello.version_info, 2);
    assert_eq!(hello.hash, example(3).content_hash().to_hex());
    assert_eq!(a.current().version, 2);
    assert_eq!(*a.snapshot(), example(3));
    a.shutdown().await;
}

#[tokio::test]
async fn a_dead_peer_mid_response_is_survived() {
    // A "server" that accepts TCP, writes half of an HTTP/2 frame and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut sock, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let _ = sock.write_all(&[0, 0, 18, 4, 0, 0]).await;
            drop(sock);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&url, dir.path())
        .defaults(example(9))
        .start()
        .unwrap();
    eventually("two attempts", || accepted.load(Ordering::SeqCst) >= 2).await;
    assert_eq!(*a.snapshot(), example(9), "still serving the defaults");
    assert!(!a.health().connected);
    a.shutdown().await;
}

#[tokio::test]
async fn unreachable_server_backs_off_and_opens_the_breaker() {
    // Accepts TCP and closes at once: every attempt fails, and is counted
    // with the instant it arrived.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            acc.lock().unwrap().push(Instant::now());
            drop(sock);
        }
    });
    let accepted = move || accepted.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    // Open long enough that the test, polling every few milliseconds, sees
    // the breaker open well before its period ends even on a slow machine
    // (a period is 1.5 to 3 s).
    let open_for = Duration::from_secs(3);
    let a = agent(&url, dir.path())
        .breaker(BreakerConfig {
            failure_threshold: 3,
            open_for,
        })
        .start()
        .unwrap();
    let until = wait_for("the breaker opens", || open_until(&a)).await;
    let seen_open = Instant::now();
    assert_eq!(a.status().reconnects, 3, "three failed attempts open it");
    let at_open = accepted().len();
    assert!(at_open >= 3, "each attempt reached the server: {at_open}");
    assert!(
        until > seen_open + Duration::from_secs(1),
        "the test saw the breaker open too late to check that it holds attempts back \
         (open until {until:?}, seen at {seen_open:?})"
    );

    // While open, nothing goes out: checked up to just before the instant
    // the breaker itself says it reopens.
    tokio::time::sleep_until(until - Duration::from_millis(100)).await;
    assert_eq!(
        accepted().len(),
        at_open,
        "an attempt went out while the breaker was open"
    );
    assert_eq!(open_until(&a), Some(until), "still the same open period");
    assert_eq!(a.status().reconnects, 3);

    // Then exactly one probe, which fails and opens the breaker again.
    let reopened = wait_for("the probe fails and the breaker opens again", || {
        open_until(&a).filter(|u| *u > until)
    })
    .await;
    assert_eq!(a.status().reconnects, 4, "a single probe");
    let probe = accepted();
    assert!(probe.len() > at_open, "the probe reached the server");
    assert!(
        probe[at_open..].iter().all(|t| *t >= until),
        "the probe went before the cool-down ended"
    );
    assert!(
        reopened >= until + open_for / 2 && reopened <= probe[at_open] + open_for,
        "open again for one period, in [open_for/2, open_for] from the probe"
    );
    let err = a.health().last_error.unwrap();
    assert!(err.contains(&url), "{err}");
    a.shutdown().await;
}

#[tokio::test]
async fn permission_denied_is_not_retried_fast() {
    let fake = FakeServer::start(Some(tonic::Code::PermissionDenied)).await;
    let dir = tempfile::tempdir().unwrap();
    let cap = Duration::from_millis(300);
    let a = agent(&fake.url, dir.path())
        .backoff(BackoffConfig {
            base: Duration::from_millis(5),
            cap,
        })
        .breaker(BreakerConfig {
            failure_threshold: 1000,
            open_for: Duration::from_secs(1),
        })
        .start()
        .unwrap();
    // The refusal arrives and is understood as such.
    let err = wait_for("the refusal is reported", || {
        a.health()
            .last_error
            .filter(|e| e.contains("PermissionDenied"))
    })
    .await;
    assert!(err.contains(&fake.url), "{err}");
    // Then every retry waits the cap. With the 5 ms base a fast loop would
    // come back after at most 5, 10, 20 ms.
    eventually("three attempts", || {
        fake.attempts.load(Ordering::SeqCst) >= 3
    })
    .await;
    let calls = fake.calls.lock().unwrap().clone();
    for pair in calls.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= cap, "a retry after {gap:?}, below the {cap:?} cap");
    }
    assert!(!a.health().connected);
    a.shutdown().await;
}

#[tokio::test]
async fn startup_serves_the_cache_then_defaults_when_it_is_corrupt() {
    let fake = FakeServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let a = agent(&fake.url, dir.path()).start().unwrap();
        let mut s = fake.accept().await;
        s.recv().await;
        s.send(response(4, &example(2), "c")).await;
        s.recv().await;
        a.shutdown().await;
    }
    // Control plane unreachable (nothing listens on this port any more).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let a: AgentHandle = agent(&dead, dir.path())
        .defaults(example(9))
        .start()
        .unwrap();
    // No waiting: the cache is applied inside start().
    let cur = a.current();
    assert_eq!((cur.version, cur.source), (4, Source::Cache));
    assert_eq!(*cur.snapshot, example(2));
    assert_eq!(a.health().state, HealthState::Healthy);
    a.shutdown().await;

    // Corrupt the cache: defaults, reported as degraded with the reason.
    let path = dir.path().join("edge.snapshot.pb");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let a = agent(&dead, dir.path())
        .defaults(example(9))
        .start()
        .unwrap();
    let cur = a.current();
    assert_eq!((cur.version, cur.source), (0, Source::Defaults));
    assert_eq!(*cur.snapshot, example(9));
    let HealthState::Degraded { reason } = a.health().state else {
        panic!("expected degraded");
    };
    assert!(reason.contains("serving embedded defaults"), "{reason}");
    assert!(reason.contains("unusable"), "{reason}");
    a.shutdown().await;
}

#[tokio::test]
async fn deltas_are_applied_through_the_same_path_and_acked() {
    let fake = FakeServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let commits = Arc::new(AtomicUsize::new(0));
    let c2 = commits.clone();
    let a = agent(&fake.url, dir.path())
        .sink(move |_: &Current| {
            c2.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .start()
        .unwrap();
    let mut s = fake.accept().await;
    let first = s.recv().await;
    assert!(first.accept_delta, "the agent says it applies deltas");
    s.send(response(1, &example(1), "1")).await;
    assert!(s.recv().await.error_detail.is_none());

    s.send(delta_response(2, &example(2), (1, &example(1)), "2"))
        .await;
    let ack = s.recv().await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    assert!(!ack.want_full);
    assert_eq!((ack.version_info, ack.response_nonce.as_str()), (2, "2"));
    assert_eq!(ack.hash, example(2).content_hash().to_hex());
    assert_eq!(*a.snapshot(), example(2));
    assert_eq!(
        commits.load(Ordering::SeqCst),
        2,
        "the sink saw the rebuilt snapshot"
    );
    // The cache holds the whole version, not the delta.
    let cached = std::fs::read(dir.path().join("edge.snapshot.pb")).unwrap();
    assert!(cached.len() > 100);
    a.shutdown().await;
}

#[tokio::test]
async fn a_delta_that_does_not_rebuild_the_version_asks_for_the_full_snapshot() {
    let fake = FakeServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&fake.url, dir.path()).start().unwrap();
    let mut s = fake.accept().await;
    s.recv().await;
    s.send(response(1, &example(1), "1")).await;
    s.recv().await;
    let running_hash = example(1).content_hash().to_hex();

    // The rebuilt content does not hash to the response's hash.
    let mut wrong = delta_response(2, &example(2), (1, &example(1)), "2");
    wrong.hash = example(3).content_hash().to_hex();
    s.send(wrong).await;
    let nack = s.recv().await;
    assert!(nack.want_full, "asks for the full snapshot");
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 9, "FAILED_PRECONDITION");
    assert!(
        detail.message.starts_with("hash mismatch"),
        "{}",
        detail.message
    );
    assert_eq!(
        (nack.version_info, nack.hash.as_str()),
        (1, running_hash.as_str())
    );
    assert_eq!(a.current().version, 1, "nothing moved");

    // A delta from a version the agent does not run.
    s.send(delta_response(3, &example(3), (2, &example(2)), "3"))
        .await;
    let nack = s.recv().await;
    assert!(nack.want_full);
    let detail = nack.error_detail.unwrap();
    assert!(
        detail
            .message
            .contains("its base is version 2, this agent runs version 1"),
        "{}",
        detail.message
    );

    // A delta that does not even apply (a splice past the end).
    let broken = pb::SnapshotDelta {
        route_table_patches: vec![pb::RouteTablePatch {
            name: "main".into(),
            splices: vec![pb::RouteSplice {
                start: 50,
                delete_count: 1,
                insert: vec![],
            }],
        }],
        ..Default::default()
    };
    let mut r = delta_response(2, &example(2), (1, &example(1)), "4");
    r.body = Some(pb::watch_response::Body::Delta(Bytes::from(
        prost::Message::encode_to_vec(&broken),
    )));
    s.send(r).await;
    let nack = s.recv().await;
    assert!(nack.want_full);
    assert!(
        nack.error_detail
            .unwrap()
            .message
            .contains("route_table_patches[0].splices[0]"),
    );
    // None of that is a refusal of a version.
    assert!(a.health().last_nack.is_none());

    // The full snapshot the server then sends is applied.
    s.send(response(2, &example(2), "5")).await;
    let ack = s.recv().await;
    assert!(ack.error_detail.is_none());
    assert_eq!(ack.version_info, 2);
    assert_eq!(*a.snapshot(), example(2));
    a.shutdown().await;
}
