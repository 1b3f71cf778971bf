//! The long-poll scenario: N clients each hold one request open on one
//! server, then one write must reach all of them. Two peers, the same
//! steps:
//!
//! - **vane**: `GET /v1/groups/{group}/snapshot?node=lp-<i>&after_version=<v>&wait=60s`
//!   on vane-control's main port (HTTP/1.1, a connection each), held until
//!   a push (`Admin.Push`) makes a new version; held = the server's
//!   `vane_control_http_held_polls` gauge says N.
//! - **etcd**: what a program without gRPC would use instead: a watch on
//!   one key through etcd's JSON gateway (`POST /v3/watch`, a chunked
//!   stream of JSON messages, a connection each), held once etcd answered
//!   `"created": true`; the write is a put through the gateway
//!   (`POST /v3/kv/put`) of a value the size of Vane's answer.
//!
//! Measured: the server's `VmRSS` once the first version is stored (after
//! one warm-up read) and with the N requests held, so (held − baseline) / N
//! per held request; and for each client the time from sending the write to
//! having read the whole answer carrying the new version (vane: a 200 with
//! the pushed `Vane-Version`; etcd: the event with the put's revision). Any
//! client that did not (an error, a wrong answer, no answer within the
//! timeout) is a failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use vane_proto as pb;

use crate::fanout::{progress, push};
use crate::http1::{Conn, base64, request};
use crate::snapshots::snapshot;
use crate::stats::{Summary, round3};
use crate::sys;

/// Whose long polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// vane-control's HTTP long-poll API.
    Vane,
    /// etcd's watch through its JSON gateway.
    Etcd,
}

impl std::str::FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vane" => Ok(Self::Vane),
            "etcd" => Ok(Self::Etcd),
            other => Err(format!("peer: {other:?} is not one of vane, etcd")),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LongpollConfig {
    /// Whose polls.
    pub peer: Peer,
    /// The server's address: vane-control's main port, or etcd's client port.
    pub server: SocketAddr,
    /// vane-control's admin address (its held-poll gauge); vane only.
    pub admin: Option<SocketAddr>,
    /// The server's process id, for its memory and CPU.
    pub server_pid: Option<u32>,
    /// The group polled (vane), or the key watched (etcd).
    pub group: String,
    /// Held requests (N).
    pub polls: usize,
    /// Routes in the snapshots pushed (vane).
    pub routes: usize,
    /// Bytes of the value put (etcd); 0: 4 KiB.
    pub value_bytes: usize,
    /// Pause before each memory reading.
    pub settle: Duration,
    /// Longest wait for all N to be held, and for all N to be answered.
    pub timeout: Duration,
    /// Connections being opened at once.
    pub connect_parallelism: usize,
}

/// The figures (one flat JSON object).
#[derive(Debug, Clone, Serialize)]
pub struct LongpollReport {
    /// `vane` or `etcd`.
    pub peer: String,
    /// Held requests (N).
    pub polls: usize,
    /// Bytes of one answer: the snapshot's JSON (vane) or the event
    /// message with the value in base64 (etcd).
    pub answer_bytes: usize,
    /// Seconds from the first connection to all N held.
    pub open_seconds: f64,
    /// Server RSS with the first version stored and nothing held, KiB.
    pub server_rss_baseline_kib: u64,
    /// Server RSS with the N requests held, KiB.
    pub server_rss_held_kib: u64,
    /// (held − baseline) / N, KiB.
    pub rss_per_poll_kib: f64,
    /// The write call itself (push or put, each durable), ms.
    pub write_call_ms: f64,
    /// Write sent → each client had the new version: median, ms.
    pub notified_p50_ms: f64,
    /// Its 99th percentile.
    pub notified_p99_ms: f64,
    /// The slowest client.
    pub notified_max_ms: f64,
    /// Clients that had the new version.
    pub answered: usize,
    /// Clients that did not (errors, wrong answers, no answer in time).
    pub failures: usize,
    /// What the first failure was.
    pub first_failure: Option<String>,
    /// Server CPU seconds from the write until every client was answered.
    pub server_cpu_seconds_fanout: f64,
    /// The load generator's RSS at the end, KiB.
    pub loadgen_rss_kib: u64,
}

