//! The fan-out scenario: a fleet of agents on one group, then repeated
//! pushes that change every route (sent whole) and pushes that change one
//! route (sent as deltas), each waited for until every agent ACKed it.
//!
//! Times are measured from the moment the push is accepted: its call
//! returned, so the version is durable and published (an agent that
//! received it before the pusher got the answer counts as 0 ms). How long
//! the push call itself took (validation, hashing, the store's fsync) is
//! reported beside them (`push_*_rpc_*`). Server memory is the `VmRSS` of its process
//! before any agent connects (with the first version stored), once all
//! agents are connected and synced (idle), and after the pushes.
//!
//! End to end (`*_e2e_*`, what a peer's watch is compared on): from the
//! start of the push call to the last agent having received the version,
//! one sample per push. The pushes are made from a thread of their own
//! ([`crate::pusher`]), so the fleet's work cannot delay the pusher.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use vane_proto as pb;

use crate::fleet::{Carried, Fleet, FleetConfig, Verify};
use crate::pusher::Pusher;
use crate::snapshots::snapshot;
use crate::stats::{Summary, round3};
use crate::sys;

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// The control server's URL.
    pub server: String,
    /// Its process id, for memory and CPU figures (none: not measured).
    pub server_pid: Option<u32>,
    /// The group the fleet watches.
    pub group: String,
    /// Agents (N).
    pub agents: usize,
    /// Connections (C).
    pub connections: usize,
    /// Routes in the snapshot (R).
    pub routes: usize,
    /// Pushes in each phase (whole, then one-route).
    pub pushes: usize,
    /// Which phases run.
    pub phases: Phases,
    /// How agents check responses.
    pub verify: Verify,
    /// Whether agents accept deltas.
    pub accept_delta: bool,
    /// Pause before memory is read, so the server settles.
    pub settle: Duration,
    /// Pause after each push is ACKed by every agent, before the next (so
    /// the server has read every ACK when the next push comes).
    pub between_pushes: Duration,
    /// Longest wait for a push to be ACKed by every agent.
    pub ack_timeout: Duration,
    /// Connections opened at once.
    pub connect_parallelism: usize,
    /// Threads checking responses with `--verify every`.
    pub verify_threads: usize,
}

/// Which phases of pushes run (both by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// Pushes that change every route (sent whole).
    pub whole: bool,
    /// Pushes that change one route (sent as deltas).
    pub one_route: bool,
}

impl Default for Phases {
    fn default() -> Self {
        Self {
            whole: true,
            one_route: true,
        }
    }
}

impl std::str::FromStr for Phases {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut phases = Self {
            whole: false,
            one_route: false,
        };
        for part in s.split(',') {
            match part.trim() {
                "whole" => phases.whole = true,
                "one-route" => phases.one_route = true,
                other => {
                    return Err(format!("phases: {other:?} is not one of whole, one-route"));
                }
            }
        }
        Ok(phases)
    }
}

