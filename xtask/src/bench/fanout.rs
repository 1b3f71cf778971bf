//! `cargo xtask bench fanout`: a release `vane-control` and `vane-loadgen`
//! (N simulated agents on C connections) on this machine; whole-snapshot and
//! one-route pushes of an R-route snapshot; convergence times, bytes per
//! push, server memory per agent and CPU per push.
//!
//! The load generator does the measuring (it pushes, so push and arrival
//! times share a clock) and prints one JSON object; this task builds,
//! starts both processes, adds what the server's `/metrics` says it sent,
//! and prints a table or (`--json`) the JSON. The server's stderr goes to a
//! log file in the temporary directory, which is printed if it fails.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use vane_testkit::process::terminate_child;

use crate::harness::http_get;
use crate::process::{cargo, display, run as run_cmd, target_dir};

/// The group the simulated agents watch.
const GROUP: &str = "bench";

/// Options of `cargo xtask bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Simulated agents (N).
    #[arg(long, default_value_t = 1000)]
    pub(crate) agents: usize,
    /// HTTP/2 connections (C); default N, one per agent.
    #[arg(long)]
    pub(crate) connections: Option<usize>,
    /// Routes in the pushed snapshot (R).
    #[arg(long, default_value_t = 100)]
    pub(crate) routes: usize,
    /// Pushes per phase (whole snapshots, then one-route changes).
    #[arg(long, default_value_t = 5)]
    pub(crate) pushes: usize,
    /// How simulated agents check responses: shared (each distinct
    /// response once for the fleet), every (each agent), none.
    #[arg(long, default_value = "shared")]
    pub(crate) verify: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Compare with a peer, side by side: `etcd` (a plain etcd watch, one
    /// member started here), in the layouts C = 100 and C = N (or the one
    /// `--connections` gives), for a whole push of `--routes` routes and a
    /// one-route change in `--delta-routes` routes.
    #[arg(long, value_parser = ["etcd"])]
    pub(crate) vs: Option<String>,
    /// With `--vs`: runs of each peer per layout and case, alternating
    /// which goes first.
    #[arg(long, default_value_t = 2)]
    pub(crate) rounds: usize,
    /// With `--vs`: routes in the snapshot of the one-route case.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) delta_routes: usize,
}

