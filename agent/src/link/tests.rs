//! The link's steps and its whole loop over a scripted transport on a
//! paused clock: that shutdown ends every wait, and the conversation end to
//! end (hello, ACK only after apply, NACK keeping the old version,
//! heartbeats, the quiet confirmation, reconnects across servers).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use vane_model::{Format, Snapshot, parse_file, validate};
use vane_proto as pb;

use super::error::LinkError;
use super::machine::{Event, State};
use super::session::Session;
use super::step::Steps;
use super::transport::{Inbound, Transport};
use crate::apply::Applier;
use crate::backoff::BackoffConfig;
use crate::config::AgentConfig;
use crate::state::Shared;

const EXAMPLE: &str = include_str!("../../../examples/snapshot.yaml");

/// What the fake transport does on one `open`.
enum Script {
    Refuse,
    Hang,
    Accept,
}

/// The server's end of one accepted stream.
struct Served {
    server: usize,
    requests: mpsc::Receiver<pb::WatchRequest>,
    responses: mpsc::Sender<Result<pb::WatchResponse, LinkError>>,
}

impl Served {
    async fn recv(&mut self) -> pb::WatchRequest {
        self.requests
            .recv()
            .await
            .expect("the agent closed its requests")
    }
}

/// Opens as scripted (refusing once the script runs out) and records every
/// attempt.
struct Fake {
    script: Mutex<VecDeque<Script>>,
    attempts: Mutex<Vec<(usize, Instant)>>,
    served: mpsc::Sender<Served>,
}

impl Fake {
    fn new(script: impl IntoIterator<Item = Script>) -> (Arc<Self>, mpsc::Receiver<Served>) {
        let (served, accepted) = mpsc::channel(16);
        let fake = Self {
            script: Mutex::new(script.into_iter().collect()),
            attempts: Mutex::new(Vec::new()),
            served,
        };
        (Arc::new(fake), accepted)
    }

    fn attempts(&self) -> Vec<(usize, Instant)> {
        self.attempts.lock().unwrap().clone()
    }
}

impl Transport for Arc<Fake> {
    fn open(
        &self,
        server: usize,
        requests: mpsc::Receiver<pb::WatchRequest>,
    ) -> impl Future<Output = Result<Inbound, LinkError>> + Send {
        let script = self.script.lock().unwrap().pop_front();
        self.attempts.lock().unwrap().push((server, Instant::now()));
        let served = self.served.clone();
        async move {
            match script.unwrap_or(Script::Refuse) {
                Script::Refuse => Err(LinkError::Connect("connection refused".into())),
                Script::Hang => std::future::pending().await,
                Script::Accept => {
                    let (responses, inbound) = mpsc::channel(8);
                    let end = Served {
                        server,
                        requests,
                        responses,
                    };
                    served.try_send(end).unwrap();
                    Ok(ReceiverStream::new(inbound).boxed())
                }
            }
        }
    }
}

fn config() -> Arc<AgentConfig> {
    Arc::new(AgentConfig {
        servers: vec!["http://a:1".into(), "http://b:2".into()],
        node_id: "n1".into(),
        group: "edge".into(),
        backoff: BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        },
        heartbeat_interval: Duration::from_secs(30),
        ..AgentConfig::default()
    })
}

fn applier() -> Arc<Applier> {
    Arc::new(Applier::new(
        Arc::new(Shared::new(Duration::from_secs(300))),
        None,
        None,
        None,
        vane_model::DEFAULT_MAX_SNAPSHOT_BYTES,
    ))
}

fn steps(transport: Arc<Fake>) -> (Steps<Arc<Fake>>, watch::Sender<bool>) {
    let (stop, shutdown) = watch::channel(false);
    let applier = applier();
    let steps = Steps {
        config: config(),
        health: applier.shared.reports.subscribe(),
        applier,
        transport,
        shutdown,
    };
    (steps, stop)
}

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
        ..Default::default()
    }
}