/// What one client read after the write.
#[derive(Debug)]
struct Answer {
    /// When the whole answer was in.
    at: Instant,
    /// The version (vane) or revision (etcd) it carried.
    version: u64,
    bytes: usize,
}

/// Runs the scenario.
pub async fn run(config: &LongpollConfig) -> Result<LongpollReport> {
    if config.polls == 0 {
        bail!("polls: must be at least 1");
    }
    let pid = config.server_pid;
    let rss = || pid.map(sys::rss_kib).transpose();
    let cpu = || pid.map(sys::cpu_seconds).transpose();
    let mut target = Target::new(config).await?;
    let first = target.write(1).await?.0;
    progress(format_args!("{:?}: version {first} written", config.peer));
    target.warm_up(first).await?;
    tokio::time::sleep(config.settle).await;
    let baseline = rss()?.unwrap_or(0);

    let held = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(config.connect_parallelism.max(1)));
    let opening = Instant::now();
    let clients: Vec<JoinHandle<Result<Answer>>> = (0..config.polls)
        .map(|i| tokio::spawn(target.client(i, first, Arc::clone(&held), Arc::clone(&gate))))
        .collect();
    target.wait_held(&held, &clients).await?;
    let open_seconds = opening.elapsed().as_secs_f64();
    progress(format_args!(
        "{:?}: {} requests held after {open_seconds:.2}s",
        config.peer, config.polls
    ));
    tokio::time::sleep(config.settle).await;
    let held_rss = rss()?.unwrap_or(0);

    let cpu_before = cpu()?.unwrap_or(0.0);
    let sent = Instant::now();
    let (version, call) = target.write(2).await?;
    let deadline = tokio::time::Instant::from_std(sent + config.timeout);
    let mut latencies = Vec::with_capacity(config.polls);
    let mut failures = Vec::new();
    let mut answer_bytes = 0;
    for client in clients {
        let outcome = match tokio::time::timeout_at(deadline, client).await {
            Err(_) => Err(anyhow::anyhow!("no answer within {:?}", config.timeout)),
            Ok(Err(e)) => Err(anyhow::anyhow!("client task failed: {e}")),
            Ok(Ok(answer)) => answer,
        };
        match outcome {
            Ok(a) if a.version == version => {
                latencies.push(a.at.saturating_duration_since(sent).as_secs_f64() * 1e3);
                answer_bytes = answer_bytes.max(a.bytes);
            }
            Ok(a) => failures.push(format!(
                "answered with version {} instead of {version}",
                a.version
            )),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let cpu_fanout = cpu()?.unwrap_or(0.0) - cpu_before;
    let notified = Summary::of(&latencies);
    progress(format_args!(
        "{:?}: {} answered, {} failed; p99 {:.1} ms",
        config.peer,
        latencies.len(),
        failures.len(),
        notified.p99_ms
    ));
    Ok(LongpollReport {
        peer: format!("{:?}", config.peer).to_lowercase(),
        polls: config.polls,
        answer_bytes,
        open_seconds: round3(open_seconds),
        server_rss_baseline_kib: baseline,
        server_rss_held_kib: held_rss,
        rss_per_poll_kib: round3(held_rss.saturating_sub(baseline) as f64 / config.polls as f64),
        write_call_ms: round3(call.as_secs_f64() * 1e3),
        notified_p50_ms: round3(notified.p50_ms),
        notified_p99_ms: round3(notified.p99_ms),
        notified_max_ms: round3(notified.max_ms),
        answered: latencies.len(),
        failures: failures.len(),
        first_failure: failures.into_iter().next(),
        server_cpu_seconds_fanout: round3(cpu_fanout),
        loadgen_rss_kib: sys::rss_kib(std::process::id())?,
    })
}

/// The server under test and how to talk to it.
struct Target {
    peer: Peer,
    server: SocketAddr,
    admin: Option<SocketAddr>,
    group: String,
    routes: usize,
    value_bytes: usize,
    timeout: Duration,
    /// vane: the Admin API, for pushes.
    pusher: Option<pb::admin_client::AdminClient<tonic::transport::Channel>>,
}

impl Target {
    async fn new(config: &LongpollConfig) -> Result<Self> {
        let pusher = match config.peer {
            Peer::Etcd => None,
            Peer::Vane => {
                let url = format!("http://{}", config.server);
                let client = pb::admin_client::AdminClient::connect(url.clone())
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                Some(client)
            }
        };
        if config.peer == Peer::Vane && config.admin.is_none() {
            bail!("admin: vane-control's admin address is needed (its held-poll gauge)");
        }
        Ok(Self {
            peer: config.peer,
            server: config.server,
            admin: config.admin,
            group: config.group.clone(),
            routes: config.routes,
            value_bytes: if config.value_bytes == 0 {
                4096
            } else {
                config.value_bytes
            },
            timeout: config.timeout,
            pusher,
        })
    }

    /// Writes generation `generation`: a push (vane) or a put (etcd).
    /// Returns the version (revision) it made and how long the call took.
    async fn write(&mut self, generation: u64) -> Result<(u64, Duration)> {
        match self.pusher.as_mut() {
            Some(admin) => push(admin, &self.group, snapshot(self.routes, generation, 0)).await,
            None => {
                let mut value = format!("generation {generation} ");
                value.extend(std::iter::repeat_n(
                    'x',
                    self.value_bytes.saturating_sub(value.len()),
                ));
                let body = serde_json::json!({
                    "key": base64(self.group.as_bytes()),
                    "value": base64(value.as_bytes()),
                })
                .to_string();
                let started = Instant::now();
                let (status, answer) =
                    request(self.server, "POST", "/v3/kv/put", Some(&body)).await?;
                let took = started.elapsed();
                let answer: Value = serde_json::from_slice(&answer)
                    .with_context(|| format!("etcd put answered {status}, not JSON"))?;
                if status != 200 {
                    bail!("etcd put answered {status}: {answer}");
                }
                Ok((revision(&answer["header"]["revision"])?, took))
            }
        }
    }

    /// One read of the first version, so that what the first answer
    /// allocates once (vane renders a version's body once and shares it)
    /// is in the baseline.
    async fn warm_up(&self, first: u64) -> Result<()> {
        if self.peer == Peer::Vane {
            let path = format!("/v1/groups/{}/snapshot?after_version=0", self.group);
            let (status, _) = request(self.server, "GET", &path, None).await?;
            if status != 200 {
                bail!("warm-up poll answered {status}, not 200 with version {first}");
            }
        } else {
            let body = serde_json::json!({"key": base64(self.group.as_bytes())}).to_string();
            let (status, _) = request(self.server, "POST", "/v3/kv/range", Some(&body)).await?;
            if status != 200 {
                bail!("warm-up range answered {status}");
            }
        }
        Ok(())
    }

    /// Client `i`: opens its connection (under `gate`), holds its request,
    /// counts itself in `held` (etcd: once the watch is created), and
    /// returns what it read after the write.
    fn client(
        &self,
        i: usize,
        first: u64,
        held: Arc<AtomicUsize>,
        gate: Arc<Semaphore>,
    ) -> impl Future<Output = Result<Answer>> + Send + 'static {
        let (peer, server, group) = (self.peer, self.server, self.group.clone());
        async move {
            let permit = gate.acquire_owned().await?;
            let mut conn = Conn::open(server).await?;
            match peer {
                Peer::Vane => {
                    let path = format!(
                        "/v1/groups/{group}/snapshot?node=lp-{i}&after_version={first}&wait=60s"
                    );
                    conn.send("GET", &path, None, false).await?;
                    drop(permit);
                    let head = conn.head().await?;
                    let body = conn.body(&head).await?;
                    let at = Instant::now();
                    if head.status != 200 {
                        bail!("status {}: {}", head.status, String::from_utf8_lossy(&body));
                    }
                    let version = head
                        .header("vane-version")
                        .and_then(|v| v.parse().ok())
                        .context("a 200 without Vane-Version")?;
                    Ok(Answer {
                        at,
                        version,
                        bytes: body.len(),
                    })
                }
                Peer::Etcd => {
                    let body = serde_json::json!({
                        "create_request": {"key": base64(group.as_bytes())}
                    })
                    .to_string();
                    conn.send("POST", "/v3/watch", Some(&body), false).await?;
                    let head = conn.head().await?;
                    if head.status != 200 {
                        bail!("watch answered {}", head.status);
                    }
                    let mut pending = Vec::new();
                    let (created, _) = next_message(&mut conn, &mut pending).await?;
                    if created["result"]["created"] != Value::Bool(true) {
                        bail!("the watch's first message is not `created`: {created}");
                    }
                    held.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    let (event, bytes) = next_message(&mut conn, &mut pending).await?;
                    let at = Instant::now();
                    let kv = &event["result"]["events"][0]["kv"];
                    let version = revision(&kv["mod_revision"])
                        .with_context(|| format!("not an event: {event}"))?;
                    Ok(Answer { at, version, bytes })
                }
            }
        }
    }

    /// Waits until all clients are held (or have ended, which the
    /// collection then reports as failures).
    async fn wait_held(
        &self,
        held: &AtomicUsize,
        clients: &[JoinHandle<Result<Answer>>],
    ) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let ended = clients.iter().filter(|c| c.is_finished()).count();
            let holding = match (self.peer, self.admin) {
                (Peer::Vane, Some(admin)) => held_polls(admin).await?,
                _ => held.load(Ordering::Relaxed),
            };
            if holding + ended >= clients.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{holding} of {} requests held after {:?} ({ended} ended)",
                    clients.len(),
                    self.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `vane_control_http_held_polls` of vane-control's `/metrics`.
async fn held_polls(admin: SocketAddr) -> Result<usize> {
    let (status, body) = request(admin, "GET", "/metrics", None).await?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    let text = String::from_utf8_lossy(&body);
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("vane_control_http_held_polls "))
        .context("no vane_control_http_held_polls in /metrics")?;
    Ok(value.trim().parse::<f64>().context("held polls")? as usize)
}