/// The figures (one flat JSON object, so runs are easy to compare).
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Agents (N).
    pub agents: usize,
    /// Connections (C).
    pub connections: usize,
    /// Routes in the snapshot (R).
    pub routes: usize,
    /// Pushes per phase.
    pub pushes: usize,
    /// How responses were checked.
    pub verify: String,
    /// Seconds to open every connection and stream and have every agent
    /// ACK the first version (sent whole).
    pub connect_seconds: f64,
    /// Whole-snapshot pushes: push accepted -> each agent received.
    pub full_received_p50_ms: f64,
    /// 99th percentile of the above, over every agent and push.
    pub full_received_p99_ms: f64,
    /// Slowest agent of the slowest push.
    pub full_received_max_ms: f64,
    /// Whole-snapshot pushes: push accepted -> each agent ACKed.
    pub full_acked_p50_ms: f64,
    /// 99th percentile of the above.
    pub full_acked_p99_ms: f64,
    /// Slowest.
    pub full_acked_max_ms: f64,
    /// One-route pushes: push accepted -> each agent received.
    pub delta_received_p50_ms: f64,
    /// 99th percentile of the above.
    pub delta_received_p99_ms: f64,
    /// Slowest.
    pub delta_received_max_ms: f64,
    /// One-route pushes: push accepted -> each agent ACKed.
    pub delta_acked_p50_ms: f64,
    /// 99th percentile of the above.
    pub delta_acked_p99_ms: f64,
    /// Slowest.
    pub delta_acked_max_ms: f64,
    /// Whole-snapshot pushes, end to end: the start of the push call ->
    /// the last agent received, one sample per push: median, ms.
    pub full_e2e_p50_ms: f64,
    /// Its 99th percentile.
    pub full_e2e_p99_ms: f64,
    /// The slowest push.
    pub full_e2e_max_ms: f64,
    /// The same for one-route pushes: median, ms.
    pub delta_e2e_p50_ms: f64,
    /// Its 99th percentile.
    pub delta_e2e_p99_ms: f64,
    /// The slowest push.
    pub delta_e2e_max_ms: f64,
    /// Median time of the push call itself (validation, store, fsync),
    /// whole-snapshot pushes.
    pub push_full_rpc_p50_ms: f64,
    /// Its 99th percentile.
    pub push_full_rpc_p99_ms: f64,
    /// The same for one-route pushes.
    pub push_delta_rpc_p50_ms: f64,
    /// Its 99th percentile.
    pub push_delta_rpc_p99_ms: f64,
    /// Body bytes of one whole-snapshot response.
    pub full_bytes: u64,
    /// Body bytes of one one-route delta response.
    pub delta_bytes: u64,
    /// `delta_bytes` as a percentage of `full_bytes`.
    pub delta_percent_of_full: f64,
    /// Body bytes sent to the whole fleet per whole-snapshot push.
    pub full_bytes_per_push: u64,
    /// Body bytes sent to the whole fleet per one-route push.
    pub delta_bytes_per_push: u64,
    /// Responses per whole-snapshot push that were full snapshots (should
    /// be N) and deltas (should be 0).
    pub full_phase_responses: [u64; 2],
    /// Responses per one-route push that were full snapshots (0 unless a
    /// delta fell back) and deltas (N).
    pub delta_phase_responses: [u64; 2],
    /// NACKs asking for the full snapshot, and other NACKs, over the run.
    pub nacks: [u64; 2],
    /// Server RSS before any agent connected, KiB.
    pub server_rss_baseline_kib: u64,
    /// Server RSS with every agent connected and synced, KiB.
    pub server_rss_idle_kib: u64,
    /// Server RSS after the pushes, KiB.
    pub server_rss_after_pushes_kib: u64,
    /// (idle - baseline) / N: server memory per connected agent, KiB.
    pub rss_per_agent_kib: f64,
    /// (after pushes - baseline) / N, KiB.
    pub rss_per_agent_after_pushes_kib: f64,
    /// Server CPU (user + system) seconds per whole-snapshot push.
    pub server_cpu_seconds_per_full_push: f64,
    /// Server CPU seconds per one-route push.
    pub server_cpu_seconds_per_delta_push: f64,
    /// Server CPU seconds spent while the fleet connected.
    pub server_cpu_seconds_connect: f64,
    /// The load generator's own CPU seconds per whole-snapshot push.
    pub loadgen_cpu_seconds_per_full_push: f64,
    /// The load generator's CPU seconds per one-route push.
    pub loadgen_cpu_seconds_per_delta_push: f64,
    /// The load generator's RSS at the end, KiB.
    pub loadgen_rss_kib: u64,
}

/// One phase's samples.
#[derive(Debug, Default)]
struct Phase {
    received: Vec<f64>,
    acked: Vec<f64>,
    rpc: Vec<f64>,
    /// Per push: the call's start -> the last agent received, ms.
    e2e: Vec<f64>,
    carried: Vec<Carried>,
    server_cpu: f64,
    loadgen_cpu: f64,
}

