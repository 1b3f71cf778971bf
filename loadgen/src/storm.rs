//! The reconnect-storm scenario: a fleet of agents that reconnect like
//! `vane-agent` (see `fleet`), synced on one version; then, for each outage
//! the driver (`cargo xtask bench storm`) causes, the time from the moment
//! the server answers again to each agent's re-sync: a new stream on which
//! the server knows the agent runs the head (see `fleet`'s module docs).
//!
//! # The driver's protocol (one line each way)
//! - This side prints `synced` once every agent ACKed the first version.
//! - The driver writes `outage NAME` before it takes the server down; this
//!   side prints `outage NAME begun`.
//! - The driver writes `back` the moment a restarted server printed its
//!   listening line (no stream can have survived), or `continued` the
//!   moment a stopped one was continued (a stream may have outlived a short
//!   stop: see `Fleet::wait_resynced`). The line is stamped on a thread of its own as soon as it
//!   is read, so a busy fleet cannot delay the origin of the times. This
//!   side waits until every agent re-synced (or `resync_timeout`) and
//!   prints `resynced NAME`.
//! - At the end of its input, this side prints the report, one JSON
//!   object, as its last line.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::sync::mpsc;
use vane_proto as pb;

use crate::fanout::{progress, push};
use crate::fleet::{Fleet, FleetConfig, Verify};
use crate::snapshots::snapshot;
use crate::stats::{percentile, round3};

/// What to run.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// The control server's URL.
    pub server: String,
    /// The group the fleet watches.
    pub group: String,
    /// Agents (N), each on a connection of its own.
    pub agents: usize,
    /// Routes in the snapshot (R).
    pub routes: usize,
    /// First connections opened at once.
    pub connect_parallelism: usize,
    /// Longest wait for the fleet to connect and sync at the start.
    pub sync_timeout: Duration,
    /// Longest wait for every agent to re-sync after an outage.
    pub resync_timeout: Duration,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Agents (N).
    pub agents: usize,
    /// Routes in the snapshot.
    pub routes: usize,
    /// Seconds to connect the fleet and have every agent ACK the first
    /// version.
    pub connect_seconds: f64,
    /// One entry per outage, in order.
    pub outages: Vec<OutageReport>,
}

/// One outage: from the server answering again to each agent's re-sync.
#[derive(Debug, Clone, Serialize)]
pub struct OutageReport {
    /// The driver's name for it.
    pub name: String,
    /// Agents that re-synced within the timeout.
    pub resynced: usize,
    /// Agents that did not.
    pub missing: usize,
    /// Milliseconds until 50% of the fleet re-synced.
    pub p50_ms: f64,
    /// Until 90%.
    pub p90_ms: f64,
    /// Until 99%.
    pub p99_ms: f64,
    /// Until 100% (the slowest agent that re-synced).
    pub p100_ms: f64,
    /// Connect attempts the fleet made from the start of the outage to the
    /// end of the re-sync.
    pub attempts: u64,
    /// Of which failed.
    pub failed_attempts: u64,
    /// Agents whose stream outlived the outage (counted as re-synced, at
    /// 0 ms, when the server answered again).
    pub kept_stream: usize,
}

/// A line from the driver and when it was read.
type Line = (String, Instant);

/// Runs the scenario, reading the driver's lines from stdin.
pub async fn run(config: &StormConfig) -> Result<StormReport> {
    let mut admin = pb::admin_client::AdminClient::connect(config.server.clone())
        .await
        .with_context(|| format!("connecting to {}", config.server))?;
    let (head, _) = push(&mut admin, &config.group, snapshot(config.routes, 0, 0)).await?;
    drop(admin);
    let mut fleet = Fleet::new(FleetConfig {
        server: config.server.clone(),
        group: config.group.clone(),
        agents: config.agents,
        connections: config.agents,
        accept_delta: true,
        verify: Verify::Shared,
        connect_parallelism: config.connect_parallelism,
        verify_threads: 1,
        reconnect: true,
    })?;
    fleet.set_head(head);
    let first = fleet.expect(head);
    let connecting = Instant::now();
    fleet.connect(config.sync_timeout).await?;
    fleet.wait_acked(&first, config.sync_timeout).await?;
    let connect_seconds = round3(connecting.elapsed().as_secs_f64());
    progress(format_args!(
        "{} agents synced on version {head} in {connect_seconds:.2}s",
        config.agents
    ));
    say("synced");

    let mut lines = stdin_lines();
    let mut outages = Vec::new();
    while let Some((line, _)) = lines.recv().await {
        let Some(name) = line.strip_prefix("outage ") else {
            bail!("driver: expected `outage NAME`, got {line:?}");
        };
        fleet.begin_outage();
        say(&format!("outage {name} begun"));
        let Some((line, back)) = lines.recv().await else {
            bail!("driver: input ended during outage {name}");
        };
        let streams_may_survive = match line.as_str() {
            "back" => false,
            "continued" => true,
            _ => bail!("driver: expected `back` or `continued`, got {line:?}"),
        };
        let resync = fleet
            .wait_resynced(back, config.resync_timeout, streams_may_survive)
            .await;
        let mut sorted = resync.resynced_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if sorted.is_empty() {
                f64::NAN
            } else {
                round3(percentile(&sorted, p))
            }
        };
        let report = OutageReport {
            name: name.to_owned(),
            resynced: sorted.len(),
            missing: config.agents - sorted.len(),
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            p100_ms: at(100.0),
            attempts: resync.attempts,
            failed_attempts: resync.failed_attempts,
            kept_stream: resync.kept_stream,
        };
        progress(format_args!(
            "{name}: {} of {} re-synced; 50/90/99/100%: {} / {} / {} / {} ms",
            report.resynced,
            config.agents,
            report.p50_ms,
            report.p90_ms,
            report.p99_ms,
            report.p100_ms
        ));
        outages.push(report);
        say(&format!("resynced {name}"));
    }
    fleet.stop().await;
    Ok(StormReport {
        agents: config.agents,
        routes: config.routes,
        connect_seconds,
        outages,
    })
}

/// A line to the driver.
fn say(line: &str) {
    println!("{line}");
}

/// The driver's lines, each stamped when read, from a thread of its own
/// (blocking reads; it ends with the input).
fn stdin_lines() -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let read = Instant::now();
            if tx.blocking_send((line.trim().to_owned(), read)).is_err() {
                break;
            }
        }
    });
    rx
}
