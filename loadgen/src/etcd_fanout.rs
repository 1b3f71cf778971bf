//! The fan-out scenario's peer: N plain etcd watches on one key over C
//! connections (watcher `i` uses connection `i % C`, each watch its own
//! `Watch` stream, as `etcd-client`'s `watch` opens one), then puts of the
//! value a Vane agent would be sent, each waited for until every watcher has
//! the event.
//!
//! The values are the canonical encoded snapshots Vane stores and sends
//! (`snapshots::snapshot`, encoded as the server encodes them): a *whole*
//! put changes every route, a *one-route* put one route of the same
//! snapshot. etcd has no deltas: for a one-route change its watchers get
//! the whole value again, which is what a plain watch costs.
//!
//! Measured, as for Vane: the server's `VmRSS` before any watch (the key
//! written once, a settle) and with every watch created, so (watching −
//! baseline) / N per watcher; per put, the time from the start of the put
//! call to each watcher having read the event, and to the last one (end to
//! end); the put call itself; the server's CPU per put. Every watcher must
//! see every put's revision with the value's length, or the run fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::Client;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::fanout::{Phases, progress};
use crate::pusher::{Job, Pusher};
use crate::snapshots::snapshot;
use crate::stats::{Summary, round3};
use crate::sys;
use crate::times::VersionTimes;

/// What to run.
#[derive(Debug, Clone)]
pub struct EtcdFanoutConfig {
    /// etcd's client URL, e.g. `http://127.0.0.1:2379`.
    pub endpoint: String,
    /// etcd's process id, for its memory and CPU (none: not measured).
    pub server_pid: Option<u32>,
    /// The key watched.
    pub key: String,
    /// Watchers (N).
    pub watchers: usize,
    /// Connections (C).
    pub connections: usize,
    /// Routes in the snapshot whose encoding is the value (R).
    pub routes: usize,
    /// Puts in each phase.
    pub pushes: usize,
    /// Which phases run: whole (every route changes) and one-route.
    pub phases: Phases,
    /// Pause before memory is read, so the server settles.
    pub settle: Duration,
    /// Longest wait for all watches to be created, and for one put to
    /// reach every watcher.
    pub timeout: Duration,
    /// Watches (and connections) opened at once.
    pub connect_parallelism: usize,
}

/// The figures (one flat JSON object, fields named as the Vane report's).
#[derive(Debug, Clone, Serialize)]
pub struct EtcdFanoutReport {
    /// Always `etcd`.
    pub peer: String,
    /// Watchers (N).
    pub agents: usize,
    /// Connections (C).
    pub connections: usize,
    /// Routes in the value's snapshot (R).
    pub routes: usize,
    /// Puts per phase.
    pub pushes: usize,
    /// Bytes of the value put (the encoded snapshot), whole phase.
    pub full_bytes: u64,
    /// Bytes of the value put in the one-route phase: the whole snapshot
    /// again (etcd has no deltas).
    pub one_route_value_bytes: u64,
    /// Seconds to create every watch.
    pub connect_seconds: f64,
    /// Whole puts, end to end: the start of the put call -> the last
    /// watcher had the event, one sample per put: median, ms.
    pub full_e2e_p50_ms: f64,
    /// Its 99th percentile.
    pub full_e2e_p99_ms: f64,
    /// The slowest put.
    pub full_e2e_max_ms: f64,
    /// Whole puts: the start of the put call -> each watcher, all
    /// watchers and puts: median, ms.
    pub full_received_p50_ms: f64,
    /// Its 99th percentile.
    pub full_received_p99_ms: f64,
    /// The slowest.
    pub full_received_max_ms: f64,
    /// The same for one-route puts (the whole value each time): median, ms.
    pub delta_e2e_p50_ms: f64,
    /// Its 99th percentile.
    pub delta_e2e_p99_ms: f64,
    /// The slowest put.
    pub delta_e2e_max_ms: f64,
    /// One-route puts, each watcher: median, ms.
    pub delta_received_p50_ms: f64,
    /// Its 99th percentile.
    pub delta_received_p99_ms: f64,
    /// The slowest.
    pub delta_received_max_ms: f64,
    /// The put call itself (durable: etcd's WAL), whole phase: median, ms.
    pub push_full_rpc_p50_ms: f64,
    /// Its 99th percentile.
    pub push_full_rpc_p99_ms: f64,
    /// The same, one-route phase.
    pub push_delta_rpc_p50_ms: f64,
    /// Its 99th percentile.
    pub push_delta_rpc_p99_ms: f64,
    /// Server RSS with the key written and no watch, KiB.
    pub server_rss_baseline_kib: u64,
    /// Server RSS with every watch created, KiB.
    pub server_rss_idle_kib: u64,
    /// Server RSS after the puts, KiB.
    pub server_rss_after_pushes_kib: u64,
    /// (watching − baseline) / N: server memory per watcher, KiB.
    pub rss_per_agent_kib: f64,
    /// Server CPU seconds per whole put (until every watcher had it).
    pub server_cpu_seconds_per_full_push: f64,
    /// Server CPU seconds per one-route put.
    pub server_cpu_seconds_per_delta_push: f64,
    /// The load generator's CPU seconds per whole put.
    pub loadgen_cpu_seconds_per_full_push: f64,
    /// The same per one-route put.
    pub loadgen_cpu_seconds_per_delta_push: f64,
}

