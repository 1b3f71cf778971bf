//! A fleet of simulated agents: N real `ConfigDiscovery.Watch` streams over
//! C HTTP/2 connections (agent `i` uses connection `i % C`), each behaving
//! like `vane-agent` on the wire: it names its node and what it runs, accepts
//! deltas (unless told not to), checks every response, ACKs it, and answers
//! a delta it cannot use with a NACK carrying `want_full`.
//!
//! # Checking responses ([`Verify`])
//! A real agent decodes, validates and hashes every version it receives.
//! Ten thousand agents doing that on the server's own two cores would
//! measure the load generator, not the server, so by default
//! ([`Verify::Shared`]) each distinct response (version and base) is checked
//! once for the whole fleet, for real (decode, rebuild from the delta,
//! validate, SHA-256 of the canonical form, compare with the response's
//! hash), and every agent waits for that check before it ACKs; every agent
//! still checks that the response names its own running version as the
//! delta's base. [`Verify::Every`] makes each agent do the whole check
//! itself (on a bounded number of threads); [`Verify::None`] ACKs unchecked.
//!
//! # Reconnecting ([`FleetConfig::reconnect`])
//! By default a stream that ends is an error (the fan-out scenario never
//! expects one). With `reconnect`, every agent has a connection of its own
//! and, when its stream ends or an attempt fails, reconnects as `vane-agent`
//! does: paced by the agent's own [`Pacing`] with the agent's default
//! settings (backoff, jitter, circuit breaker), a new connection per
//! attempt with the agent's connect and open timeouts and HTTP/2
//! keepalive, heartbeats, and a first request naming what it runs.
//!
//! # Timing
//! Every response's arrival and ACK are stamped per agent and per version;
//! a version is *expected* ([`Fleet::expect`]) before it is pushed, so no
//! arrival can be missed. After [`Fleet::begin_outage`], each agent's
//! re-sync is stamped: the first moment a stream opened after the outage
//! began has the server knowing the agent runs the head, either because
//! its first request named the head (the server records that as the
//! agent's ACK, SYNCED in `vanectl status`, and sends nothing) or because
//! it ACKed the head sent on that stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::sync::{Notify, OnceCell, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use vane_agent::AgentConfig;
use vane_agent::breaker::Permit;
use vane_agent::pacing::{Failure, Pacing, Retry};
use vane_proto as pb;

use crate::check::{Body, Refusal, Verified, verify};
pub use crate::times::{Carried, VersionTimes};

/// Largest response an agent accepts.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How responses are checked before they are ACKed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// ACK without looking at the body.
    None,
    /// Check each distinct response once for the whole fleet (default).
    Shared,
    /// Every agent checks every response itself.
    Every,
}

impl std::str::FromStr for Verify {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "shared" => Ok(Self::Shared),
            "every" => Ok(Self::Every),
            other => Err(format!(
                "verify: {other:?} is not one of none, shared, every"
            )),
        }
    }
}

/// What the fleet is.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The control server, e.g. `http://127.0.0.1:7070`.
    pub server: String,
    /// The group every agent watches.
    pub group: String,
    /// Number of agents (N).
    pub agents: usize,
    /// Number of HTTP/2 connections (C, at most N).
    pub connections: usize,
    /// Whether agents accept deltas.
    pub accept_delta: bool,
    /// How responses are checked.
    pub verify: Verify,
    /// Connections opened at once while connecting (the server's accept
    /// backlog is finite).
    pub connect_parallelism: usize,
    /// Threads checking responses at once with [`Verify::Every`].
    pub verify_threads: usize,
    /// Agents reconnect like `vane-agent` when a stream ends, each on a
    /// connection of its own (`connections` must equal `agents`); without
    /// it a stream that ends is an error.
    pub reconnect: bool,
}

/// The fleet-wide check of one (version, base version).
type Check = OnceCell<Result<Arc<Verified>, Refusal>>;

