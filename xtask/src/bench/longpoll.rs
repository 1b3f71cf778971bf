//! `cargo xtask bench longpoll`: N held HTTP long polls on one release
//! `vane-control` (embedded store), side by side with the peer a program
//! without gRPC would pick instead: N watches on one etcd (Debian's
//! `etcd-server`) through etcd's JSON gateway (`POST /v3/watch`, a chunked
//! HTTP stream per watcher). For each: the server's RSS per held request,
//! and the time from one write (a push, a put) until every client has the
//! new version; every client must get it (failures are reported, and fail
//! the run).
//!
//! The load generator (`vane-loadgen longpoll`) does the measuring; this
//! task starts a fresh server for every run, alternates which peer goes
//! first in each round (so drift on a shared machine hits both alike),
//! prints a table and writes it to docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::fanout::{ControlServer, build_release, raise_nofile, run_loadgen, run_loadgen_beside};
use super::proxy::report::{DOC, command_text, cpu_model, mem_total, write_section};
use crate::apt::Apt;
use crate::etcd::Etcd;
use crate::harness::wait_until;
use crate::process::target_dir;

/// The group polled, and the etcd key watched.
const GROUP: &str = "bench";
/// Server memory a held poll may cost, its connection included (the
/// budget docs/http-api.md states).
pub(crate) const BUDGET_KIB_PER_POLL: f64 = 64.0;
const START: &str = "<!-- bench-longpoll:start -->";
const END: &str = "<!-- bench-longpoll:end -->";

/// Options of `cargo xtask bench longpoll`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Held polls (and etcd watches), each on its own connection.
    #[arg(long, default_value_t = 2000)]
    pub(crate) polls: usize,
    /// Runs of each peer, alternating which goes first.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print results only; leave docs/benchmarks.md alone.
    #[arg(long)]
    pub(crate) no_write: bool,
}

/// Builds the release binaries, measures, prints, writes the docs.
pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    ensure!(
        o.polls >= 1 && o.rounds >= 1,
        "--polls and --rounds must be at least 1"
    );
    Apt::default().ensure_tool("etcd", "etcd-server")?;
    build_release(root)?;
    let load = loadavg();
    let runs = measure(&target_dir(root).join("release"), o, Duration::from_secs(2))?;
    let report = serde_json::json!({"polls": o.polls, "rounds": o.rounds, "runs": runs});
    if o.json {
        println!("{report}");
    } else {
        print!("{}", table(&runs));
    }
    let failed: f64 = runs.iter().map(|r| num(r, "failures")).sum();
    if failed > 0.0 {
        bail!("{failed} clients never got the new version: these numbers are not valid");
    }
    if !o.no_write {
        write_section(root, START, END, &render(o, &runs, &load)?)?;
        eprintln!("==> wrote {DOC}");
    }
    Ok(())
}

/// Every run, in order: `rounds` of each peer, alternating which goes
/// first, each on a fresh server; binaries from `bin_dir`.
pub(crate) fn measure(bin_dir: &Path, o: &Options, settle: Duration) -> Result<Vec<Value>> {
    // Children inherit the limit: each server holds a socket per poll.
    raise_nofile(o.polls as u64 + 256)?;
    let mut runs = Vec::new();
    // etcd is put a value the size of Vane's answer (known after the
    // first Vane run, which comes first).
    let mut answer_bytes = 0;
    for round in 1..=o.rounds {
        let vane_first = round % 2 == 1;
        for vane in [vane_first, !vane_first] {
            let mut r = if vane {
                run_vane(bin_dir, o.polls, settle)?
            } else {
                run_etcd(bin_dir, o.polls, settle, answer_bytes)?
            };
            if vane {
                answer_bytes = num(&r, "answer_bytes") as usize;
            }
            if let Value::Object(fields) = &mut r {
                fields.insert("round".into(), round.into());
            }
            eprintln!(
                "==> round {round}, {}: {:.1} KiB per held request; notified p50/p99/max {:.1}/{:.1}/{:.1} ms; failures {}",
                r["peer"].as_str().unwrap_or("?"),
                num(&r, "rss_per_poll_kib"),
                num(&r, "notified_p50_ms"),
                num(&r, "notified_p99_ms"),
                num(&r, "notified_max_ms"),
                num(&r, "failures"),
            );
            runs.push(r);
        }
    }
    Ok(runs)
}