/// What the watchers share.
#[derive(Debug)]
struct Shared {
    started: Instant,
    /// Per put number (1, 2, …): the arrival of each watcher's event.
    expected: RwLock<HashMap<u64, Arc<VersionTimes>>>,
    /// Per watcher: the revision and value length of its last event.
    last_revision: Vec<AtomicI64>,
    last_len: Vec<AtomicI64>,
    created: AtomicUsize,
    errors: Mutex<Vec<String>>,
    error_seen: Notify,
}

impl Shared {
    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64 + 1
    }

    fn fail(&self, watcher: usize, e: impl std::fmt::Display) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() < 16 {
            errors.push(format!("watcher {watcher}: {e}"));
        }
        drop(errors);
        self.error_seen.notify_waiters();
    }

    fn check_errors(&self) -> Result<()> {
        let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("watchers failed: {}", errors.join("; ")))
        }
    }
}

/// One phase's samples.
#[derive(Debug, Default)]
struct Phase {
    received: Vec<f64>,
    e2e: Vec<f64>,
    rpc: Vec<f64>,
    server_cpu: f64,
    loadgen_cpu: f64,
    value_bytes: u64,
}

/// A put answers the revision it made.
type Putter = Pusher<Client, i64>;

/// Runs the scenario.
pub async fn run(config: &EtcdFanoutConfig) -> Result<EtcdFanoutReport> {
    let n = config.watchers;
    if n == 0 || config.connections == 0 || config.connections > n {
        bail!(
            "connections: must be between 1 and the number of watchers ({n}), got {}",
            config.connections
        );
    }
    if config.pushes == 0 || config.pushes > config.routes {
        bail!(
            "pushes: must be between 1 and the number of routes ({}), got {}",
            config.routes,
            config.pushes
        );
    }
    let rss = |pid: Option<u32>| pid.map(sys::rss_kib).transpose();

    let endpoint = config.endpoint.clone();
    let putter: Putter = Pusher::start(move || async move {
        Client::connect([endpoint.as_str()], None)
            .await
            .with_context(|| format!("connecting to etcd at {endpoint}"))
    })
    .await?;
    let first = value(config.routes, 0, 0)?;
    putter.call(put_job(&config.key, first)).await?;
    tokio::time::sleep(config.settle).await;
    let rss_baseline = rss(config.server_pid)?.unwrap_or(0);

    let shared = Arc::new(Shared {
        started: Instant::now(),
        expected: RwLock::new(HashMap::new()),
        last_revision: (0..n).map(|_| AtomicI64::new(0)).collect(),
        last_len: (0..n).map(|_| AtomicI64::new(0)).collect(),
        created: AtomicUsize::new(0),
        errors: Mutex::new(Vec::new()),
        error_seen: Notify::new(),
    });
    let connecting = Instant::now();
    let mut tasks = JoinSet::new();
    let clients = connect_clients(config).await?;
    for id in 0..n {
        let client = clients[id % config.connections].clone();
        let (mine, key) = (Arc::clone(&shared), config.key.clone());
        tasks.spawn(async move {
            if let Err(e) = watch(id, client, &key, &mine).await {
                mine.fail(id, format!("{e:#}"));
            }
        });
        // Waves, so etcd's accept queue and stream limits are not flooded.
        if (id + 1) % config.connect_parallelism.max(1) == 0 {
            wait_created(&shared, id + 1, connecting + config.timeout).await?;
        }
    }
    wait_created(&shared, n, connecting + config.timeout).await?;
    let connect_seconds = connecting.elapsed().as_secs_f64();
    progress(format_args!(
        "{n} etcd watches on {} connections created in {connect_seconds:.2}s",
        config.connections
    ));
    tokio::time::sleep(config.settle).await;
    let rss_idle = rss(config.server_pid)?.unwrap_or(0);

    let mut put_number = 0;
    let mut full = Phase::default();
    if config.phases.whole {
        for generation in 1..=config.pushes as u64 {
            put_number += 1;
            let v = value(config.routes, generation, 0)?;
            put(&shared, &putter, config, put_number, v, &mut full).await?;
        }
        progress(format_args!("{} whole puts done", config.pushes));
    }
    let generation = if config.phases.whole {
        config.pushes as u64
    } else {
        0
    };
    let mut delta = Phase::default();
    if config.phases.one_route {
        for edited in 1..=config.pushes {
            put_number += 1;
            let v = value(config.routes, generation, edited)?;
            put(&shared, &putter, config, put_number, v, &mut delta).await?;
        }
        progress(format_args!("{} one-route puts done", config.pushes));
    }
    tokio::time::sleep(config.settle).await;
    let rss_after = rss(config.server_pid)?.unwrap_or(0);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(clients);
    drop(putter);

    let per_push = |v: f64| round3(v / config.pushes as f64);
    let s = |v: &[f64]| Summary::of(v);
    let (fe, fr, de, dr) = (
        s(&full.e2e),
        s(&full.received),
        s(&delta.e2e),
        s(&delta.received),
    );
    Ok(EtcdFanoutReport {
        peer: "etcd".into(),
        agents: n,
        connections: config.connections,
        routes: config.routes,
        pushes: config.pushes,
        full_bytes: full.value_bytes,
        one_route_value_bytes: delta.value_bytes,
        connect_seconds: round3(connect_seconds),
        full_e2e_p50_ms: round3(fe.p50_ms),
        full_e2e_p99_ms: round3(fe.p99_ms),
        full_e2e_max_ms: round3(fe.max_ms),
        full_received_p50_ms: round3(fr.p50_ms),
        full_received_p99_ms: round3(fr.p99_ms),
        full_received_max_ms: round3(fr.max_ms),
        delta_e2e_p50_ms: round3(de.p50_ms),
        delta_e2e_p99_ms: round3(de.p99_ms),
        delta_e2e_max_ms: round3(de.max_ms),
        delta_received_p50_ms: round3(dr.p50_ms),
        delta_received_p99_ms: round3(dr.p99_ms),
        delta_received_max_ms: round3(dr.max_ms),
        push_full_rpc_p50_ms: round3(s(&full.rpc).p50_ms),
        push_full_rpc_p99_ms: round3(s(&full.rpc).p99_ms),
        push_delta_rpc_p50_ms: round3(s(&delta.rpc).p50_ms),
        push_delta_rpc_p99_ms: round3(s(&delta.rpc).p99_ms),
        server_rss_baseline_kib: rss_baseline,
        server_rss_idle_kib: rss_idle,
        server_rss_after_pushes_kib: rss_after,
        rss_per_agent_kib: round3(rss_idle.saturating_sub(rss_baseline) as f64 / n as f64),
        server_cpu_seconds_per_full_push: per_push(full.server_cpu),
        server_cpu_seconds_per_delta_push: per_push(delta.server_cpu),
        loadgen_cpu_seconds_per_full_push: per_push(full.loadgen_cpu),
        loadgen_cpu_seconds_per_delta_push: per_push(delta.loadgen_cpu),
    })
}