/// Lets the link's task run until `done` holds, without moving the clock.
async fn settle(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// Steps `state` with shutdown asked one (virtual) second in: the step must
/// end then, with `Shutdown`, however far its own wait reaches.
async fn ends_on_shutdown(mut state: State, transport: Arc<Fake>) {
    let name = state.name();
    let (mut steps, stop) = steps(transport);
    let started = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send_replace(true);
        // Kept until the step has seen the value, not only the drop.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    // Bounded, so a wait that ignores shutdown fails here rather than hang.
    let event = tokio::time::timeout(Duration::from_secs(10), steps.step(&mut state))
        .await
        .unwrap_or_else(|_| panic!("{name} ignored the shutdown"));
    assert!(matches!(event, Event::Shutdown), "{name}: {event:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "{name} did not stop when asked"
    );
}

/// A stream whose timers are all far away, with nothing coming in.
fn quiet_session(requests: mpsc::Sender<pb::WatchRequest>) -> Box<Session> {
    let mut session = Session::new(
        0,
        futures::stream::pending().boxed(),
        requests,
        Duration::from_secs(3600),
        Instant::now(),
    );
    (session.confirmed, session.delivered) = (true, true);
    Box::new(session)
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_every_wait() {
    let far = Instant::now() + Duration::from_secs(3600);
    let (idle, _) = Fake::new([]);
    ends_on_shutdown(State::Backoff { until: far }, idle.clone()).await;
    ends_on_shutdown(State::BreakerOpen { until: far }, idle.clone()).await;

    let (hanging, _) = Fake::new([Script::Hang]);
    ends_on_shutdown(State::Connecting { server: 0 }, hanging.clone()).await;
    assert_eq!(hanging.attempts().len(), 1, "the connect was under way");

    // Waiting for a response (or a heartbeat tick).
    let (requests, _server_end) = mpsc::channel(4);
    ends_on_shutdown(State::Streaming(quiet_session(requests)), idle.clone()).await;

    // Waiting to send an answer to a server that stopped reading.
    let (requests, _server_end) = mpsc::channel(1);
    requests.try_send(pb::WatchRequest::default()).unwrap();
    let mut session = quiet_session(requests);
    session.pending = Some(pb::WatchRequest::default());
    ends_on_shutdown(State::Streaming(session), idle.clone()).await;

    // A dropped handle stops the link too.
    let (mut steps, stop) = steps(idle);
    drop(stop);
    let mut state = State::Backoff { until: far };
    assert!(matches!(steps.step(&mut state).await, Event::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn the_steps_wait_for_what_their_state_waits_for() {
    let (fake, mut accepted) = Fake::new([Script::Accept]);
    let (mut steps, _stop) = steps(fake);
    let start = Instant::now();
    let mut state = State::Idle;
    assert!(matches!(steps.step(&mut state).await, Event::Ready));
    let mut state = State::Backoff {
        until: start + Duration::from_millis(250),
    };
    assert!(matches!(steps.step(&mut state).await, Event::Ready));
    assert_eq!(start.elapsed(), Duration::from_millis(250));

    let mut state = State::Connecting { server: 1 };
    let Event::Opened(session) = steps.step(&mut state).await else {
        panic!("the stream should open");
    };
    let mut served = accepted.recv().await.unwrap();
    assert_eq!((served.server, session.server), (1, 1));
    let hello = served.recv().await;
    assert_eq!(hello.node.unwrap().id, "n1");
    assert!(hello.accept_delta);

    // A quiet stream: confirmed at 2 s, delivered at 10 s, heartbeats at 30 s.
    let opened = session.opened_at;
    let mut state = State::Streaming(session);
    assert!(matches!(
        steps.step(&mut state).await,
        Event::QuietConfirmed
    ));
    assert_eq!(opened.elapsed(), Duration::from_secs(2));
    let State::Streaming(session) = &mut state else {
        unreachable!()
    };
    session.confirmed = true;
    assert!(matches!(steps.step(&mut state).await, Event::Healthy));
    assert_eq!(opened.elapsed(), Duration::from_secs(10));
    let State::Streaming(session) = &mut state else {
        unreachable!()
    };
    session.delivered = true;
    assert!(matches!(steps.step(&mut state).await, Event::Sent));
    assert_eq!(opened.elapsed(), Duration::from_secs(30));
    let beat = served.recv().await;
    assert!(
        beat.node.is_none() && beat.response_nonce.is_empty(),
        "{beat:?}"
    );

    // The server ends the stream.
    drop(served.responses);
    assert!(matches!(
        steps.step(&mut state).await,
        Event::Failed(LinkError::Closed)
    ));
}

#[tokio::test(start_paused = true)]
async fn the_whole_conversation_over_a_scripted_transport() {
    let (fake, mut accepted) = Fake::new([Script::Refuse, Script::Accept, Script::Accept]);
    let config = config();
    let applier = applier();
    let shared = applier.shared.clone();
    let (stop, shutdown) = watch::channel(false);
    let backoff = config.backoff.build().unwrap();
    let task = tokio::spawn(super::run(
        config,
        applier.clone(),
        fake.clone(),
        backoff,
        shutdown,
    ));

    // The first server refuses; the next attempt, within the first
    // backoff ceiling, goes to the second.
    let mut s = accepted.recv().await.unwrap();
    let attempts = fake.attempts();
    assert_eq!(
        attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
        [0, 1],
        "rotation"
    );
    assert!(attempts[1].1 - attempts[0].1 <= Duration::from_millis(100));
    let opened = Instant::now();
    let hello = s.recv().await;
    assert_eq!((hello.version_info, hello.response_nonce.as_str()), (0, ""));
    settle("connected", || shared.health().connected).await;
    assert_eq!(shared.health().server.as_deref(), Some("http://b:2"));

    // ACK only after apply: what the ACK names already runs.
    s.responses
        .send(Ok(response(1, &example(1), "a")))
        .await
        .unwrap();
    let ack = s.recv().await;
    assert_eq!((ack.version_info, ack.response_nonce.as_str()), (1, "a"));
    assert!(ack.error_detail.is_none());
    assert_eq!(shared.current.load().version, 1);
    assert_eq!(ack.hash, shared.current.load().hash);
    assert_eq!(shared.health().staleness, Duration::ZERO);

    // Other content under the running version: NACK, the old one stays.
    s.responses
        .send(Ok(response(1, &example(2), "b")))
        .await
        .unwrap();
    let nack = s.recv().await;
    assert_eq!((nack.version_info, nack.response_nonce.as_str()), (1, "b"));
    let reason = nack.error_detail.unwrap().message;
    assert!(reason.contains("refusing different content"), "{reason}");
    assert_eq!(*shared.current.load().snapshot, example(1));
    assert_eq!(shared.health().last_nack, Some((1, reason)));

    // Heartbeats on the quiet stream, every heartbeat_interval.
    let beat = s.recv().await;
    assert!(beat.node.is_none(), "{beat:?}");
    assert_eq!(opened.elapsed(), Duration::from_secs(30));
    let beat = s.recv().await;
    assert!(beat.node.is_none(), "{beat:?}");
    assert_eq!(opened.elapsed(), Duration::from_secs(60));

    // The server goes away: the next attempt is paced from the start again
    // (the stream delivered) and goes to the next server, reporting what
    // runs.
    drop(s.responses);
    let broke = Instant::now();
    let mut s = accepted.recv().await.unwrap();
    assert_eq!(s.server, 0);
    assert!(broke.elapsed() <= Duration::from_millis(100));
    let hello = s.recv().await;
    assert_eq!(hello.version_info, 1);
    assert_eq!(hello.hash, example(1).content_hash().to_hex());
    let health = shared.health();
    assert_eq!(health.reconnects, 2);
    assert!(health.last_error.unwrap().starts_with("http://b:2: "));

    // Shutdown: the loop ends at once.
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("the link did not stop")
        .unwrap();
    assert!(!shared.health().connected);
}

#[tokio::test(start_paused = true)]
async fn a_version_from_a_server_cut_off_from_its_store_is_applied_then_the_agent_moves() {
    let (fake, mut accepted) = Fake::new([Script::Accept, Script::Accept]);
    let config = config();
    let applier = applier();
    let shared = applier.shared.clone();
    let (stop, shutdown) = watch::channel(false);
    let backoff = config.backoff.build().unwrap();
    let task = tokio::spawn(super::run(
        config,
        applier.clone(),
        fake.clone(),
        backoff,
        shutdown,
    ));
    let mut s = accepted.recv().await.unwrap();
    let hello = s.recv().await;
    assert!(hello.accept_store_notices);
    // A quiet start: confirmed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(shared.health().staleness, Duration::ZERO);

    // The head, from a server that has not reached its store for 4 s: the
    // agent applies and ACKs it (it is the best there is), but nothing is
    // confirmed (not the quiet start either: staleness counts from 4 s
    // ago), and it leaves for the other server.
    let mut head = response(1, &example(1), "a");
    (head.store_unreachable, head.store_unreachable_ms) = (true, 4000);
    s.responses.send(Ok(head)).await.unwrap();
    let ack = s.recv().await;
    assert_eq!((ack.version_info, ack.response_nonce.as_str()), (1, "a"));
    assert_eq!(shared.current.load().version, 1);
    let left = Instant::now();
    let mut s = accepted.recv().await.unwrap();
    assert_eq!(s.server, 1);
    assert!(
        left.elapsed() <= Duration::from_millis(100),
        "{:?}",
        left.elapsed()
    );
    let health = shared.health();
    assert_eq!(health.staleness, Duration::from_secs(4) + left.elapsed());
    assert!(
        health
            .last_error
            .unwrap()
            .starts_with("http://a:1: the server cannot reach its store"),
    );
    assert_eq!(s.recv().await.version_info, 1);

    // The other server reaches its store: its notice saying so is neither
    // applied nor answered, and its quiet start confirms what runs.
    s.responses
        .send(Ok(pb::WatchResponse {
            group: "edge".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let health = shared.health();
    assert_eq!(health.staleness, Duration::ZERO);
    assert_eq!(health.applies, 1, "the notice applied nothing");
    assert_eq!(health.nacks, 0, "and was not refused");
    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_data_plane_health_goes_out_on_every_request_and_on_its_own_when_it_changes() {
    use crate::report::{DataPlaneHealth, HealthReport};
    let (fake, mut accepted) = Fake::new([Script::Accept, Script::Accept]);
    let config = config();
    let applier = applier();
    let shared = applier.shared.clone();
    let (stop, shutdown) = watch::channel(false);
    let backoff = config.backoff.build().unwrap();
    let task = tokio::spawn(super::run(
        config,
        applier.clone(),
        fake.clone(),
        backoff,
        shutdown,
    ));
    let mut s = accepted.recv().await.unwrap();
    let hello = s.recv().await;
    assert_eq!(hello.health, None, "nothing reported yet");
    let opened = Instant::now();

    // A change goes out at once, on its own, shaped like a heartbeat (no
    // node, no nonce: the server takes it for no answer).
    let degraded = |version, reason: &str| {
        HealthReport::new(
            version,
            DataPlaneHealth::Degraded {
                reason: reason.into(),
            },
        )
    };
    shared.reports.report(degraded(0, "502s"));
    let beat = s.recv().await;
    assert_eq!(opened.elapsed(), Duration::ZERO);
    assert!(beat.node.is_none() && beat.response_nonce.is_empty());
    let sent = |degraded, reason: &str, version| {
        Some(pb::Health {
            degraded,
            reason: reason.into(),
            version,
        })
    };
    assert_eq!(beat.health, sent(true, "502s", 0));

    // Two more changes right after: one request, a second after the last
    // one, carrying the latest.
    shared.reports.report(degraded(0, "503s"));
    shared
        .reports
        .report(HealthReport::new(0, DataPlaneHealth::Healthy));
    let beat = s.recv().await;
    assert_eq!(opened.elapsed(), super::session::HEALTH_MIN_GAP);
    assert_eq!(beat.health, sent(false, "", 0));

    // The same report again wakes nothing: the next request is the
    // heartbeat at 30 s, which carries it too.
    shared
        .reports
        .report(HealthReport::new(0, DataPlaneHealth::Healthy));
    let beat = s.recv().await;
    assert_eq!(opened.elapsed(), Duration::from_secs(30));
    assert_eq!(beat.health, sent(false, "", 0));

    // An ACK carries the latest too.
    shared.reports.report(degraded(1, "slow"));
    assert_eq!(s.recv().await.health, sent(true, "slow", 1));
    s.responses
        .send(Ok(response(1, &example(1), "a")))
        .await
        .unwrap();
    let ack = s.recv().await;
    assert_eq!((ack.version_info, ack.response_nonce.as_str()), (1, "a"));
    assert_eq!(ack.health, sent(true, "slow", 1));

    // A new stream says it in its hello.
    drop(s.responses);
    let mut s = accepted.recv().await.unwrap();
    assert_eq!(s.recv().await.health, sent(true, "slow", 1));

    stop.send_replace(true);
    task.await.unwrap();
}
