//! `vane-loadgen`: runs one scenario against a running `vane-control` and
//! prints its report as one JSON object on stdout (progress on stderr).
//! `cargo xtask bench` starts the server and this binary, both built in
//! release mode; see docs/benchmarks.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use vane_loadgen::etcd_fanout::{self, EtcdFanoutConfig};
use vane_loadgen::fanout::{self, FanoutConfig, Phases};
use vane_loadgen::fleet::Verify;
use vane_loadgen::longpoll::{self, LongpollConfig, Peer};
use vane_loadgen::push::{self, PushConfig};
use vane_loadgen::storm::{self, StormConfig};
use vane_loadgen::sys;

/// Load generator for Vane's control plane.
#[derive(Debug, Parser)]
#[command(name = "vane-loadgen", version = vane_build_info::LONG_VERSION)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N simulated agents on C connections; whole-snapshot and one-route
    /// pushes of an R-route snapshot; convergence times, bytes, server RSS
    /// and CPU.
    Fanout {
        /// The control server.
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        server: String,
        /// The server's process id, for its RSS and CPU time.
        #[arg(long)]
        server_pid: Option<u32>,
        /// The group the agents watch.
        #[arg(long, default_value = "bench")]
        group: String,
        /// Simulated agents (N).
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// HTTP/2 connections (C; default N: one per agent).
        #[arg(long)]
        connections: Option<usize>,
        /// Routes in the pushed snapshot (R).
        #[arg(long, default_value_t = 100)]
        routes: usize,
        /// Pushes per phase (whole, then one-route).
        #[arg(long, default_value_t = 5)]
        pushes: usize,
        /// Which phases run: whole, one-route, or both (comma-separated).
        #[arg(long, default_value = "whole,one-route")]
        phases: Phases,
        /// How agents check responses: shared (each distinct response once
        /// for the fleet), every (each agent itself), none.
        #[arg(long, default_value = "shared")]
        verify: Verify,
        /// Agents do not accept deltas (every response is a full snapshot).
        #[arg(long)]
        no_delta: bool,
        /// Pause before reading the server's memory.
        #[arg(long, default_value = "2s", value_parser = humantime_secs)]
        settle: Duration,
        /// Pause before each push (after the previous one was ACKed by
        /// every agent), so the server has read every ACK.
        #[arg(long, default_value = "0s", value_parser = humantime_secs)]
        between_pushes: Duration,
        /// Longest wait for every agent to ACK one push.
        #[arg(long, default_value = "120s", value_parser = humantime_secs)]
        ack_timeout: Duration,
        /// Connections opened at once.
        #[arg(long, default_value_t = 256)]
        connect_parallelism: usize,
        /// Threads checking responses with `--verify every`.
        #[arg(long, default_value_t = 1)]
        verify_threads: usize,
    },
    /// The fan-out's peer: N plain etcd watches on one key over C
    /// connections, then puts of the encoded R-route snapshot (whole, then
    /// one route changed: etcd sends the whole value); end-to-end times,
    /// server RSS per watcher and CPU per put.
    EtcdFanout {
        /// etcd's client URL.
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        endpoint: String,
        /// etcd's process id, for its RSS and CPU time.
        #[arg(long)]
        server_pid: Option<u32>,
        /// The key watched.
        #[arg(long, default_value = "bench")]
        key: String,
        /// Watchers (N).
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Connections (C; default N: one per watcher).
        #[arg(long)]
        connections: Option<usize>,
        /// Routes in the snapshot whose encoding is put (R).
        #[arg(long, default_value_t = 100)]
        routes: usize,
        /// Puts per phase.
        #[arg(long, default_value_t = 5)]
        pushes: usize,
        /// Which phases run: whole, one-route, or both (comma-separated).
        #[arg(long, default_value = "whole,one-route")]
        phases: Phases,
        /// Pause before reading the server's memory.
        #[arg(long, default_value = "2s", value_parser = humantime_secs)]
        settle: Duration,
        /// Longest wait for the watches to be created, and for one put to
        /// reach every watcher.
        #[arg(long, default_value = "120s", value_parser = humantime_secs)]
        timeout: Duration,
        /// Watches opened at once.
        #[arg(long, default_value_t = 256)]
        connect_parallelism: usize,
    },
    /// N agents that reconnect like `vane-agent`, synced; then, for each
    /// outage the driver announces on stdin (`outage NAME`, then `back`),
    /// the time until 50/90/99/100% re-synced. Driven by `cargo xtask bench
    /// storm`.
    Storm {
        /// The control server.
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        server: String,
        /// The group the agents watch.
        #[arg(long, default_value = "bench")]
        group: String,
        /// Simulated agents (N), each on a connection of its own.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Routes in the pushed snapshot (R).
        #[arg(long, default_value_t = 10)]
        routes: usize,
        /// First connections opened at once.
        #[arg(long, default_value_t = 256)]
        connect_parallelism: usize,
        /// Longest wait for the fleet to connect and sync at the start.
        #[arg(long, default_value = "120s", value_parser = humantime_secs)]
        sync_timeout: Duration,
        /// Longest wait for every agent to re-sync after an outage.
        #[arg(long, default_value = "60s", value_parser = humantime_secs)]
        resync_timeout: Duration,
    },
    /// N held HTTP long polls on one server (vane-control's HTTP API, or
    /// etcd watches through its JSON gateway), then one write: server RSS
    /// per held poll, and the time until every client has the new version.
    Longpoll {
        /// Whose polls: vane or etcd.
        #[arg(long)]
        peer: Peer,
        /// The server's address (vane-control's main port, etcd's client
        /// port).
        #[arg(long)]
        server: std::net::SocketAddr,
        /// vane-control's admin address (its held-poll gauge).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// The server's process id, for its RSS and CPU time.
        #[arg(long)]
        server_pid: Option<u32>,
        /// The group polled, or the etcd key watched.
        #[arg(long, default_value = "bench")]
        group: String,
        /// Held polls (N), each on its own connection.
        #[arg(long, default_value_t = 2000)]
        polls: usize,
        /// Routes in the snapshots pushed (vane).
        #[arg(long, default_value_t = 10)]
        routes: usize,
        /// Bytes of the value put (etcd).
        #[arg(long, default_value_t = 4096)]
        value_bytes: usize,
        /// Pause before each memory reading.
        #[arg(long, default_value = "2s", value_parser = humantime_secs)]
        settle: Duration,
        /// Longest wait for all to be held, and for all to be answered.
        #[arg(long, default_value = "40s", value_parser = humantime_secs)]
        timeout: Duration,
        /// Connections opened at once.
        #[arg(long, default_value_t = 256)]
        connect_parallelism: usize,
    },
    /// Durable pushes per second with 1, 8 and 64 concurrent pushers.
    Push {
        /// The control server.
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        server: String,
        /// Numbers of concurrent pushers, comma-separated.
        #[arg(long, default_value = "1,8,64", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// How long each measurement runs.
        #[arg(long, default_value = "3s", value_parser = humantime_secs)]
        duration: Duration,
        /// Directory on the server's disk to time fsync in (its data dir).
        #[arg(long)]
        fsync_dir: Option<PathBuf>,
    },
}