/// The encoded canonical snapshot (what Vane stores and sends whole).
fn value(routes: usize, generation: u64, edited: usize) -> Result<Vec<u8>> {
    let s = vane_model::Snapshot::try_from(snapshot(routes, generation, edited))
        .map_err(|e| anyhow!("the benchmark's snapshot is invalid: {e}"))?;
    Ok(s.encode())
}

/// A put of `value` to `key`, as a job for the putter; answers the revision.
fn put_job(key: &str, value: Vec<u8>) -> Job<Client, i64> {
    let key = key.to_owned();
    Box::new(move |client| {
        Box::pin(async move {
            let response = client
                .put(key.as_bytes(), value, None)
                .await
                .with_context(|| format!("put of {key:?}"))?;
            response
                .header()
                .map(|h| h.revision())
                .context("put: etcd's answer has no header")
        })
    })
}

/// The C clients, each one connection to etcd.
async fn connect_clients(config: &EtcdFanoutConfig) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(config.connections);
    while clients.len() < config.connections {
        let wave = config
            .connect_parallelism
            .max(1)
            .min(config.connections - clients.len());
        let connects = (0..wave).map(|_| Client::connect([config.endpoint.as_str()], None));
        for c in futures::future::join_all(connects).await {
            clients.push(c.with_context(|| format!("connecting to etcd at {}", config.endpoint))?);
        }
    }
    Ok(clients)
}

