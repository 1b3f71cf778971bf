//! `cargo xtask bench fanout --vs etcd`: the same fleet against a plain
//! etcd watch and against Vane, side by side: N watchers (agents) over C
//! connections (C = 100 and C = N unless `--connections` says one), two
//! cases, alternating which peer goes first in each round, each run on a
//! fresh server:
//!
//! - **whole**: an R-route snapshot (`--routes`, 100) changed in every
//!   route; etcd is put the canonical snapshot bytes Vane sends whole.
//! - **one-route**: one route changed in a 10,000-route snapshot
//!   (`--delta-routes`); Vane sends a delta, etcd (which has no deltas)
//!   sends every watcher the whole value again: what a plain watch gets.
//!
//! For each run: end to end (from the start of the write call to the last
//! receiver, p50/p99/max over the writes), the write call itself, server
//! memory per watcher (RSS delta / N) and server CPU per write; then, per
//! layout and case, the ratios vane / etcd of the medians over the rounds
//! against the goals (end to end ≤ 0.5×, memory ≤ 0.25×).
//!
//! etcd is one member on free loopback ports (`crate::etcd`, as the cluster
//! demo starts it), its watchers `etcd-client` watches
//! (`vane-loadgen etcd-fanout`); Vane is a release `vane-control` on the
//! embedded store and the same simulated agents as `bench fanout`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

use super::fanout::{
    ControlServer, Options, build_release, raise_nofile, run_loadgen, run_loadgen_beside,
};
use crate::apt::Apt;
use crate::etcd::Etcd;
use crate::harness::wait_until;
use crate::process::target_dir;

/// The group the agents watch, and the key the watchers watch.
const KEY: &str = "bench";
/// End to end: Vane's time at most this share of etcd's.
pub(crate) const GOAL_E2E_RATIO: f64 = 0.5;
/// Memory per agent: Vane's at most this share of etcd's.
pub(crate) const GOAL_MEMORY_RATIO: f64 = 0.25;

/// One case of the comparison.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// `whole` or `one-route`: the load generator's phase.
    phase: &'static str,
    /// The report fields' prefix for that phase.
    prefix: &'static str,
    routes: usize,
}

/// Installs etcd when missing, builds the release binaries, measures,
/// prints the table (or `--json`).
pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    Apt::default().ensure_tool("etcd", "etcd-server")?;
    build_release(root)?;
    let report = measure(&target_dir(root).join("release"), o, Duration::from_secs(2))?;
    if o.json {
        println!("{report}");
    } else {
        print!("{}", table(&report)?);
    }
    check(&report)
}

/// Every run, in order, for the layouts and cases of `o`; binaries from
/// `bin_dir`.
pub(crate) fn measure(bin_dir: &Path, o: &Options, settle: Duration) -> Result<Value> {
    ensure!(
        o.agents >= 1 && o.rounds >= 1,
        "--agents and --rounds must be at least 1"
    );
    let layouts: Vec<usize> = match o.connections {
        Some(c) => vec![c],
        None => {
            let mut l = vec![o.agents.min(100), o.agents];
            l.dedup();
            l
        }
    };
    let cases = [
        Case {
            phase: "whole",
            prefix: "full",
            routes: o.routes,
        },
        Case {
            phase: "one-route",
            prefix: "delta",
            routes: o.delta_routes,
        },
    ];
    raise_nofile(o.agents as u64 + 256)?;
    let mut runs = Vec::new();
    for &connections in &layouts {
        for case in cases {
            for round in 1..=o.rounds {
                let vane_first = round % 2 == 1;
                for vane in [vane_first, !vane_first] {
                    let mut r = if vane {
                        run_vane(bin_dir, o, connections, case, settle)?
                    } else {
                        run_etcd(bin_dir, o, connections, case, settle)?
                    };
                    if let Value::Object(fields) = &mut r {
                        fields.insert("peer".into(), (if vane { "vane" } else { "etcd" }).into());
                        fields.insert("case".into(), case.phase.into());
                        fields.insert("round".into(), round.into());
                    }
                    eprintln!(
                        "==> {} connections, {}, round {round}, {}: end to end p50/p99/max {:.1}/{:.1}/{:.1} ms; {:.1} KiB per agent",
                        connections,
                        case.phase,
                        r["peer"].as_str().unwrap_or("?"),
                        num(&r, &format!("{}_e2e_p50_ms", case.prefix)),
                        num(&r, &format!("{}_e2e_p99_ms", case.prefix)),
                        num(&r, &format!("{}_e2e_max_ms", case.prefix)),
                        num(&r, "rss_per_agent_kib"),
                    );
                    runs.push(r);
                }
            }
        }
    }
    let mut summary = Vec::new();
    for &connections in &layouts {
        for case in cases {
            summary.push(compare(&runs, connections, case));
        }
    }
    Ok(json!({
        "vs": "etcd",
        "agents": o.agents,
        "rounds": o.rounds,
        "pushes": o.pushes,
        "runs": runs,
        "summary": summary,
    }))
}

