//! `cargo xtask bench proxy`: vane-proxy against nginx on the same machine,
//! the same upstream and the same wrk runs, alternating between the two so
//! drift (thermal, noisy neighbours) hits both alike.
//!
//! Scenarios: HTTP/1.1 keep-alive; a new connection per request
//! (`Connection: close`); HTTPS keep-alive (TLS terminated by each proxy
//! with the same certificate, plaintext to the upstream); TCP (nginx's
//! stream module vs a vane tcp listener); and latency while the configuration changes every 100 ms
//! (vane: a snapshot push; nginx: a reload, for reference). The upstream is
//! an nginx answering `200 ok` from memory, the fastest upstream available
//! from Debian packages. Results go to stdout and to `docs/benchmarks.md`
//! together with the machine and the exact commands.
//!
//! # Layout
//! - [`nginx`]: the upstream and nginx as the proxy under test.
//! - [`vane`]: vane-control, the snapshot and its pushes, vane-proxy.
//! - [`load`]: wrk, the CPU time per request, measuring under churn.
//! - [`perf`]: `--profile`, where vane-proxy's CPU time goes.
//! - [`report`]: the Markdown report and docs/benchmarks.md.
//! - This file: the order of the runs.

mod load;
mod nginx;
mod perf;
pub(crate) mod report;
mod vane;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, ensure};
use nix::sys::signal::{Signal, kill};
use vane_testkit::net::free_addr;

use self::load::{LUA, Measure, Wrk, while_every_100ms};
use self::nginx::{Https, proxy_conf, start_nginx, stream_module, upstream_conf};
use self::perf::profile_vane;
use self::report::{Churn, DOC, Record, Settings, render, write_doc};
use self::vane::{Site, Vane};
use crate::apt::Apt;
use crate::harness::{Proc, wait_accepting};
use crate::process::{cargo, display, ensure_built, run as run_cmd, target_dir};

/// Options of `cargo xtask bench proxy`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Seconds of each measured wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections of wrk.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Measured runs of each scenario per proxy (alternating which goes first).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Worker threads of vane-proxy and worker processes of nginx (default: CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Also record a `perf` profile of vane-proxy during a keep-alive run
    /// and add its top functions to the report.
    #[arg(long)]
    profile: bool,
    /// Print results only; leave docs/benchmarks.md alone.
    #[arg(long)]
    no_write: bool,
}

/// The packages whose (release) binaries the benchmark runs, and those binaries.
pub(crate) const PACKAGES: &[&str] = &["vane-proxy-core", "vane-control", "vanectl"];
pub(crate) const BINARIES: &[&str] = &["vane-proxy", "vane-control", "vanectl"];

pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    ensure!(
        o.duration >= 1 && o.rounds >= 1,
        "--duration and --rounds must be at least 1"
    );
    let mut apt = Apt::default();
    apt.ensure_tool("wrk", "wrk")?;
    apt.ensure_tool("nginx", "nginx")?;
    let load_stream = stream_module()?;
    let workers = o
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));

    // The release profile strips symbols; perf needs them, so a profiled
    // run measures the same code built by `profiling` (release with symbols).
    let profile = if o.profile { "profiling" } else { "release" };
    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "--profile", profile, "--bins"]);
    for package in PACKAGES {
        build.args(["-p", package]);
    }
    println!("==> {}", display(&build));
    run_cmd(&mut build)?;
    let bin = target_dir(root).join(profile);
    ensure_built(&bin, BINARIES)?;

    let dir = tempfile::Builder::new().prefix("vane-bench-").tempdir()?;
    let d = dir.path();
    let mut rec = Record::default();

    let upstream = free_addr();
    let _upstream = start_nginx("upstream", d, &upstream_conf(d, upstream), &mut rec)?;
    wait_accepting(upstream, "the upstream")?;
    let site = Site::write(d)?;
    let (nginx_http, nginx_https, nginx_tcp) = (free_addr(), free_addr(), free_addr());
    let https = Https {
        addr: nginx_https,
        cert: &site.cert,
        key: &site.key,
    };
    let conf = proxy_conf(
        &load_stream,
        workers,
        d,
        upstream,
        nginx_http,
        &https,
        nginx_tcp,
    );
    let nginx = start_nginx("nginx", d, &conf, &mut rec)?;
    wait_accepting(nginx_http, "nginx")?;
    wait_accepting(nginx_https, "nginx (https)")?;
    wait_accepting(nginx_tcp, "nginx (stream)")?;
    let vane = Vane::start(&bin, d, upstream, &site, workers, &mut rec)?;
    let (vane_http, vane_https, vane_tcp) = (vane.config.http, vane.config.https, vane.config.tcp);

    let script = d.join("report.lua");
    std::fs::write(&script, LUA)?;
    rec.configs
        .push(("report.lua (wrk's reporting script)".into(), LUA.to_owned()));
    let wrk = Wrk {
        threads: o.threads,
        connections: o.connections,
        script: script.clone(),
    };
    rec.commands.push(format!(
        "{} http://127.0.0.1:PORT/   # keep-alive; PORT = vane {} | nginx {}",
        wrk.line(o.duration, false),
        vane_http.port(),
        nginx_http.port()
    ));
    rec.commands.push(format!(
        "{} http://127.0.0.1:PORT/   # new connection per request",
        wrk.line(o.duration, true)
    ));
    rec.commands.push(format!(
        "{} https://127.0.0.1:PORT/   # HTTPS keep-alive; PORT = vane {} | nginx {}",
        wrk.line(o.duration, false),
        vane_https.port(),
        nginx_https.port()
    ));
    rec.commands.push(format!(
        "{} http://127.0.0.1:PORT/   # TCP; PORT = vane {} | nginx {}",
        wrk.line(o.duration, false),
        vane_tcp.port(),
        nginx_tcp.port()
    ));

    println!("==> warming up");
    let url = |scheme: &str, addr: SocketAddr| format!("{scheme}://{addr}/");
    for (scheme, addr) in [
        ("http", vane_http),
        ("http", nginx_http),
        ("https", vane_https),
        ("https", nginx_https),
        ("http", vane_tcp),
        ("http", nginx_tcp),
    ] {
        wrk.run_url(&url(scheme, addr), 3, false, None)?;
    }

    let scenarios: [(&str, &str, SocketAddr, SocketAddr, bool); 4] = [
        ("HTTP/1.1 keep-alive", "http", vane_http, nginx_http, false),
        (
            "HTTP/1.1, new connection per request",
            "http",
            vane_http,
            nginx_http,
            true,
        ),
        (
            "HTTPS keep-alive (TLS terminated, same certificate)",
            "https",
            vane_https,
            nginx_https,
            false,
        ),
        (
            "TCP (HTTP/1.1 keep-alive through an L4 proxy)",
            "http",
            vane_tcp,
            nginx_tcp,
            false,
        ),
    ];
    let mut rows = Vec::new();
    for (name, scheme, vane_addr, nginx_addr, close) in scenarios {
        let (mut v, mut n) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            let vane_first = round % 2 == 0;
            for which in [vane_first, !vane_first] {
                let (label, addr, pid) = if which {
                    ("vane ", vane_addr, vane.proxy.pid())
                } else {
                    ("nginx", nginx_addr, nginx.pid())
                };
                let m = wrk.run_url(&url(scheme, addr), o.duration, close, Some(pid))?;
                println!(
                    "    {name} [{label}] round {}: {:.0} req/s, p50/p99/p999 {} ms, {:.1} CPU µs/req, errors {}",
                    round + 1,
                    m.rps,
                    m.latencies(),
                    m.cpu_us,
                    m.errors + m.non_2xx
                );
                if which { v.push(m) } else { n.push(m) }
            }
        }
        rows.push((name, Measure::mean(&v), Measure::mean(&n)));
    }

    let churn = churn(o, &wrk, &vane, &nginx, nginx_http)?;

    let profile = if o.profile {
        Some(profile_vane(
            &wrk,
            vane.proxy.pid(),
            vane_http,
            d,
            o.duration,
        )?)
    } else {
        None
    };

    let settings = Settings {
        duration: o.duration,
        connections: o.connections,
        threads: o.threads,
        rounds: o.rounds,
        workers,
    };
    let report = render(&settings, &rows, &churn, &rec, profile.as_deref())?;
    println!("\n{report}");
    if !o.no_write {
        write_doc(root, &report)?;
        println!("==> wrote {DOC}");
    }
    Ok(())
}

