//! The load and what it measures: wrk with a reporting script that prints
//! one parseable line, the CPU time the proxy under test spent per request
//! (from /proc), and a measurement taken while the configuration changes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use nix::unistd::Pid;
use std::net::SocketAddr;

use crate::process::display;

/// One wrk measurement.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Measure {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) errors: u64,
    pub(crate) non_2xx: u64,
    /// CPU time the proxy used per request, in microseconds (user + system,
    /// all threads and worker processes): the efficiency figure that
    /// noise from other processes on the machine does not move much.
    pub(crate) cpu_us: f64,
}

impl Measure {
    pub(crate) fn mean(ms: &[Measure]) -> Measure {
        let n = ms.len().max(1) as f64;
        let avg = |f: fn(&Measure) -> f64| ms.iter().map(f).sum::<f64>() / n;
        Measure {
            rps: avg(|m| m.rps),
            p50_us: avg(|m| m.p50_us),
            p99_us: avg(|m| m.p99_us),
            p999_us: avg(|m| m.p999_us),
            errors: ms.iter().map(|m| m.errors).sum(),
            non_2xx: ms.iter().map(|m| m.non_2xx).sum(),
            cpu_us: avg(|m| m.cpu_us),
        }
    }

    pub(crate) fn latencies(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2}",
            self.p50_us / 1000.0,
            self.p99_us / 1000.0,
            self.p999_us / 1000.0
        )
    }
}

/// wrk with a reporting script that prints one parseable line.
pub(crate) struct Wrk {
    pub(crate) threads: u32,
    pub(crate) connections: u32,
    pub(crate) script: PathBuf,
}

pub(crate) const LUA: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_RESULT %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"#;

impl Wrk {
    pub(crate) fn command(&self, secs: u64, close: bool) -> Command {
        let mut cmd = Command::new("wrk");
        cmd.arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{secs}s"))
            .arg("-s")
            .arg(&self.script);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd
    }

    pub(crate) fn line(&self, secs: u64, close: bool) -> String {
        display(&self.command(secs, close))
            .replace(&self.script.display().to_string(), "report.lua")
    }

    /// Runs wrk against `addr`, charging `proxy`'s CPU time (if given) to
    /// the requests.
    pub(crate) fn run(
        &self,
        addr: SocketAddr,
        secs: u64,
        close: bool,
        proxy: Option<Pid>,
    ) -> Result<Measure> {
        self.run_url(&format!("http://{addr}/"), secs, close, proxy)
    }

    /// Runs wrk against `url` (`http://` or `https://`), charging `proxy`'s
    /// CPU time (if given) to the requests.
    pub(crate) fn run_url(
        &self,
        url: &str,
        secs: u64,
        close: bool,
        proxy: Option<Pid>,
    ) -> Result<Measure> {
        let before = proxy.map(cpu_ticks);
        let mut cmd = self.command(secs, close);
        cmd.arg(url);
        let out = cmd.output().context("cannot run wrk")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "wrk failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WRK_RESULT "))
            .with_context(|| format!("no result line from wrk:\n{stdout}"))?;
        let n: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        ensure!(n.len() == 7, "unexpected wrk result line {line:?}");
        let cpu_us = match (proxy, before) {
            (Some(pid), Some(before)) => {
                let ticks = cpu_ticks(pid).saturating_sub(before);
                ticks as f64 * 1e6 / clock_ticks_per_sec() / n[0].max(1.0)
            }
            _ => 0.0,
        };
        Ok(Measure {
            cpu_us,
            rps: n[0] / (n[1] / 1e6).max(1e-9),
            p50_us: n[2],
            p99_us: n[3],
            p999_us: n[4],
            errors: n[5] as u64,
            non_2xx: n[6] as u64,
        })
    }
}

/// Runs `measure` while `change` runs every 100 ms on another thread.
pub(crate) fn while_every_100ms(
    change: impl Fn() -> Result<()> + Sync,
    measure: impl FnOnce() -> Result<Measure>,
) -> Result<Measure> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let changer = s.spawn(|| -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                change()?;
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
            Ok(())
        });
        let m = measure();
        stop.store(true, Ordering::Relaxed);
        changer
            .join()
            .map_err(|_| anyhow::anyhow!("the config changer panicked"))??;
        m
    })
}

/// User + system CPU ticks of `pid` and its child processes (nginx's
/// workers), from /proc.
pub(crate) fn cpu_ticks(pid: Pid) -> u64 {
    let one = |p: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                let after = &s[s.rfind(')')? + 1..];
                let f: Vec<&str> = after.split_whitespace().collect();
                // After the command: state is field 3, utime 14, stime 15.
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    };
    let p = pid.as_raw();
    let children: u64 = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .map(one)
        .sum();
    one(p) + children
}

pub(crate) fn clock_ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn means_sum_errors_and_average_the_rest() {
        let a = Measure {
            rps: 100.0,
            p99_us: 10.0,
            errors: 1,
            ..Measure::default()
        };
        let b = Measure {
            rps: 300.0,
            p99_us: 30.0,
            errors: 2,
            ..Measure::default()
        };
        let m = Measure::mean(&[a, b]);
        assert_eq!((m.rps, m.p99_us, m.errors), (200.0, 20.0, 3));
    }

    #[test]
    pub(crate) fn cpu_ticks_of_this_process() {
        let me = Pid::from_raw(i32::try_from(std::process::id()).unwrap());
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_ticks(me) > 0);
        assert!(clock_ticks_per_sec() > 0.0);
    }
}