fn run_vane(
    bin_dir: &Path,
    o: &Options,
    connections: usize,
    case: Case,
    settle: Duration,
) -> Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("vane-bench-fanout-")
        .tempdir()?;
    let server = ControlServer::start(bin_dir, dir.path())?;
    let mut cmd = Command::new(bin_dir.join("vane-loadgen"));
    cmd.args(["fanout", "--server", &server.url(), "--group", KEY])
        .args(["--server-pid", &server.pid().to_string()])
        .args(["--verify", &o.verify]);
    common_args(&mut cmd, o, connections, case, settle);
    let report = run_loadgen(&mut cmd, &server)?;
    server.stop()?;
    Ok(report)
}

fn run_etcd(
    bin_dir: &Path,
    o: &Options,
    connections: usize,
    case: Case,
    settle: Duration,
) -> Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("vane-bench-fanout-etcd-")
        .tempdir()?;
    let mut etcd = Etcd::new("bench".into(), dir.path());
    etcd.spawn(&format!("bench={}", etcd.peer_url()))?;
    wait_until("etcd to be healthy", || etcd.healthy())?;
    let pid = etcd.pid().context("etcd is not running")?;
    let mut cmd = Command::new(bin_dir.join("vane-loadgen"));
    cmd.args([
        "etcd-fanout",
        "--endpoint",
        &etcd.client_url(),
        "--key",
        KEY,
    ])
    .args(["--server-pid", &pid.to_string()]);
    common_args(&mut cmd, o, connections, case, settle);
    let report = run_loadgen_beside(&mut cmd, "etcd", &|| etcd.log_tail())?;
    etcd.kill();
    Ok(report)
}

/// The arguments both peers' scenarios share.
fn common_args(cmd: &mut Command, o: &Options, connections: usize, case: Case, settle: Duration) {
    cmd.args(["--agents", &o.agents.to_string()])
        .args(["--connections", &connections.to_string()])
        .args(["--routes", &case.routes.to_string()])
        .args(["--pushes", &o.pushes.to_string()])
        .args(["--phases", case.phase])
        .args(["--settle", &format!("{}ms", settle.as_millis())]);
}