fn run_vane(bin_dir: &Path, polls: usize, settle: Duration) -> Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("vane-bench-longpoll-")
        .tempdir()?;
    let server = ControlServer::start(bin_dir, dir.path())?;
    let mut cmd = loadgen(bin_dir, "vane", polls, settle);
    cmd.args(["--server", &server.addr().to_string()])
        .args(["--admin", &server.admin().to_string()])
        .args(["--server-pid", &server.pid().to_string()]);
    let report = run_loadgen(&mut cmd, &server)?;
    server.stop()?;
    Ok(report)
}

fn run_etcd(bin_dir: &Path, polls: usize, settle: Duration, value_bytes: usize) -> Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("vane-bench-longpoll-etcd-")
        .tempdir()?;
    let mut etcd = Etcd::new("bench".into(), dir.path());
    etcd.spawn(&format!("bench={}", etcd.peer_url()))?;
    wait_until("etcd to be healthy", || etcd.healthy())?;
    let pid = etcd.pid().context("etcd is not running")?;
    let mut cmd = loadgen(bin_dir, "etcd", polls, settle);
    cmd.args(["--server", &etcd.client_addr().to_string()])
        .args(["--server-pid", &pid.to_string()])
        .args(["--value-bytes", &value_bytes.max(1).to_string()]);
    let report = run_loadgen_beside(&mut cmd, "etcd", &|| etcd.log_tail())?;
    etcd.kill();
    Ok(report)
}

/// `vane-loadgen longpoll` for `peer`, without its server's address.
fn loadgen(bin_dir: &Path, peer: &str, polls: usize, settle: Duration) -> Command {
    let mut cmd = Command::new(bin_dir.join("vane-loadgen"));
    cmd.args(["longpoll", "--peer", peer, "--group", GROUP])
        .args(["--polls", &polls.to_string()])
        .args(["--settle", &format!("{}ms", settle.as_millis())]);
    cmd
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), to say how
/// busy the machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn num(r: &Value, field: &str) -> f64 {
    r.get(field).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The median of `field` over the runs of `peer`.
fn median(runs: &[Value], peer: &str, field: &str) -> f64 {
    let mut values: Vec<f64> = runs
        .iter()
        .filter(|r| r["peer"] == peer)
        .map(|r| num(r, field))
        .collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The runs and the medians as a plain table.
pub(crate) fn table(runs: &[Value]) -> String {
    let mut out = format!(
        "{:<6} {:<5} {:>9} {:>20} {:>7} {:>9} {:>26} {:>7} {:>9} {:>9}\n",
        "round",
        "peer",
        "KiB/poll",
        "server RSS KiB",
        "open s",
        "write ms",
        "notified p50/p99/max ms",
        "CPU ms",
        "answered",
        "failures"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:<6} {:<5} {:>9.1} {:>20} {:>7.2} {:>9.1} {:>26} {:>7.0} {:>9} {:>9}",
            num(r, "round"),
            r["peer"].as_str().unwrap_or("?"),
            num(r, "rss_per_poll_kib"),
            format!(
                "{} -> {}",
                num(r, "server_rss_baseline_kib"),
                num(r, "server_rss_held_kib")
            ),
            num(r, "open_seconds"),
            num(r, "write_call_ms"),
            format!(
                "{:.1} / {:.1} / {:.1}",
                num(r, "notified_p50_ms"),
                num(r, "notified_p99_ms"),
                num(r, "notified_max_ms")
            ),
            num(r, "server_cpu_seconds_fanout") * 1e3,
            num(r, "answered"),
            num(r, "failures"),
        );
    }
    for peer in ["vane", "etcd"] {
        let _ = writeln!(
            out,
            "median {peer:<5}: {:.1} KiB per held request; notified p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            median(runs, peer, "rss_per_poll_kib"),
            median(runs, peer, "notified_p50_ms"),
            median(runs, peer, "notified_p99_ms"),
            median(runs, peer, "notified_max_ms"),
        );
    }
    out
}