/// Runs the scenario.
pub async fn run(config: &FanoutConfig) -> Result<FanoutReport> {
    if config.pushes == 0 || config.pushes > config.routes {
        bail!(
            "pushes: must be between 1 and the number of routes ({}), got {}",
            config.routes,
            config.pushes
        );
    }
    if !config.phases.whole && !config.phases.one_route {
        bail!("phases: at least one of whole, one-route");
    }
    let me = std::process::id();
    let rss = |pid: Option<u32>| pid.map(sys::rss_kib).transpose();
    let cpu = |pid: Option<u32>| pid.map(sys::cpu_seconds).transpose();

    let admin = admin_pusher(&config.server).await?;
    let initial = admin
        .call(push_job(&config.group, snapshot(config.routes, 0, 0)))
        .await?;
    let mut head = initial.value;
    progress(format_args!(
        "pushed version {head} ({} routes)",
        config.routes
    ));

    tokio::time::sleep(config.settle).await;
    let rss_baseline = rss(config.server_pid)?.unwrap_or(0);
    let cpu_before = cpu(config.server_pid)?.unwrap_or(0.0);

    let mut fleet = Fleet::new(FleetConfig {
        server: config.server.clone(),
        group: config.group.clone(),
        agents: config.agents,
        connections: config.connections,
        accept_delta: config.accept_delta,
        verify: config.verify,
        connect_parallelism: config.connect_parallelism,
        verify_threads: config.verify_threads,
        reconnect: false,
    })?;
    let first = fleet.expect(head);
    let connecting = Instant::now();
    fleet
        .connect(config.ack_timeout)
        .await
        .context("connecting the fleet")?;
    fleet
        .wait_acked(&first, config.ack_timeout)
        .await
        .context("the first version")?;
    let connect_seconds = connecting.elapsed().as_secs_f64();
    let cpu_connected = cpu(config.server_pid)?.unwrap_or(0.0);
    progress(format_args!(
        "{} agents on {} connections synced in {connect_seconds:.2}s",
        config.agents, config.connections
    ));
    tokio::time::sleep(config.settle).await;
    let rss_idle = rss(config.server_pid)?.unwrap_or(0);

    let mut full = Phase::default();
    if config.phases.whole {
        for generation in 1..=config.pushes as u64 {
            let s = snapshot(config.routes, generation, 0);
            head = pushed(&fleet, &admin, config, head, s, &mut full).await?;
        }
        progress(format_args!("{} whole-snapshot pushes done", config.pushes));
    }
    // One-route edits start from the last whole push's generation.
    let generation = if config.phases.whole {
        config.pushes as u64
    } else {
        0
    };
    let mut delta = Phase::default();
    if config.phases.one_route {
        for edited in 1..=config.pushes {
            let s = snapshot(config.routes, generation, edited);
            head = pushed(&fleet, &admin, config, head, s, &mut delta).await?;
        }
        progress(format_args!("{} one-route pushes done", config.pushes));
    }
    drop(admin);

    tokio::time::sleep(config.settle).await;
    let rss_after = rss(config.server_pid)?.unwrap_or(0);
    let loadgen_rss_kib = sys::rss_kib(me)?;
    let nacks = fleet.nacks();
    fleet.stop().await;

    let per_push = |v: f64| round3(v / config.pushes as f64);
    let per_agent =
        |kib: u64| round3(kib.saturating_sub(rss_baseline) as f64 / config.agents as f64);
    let (fr, fa, dr, da) = (
        Summary::of(&full.received),
        Summary::of(&full.acked),
        Summary::of(&delta.received),
        Summary::of(&delta.acked),
    );
    let sum = |phase: &Phase| {
        phase
            .carried
            .iter()
            .fold(Carried::default(), |a, c| Carried {
                full: a.full + c.full,
                delta: a.delta + c.delta,
                full_bytes: a.full_bytes + c.full_bytes,
                delta_bytes: a.delta_bytes + c.delta_bytes,
            })
    };
    let (fc, dc) = (sum(&full), sum(&delta));
    let pushes = config.pushes as u64;
    let (fe, de) = (Summary::of(&full.e2e), Summary::of(&delta.e2e));
    let full_bytes = fc.full_bytes.checked_div(fc.full).unwrap_or(0);
    let delta_bytes = dc.delta_bytes.checked_div(dc.delta).unwrap_or(0);
    Ok(FanoutReport {
        agents: config.agents,
        connections: config.connections,
        routes: config.routes,
        pushes: config.pushes,
        verify: format!("{:?}", config.verify).to_lowercase(),
        connect_seconds: round3(connect_seconds),
        full_received_p50_ms: round3(fr.p50_ms),
        full_received_p99_ms: round3(fr.p99_ms),
        full_received_max_ms: round3(fr.max_ms),
        full_acked_p50_ms: round3(fa.p50_ms),
        full_acked_p99_ms: round3(fa.p99_ms),
        full_acked_max_ms: round3(fa.max_ms),
        delta_received_p50_ms: round3(dr.p50_ms),
        delta_received_p99_ms: round3(dr.p99_ms),
        delta_received_max_ms: round3(dr.max_ms),
        delta_acked_p50_ms: round3(da.p50_ms),
        delta_acked_p99_ms: round3(da.p99_ms),
        delta_acked_max_ms: round3(da.max_ms),
        full_e2e_p50_ms: round3(fe.p50_ms),
        full_e2e_p99_ms: round3(fe.p99_ms),
        full_e2e_max_ms: round3(fe.max_ms),
        delta_e2e_p50_ms: round3(de.p50_ms),
        delta_e2e_p99_ms: round3(de.p99_ms),
        delta_e2e_max_ms: round3(de.max_ms),
        push_full_rpc_p50_ms: round3(Summary::of(&full.rpc).p50_ms),
        push_full_rpc_p99_ms: round3(Summary::of(&full.rpc).p99_ms),
        push_delta_rpc_p50_ms: round3(Summary::of(&delta.rpc).p50_ms),
        push_delta_rpc_p99_ms: round3(Summary::of(&delta.rpc).p99_ms),
        full_bytes,
        delta_bytes,
        delta_percent_of_full: if full_bytes == 0 {
            0.0
        } else {
            round3(delta_bytes as f64 * 100.0 / full_bytes as f64)
        },
        full_bytes_per_push: (fc.full_bytes + fc.delta_bytes) / pushes,
        delta_bytes_per_push: (dc.full_bytes + dc.delta_bytes) / pushes,
        full_phase_responses: [fc.full / pushes, fc.delta / pushes],
        delta_phase_responses: [dc.full / pushes, dc.delta / pushes],
        nacks: [nacks.0, nacks.1],
        server_rss_baseline_kib: rss_baseline,
        server_rss_idle_kib: rss_idle,
        server_rss_after_pushes_kib: rss_after,
        rss_per_agent_kib: per_agent(rss_idle),
        rss_per_agent_after_pushes_kib: per_agent(rss_after),
        server_cpu_seconds_per_full_push: per_push(full.server_cpu),
        server_cpu_seconds_per_delta_push: per_push(delta.server_cpu),
        server_cpu_seconds_connect: round3(cpu_connected - cpu_before),
        loadgen_cpu_seconds_per_full_push: per_push(full.loadgen_cpu),
        loadgen_cpu_seconds_per_delta_push: per_push(delta.loadgen_cpu),
        loadgen_rss_kib,
    })
}