/// Parses `1.5s`, `300ms` or a plain number of seconds.
fn humantime_secs(s: &str) -> Result<Duration, String> {
    let parsed = if let Some(ms) = s.strip_suffix("ms") {
        ms.parse::<f64>().map(|v| v / 1e3)
    } else {
        s.strip_suffix('s').unwrap_or(s).parse::<f64>()
    };
    match parsed {
        Ok(secs) if secs >= 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{s:?} is not a duration like 2s or 300ms")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vane-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> Result<()> {
    let json = match args.scenario {
        Scenario::Fanout {
            server,
            server_pid,
            group,
            agents,
            connections,
            routes,
            pushes,
            phases,
            verify,
            no_delta,
            settle,
            between_pushes,
            ack_timeout,
            connect_parallelism,
            verify_threads,
        } => {
            let connections = connections.unwrap_or(agents);
            // One socket per connection, plus room for everything else.
            sys::raise_nofile(connections as u64 + 256)?;
            let report = fanout::run(&FanoutConfig {
                server,
                server_pid,
                group,
                agents,
                connections,
                routes,
                pushes,
                phases,
                verify,
                accept_delta: !no_delta,
                settle,
                between_pushes,
                ack_timeout,
                connect_parallelism,
                verify_threads,
            })
            .await?;
            serde_json::to_string(&report)?
        }
        Scenario::EtcdFanout {
            endpoint,
            server_pid,
            key,
            agents,
            connections,
            routes,
            pushes,
            phases,
            settle,
            timeout,
            connect_parallelism,
        } => {
            let connections = connections.unwrap_or(agents);
            sys::raise_nofile(connections as u64 + 256)?;
            let report = etcd_fanout::run(&EtcdFanoutConfig {
                endpoint,
                server_pid,
                key,
                watchers: agents,
                connections,
                routes,
                pushes,
                phases,
                settle,
                timeout,
                connect_parallelism,
            })
            .await?;
            serde_json::to_string(&report)?
        }
        Scenario::Storm {
            server,
            group,
            agents,
            routes,
            connect_parallelism,
            sync_timeout,
            resync_timeout,
        } => {
            sys::raise_nofile(agents as u64 + 256)?;
            let report = storm::run(&StormConfig {
                server,
                group,
                agents,
                routes,
                connect_parallelism,
                sync_timeout,
                resync_timeout,
            })
            .await?;
            serde_json::to_string(&report)?
        }
        Scenario::Longpoll {
            peer,
            server,
            admin,
            server_pid,
            group,
            polls,
            routes,
            value_bytes,
            settle,
            timeout,
            connect_parallelism,
        } => {
            sys::raise_nofile(polls as u64 + 256)?;
            let report = longpoll::run(&LongpollConfig {
                peer,
                server,
                admin,
                server_pid,
                group,
                polls,
                routes,
                value_bytes,
                settle,
                timeout,
                connect_parallelism,
            })
            .await?;
            serde_json::to_string(&report)?
        }
        Scenario::Push {
            server,
            concurrency,
            duration,
            fsync_dir,
        } => {
            sys::raise_nofile(concurrency.iter().sum::<usize>() as u64 + 256)?;
            let report = push::run(&PushConfig {
                server,
                concurrency,
                duration,
                fsync_dir,
            })
            .await?;
            serde_json::to_string(&report)?
        }
    };
    println!("{json}");
    Ok(())
}