/// Waits until `count` watches are created (or one failed).
async fn wait_created(shared: &Shared, count: usize, deadline: Instant) -> Result<()> {
    loop {
        shared.check_errors()?;
        let created = shared.created.load(Ordering::Acquire);
        if created >= count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("only {created} of {count} etcd watches were created in time");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One watcher: its own `Watch` stream on `client`'s connection; stamps
/// the arrival of its k-th event as put number k.
async fn watch(id: usize, mut client: Client, key: &str, shared: &Shared) -> Result<()> {
    let mut stream = client.watch(key, None).await.context("watch")?;
    let mut events: u64 = 0;
    while let Some(response) = stream.message().await.context("watch stream")? {
        if response.created() {
            shared.created.fetch_add(1, Ordering::AcqRel);
        }
        if response.canceled() {
            bail!("etcd cancelled the watch: {}", response.cancel_reason());
        }
        for event in response.events() {
            let arrived = shared.now();
            events += 1;
            let times = shared
                .expected
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&events)
                .cloned();
            let Some(times) = times else {
                bail!("event {events}: no put was expected");
            };
            let kv = event.kv().context("event without a key-value")?;
            shared.last_revision[id].store(kv.mod_revision(), Ordering::Release);
            shared.last_len[id].store(kv.value().len() as i64, Ordering::Release);
            if VersionTimes::stamp(&times.received[id], arrived)
                && times.acks_left.fetch_sub(1, Ordering::AcqRel) == 1
            {
                times.all_acked.notify_waiters();
            }
        }
    }
    bail!("etcd ended the watch stream")
}

/// Puts `value` as put number `number`, waits until every watcher had it,
/// checks every watcher saw its revision and length, adds the samples.
async fn put(
    shared: &Shared,
    putter: &Putter,
    config: &EtcdFanoutConfig,
    number: u64,
    value: Vec<u8>,
    phase: &mut Phase,
) -> Result<()> {
    let me = std::process::id();
    let n = config.watchers;
    let times = Arc::new(VersionTimes::new(number, n));
    shared
        .expected
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(number, Arc::clone(&times));
    let len = value.len();
    let server_cpu = config.server_pid.map(sys::cpu_seconds).transpose()?;
    let loadgen_cpu = sys::cpu_seconds(me)?;
    let call = putter.call(put_job(&config.key, value)).await?;
    let wait = async {
        loop {
            let notified = times.all_acked.notified();
            let errored = shared.error_seen.notified();
            if times.acks_left.load(Ordering::Acquire) == 0 {
                return Ok::<(), anyhow::Error>(());
            }
            shared.check_errors()?;
            tokio::select! {
                () = notified => {}
                () = errored => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    };
    match tokio::time::timeout(config.timeout, wait).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "put {number}: only {} of {n} watchers had it within {:?}",
            n - times.acks_left.load(Ordering::Acquire),
            config.timeout
        ),
    }
    if let (Some(pid), Some(before)) = (config.server_pid, server_cpu) {
        phase.server_cpu += sys::cpu_seconds(pid)? - before;
    }
    phase.loadgen_cpu += sys::cpu_seconds(me)? - loadgen_cpu;
    for id in 0..n {
        let (revision, got) = (
            shared.last_revision[id].load(Ordering::Acquire),
            shared.last_len[id].load(Ordering::Acquire),
        );
        if revision != call.value || got != len as i64 {
            bail!(
                "watcher {id}: put {number} made revision {} of {len} bytes, the watcher has revision {revision} of {got} bytes",
                call.value
            );
        }
    }
    phase.value_bytes = len as u64;
    phase.rpc.push(call.took.as_secs_f64() * 1e3);
    let received = times.received_ms(shared.started, call.started);
    phase.e2e.push(received.iter().copied().fold(0.0, f64::max));
    phase.received.extend(received);
    Ok(())
}
