//! `cargo xtask bench`: performance numbers from real processes on this
//! machine (not timed tests: nothing here passes or fails on a number).
//!
//! - `cargo xtask bench proxy`: vane-proxy against nginx, driven by wrk.
//! - `cargo xtask bench fanout`: N simulated agents (`vane-loadgen`) on a
//!   release control server: convergence, bytes, memory and CPU per push;
//!   with `--vs etcd`, side by side with N plain etcd watches.
//! - `cargo xtask bench push`: durable pushes per second, 1/8/64 pushers.
//! - `cargo xtask bench storm`: N simulated agents that reconnect like
//!   `vane-agent`; the time to re-sync them after a SIGKILL and restart,
//!   and after a SIGSTOP black hole.
//! - `cargo xtask bench longpoll`: N held HTTP long polls on vane-control
//!   against N etcd watches (its JSON gateway): server memory per held
//!   request, and the time until one write reached every client.

mod fanout;
mod fanout_etcd;
mod longpoll;
pub(crate) mod proxy;
mod push;
mod storm;

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

/// What to benchmark.
#[derive(Debug, Subcommand)]
pub(crate) enum Bench {
    /// vane-proxy vs nginx with the same upstream, driven by wrk (installs
    /// wrk and nginx when missing): HTTP/1.1 keep-alive, a new connection
    /// per request, TCP, and p99 under a config push every 100 ms. Writes
    /// docs/benchmarks.md.
    Proxy(proxy::Options),
    /// A release vane-control and N simulated agents on C connections
    /// (vane-loadgen): whole-snapshot and one-route pushes of R routes;
    /// time to all received and all ACKed, bytes per push, server memory
    /// per agent and CPU per push. With `--vs etcd`: the same fleet
    /// against plain etcd watches (installs etcd-server when missing),
    /// alternating, with the ratios.
    Fanout(fanout::Options),
    /// Durable pushes per second on the embedded store with 1, 8 and 64
    /// concurrent pushers.
    Push(push::Options),
    /// A release vane-control and N simulated agents that reconnect like
    /// vane-agent: the server is SIGKILLed and restarted (same port and
    /// data), then SIGSTOPped for a while; time until 50/90/99/100% of the
    /// agents re-synced after it answers again.
    Storm(storm::Options),
    /// N held HTTP long polls on a release vane-control and N watches on one
    /// etcd through its JSON gateway (installs etcd-server when missing),
    /// alternating: server RSS per held request, write -> every client
    /// notified p50/p99/max. Writes docs/benchmarks.md.
    Longpoll(longpoll::Options),
}

/// Runs the chosen benchmark.
pub(crate) fn run(root: &Path, bench: Bench) -> Result<()> {
    // Every bench builds the workspace, whose etcd client needs protoc.
    crate::test::ensure_protoc(&mut crate::apt::Apt::default())?;
    match bench {
        Bench::Proxy(options) => proxy::run(root, &options),
        Bench::Fanout(options) if options.vs.is_some() => fanout_etcd::run(root, &options),
        Bench::Fanout(options) => fanout::run(root, &options),
        Bench::Push(options) => push::run(root, &options),
        Bench::Storm(options) => storm::run(root, &options),
        Bench::Longpoll(options) => longpoll::run(root, &options),
    }
}

/// The debug build directory the benchmarks' smoke tests run from (built
/// by `cargo xtask test` before the tests), checked to hold the server and
/// the load generator.
#[cfg(test)]
fn smoke_bins() -> std::path::PathBuf {
    let bin_dir = crate::process::target_dir(&crate::workspace_root()).join("debug");
    for bin in ["vane-control", "vane-loadgen"] {
        assert!(
            bin_dir.join(bin).exists(),
            "{bin} is not built: run `cargo build --workspace --bins` first"
        );
    }
    bin_dir
}