/// Pushes `s` as version `head + 1`, waits for every agent's ACK and adds
/// the samples to `phase`. Returns the new head.
async fn pushed(
    fleet: &Fleet,
    admin: &AdminPusher,
    config: &FanoutConfig,
    head: u64,
    s: pb::Snapshot,
    phase: &mut Phase,
) -> Result<u64> {
    let me = std::process::id();
    tokio::time::sleep(config.between_pushes).await;
    let version = head + 1;
    let times = fleet.expect(version);
    let server_cpu = config.server_pid.map(sys::cpu_seconds).transpose()?;
    let loadgen_cpu = sys::cpu_seconds(me)?;
    let call = admin.call(push_job(&config.group, s)).await?;
    let (stored, took) = (call.value, call.took);
    let accepted = call.started + took;
    if stored != version {
        bail!(
            "push: expected version {version}, the server stored {stored} (is another client pushing to group {:?}?)",
            config.group
        );
    }
    fleet
        .wait_acked(&times, config.ack_timeout)
        .await
        .with_context(|| format!("version {version}"))?;
    if let (Some(pid), Some(before)) = (config.server_pid, server_cpu) {
        phase.server_cpu += sys::cpu_seconds(pid)? - before;
    }
    phase.loadgen_cpu += sys::cpu_seconds(me)? - loadgen_cpu;
    phase.rpc.push(took.as_secs_f64() * 1e3);
    let from_call = times.received_ms(fleet.started(), call.started);
    phase
        .e2e
        .push(from_call.iter().copied().fold(0.0, f64::max));
    phase
        .received
        .extend(times.received_ms(fleet.started(), accepted));
    phase
        .acked
        .extend(times.acked_ms(fleet.started(), accepted));
    phase.carried.push(times.carried());
    Ok(version)
}

/// The Admin client on a thread of its own; a push answers the stored version.
type AdminPusher = Pusher<pb::admin_client::AdminClient<tonic::transport::Channel>, u64>;

/// Connects the Admin client on the pusher's thread.
async fn admin_pusher(server: &str) -> Result<AdminPusher> {
    let server = server.to_owned();
    Pusher::start(move || async move {
        let client = pb::admin_client::AdminClient::connect(server.clone())
            .await
            .with_context(|| format!("connecting to {server}"))?;
        Ok(client
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX))
    })
    .await
}

/// A push of `s` to `group`, as a job for the pusher.
fn push_job(
    group: &str,
    s: pb::Snapshot,
) -> crate::pusher::Job<pb::admin_client::AdminClient<tonic::transport::Channel>, u64> {
    let group = group.to_owned();
    Box::new(move |admin| Box::pin(async move { Ok(push(admin, &group, s).await?.0) }))
}

/// Pushes `s` to `group`; returns the stored version and how long the call took.
pub(crate) async fn push(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    group: &str,
    s: pb::Snapshot,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let response = admin
        .push(pb::PushRequest {
            supersede: false,
            group: group.to_owned(),
            snapshot: Some(s),
            expected_version: None,
            dry_run: false,
            message: "vane-loadgen".into(),
        })
        .await
        .with_context(|| format!("pushing to group {group:?}"))?
        .into_inner();
    if response.unchanged {
        bail!(
            "push to group {group:?} changed nothing (version {})",
            response.version
        );
    }
    Ok((response.version, started.elapsed()))
}

pub(crate) fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("vane-loadgen: {args}");
}