/// Shared state of the fleet.
#[derive(Debug)]
struct Shared {
    config: FleetConfig,
    started: Instant,
    // Read by every agent for every response, written once per push: a
    // read-write lock, so agents on different threads do not queue.
    expected: RwLock<HashMap<u64, Arc<VersionTimes>>>,
    /// One check per (version, base version), with [`Verify::Shared`].
    checks: RwLock<HashMap<(u64, u64), Arc<Check>>>,
    /// Checked versions by number, to rebuild deltas from.
    verified: Mutex<HashMap<u64, Arc<Verified>>>,
    verify_slots: Semaphore,
    streams_open: AtomicUsize,
    /// Connect attempts (reconnecting fleets), and how many failed.
    attempts: AtomicU64,
    failed_attempts: AtomicU64,
    /// The version agents must run to count as re-synced (0: none yet).
    head: AtomicU64,
    /// When the current outage began (a stamp; 0: none).
    outage_at: AtomicU64,
    /// Per agent: when its current stream opened (0: none open), and when
    /// it re-synced after the outage began (0: not yet).
    opened_at: Vec<AtomicU64>,
    resynced: Vec<AtomicU64>,
    resync_left: AtomicUsize,
    all_resynced: Notify,
    want_full_sent: AtomicU64,
    nacks_sent: AtomicU64,
    errors: Mutex<Vec<String>>,
    error_seen: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64 + 1
    }

    fn times(&self, version: u64) -> Option<Arc<VersionTimes>> {
        read(&self.expected).get(&version).cloned()
    }

    /// Agent `id` runs `running` on a stream: re-synced, if that stream
    /// opened after the outage began and `running` is the head.
    fn mark_if_resynced(&self, id: usize, running: Option<&Verified>) {
        let outage = self.outage_at.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        let opened = self.opened_at[id].load(Ordering::Acquire);
        if outage == 0 || head == 0 || opened <= outage || running.map(|r| r.version) != Some(head)
        {
            return;
        }
        if VersionTimes::stamp(&self.resynced[id], self.now())
            && self.resync_left.fetch_sub(1, Ordering::AcqRel) == 1
        {
            self.all_resynced.notify_waiters();
        }
    }

    fn fail(&self, agent: usize, e: impl std::fmt::Display) {
        let mut errors = lock(&self.errors);
        if errors.len() < 16 {
            errors.push(format!("agent {agent}: {e}"));
        }
        drop(errors);
        self.error_seen.notify_waiters();
    }
}

/// A running fleet. Dropping it ends every stream.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    channels: Vec<Channel>,
}

/// What a reconnecting fleet went through during one outage.
#[derive(Debug, Clone)]
pub struct Resync {
    /// Milliseconds from the instant given to [`Fleet::wait_resynced`] to
    /// each agent's re-sync (agents that had not re-synced are left out).
    pub resynced_ms: Vec<f64>,
    /// Connect attempts since the outage began, and how many failed.
    pub attempts: u64,
    /// Of which failed.
    pub failed_attempts: u64,
    /// Agents whose stream outlived the outage (an outage shorter than
    /// HTTP/2 keepalive's detection): re-synced the moment the server
    /// answered again.
    pub kept_stream: usize,
}

impl Fleet {
    /// A fleet with nothing connected yet.
    pub fn new(config: FleetConfig) -> Result<Self> {
        if config.agents == 0 || config.connections == 0 || config.connections > config.agents {
            bail!(
                "connections: must be between 1 and the number of agents ({}), got {}",
                config.agents,
                config.connections
            );
        }
        if config.reconnect && config.connections != config.agents {
            bail!("connections: reconnecting agents each have a connection of their own");
        }
        let stamps = || (0..config.agents).map(|_| AtomicU64::new(0)).collect();
        let verify_threads = config.verify_threads.max(1);
        Ok(Self {
            shared: Arc::new(Shared {
                started: Instant::now(),
                expected: RwLock::new(HashMap::new()),
                checks: RwLock::new(HashMap::new()),
                verified: Mutex::new(HashMap::new()),
                verify_slots: Semaphore::new(verify_threads),
                streams_open: AtomicUsize::new(0),
                attempts: AtomicU64::new(0),
                failed_attempts: AtomicU64::new(0),
                head: AtomicU64::new(0),
                outage_at: AtomicU64::new(0),
                opened_at: stamps(),
                resynced: stamps(),
                resync_left: AtomicUsize::new(0),
                all_resynced: Notify::new(),
                want_full_sent: AtomicU64::new(0),
                nacks_sent: AtomicU64::new(0),
                errors: Mutex::new(Vec::new()),
                error_seen: Notify::new(),
                config,
            }),
            tasks: JoinSet::new(),
            channels: Vec::new(),
        })
    }

    /// When the fleet started: the origin of its time stamps.
    pub fn started(&self) -> Instant {
        self.shared.started
    }

    /// Starts recording arrivals and ACKs of `version`.
    pub fn expect(&self, version: u64) -> Arc<VersionTimes> {
        let times = Arc::new(VersionTimes::new(version, self.shared.config.agents));
        write(&self.shared.expected).insert(version, Arc::clone(&times));
        times
    }