fn num(r: &Value, field: &str) -> f64 {
    r.get(field).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The median of `field` over the runs of `peer` in one layout and case.
fn median(runs: &[Value], peer: &str, connections: usize, case: &str, field: &str) -> f64 {
    let mut values: Vec<f64> = runs
        .iter()
        .filter(|r| {
            r["peer"] == peer && r["case"] == case && num(r, "connections") == connections as f64
        })
        .map(|r| num(r, field))
        .collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Vane / etcd for one layout and case, from the medians over the rounds.
fn compare(runs: &[Value], connections: usize, case: Case) -> Value {
    let m = |peer: &str, field: &str| median(runs, peer, connections, case.phase, field);
    let e2e = |peer: &str, q: &str| m(peer, &format!("{}_e2e_{q}_ms", case.prefix));
    let ratio = |vane: f64, etcd: f64| (vane / etcd * 1000.0).round() / 1000.0;
    let (vane_p50, etcd_p50) = (e2e("vane", "p50"), e2e("etcd", "p50"));
    let (vane_p99, etcd_p99) = (e2e("vane", "p99"), e2e("etcd", "p99"));
    let (vane_mem, etcd_mem) = (
        m("vane", "rss_per_agent_kib"),
        m("etcd", "rss_per_agent_kib"),
    );
    let cpu = format!("server_cpu_seconds_per_{}_push", case.prefix);
    let (vane_cpu, etcd_cpu) = (m("vane", &cpu), m("etcd", &cpu));
    json!({
        "connections": connections,
        "case": case.phase,
        "routes": case.routes,
        "vane_e2e_p50_ms": vane_p50,
        "etcd_e2e_p50_ms": etcd_p50,
        "e2e_p50_ratio": ratio(vane_p50, etcd_p50),
        "vane_e2e_p99_ms": vane_p99,
        "etcd_e2e_p99_ms": etcd_p99,
        "e2e_p99_ratio": ratio(vane_p99, etcd_p99),
        "vane_rss_per_agent_kib": vane_mem,
        "etcd_rss_per_agent_kib": etcd_mem,
        "memory_ratio": ratio(vane_mem, etcd_mem),
        "vane_server_cpu_seconds_per_push": vane_cpu,
        "etcd_server_cpu_seconds_per_push": etcd_cpu,
        "cpu_ratio": ratio(vane_cpu, etcd_cpu),
        "vane_push_call_p50_ms": m("vane", &format!("push_{}_rpc_p50_ms", case.prefix)),
        "etcd_put_call_p50_ms": m("etcd", &format!("push_{}_rpc_p50_ms", case.prefix)),
    })
}

/// The runs and the ratios as plain text.
pub(crate) fn table(report: &Value) -> Result<String> {
    let mut out = String::new();
    let runs = report["runs"].as_array().context("no runs")?;
    writeln!(
        out,
        "fan-out vs a plain etcd watch: {} agents (watchers), {} writes per run, {} rounds alternating which peer goes first; end to end = from the start of the write call to the last receiver",
        report["agents"], report["pushes"], report["rounds"]
    )?;
    writeln!(
        out,
        "{:>5} {:<9} {:>5} {:<4} {:>28} {:>9} {:>11} {:>10} {:>12}",
        "conns",
        "case",
        "round",
        "peer",
        "end to end p50/p99/max ms",
        "call ms",
        "KiB/agent",
        "CPU s/push",
        "value bytes"
    )?;
    for r in runs {
        let prefix = if r["case"] == "whole" {
            "full"
        } else {
            "delta"
        };
        let bytes = if r["peer"] == "etcd" && prefix == "delta" {
            num(r, "one_route_value_bytes")
        } else {
            num(r, &format!("{prefix}_bytes"))
        };
        writeln!(
            out,
            "{:>5} {:<9} {:>5} {:<4} {:>28} {:>9.1} {:>11.1} {:>10.3} {:>12}",
            num(r, "connections"),
            r["case"].as_str().unwrap_or("?"),
            num(r, "round"),
            r["peer"].as_str().unwrap_or("?"),
            format!(
                "{:.1} / {:.1} / {:.1}",
                num(r, &format!("{prefix}_e2e_p50_ms")),
                num(r, &format!("{prefix}_e2e_p99_ms")),
                num(r, &format!("{prefix}_e2e_max_ms")),
            ),
            num(r, &format!("push_{prefix}_rpc_p50_ms")),
            num(r, "rss_per_agent_kib"),
            num(r, &format!("server_cpu_seconds_per_{prefix}_push")),
            bytes,
        )?;
    }
    writeln!(
        out,
        "vane / etcd (medians over the rounds; goals: end to end <= {GOAL_E2E_RATIO}x, memory per agent <= {GOAL_MEMORY_RATIO}x):"
    )?;
    for s in report["summary"].as_array().context("no summary")? {
        let met = |ratio: f64, goal: f64| if ratio <= goal { "met" } else { "missed" };
        let (p50, p99, mem) = (
            num(s, "e2e_p50_ratio"),
            num(s, "e2e_p99_ratio"),
            num(s, "memory_ratio"),
        );
        writeln!(
            out,
            "  {:>5} connections, {:<9} ({} routes): end to end p50 {:.1} vs {:.1} ms = {p50:.2}x ({}), p99 {:.1} vs {:.1} ms = {p99:.2}x ({}); memory {:.1} vs {:.1} KiB = {mem:.2}x ({}); server CPU per write {:.3} vs {:.3} s = {:.2}x",
            num(s, "connections"),
            s["case"].as_str().unwrap_or("?"),
            num(s, "routes"),
            num(s, "vane_e2e_p50_ms"),
            num(s, "etcd_e2e_p50_ms"),
            met(p50, GOAL_E2E_RATIO),
            num(s, "vane_e2e_p99_ms"),
            num(s, "etcd_e2e_p99_ms"),
            met(p99, GOAL_E2E_RATIO),
            num(s, "vane_rss_per_agent_kib"),
            num(s, "etcd_rss_per_agent_kib"),
            met(mem, GOAL_MEMORY_RATIO),
            num(s, "vane_server_cpu_seconds_per_push"),
            num(s, "etcd_server_cpu_seconds_per_push"),
            num(s, "cpu_ratio"),
        )?;
    }
    writeln!(
        out,
        "note: etcd has no deltas; on a one-route change its watchers each get the whole value again (the \"value bytes\" column), Vane's agents a delta."
    )?;
    Ok(out)
}

/// Fails when a run lacks its samples (a write no receiver got counts as
/// a failure in the load generator already; this catches empty phases).
pub(crate) fn check(report: &Value) -> Result<()> {
    for r in report["runs"].as_array().context("no runs")? {
        let prefix = if r["case"] == "whole" {
            "full"
        } else {
            "delta"
        };
        let e2e = num(r, &format!("{prefix}_e2e_max_ms"));
        if e2e.is_nan() {
            bail!("a run has no end-to-end times: {r}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny run of both peers in both layouts and cases on the debug
    /// binaries that `cargo xtask test` builds first (and Debian's etcd,
    /// which it installs), so the comparison cannot rot.
    #[test]
    fn smoke() {
        let bin_dir = super::super::smoke_bins();
        let o = Options {
            agents: 12,
            connections: Some(4),
            routes: 20,
            pushes: 2,
            verify: "shared".into(),
            json: true,
            vs: Some("etcd".into()),
            rounds: 1,
            delta_routes: 60,
        };
        let report = measure(&bin_dir, &o, Duration::ZERO).expect("the benchmark runs");
        check(&report).expect("every run has its samples");
        let runs = report["runs"].as_array().unwrap();
        // One layout (as --connections says), two cases, two peers.
        assert_eq!(runs.len(), 4, "{report}");
        let etcd_delta = runs
            .iter()
            .find(|r| r["peer"] == "etcd" && r["case"] == "one-route")
            .unwrap();
        let vane_delta = runs
            .iter()
            .find(|r| r["peer"] == "vane" && r["case"] == "one-route")
            .unwrap();
        // etcd sends the whole value; Vane a delta much smaller than it.
        assert!(
            num(vane_delta, "delta_bytes") * 10.0 < num(etcd_delta, "one_route_value_bytes"),
            "{report}"
        );
        assert!(num(etcd_delta, "delta_e2e_max_ms") > 0.0, "{report}");
        let summary = report["summary"].as_array().unwrap();
        assert_eq!(summary.len(), 2);
        assert!(num(&summary[0], "memory_ratio").is_finite(), "{report}");
        assert!(table(&report).unwrap().contains("etcd has no deltas"));
    }
}
