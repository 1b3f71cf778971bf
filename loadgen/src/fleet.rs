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
//! # Timing
//! Every response's arrival and ACK are stamped per agent and per version;
//! a version is *expected* ([`Fleet::expect`]) before it is pushed, so no
//! arrival can be missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use tokio::sync::{Notify, OnceCell, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use vane_model::Snapshot;
use vane_proto as pb;

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
}

/// Arrival and ACK times of one version, per agent.
#[derive(Debug)]
pub struct VersionTimes {
    version: u64,
    /// Nanoseconds since the fleet started, plus one (0: not yet).
    received: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    acks_left: AtomicUsize,
    all_acked: Notify,
    full: AtomicU64,
    delta: AtomicU64,
    full_bytes: AtomicU64,
    delta_bytes: AtomicU64,
}

/// What the responses of one version were, summed over the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Responses with a full snapshot.
    pub full: u64,
    /// Responses with a delta.
    pub delta: u64,
    /// Body bytes of the full responses.
    pub full_bytes: u64,
    /// Body bytes of the delta responses.
    pub delta_bytes: u64,
}

impl VersionTimes {
    fn new(version: u64, agents: usize) -> Self {
        Self {
            version,
            received: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            acks_left: AtomicUsize::new(agents),
            all_acked: Notify::new(),
            full: AtomicU64::new(0),
            delta: AtomicU64::new(0),
            full_bytes: AtomicU64::new(0),
            delta_bytes: AtomicU64::new(0),
        }
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Milliseconds from `since` to each agent's first arrival of this
    /// version (agents it never reached are left out).
    pub fn received_ms(&self, started: Instant, since: Instant) -> Vec<f64> {
        Self::since(&self.received, started, since)
    }

    /// Milliseconds from `since` to each agent's ACK of this version.
    pub fn acked_ms(&self, started: Instant, since: Instant) -> Vec<f64> {
        Self::since(&self.acked, started, since)
    }

    /// What the responses carried.
    pub fn carried(&self) -> Carried {
        Carried {
            full: self.full.load(Ordering::Relaxed),
            delta: self.delta.load(Ordering::Relaxed),
            full_bytes: self.full_bytes.load(Ordering::Relaxed),
            delta_bytes: self.delta_bytes.load(Ordering::Relaxed),
        }
    }

    fn since(stamps: &[AtomicU64], started: Instant, since: Instant) -> Vec<f64> {
        let offset = since.saturating_duration_since(started).as_nanos() as f64;
        stamps
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s > 0)
            .map(|s| ((s - 1) as f64 - offset).max(0.0) / 1e6)
            .collect()
    }

    fn stamp(slot: &AtomicU64, now: u64) -> bool {
        slot.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// A checked version, as agents run it.
#[derive(Debug)]
struct Verified {
    version: u64,
    hash: String,
    /// The content, when it was checked (not with [`Verify::None`]).
    snapshot: Option<Arc<Snapshot>>,
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
        let verify_threads = config.verify_threads.max(1);
        Ok(Self {
            shared: Arc::new(Shared {
                started: Instant::now(),
                expected: RwLock::new(HashMap::new()),
                checks: RwLock::new(HashMap::new()),
                verified: Mutex::new(HashMap::new()),
                verify_slots: Semaphore::new(verify_threads),
                streams_open: AtomicUsize::new(0),
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

/// One agent's stream, until it fails or the fleet stops.
async fn run_agent(id: usize, channel: Channel, shared: &Shared) -> Result<()> {
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
    tx.send(pb::WatchRequest {
        node: Some(node),
        accept_delta: config.accept_delta,
        ..Default::default()
    })
    .await
    .map_err(|_| anyhow!("request stream closed"))?;
    let mut inbound = client
        .watch(ReceiverStream::new(rx))
        .await
        .context("opening the watch stream")?
        .into_inner();
    shared.streams_open.fetch_add(1, Ordering::Relaxed);
    let mut running: Option<Arc<Verified>> = None;
    while let Some(response) = inbound.message().await.context("watch stream")? {
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
                running = Some(now_running);
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
        if acked
            && let Some(t) = &times
            && VersionTimes::stamp(&t.acked[id], shared.now())
            && t.acks_left.fetch_sub(1, Ordering::AcqRel) == 1
        {
            t.all_acked.notify_waiters();
        }
    }
    bail!("the server ended the stream")
}

/// Why a response was not ACKed.
#[derive(Debug, Clone)]
struct Refusal {
    want_full: bool,
    reason: String,
}

impl Refusal {
    fn want_full(reason: impl Into<String>) -> Self {
        Self {
            want_full: true,
            reason: reason.into(),
        }
    }

    fn refuse(reason: impl Into<String>) -> Self {
        Self {
            want_full: false,
            reason: reason.into(),
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

/// What a response carries.
enum Body {
    Full(Bytes),
    Delta(Bytes),
}

/// Decodes (or rebuilds from `base` and a delta), validates and hashes; the
/// content must hash to `hash`.
fn verify(
    version: u64,
    hash: &str,
    body: Body,
    base: Option<&Snapshot>,
) -> Result<Verified, Refusal> {
    let from_delta = matches!(body, Body::Delta(_));
    let decoded = match body {
        Body::Full(bytes) => Snapshot::decode(&bytes),
        Body::Delta(delta) => {
            let base =
                base.ok_or_else(|| Refusal::want_full("delta: the base is not known here"))?;
            let full = vane_model::delta::apply_encoded(base, &delta)
                .map_err(|e| Refusal::want_full(format!("delta does not apply: {e}")))?;
            Snapshot::decode(&full)
        }
    };
    let snapshot = decoded.map_err(|e| Refusal::refuse(e.to_string()))?;
    let actual = snapshot.content_hash().to_hex();
    if actual != hash {
        let reason = format!(
            "hash mismatch: version {version} claims hash {hash} but its content hashes to {actual}"
        );
        // A rebuilt snapshot that hashes wrong asks for the full one; a full
        // one that hashes wrong is refused.
        return Err(if from_delta {
            Refusal::want_full(reason)
        } else {
            Refusal::refuse(reason)
        });
    }
    Ok(Verified {
        version,
        hash: actual,
        snapshot: Some(Arc::new(snapshot)),
    })
}