    /// Opens the connections and every agent's stream; returns once every
    /// stream is open.
    pub async fn connect(&mut self, within: Duration) -> Result<()> {
        let config = self.shared.config.clone();
        let endpoint = Endpoint::from_shared(config.server.clone())
            .with_context(|| format!("server: bad URL {:?}", config.server))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        let deadline = tokio::time::Instant::now() + within;
        if config.reconnect {
            let agent = AgentConfig::default();
            let endpoint = endpoint
                .connect_timeout(agent.connect_timeout)
                .http2_keep_alive_interval(agent.keepalive_interval)
                .keep_alive_timeout(agent.keepalive_timeout)
                .keep_alive_while_idle(true);
            // Only the first attempts are spread out, so the fleet starts
            // clean; later ones are paced as the agent paces them.
            let first = Arc::new(Semaphore::new(config.connect_parallelism.max(1)));
            for id in 0..config.agents {
                let (endpoint, shared, first) = (
                    endpoint.clone(),
                    Arc::clone(&self.shared),
                    Arc::clone(&first),
                );
                self.tasks
                    .spawn(async move { run_reconnecting(id, endpoint, &shared, &first).await });
            }
            return self.wait_open(deadline).await;
        }
        // Connect in waves, so the server's accept backlog never overflows
        // (an overflow costs a one-second SYN retry).
        let parallel = config.connect_parallelism.max(1);
        let mut channels = Vec::with_capacity(config.connections);
        while channels.len() < config.connections {
            let wave = parallel.min(config.connections - channels.len());
            let connects = (0..wave).map(|_| endpoint.connect());
            let opened = tokio::time::timeout_at(deadline, futures::future::join_all(connects))
                .await
                .map_err(|_| anyhow!("timed out opening {} connections", config.connections))?;
            for c in opened {
                channels.push(c.with_context(|| format!("connecting to {}", config.server))?);
            }
        }
        self.channels = channels;
        for id in 0..config.agents {
            let channel = self.channels[id % config.connections].clone();
            let shared = Arc::clone(&self.shared);
            self.tasks.spawn(async move {
                if let Err(e) = run_agent(id, channel, &shared).await {
                    shared.fail(id, format!("{e:#}"));
                }
            });
        }
        self.wait_open(deadline).await
    }

