//! The durable-push scenario: K concurrent pushers (each on its own
//! connection, each waiting for its push to be answered — that is, fsynced —
//! before the next) for a fixed time, for every K asked for; once with every
//! pusher on its own group and once with all of them on one group. Also a
//! probe of what one fsync costs on the disk of the data directory, the
//! figure group commit has to beat.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::Endpoint;
use vane_proto as pb;

use crate::stats::{Summary, round3};

/// What to run.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The control server's URL.
    pub server: String,
    /// Numbers of concurrent pushers to measure.
    pub concurrency: Vec<usize>,
    /// How long each measurement pushes.
    pub duration: Duration,
    /// Where to probe fsync (the server's data directory), if anywhere.
    pub fsync_dir: Option<PathBuf>,
}

/// The figures, keyed by concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// Durable pushes per second, each pusher on its own group.
    pub pushes_per_sec: BTreeMap<String, f64>,
    /// Durable pushes per second, every pusher on the same group.
    pub pushes_per_sec_one_group: BTreeMap<String, f64>,
    /// Median push latency (own groups), ms.
    pub latency_p50_ms: BTreeMap<String, f64>,
    /// 99th percentile push latency (own groups), ms.
    pub latency_p99_ms: BTreeMap<String, f64>,
    /// Seconds each measurement ran.
    pub duration_seconds: f64,
    /// Encoded size of one pushed snapshot.
    pub snapshot_bytes: usize,
    /// Median time of a 4 KiB write plus fdatasync in the data directory.
    pub fsync_p50_ms: Option<f64>,
    /// Its 99th percentile.
    pub fsync_p99_ms: Option<f64>,
}

/// Runs the scenario.
pub async fn run(config: &PushConfig) -> Result<PushReport> {
    let (fsync_p50_ms, fsync_p99_ms) = match &config.fsync_dir {
        Some(dir) => {
            let dir = dir.clone();
            let s = tokio::task::spawn_blocking(move || fsync_probe(&dir, 200)).await??;
            (Some(round3(s.p50_ms)), Some(round3(s.p99_ms)))
        }
        None => (None, None),
    };
    let mut report = PushReport {
        pushes_per_sec: BTreeMap::new(),
        pushes_per_sec_one_group: BTreeMap::new(),
        latency_p50_ms: BTreeMap::new(),
        latency_p99_ms: BTreeMap::new(),
        duration_seconds: config.duration.as_secs_f64(),
        snapshot_bytes: prost::Message::encoded_len(&snapshot(0, 0)),
        fsync_p50_ms,
        fsync_p99_ms,
    };
    for &k in &config.concurrency {
        let own = measure(config, k, false).await?;
        let one = measure(config, k, true).await?;
        eprintln!(
            "vane-loadgen: {k} pushers: {:.0} pushes/s on their own groups, {:.0}/s on one group",
            own.0, one.0
        );
        let key = k.to_string();
        report.pushes_per_sec.insert(key.clone(), round3(own.0));
        report
            .pushes_per_sec_one_group
            .insert(key.clone(), round3(one.0));
        report
            .latency_p50_ms
            .insert(key.clone(), round3(own.1.p50_ms));
        report.latency_p99_ms.insert(key, round3(own.1.p99_ms));
    }
    Ok(report)
}

/// A small snapshot whose content differs for every (pusher, sequence).
fn snapshot(pusher: usize, seq: u64) -> pb::Snapshot {
    pb::Snapshot {
        clusters: vec![pb::Cluster {
            name: "api".into(),
            endpoints: vec![pb::Endpoint {
                address: "10.0.0.1:8080".into(),
                weight: None,
            }],
            ..pb::Cluster::default()
        }],
        values: [
            ("bench.pusher".to_owned(), pusher.to_string()),
            ("bench.seq".to_owned(), seq.to_string()),
        ]
        .into(),
        ..pb::Snapshot::default()
    }
}

/// `k` pushers for the configured time: pushes per second and latencies.
async fn measure(config: &PushConfig, k: usize, one_group: bool) -> Result<(f64, Summary)> {
    if k == 0 {
        bail!("concurrency: must be at least 1");
    }
    let endpoint = Endpoint::from_shared(config.server.clone())
        .with_context(|| format!("server: bad URL {:?}", config.server))?
        .tcp_nodelay(true);
    // Unique per run, so a second run on the same server still creates
    // versions (an unchanged push stores nothing).
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut clients = Vec::with_capacity(k);
    for _ in 0..k {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", config.server))?;
        clients.push(pb::admin_client::AdminClient::new(channel));
    }
    let started = Instant::now();
    let deadline = started + config.duration;
    let mut pushers = JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let group = if one_group {
            format!("bench-push-{run:x}-k{k}")
        } else {
            format!("bench-push-{run:x}-k{k}-{i}")
        };
        pushers.spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let t = Instant::now();
                let response = client
                    .push(pb::PushRequest {
                        supersede: false,
                        group: group.clone(),
                        snapshot: Some(snapshot(i, seq)),
                        expected_version: None,
                        dry_run: false,
                        message: String::new(),
                    })
                    .await
                    .with_context(|| format!("push to group {group:?}"))?
                    .into_inner();
                if response.unchanged {
                    bail!("push to group {group:?} stored nothing");
                }
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = pushers.join_next().await {
        latencies.extend(done.context("pusher task failed")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((latencies.len() as f64 / elapsed, Summary::of(&latencies)))
}

/// Times `n` writes of 4 KiB, each followed by fdatasync, in `dir`.
fn fsync_probe(dir: &std::path::Path, n: usize) -> Result<Summary> {
    let path = dir.join(".vane-loadgen-fsync-probe");
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = [0u8; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(Summary::of(&samples))
}
