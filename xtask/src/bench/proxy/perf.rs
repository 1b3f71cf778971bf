//! `--profile`: where vane-proxy's CPU time goes, recorded with `perf`
//! during one keep-alive run and grouped by part of the stack.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use nix::unistd::Pid;

use super::load::Wrk;
use crate::process::on_path;

/// Records vane-proxy with `perf` during one keep-alive run; returns the
/// hottest symbols.
pub(crate) fn profile_vane(
    wrk: &Wrk,
    pid: Pid,
    addr: SocketAddr,
    dir: &Path,
    secs: u64,
) -> Result<String> {
    if !on_path("perf") {
        return Ok("perf is not installed; no profile recorded.".into());
    }
    println!("==> profiling vane-proxy with perf");
    let data = dir.join("perf.data");
    let mut perf = Command::new("perf");
    perf.args(["record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut recorder = perf.spawn().context("cannot run perf record")?;
    let m = wrk.run(addr, secs, false, None)?;
    recorder.wait()?;
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,symbol",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data)
        .output()
        .context("cannot run perf report")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let samples: Vec<(f64, String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let pct = parts.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let dso = parts.next()?.to_owned();
            let _kind = parts.next()?;
            Some((pct, dso, parts.collect::<Vec<_>>().join(" ")))
        })
        .collect();
    let mut groups: Vec<(&str, f64)> = Vec::new();
    for (pct, dso, sym) in &samples {
        let group = categorize(dso, sym);
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, total)) => *total += pct,
            None => groups.push((group, *pct)),
        }
    }
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut report = String::from("Where vane-proxy's CPU time goes:\n\n");
    for (group, pct) in &groups {
        let _ = writeln!(report, "  {pct:6.2}%  {group}");
    }
    report.push_str("\nHottest symbols:\n\n");
    for (pct, dso, sym) in samples.iter().take(25) {
        let sym = sym.trim_end_matches(" - -").trim_end_matches(" -");
        let sym: String = sym.chars().take(110).collect();
        let _ = writeln!(report, "  {pct:6.2}%  {dso:<18} {sym}");
    }
    Ok(format!(
        "perf record -F 999 -g -p <vane-proxy> during a {secs}s keep-alive run ({:.0} req/s under perf)\n\n{report}",
        m.rps
    ))
}

/// Which part of the stack a profiled symbol belongs to.
pub(crate) fn categorize(dso: &str, sym: &str) -> &'static str {
    if dso.starts_with("[kernel") {
        "kernel (TCP/IP on loopback, syscalls, scheduling)"
    } else if sym.contains("mi_") || sym.contains("malloc") || sym.contains("free") {
        "allocator (mimalloc)"
    } else if sym.contains("memmove") || sym.contains("memcpy") || sym.contains("memset") {
        "memcpy (moving buffers and futures)"
    } else if sym.contains("hyper")
        || sym.contains("httparse")
        || sym.contains("http::")
        || sym.contains("bytes::")
        || sym.contains("want::")
    {
        "hyper and http (HTTP/1 parse, encode, dispatch)"
    } else if sym.contains("tokio") || sym.contains("mio") || sym.contains("atomic_waker") {
        "tokio and mio (tasks, wakers, timers, readiness)"
    } else if sym.contains("vane") || sym.contains("arc_swap") || sym.contains("prometheus") {
        "vane's own code (routing, balancing, metrics)"
    } else if dso.starts_with("libc") {
        "libc syscall stubs"
    } else if dso == "[vdso]" {
        "clock reads (vdso)"
    } else {
        "other (std, core, futures)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_grouped_by_part_of_the_stack() {
        assert!(categorize("[kernel.kallsyms]", "tcp_sendmsg").starts_with("kernel"));
        assert!(categorize("vane-proxy", "hyper::proto::h1::role").starts_with("hyper"));
        assert!(categorize("vane-proxy", "vane_proxy_core::route").starts_with("vane"));
    }
}