    /// Waits until every agent has a stream open.
    async fn wait_open(&self, deadline: tokio::time::Instant) -> Result<()> {
        let config = &self.shared.config;
        loop {
            let open = self.shared.streams_open.load(Ordering::Relaxed);
            if open == config.agents {
                return Ok(());
            }
            self.check_errors()?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "only {open} of {} watch streams opened in time",
                    config.agents
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every agent acked `times`'s version.
    pub async fn wait_acked(&self, times: &VersionTimes, within: Duration) -> Result<()> {
        let wait = async {
            loop {
                let notified = times.all_acked.notified();
                let errored = self.shared.error_seen.notified();
                if times.acks_left.load(Ordering::Acquire) == 0 {
                    return Ok(());
                }
                self.check_errors()?;
                tokio::select! {
                    () = notified => {}
                    () = errored => {}
                    // A safety net against a missed wake-up.
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        };
        match tokio::time::timeout(within, wait).await {
            Ok(r) => r,
            Err(_) => bail!(
                "version {}: only {} of {} agents acked within {within:?}",
                times.version,
                self.shared.config.agents - times.acks_left.load(Ordering::Relaxed),
                self.shared.config.agents
            ),
        }
    }

    /// The version agents must run to count as re-synced after an outage.
    pub fn set_head(&self, version: u64) {
        self.shared.head.store(version, Ordering::Release);
    }

    /// An outage begins now: from here on each agent counts as re-synced
    /// once a stream opened after this instant has it running the head.
    pub fn begin_outage(&self) {
        let shared = &self.shared;
        shared
            .resync_left
            .store(shared.config.agents, Ordering::Release);
        for slot in &shared.resynced {
            slot.store(0, Ordering::Release);
        }
        shared.attempts.store(0, Ordering::Release);
        shared.failed_attempts.store(0, Ordering::Release);
        shared.outage_at.store(shared.now(), Ordering::Release);
    }

    /// Waits (at most `within`) until every agent has re-synced since
    /// [`Self::begin_outage`]; times are measured from `back` (when the
    /// server answered again). With `streams_may_survive` (the same server
    /// process answers again, e.g. after SIGSTOP and SIGCONT), an agent
    /// still on the stream it had before the outage, once every other
    /// agent re-synced, kept its stream: it counts as re-synced at `back`.
    pub async fn wait_resynced(
        &self,
        back: Instant,
        within: Duration,
        streams_may_survive: bool,
    ) -> Resync {
        let shared = &self.shared;
        let outage = shared.outage_at.load(Ordering::Acquire);
        let on_old_stream = |id: usize| {
            let opened = shared.opened_at[id].load(Ordering::Acquire);
            opened != 0 && opened <= outage
        };
        let waiting_on_old = || {
            (0..shared.config.agents)
                .filter(|&id| shared.resynced[id].load(Ordering::Acquire) == 0 && on_old_stream(id))
                .count()
        };
        let wait = async {
            loop {
                let notified = shared.all_resynced.notified();
                let left = shared.resync_left.load(Ordering::Acquire);
                if left == 0 || (streams_may_survive && waiting_on_old() == left) {
                    return;
                }
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        };
        // Not re-synced in time: reported as missing from the samples.
        let _ = tokio::time::timeout(within, wait).await;
        let mut kept_stream = 0;
        if streams_may_survive {
            let back_stamp = back.saturating_duration_since(shared.started).as_nanos() as u64 + 1;
            for id in 0..shared.config.agents {
                if on_old_stream(id) && VersionTimes::stamp(&shared.resynced[id], back_stamp) {
                    kept_stream += 1;
                }
            }
        }
        Resync {
            resynced_ms: VersionTimes::since(&shared.resynced, shared.started, back),
            attempts: shared.attempts.load(Ordering::Relaxed),
            failed_attempts: shared.failed_attempts.load(Ordering::Relaxed),
            kept_stream,
        }
    }

    /// NACKs asking for the full snapshot sent so far, and other NACKs.
    pub fn nacks(&self) -> (u64, u64) {
        (
            self.shared.want_full_sent.load(Ordering::Relaxed),
            self.shared.nacks_sent.load(Ordering::Relaxed),
        )
    }

    fn check_errors(&self) -> Result<()> {
        let errors = lock(&self.shared.errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("agents failed: {}", errors.join("; ")))
        }
    }

    /// Ends every stream and closes the connections.
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.channels.clear();
    }
}

/// One agent's stream, until it fails or the fleet stops (without
/// `reconnect`: a stream that ends is an error).
async fn run_agent(id: usize, channel: Channel, shared: &Shared) -> Result<()> {
    let (tx, inbound) = open_stream(id, channel, shared, None)
        .await
        .context("opening the watch stream")?;
    shared.streams_open.fetch_add(1, Ordering::Relaxed);
    serve(id, &tx, inbound, shared, &mut None, &mut false).await?;
    bail!("the server ended the stream")
}

/// As the agent's link (`HEALTHY_STREAM_AFTER`): a stream that stayed up
/// this long delivered, even if nothing came on it.
const HEALTHY_STREAM_AFTER: Duration = Duration::from_secs(10);

/// One agent that reconnects like `vane-agent` (see the module docs),
/// until the fleet stops. `first` spreads out the fleet's first attempts.
async fn run_reconnecting(id: usize, endpoint: Endpoint, shared: &Shared, first: &Semaphore) {
    let agent = AgentConfig::default();
    let backoff = match agent.backoff.build() {
        Ok(backoff) => backoff,
        Err(e) => return shared.fail(id, e),
    };
    let mut pacing = Pacing::new(backoff, agent.breaker);
    let mut running: Option<Arc<Verified>> = None;
    let mut first = first.acquire().await.ok();
    loop {
        if let Permit::WaitUntil(until) = pacing.permit(tokio::time::Instant::now()) {
            tokio::time::sleep_until(until).await;
            continue;
        }
        shared.attempts.fetch_add(1, Ordering::Relaxed);
        // A new connection per attempt, under the agent's connect timeout
        // (on the endpoint), then its wait for the call to be answered.
        let opened = match endpoint.connect().await {
            Ok(channel) => tokio::time::timeout(
                agent.connect_timeout,
                open_stream(id, channel, shared, running.as_deref()),
            )
            .await
            .unwrap_or_else(|_| Err(tonic::Status::unavailable("timed out opening the stream"))),
            Err(e) => Err(tonic::Status::unavailable(format!("connect failed: {e}"))),
        };
        drop(first.take());
        let pause = match opened {
            Err(status) => {
                shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
                let retry = Retry::after_status(status.code());
                pacing.failed(tokio::time::Instant::now(), Failure::Connect, retry)
            }
            Ok((tx, inbound)) => {
                pacing.opened();
                let opened_at = tokio::time::Instant::now();
                shared.opened_at[id].store(shared.now(), Ordering::Release);
                shared.streams_open.fetch_add(1, Ordering::Relaxed);
                // The server admitted the stream after reading the first
                // request: if that named the head, it is recorded as acked.
                shared.mark_if_resynced(id, running.as_deref());
                let mut answered = false;
                let ended = serve(id, &tx, inbound, shared, &mut running, &mut answered).await;
                shared.streams_open.fetch_sub(1, Ordering::Relaxed);
                shared.opened_at[id].store(0, Ordering::Release);
                let delivered = answered || opened_at.elapsed() >= HEALTHY_STREAM_AFTER;
                let retry = ended
                    .err()
                    .and_then(|e| e.downcast_ref::<tonic::Status>().map(|s| s.code()))
                    .map_or(Retry::Backoff, Retry::after_status);
                let now = tokio::time::Instant::now();
                pacing.failed(now, Failure::Stream { delivered }, retry)
            }
        };
        tokio::time::sleep_until(pause.until()).await;
    }
}

/// Opens agent `id`'s watch on `channel`, its first request naming what it
/// runs; resolves once the server has answered the call.
async fn open_stream(
    id: usize,
    channel: Channel,
    shared: &Shared,
    running: Option<&Verified>,
) -> Result<
    (
        mpsc::Sender<pb::WatchRequest>,
        tonic::Streaming<pb::WatchResponse>,
    ),
    tonic::Status,
> {
    let config = &shared.config;
    let mut client = pb::config_discovery_client::ConfigDiscoveryClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let node = pb::Node {
        id: format!("agent-{id}"),
        group: config.group.clone(),
        labels: Default::default(),
        agent_build: "vane-loadgen".into(),
    };
    // Bounded: one answer per response, and responses are handled in order.
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(pb::WatchRequest {
        node: Some(node),
        version_info: running.map_or(0, |r| r.version),
        hash: running.map(|r| r.hash.clone()).unwrap_or_default(),
        accept_delta: config.accept_delta,
        ..Default::default()
    })
    .map_err(|_| tonic::Status::internal("request stream closed"))?;
    let inbound = client.watch(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

/// Answers the responses of one open stream, with a heartbeat every
/// `vane-agent` heartbeat interval, until the stream ends (`Ok`) or fails.
/// `running` is what the agent runs, carried across streams; `answered`
/// turns true once a response was answered.
async fn serve(
    id: usize,
    tx: &mpsc::Sender<pb::WatchRequest>,
    mut inbound: tonic::Streaming<pb::WatchResponse>,
    shared: &Shared,
    running: &mut Option<Arc<Verified>>,
    answered: &mut bool,
) -> Result<()> {
    let config = &shared.config;
    let every = AgentConfig::default().heartbeat_interval;
    let mut heartbeats = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let response = tokio::select! {
            message = inbound.message() => match message.context("watch stream")? {
                Some(response) => response,
                None => return Ok(()),
            },
            _ = heartbeats.tick() => {
                let beat = pb::WatchRequest {
                    version_info: running.as_ref().map_or(0, |r| r.version),
                    hash: running.as_ref().map(|r| r.hash.clone()).unwrap_or_default(),
                    accept_delta: config.accept_delta,
                    ..Default::default()
                };
                // A full queue already holds a request the server will see.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(beat) {
                    bail!("request stream closed");
                }
                continue;
            }
        };
        let arrived = shared.now();
        let times = shared.times(response.version);
        if let Some(t) = &times {
            VersionTimes::stamp(&t.received[id], arrived);
            match &response.body {
                Some(pb::watch_response::Body::Snapshot(b)) => {
                    t.full.fetch_add(1, Ordering::Relaxed);
                    t.full_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Some(pb::watch_response::Body::Delta(b)) => {
                    t.delta.fetch_add(1, Ordering::Relaxed);
                    t.delta_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                None => {}
            }
        }
        let answer = match check(shared, running.as_deref(), &response).await {
            Ok(now_running) => {
                let answer = pb::WatchRequest {
                    version_info: now_running.version,
                    hash: now_running.hash.clone(),
                    response_nonce: response.nonce.clone(),
                    accept_delta: config.accept_delta,
                    ..Default::default()
                };
                *running = Some(now_running);
                answer
            }
            Err(Refusal { want_full, reason }) => {
                let counter = if want_full {
                    &shared.want_full_sent
                } else {
                    &shared.nacks_sent
                };
                counter.fetch_add(1, Ordering::Relaxed);
                pb::WatchRequest {
                    version_info: running.as_ref().map_or(0, |r| r.version),
                    hash: running.as_ref().map(|r| r.hash.clone()).unwrap_or_default(),
                    response_nonce: response.nonce.clone(),
                    error_detail: Some(pb::ErrorDetail {
                        code: if want_full { 9 } else { 3 },
                        message: reason,
                    }),
                    want_full,
                    accept_delta: config.accept_delta,
                    ..Default::default()
                }
            }
        };
        let acked = answer.error_detail.is_none();
        tx.send(answer)
            .await
            .map_err(|_| anyhow!("request stream closed"))?;
        *answered = true;
        if acked
            && let Some(t) = &times
            && VersionTimes::stamp(&t.acked[id], shared.now())
            && t.acks_left.fetch_sub(1, Ordering::AcqRel) == 1
        {
            t.all_acked.notify_waiters();
        }
        if acked {
            shared.mark_if_resynced(id, running.as_deref());
        }
    }
}

/// Checks a response against what the agent runs; returns what it runs
/// after applying it.
async fn check(
    shared: &Shared,
    running: Option<&Verified>,
    r: &pb::WatchResponse,
) -> Result<Arc<Verified>, Refusal> {
    let body = match &r.body {
        Some(pb::watch_response::Body::Snapshot(b)) => Body::Full(b.clone()),
        Some(pb::watch_response::Body::Delta(d)) => {
            let runs_base =
                running.is_some_and(|run| run.version == r.base_version && run.hash == r.base_hash);
            if !runs_base {
                return Err(Refusal::want_full(format!(
                    "delta: its base is version {}, this agent runs version {}",
                    r.base_version,
                    running.map_or(0, |run| run.version)
                )));
            }
            Body::Delta(d.clone())
        }
        None => return Err(Refusal::refuse("body: response carries no snapshot")),
    };
    match shared.config.verify {
        Verify::None => Ok(Arc::new(Verified {
            version: r.version,
            hash: r.hash.clone(),
            snapshot: None,
        })),
        Verify::Every => {
            let base = running.and_then(|run| run.snapshot.clone());
            let (version, hash) = (r.version, r.hash.clone());
            let _slot = shared
                .verify_slots
                .acquire()
                .await
                .map_err(|_| Refusal::refuse("the fleet is stopping"))?;
            tokio::task::spawn_blocking(move || verify(version, &hash, body, base.as_deref()))
                .await
                .map_err(|e| Refusal::refuse(format!("check task failed: {e}")))?
                .map(Arc::new)
        }
        Verify::Shared => {
            let key = (r.version, r.base_version);
            let known = read(&shared.checks).get(&key).cloned();
            let cell = match known {
                Some(cell) => cell,
                None => Arc::clone(write(&shared.checks).entry(key).or_default()),
            };
            let result = cell
                .get_or_init(|| async {
                    let base = lock(&shared.verified).get(&r.base_version).cloned();
                    let base = base
                        .filter(|b| b.hash == r.base_hash)
                        .and_then(|b| b.snapshot.clone());
                    let (version, hash) = (r.version, r.hash.clone());
                    let checked = tokio::task::spawn_blocking(move || {
                        verify(version, &hash, body, base.as_deref())
                    })
                    .await
                    .map_err(|e| Refusal::refuse(format!("check task failed: {e}")))
                    .and_then(|r| r)
                    .map(Arc::new);
                    if let Ok(v) = &checked {
                        let mut verified = lock(&shared.verified);
                        verified.insert(v.version, Arc::clone(v));
                        // Keep the last few versions only: bases are recent.
                        let newest = verified.keys().max().copied().unwrap_or(0);
                        verified.retain(|&k, _| k + 8 > newest);
                    }
                    checked
                })
                .await;
            match result {
                // The fleet-wide check is of this (version, base); the
                // response must also claim the hash that was checked.
                Ok(v) if v.hash == r.hash => Ok(Arc::clone(v)),
                Ok(v) => Err(Refusal::want_full(format!(
                    "hash: response claims {} but the content hashes to {}",
                    r.hash, v.hash
                ))),
                Err(refusal) => Err(refusal.clone()),
            }
        }
    }
}