/// The next JSON message of a gateway stream (one per line) and its size.
async fn next_message(conn: &mut Conn, pending: &mut Vec<u8>) -> Result<(Value, usize)> {
    loop {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message = serde_json::from_slice(&line)
                .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&line)))?;
            return Ok((message, line.len()));
        }
        // A message the server did not end with a newline.
        if let Ok(message) = serde_json::from_slice::<Value>(pending) {
            let size = pending.len();
            pending.clear();
            return Ok((message, size));
        }
        match conn.chunk().await? {
            Some(chunk) => pending.extend(chunk),
            None => bail!("the watch stream ended"),
        }
    }
}

/// An etcd revision: a JSON string of digits (int64 in the gateway's JSON).
fn revision(v: &Value) -> Result<u64> {
    match v {
        Value::String(s) => s.parse().with_context(|| format!("revision {s:?}")),
        Value::Number(n) => n.as_u64().context("revision"),
        other => bail!("no revision: {other}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn peers_and_revisions_parse() {
        assert_eq!("vane".parse::<Peer>(), Ok(Peer::Vane));
        assert_eq!("etcd".parse::<Peer>(), Ok(Peer::Etcd));
        assert!("consul".parse::<Peer>().unwrap_err().starts_with("peer: "));
        assert_eq!(revision(&serde_json::json!("42")).unwrap(), 42);
        assert_eq!(revision(&serde_json::json!(7)).unwrap(), 7);
        assert!(revision(&Value::Null).is_err());
    }
}