/// The Markdown section of docs/benchmarks.md.
fn render(o: &Options, runs: &[Value], load: &str) -> Result<String> {
    let mut r = String::new();
    writeln!(
        r,
        "## HTTP long polls vs etcd watches (`cargo xtask bench longpoll`)\n"
    )?;
    writeln!(
        r,
        "Machine: {} CPUs ({}), {}, kernel {}; {}; {}. The server under test and the load \
         generator share these CPUs on loopback; load average {load} (1, 5, 15 min) when the \
         benchmark started. Each run starts a fresh server; {} rounds, alternating which peer \
         goes first.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        mem_total(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        command_text("rustc", &["-V"]),
        command_text("etcd", &["--version"]),
        o.rounds,
    )?;
    writeln!(
        r,
        "| round | peer | server RSS per held request, KiB | server RSS before → held, KiB | write call ms | write → all notified p50 / p99 / max ms | server CPU ms, write → all notified | answered | failures | answer bytes |"
    )?;
    writeln!(r, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for run in runs {
        writeln!(
            r,
            "| {} | {} | {:.1} | {} → {} | {:.1} | {:.1} / {:.1} / {:.1} | {:.0} | {} | {} | {} |",
            num(run, "round"),
            run["peer"].as_str().unwrap_or("?"),
            num(run, "rss_per_poll_kib"),
            num(run, "server_rss_baseline_kib"),
            num(run, "server_rss_held_kib"),
            num(run, "write_call_ms"),
            num(run, "notified_p50_ms"),
            num(run, "notified_p99_ms"),
            num(run, "notified_max_ms"),
            num(run, "server_cpu_seconds_fanout") * 1e3,
            num(run, "answered"),
            num(run, "failures"),
            num(run, "answer_bytes"),
        )?;
    }
    let vane = median(runs, "vane", "rss_per_poll_kib");
    writeln!(
        r,
        "\nMedians: vane {:.1} KiB per held poll, etcd {:.1} KiB per watcher; write → all \
         notified p99: vane {:.1} ms, etcd {:.1} ms. Budget: {BUDGET_KIB_PER_POLL:.0} KiB of \
         server memory per held poll: **{}**.\n",
        vane,
        median(runs, "etcd", "rss_per_poll_kib"),
        median(runs, "vane", "notified_p99_ms"),
        median(runs, "etcd", "notified_p99_ms"),
        if vane <= BUDGET_KIB_PER_POLL {
            "met"
        } else {
            "missed"
        },
    )?;
    writeln!(
        r,
        "```sh\ncargo xtask bench longpoll --polls {} --rounds {}\n\
         # vane: vane-control --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --push-rate 0 --data-dir $BENCH/data\n\
         #       vane-loadgen longpoll --peer vane --server ADDR --admin ADMIN --server-pid PID --polls {}\n\
         # etcd: etcd --name bench --data-dir $BENCH/bench.data --listen-client-urls http://127.0.0.1:PORT ...\n\
         #       vane-loadgen longpoll --peer etcd --server 127.0.0.1:PORT --server-pid PID --polls {} --value-bytes <vane's answer bytes>\n```",
        o.polls, o.rounds, o.polls, o.polls
    )?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run of both peers on the debug binaries that `cargo xtask
    /// test` builds first (and Debian's etcd, which it installs), so the
    /// benchmark cannot rot: every client must get the new version.
    #[test]
    fn smoke() {
        let bin_dir = super::super::smoke_bins();
        let o = Options {
            polls: 20,
            rounds: 2,
            json: true,
            no_write: true,
        };
        let runs = measure(&bin_dir, &o, Duration::ZERO).expect("the benchmark runs");
        assert_eq!(runs.len(), 4);
        for r in &runs {
            assert_eq!((num(r, "answered"), num(r, "failures")), (20.0, 0.0), "{r}");
        }
        assert_eq!(runs[0]["peer"], "vane");
        assert_eq!(runs[3]["peer"], "vane");
        assert!(table(&runs).contains("median etcd"));
        assert!(
            render(&o, &runs, "0.1 0.2 0.3")
                .unwrap()
                .contains("| 2 | etcd |")
        );
    }
}