/// Config churn: the same keep-alive load, quiet and while the config
/// changes every 100 ms, alternating (rounds of each) so drift hits both.
fn churn(
    o: &Options,
    wrk: &Wrk,
    vane: &Vane,
    nginx: &Proc,
    nginx_http: SocketAddr,
) -> Result<Churn> {
    println!("==> latency under configuration churn (every 100 ms)");
    let vane_http = vane.config.http;
    let pushes = AtomicU64::new(0);
    let reloads = AtomicU64::new(0);
    let variant = AtomicU64::new(1);
    let (vane_pid, nginx_pid) = (vane.proxy.pid(), nginx.pid());
    let (mut qv, mut cv, mut qn, mut cn) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The control experiment: the same pushes to a group this proxy does
    // not follow. Whatever p99 moves here is the push tooling (vanectl,
    // the control server) competing for this machine's CPUs, not the
    // proxy applying snapshots.
    let mut ov = Vec::new();
    let other = AtomicU64::new(1);
    for round in 0..o.rounds {
        let quiet_first = round % 2 == 0;
        for quiet in [quiet_first, !quiet_first] {
            if quiet {
                qv.push(wrk.run(vane_http, o.duration, false, Some(vane_pid))?);
                qn.push(wrk.run(nginx_http, o.duration, false, Some(nginx_pid))?);
                continue;
            }
            cv.push(while_every_100ms(
                || {
                    vane.config.push(
                        u32::try_from(variant.fetch_add(1, Ordering::Relaxed)).unwrap_or(1),
                    )?;
                    pushes.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                },
                || wrk.run(vane_http, o.duration, false, Some(vane_pid)),
            )?);
            ov.push(while_every_100ms(
                || {
                    vane.config.push_to(
                        "bench-unrelated",
                        u32::try_from(other.fetch_add(1, Ordering::Relaxed)).unwrap_or(1),
                    )
                },
                || wrk.run(vane_http, o.duration, false, Some(vane_pid)),
            )?);
            // Reloads replace nginx's worker processes: their CPU is not
            // attributable, so none is reported.
            cn.push(while_every_100ms(
                || {
                    kill(nginx_pid, Signal::SIGHUP)?;
                    reloads.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                },
                || wrk.run(nginx_http, o.duration, false, None),
            )?);
        }
    }
    let pushed = pushes.load(Ordering::Relaxed);
    println!(
        "    vane: {pushed} pushes, running version {} at the end (expected {})",
        vane.running_version()?,
        pushed + 1
    );
    Ok(Churn {
        quiet_vane: Measure::mean(&qv),
        churn_vane: Measure::mean(&cv),
        unrelated_vane: Measure::mean(&ov),
        pushed,
        quiet_nginx: Measure::mean(&qn),
        churn_nginx: Measure::mean(&cn),
        reloads: reloads.load(Ordering::Relaxed),
    })
}
