//! `cargo xtask bench storm`: how fast a fleet comes back after the control
//! server does. A release `vane-control` (embedded store) and
//! `vane-loadgen storm`: N simulated agents that reconnect exactly as
//! `vane-agent` does (its own pacing code and default settings), synced on
//! one version. Then two outages:
//!
//! 1. **restart**: the server is SIGKILLed, stays down `--down`, and is
//!    started again on the same port and data directory; it answers again
//!    when it prints its listening line.
//! 2. **blackhole**: the server is SIGSTOPped for `--blackhole`, then
//!    SIGCONTed, which is when it answers again. While stopped, the kernel
//!    still completes TCP handshakes into the listen backlog (until it is
//!    full), but nothing is ever answered: agents' HTTP/2 keepalive (10 s,
//!    then 5 s) declares their streams dead, and new attempts hang until
//!    their connect or open timeout (5 s), as on a network that drops
//!    packets to the server.
//!
//! For each, the load generator prints the time from "answers again" until
//! 50/90/99/100% of the fleet re-synced: each agent has a new stream on
//! which the server knows it runs the head (its first request named the
//! head, which the server records as its ACK, or it ACKed the head sent on
//! that stream). The driver talks to the load generator over its stdin and
//! stdout (see `loadgen/src/storm.rs`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::fanout::{ControlServer, build_release, raise_nofile};
use crate::process::{display, target_dir};

/// The group the simulated agents watch.
const GROUP: &str = "bench";

/// Options of `cargo xtask bench storm`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Simulated agents (N), each on a connection of its own.
    #[arg(long, default_value_t = 1000)]
    pub(crate) agents: usize,
    /// How long the SIGKILLed server stays down before it is restarted.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) down: Duration,
    /// How long the server stays SIGSTOPped.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub(crate) blackhole: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Builds the release binaries, measures, prints.
pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    build_release(root)?;
    let report = measure(&target_dir(root).join("release"), o)?;
    if o.json {
        println!("{report}");
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The load generator as the driver sees it: its stdin, and its stdout
/// lines as they come.
struct Loadgen {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Loadgen {
    fn start(cmd: &mut Command) -> Result<Self> {
        eprintln!("==> {}", display(cmd));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start vane-loadgen")?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("vane-loadgen's stdin is closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .context("writing to vane-loadgen")
    }

    /// Waits (at most `within`) for the line `expected`.
    fn expect(&mut self, expected: &str, within: Duration, server: &ControlServer) -> Result<()> {
        match self.lines.recv_timeout(within) {
            Ok(line) if line == expected => Ok(()),
            Ok(line) => bail!("vane-loadgen said {line:?}, expected {expected:?}"),
            Err(_) => bail!(
                "vane-loadgen did not say {expected:?} within {within:?} (exit status {:?}); \
                 the server's log ends with:\n{}",
                self.child.try_wait().ok().flatten(),
                server.log_tail()
            ),
        }
    }

    /// Closes its input and reads the report, its last line.
    fn finish(mut self) -> Result<Value> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        let last = self.lines.iter().last();
        if !status.success() {
            bail!("vane-loadgen failed ({status})");
        }
        let line = last.context("vane-loadgen printed no report")?;
        serde_json::from_str(&line)
            .with_context(|| format!("vane-loadgen's report is not JSON: {line}"))
    }
}

impl Drop for Loadgen {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the scenario with the binaries in `bin_dir`; returns the load
/// generator's report.
pub(crate) fn measure(bin_dir: &Path, o: &Options) -> Result<Value> {
    // Children inherit the limit: the server holds one socket per agent.
    raise_nofile(o.agents as u64 + 256)?;
    let dir = tempfile::Builder::new()
        .prefix("vane-bench-storm-")
        .tempdir()?;
    let mut server = ControlServer::start(bin_dir, dir.path())?;
    let listen = server.addr().to_string();
    let mut cmd = Command::new(bin_dir.join("vane-loadgen"));
    cmd.args(["storm", "--server", &server.url(), "--group", GROUP])
        .args(["--agents", &o.agents.to_string()]);
    let mut loadgen = Loadgen::start(&mut cmd)?;
    let sync = Duration::from_secs(180);
    loadgen.expect("synced", sync, &server)?;
    // Each outage: its phases are timed by the load generator.
    let resync = Duration::from_secs(90);

    loadgen.say("outage restart")?;
    loadgen.expect("outage restart begun", sync, &server)?;
    eprintln!(
        "==> SIGKILL vane-control; restart on {listen} after {:?}",
        o.down
    );
    server.kill();
    std::thread::sleep(o.down);
    server = ControlServer::start_on(bin_dir, dir.path(), &listen)?;
    loadgen.say("back")?;
    loadgen.expect("resynced restart", resync, &server)?;

    loadgen.say("outage blackhole")?;
    loadgen.expect("outage blackhole begun", sync, &server)?;
    eprintln!("==> SIGSTOP vane-control for {:?}", o.blackhole);
    server.signal(Signal::SIGSTOP)?;
    std::thread::sleep(o.blackhole);
    server.signal(Signal::SIGCONT)?;
    loadgen.say("continued")?;
    loadgen.expect("resynced blackhole", resync, &server)?;

    let report = loadgen.finish()?;
    server.stop()?;
    Ok(report)
}

fn num(r: &Value, field: &str) -> f64 {
    r.get(field).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The report as a table.
pub(crate) fn table(r: &Value) -> String {
    let mut out = format!(
        "reconnect storm: {} agents (one connection each, the agent's own pacing); \
         fleet synced in {:.2} s\n{:<12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7}\n",
        num(r, "agents"),
        num(r, "connect_seconds"),
        "outage",
        "50% ms",
        "90% ms",
        "99% ms",
        "100% ms",
        "attempts",
        "missing",
        "kept",
    );
    let outages = r.get("outages").and_then(Value::as_array);
    for o in outages.into_iter().flatten() {
        out.push_str(&format!(
            "{:<12} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10} {:>9} {:>7}\n",
            o.get("name").and_then(Value::as_str).unwrap_or("?"),
            num(o, "p50_ms"),
            num(o, "p90_ms"),
            num(o, "p99_ms"),
            num(o, "p100_ms"),
            num(o, "attempts"),
            num(o, "missing"),
            num(o, "kept_stream"),
        ));
    }
    out.push_str(
        "(times from the moment the server answers again: restarted and listening, or SIGCONTed; \
         kept: streams that outlived the outage)\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run of the whole benchmark on the debug binaries that
    /// `cargo xtask test` builds first, so it cannot rot; the outages are
    /// short, and every agent must come back.
    #[test]
    fn smoke() {
        let bin_dir = super::super::smoke_bins();
        let o = Options {
            agents: 20,
            down: Duration::from_millis(500),
            blackhole: Duration::from_secs(1),
            json: true,
        };
        let r = measure(&bin_dir, &o).expect("the benchmark runs");
        let outages = r["outages"].as_array().expect("outages");
        assert_eq!(outages.len(), 2, "{r}");
        for o in outages {
            assert_eq!(o["resynced"], 20, "{r}");
            assert_eq!(o["missing"], 0, "{r}");
        }
        assert!(table(&r).contains("blackhole"));
    }
}