/// Builds the release binaries, measures, prints.
pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    build_release(root)?;
    let report = measure(&target_dir(root).join("release"), o, Duration::from_secs(2))?;
    if o.json {
        println!("{report}");
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// `cargo build --release` of the server and the load generator.
pub(crate) fn build_release(root: &Path) -> Result<()> {
    let mut build = cargo();
    build.current_dir(root).args([
        "build",
        "--release",
        "-p",
        "vane-control",
        "-p",
        "vane-loadgen",
        "--bins",
    ]);
    eprintln!("==> {}", display(&build));
    run_cmd(&mut build)?;
    Ok(())
}

/// Runs the scenario with the binaries in `bin_dir`; returns the load
/// generator's report plus `server_metrics`.
pub(crate) fn measure(bin_dir: &Path, o: &Options, settle: Duration) -> Result<Value> {
    let connections = o.connections.unwrap_or(o.agents);
    // Children inherit the limit: the server holds one socket per connection.
    raise_nofile(connections as u64 + 256)?;
    let dir = tempfile::Builder::new().prefix("vane-bench-").tempdir()?;
    let server = ControlServer::start(bin_dir, dir.path())?;
    let mut cmd = Command::new(bin_dir.join("vane-loadgen"));
    cmd.args(["fanout", "--server", &server.url(), "--group", GROUP])
        .args(["--server-pid", &server.pid().to_string()])
        .args(["--agents", &o.agents.to_string()])
        .args(["--connections", &connections.to_string()])
        .args(["--routes", &o.routes.to_string()])
        .args(["--pushes", &o.pushes.to_string()])
        .args(["--verify", &o.verify])
        .args(["--settle", &format!("{}ms", settle.as_millis())]);
    let mut report = run_loadgen(&mut cmd, &server)?;
    let metrics = server.metrics()?;
    let sent = |kind: &str| {
        metric(
            &metrics,
            "vane_control_watch_bytes_sent_total",
            &[("group", GROUP), ("kind", kind)],
        )
    };
    let responses = |kind: &str| {
        metric(
            &metrics,
            "vane_control_watch_responses_total",
            &[("group", GROUP), ("kind", kind)],
        )
    };
    if let Value::Object(fields) = &mut report {
        fields.insert(
            "server_metrics".into(),
            serde_json::json!({
                "full_bytes_sent_total": sent("full"),
                "delta_bytes_sent_total": sent("delta"),
                "full_responses_total": responses("full"),
                "delta_responses_total": responses("delta"),
                "acks_total": metric(&metrics, "vane_control_acks_total", &[("group", GROUP)]),
                "push_to_ack_seconds_count": metric(&metrics, "vane_control_push_to_ack_seconds_count", &[("group", GROUP)]),
                "push_to_ack_seconds_sum": metric(&metrics, "vane_control_push_to_ack_seconds_sum", &[("group", GROUP)]),
                // The server's own time in the push handler (the first push
                // included), against what the load generator saw.
                "push_call_seconds_count": metric(&metrics, "vane_control_admin_call_duration_seconds_count", &[("method", "Push")]),
                "push_call_seconds_sum": metric(&metrics, "vane_control_admin_call_duration_seconds_sum", &[("method", "Push")]),
            }),
        );
    }
    server.stop()?;
    Ok(report)
}

/// Runs the load generator (progress on our stderr) and parses its report.
pub(crate) fn run_loadgen(cmd: &mut Command, server: &ControlServer) -> Result<Value> {
    run_loadgen_beside(cmd, "the server", &|| server.log_tail())
}

/// [`run_loadgen`] against any server (`what`), whose log ends as
/// `log_tail` says.
pub(crate) fn run_loadgen_beside(
    cmd: &mut Command,
    what: &str,
    log_tail: &dyn Fn() -> String,
) -> Result<Value> {
    eprintln!("==> {}", display(cmd));
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start vane-loadgen")?;
    if !out.status.success() {
        bail!(
            "vane-loadgen failed ({}); the log of {what} ends with:\n{}",
            out.status,
            log_tail()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .context("vane-loadgen printed no report")?;
    serde_json::from_str(line).with_context(|| format!("vane-loadgen's report is not JSON: {line}"))
}

/// Raises our soft RLIMIT_NOFILE to the hard limit (children inherit it),
/// and says which `ulimit -n` is needed when that is not enough.
pub(crate) fn raise_nofile(needed: u64) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    if hard < needed {
        bail!(
            "{needed} file descriptors needed, but the hard limit is {hard}: run \
             `ulimit -n {needed}` as root (or raise nofile in /etc/security/limits.conf)"
        );
    }
    Ok(())
}

/// A `vane-control` process on a temporary data directory, with its admin
/// endpoint; stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct ControlServer {
    /// `None` once stopped.
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    admin: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl ControlServer {
    /// Starts the server in `bin_dir` with its data and log under `dir`.
    pub(crate) fn start(bin_dir: &Path, dir: &Path) -> Result<Self> {
        Self::start_on(bin_dir, dir, "127.0.0.1:0")
    }

    /// [`Self::start`] listening on `listen`; a restart on the same `dir`
    /// keeps the data and appends to the log.
    pub(crate) fn start_on(bin_dir: &Path, dir: &Path, listen: &str) -> Result<Self> {
        let data_dir = dir.join("data");
        let log = dir.join("vane-control.log");
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut child = Command::new(bin_dir.join("vane-control"))
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            // `bench push` (which shares this server) pushes thousands of
            // times a second from one (anonymous) identity and `bench fanout`
            // in bursts: the per-identity push rate limit would measure
            // itself, so it is off.
            .args(["--push-rate", "0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("cannot start {}", bin_dir.join("vane-control").display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, rx) = mpsc::channel();
        // Keeps reading, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while addr.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "vane-control did not start; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            if let Some(a) = line.strip_prefix("vane-control admin listening on ") {
                admin = Some(a.trim().parse()?);
            } else if let Some(a) = line.strip_prefix("vane-control listening on ") {
                addr = Some(a.trim().parse()?);
            }
        }
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            addr: addr.context("no listen address")?,
            admin: admin.context("no admin address")?,
            data_dir,
            log,
        })
    }

    /// The gRPC URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The gRPC address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin endpoint's address (`/metrics`).
    pub(crate) fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the process (SIGSTOP, SIGCONT).
    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        nix::sys::signal::kill(pid, signal).with_context(|| format!("{signal} to vane-control"))
    }

    /// The data directory (for the fsync probe).
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `GET /metrics` of the admin endpoint.
    pub(crate) fn metrics(&self) -> Result<String> {
        http_get(self.admin, "/metrics")
    }

    /// The last lines of the server's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, and the exit status must be success.
    pub(crate) fn stop(mut self) -> Result<()> {
        let child = self
            .child
            .take()
            .context("vane-control was already stopped")?;
        match terminate_child(child, Duration::from_secs(20)) {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!(
                "vane-control exited with {status}; its log:\n{}",
                self.log_tail()
            ),
            None => bail!("vane-control did not stop within 20s of SIGTERM; killed it"),
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of `name{labels}` in Prometheus text (0 when absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| {
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|rest| rest.rsplit(' ').next())
        .find_map(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn num(r: &Value, field: &str) -> f64 {
    r.get(field).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The report as a table.
pub(crate) fn table(r: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "fan-out: {} agents on {} connections, {} routes, {} pushes per phase (verify: {})",
            num(r, "agents"),
            num(r, "connections"),
            num(r, "routes"),
            num(r, "pushes"),
            r.get("verify").and_then(Value::as_str).unwrap_or("?"),
        ),
    );
    line(
        &mut out,
        format!(
            "{:<28} {:>10} {:>10} {:>10}",
            "push accepted ->", "p50 ms", "p99 ms", "max ms"
        ),
    );
    for (label, prefix) in [
        ("whole snapshot, received", "full_received"),
        ("whole snapshot, acked", "full_acked"),
        ("one route (delta), received", "delta_received"),
        ("one route (delta), acked", "delta_acked"),
    ] {
        line(
            &mut out,
            format!(
                "{label:<28} {:>10.1} {:>10.1} {:>10.1}",
                num(r, &format!("{prefix}_p50_ms")),
                num(r, &format!("{prefix}_p99_ms")),
                num(r, &format!("{prefix}_max_ms")),
            ),
        );
    }
    line(
        &mut out,
        format!(
            "push call itself, before acceptance (p50/p99): whole {:.1}/{:.1} ms, one route {:.1}/{:.1} ms; fleet connected and synced in {:.2} s",
            num(r, "push_full_rpc_p50_ms"),
            num(r, "push_full_rpc_p99_ms"),
            num(r, "push_delta_rpc_p50_ms"),
            num(r, "push_delta_rpc_p99_ms"),
            num(r, "connect_seconds"),
        ),
    );
    line(
        &mut out,
        format!(
            "bytes per response: full {}, delta {} ({:.3}% of full); per push to all agents: full {}, delta {}",
            num(r, "full_bytes"),
            num(r, "delta_bytes"),
            num(r, "delta_percent_of_full"),
            num(r, "full_bytes_per_push"),
            num(r, "delta_bytes_per_push"),
        ),
    );
    line(
        &mut out,
        format!(
            "server RSS: {:.1} MiB before agents, {:.1} MiB connected ({:.1} KiB per agent), {:.1} MiB after pushes ({:.1} KiB per agent)",
            num(r, "server_rss_baseline_kib") / 1024.0,
            num(r, "server_rss_idle_kib") / 1024.0,
            num(r, "rss_per_agent_kib"),
            num(r, "server_rss_after_pushes_kib") / 1024.0,
            num(r, "rss_per_agent_after_pushes_kib"),
        ),
    );
    line(
        &mut out,
        format!(
            "server CPU: {:.3} s per whole push, {:.3} s per one-route push, {:.2} s to connect the fleet; load generator: {:.3} / {:.3} s per push",
            num(r, "server_cpu_seconds_per_full_push"),
            num(r, "server_cpu_seconds_per_delta_push"),
            num(r, "server_cpu_seconds_connect"),
            num(r, "loadgen_cpu_seconds_per_full_push"),
            num(r, "loadgen_cpu_seconds_per_delta_push"),
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_found_by_labels() {
        let text = "# TYPE x counter\nx_total{group=\"bench\",kind=\"full\"} 12\nx_total{group=\"bench\",kind=\"delta\"} 3\n";
        assert_eq!(
            metric(text, "x_total", &[("group", "bench"), ("kind", "delta")]),
            3.0
        );
        assert_eq!(metric(text, "x_total", &[("kind", "full")]), 12.0);
        assert_eq!(metric(text, "y_total", &[]), 0.0);
    }

    /// A small run of the whole benchmark on the debug binaries that
    /// `cargo xtask test` builds first, so it cannot rot.
    #[test]
    fn smoke() {
        let bin_dir = super::super::smoke_bins();
        let o = Options {
            agents: 30,
            connections: Some(10),
            routes: 40,
            pushes: 2,
            verify: "shared".into(),
            json: true,
            vs: None,
            rounds: 2,
            delta_routes: 10_000,
        };
        let r = measure(&bin_dir, &o, Duration::ZERO).expect("the benchmark runs");
        assert_eq!(num(&r, "agents"), 30.0);
        assert!(num(&r, "delta_bytes") * 10.0 < num(&r, "full_bytes"), "{r}");
        let m = &r["server_metrics"];
        assert!(m["delta_bytes_sent_total"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(m["delta_responses_total"].as_f64().unwrap(), 60.0, "{r}");
        assert!(table(&r).contains("one route (delta), received"));
    }
}
