//! Our binaries as child processes for the demos and the benchmarks: start
//! one and wait for the address it announces, stop it (SIGTERM, then
//! SIGKILL), kill it; an HTTP GET and bounded waits on loopback.
//!
//! The mechanics are vane-testkit's, shared with the tests, so each exists
//! once in the workspace; this module turns their errors into anyhow ones
//! and stops every process it started when dropped, so no error path of a
//! demo or a benchmark leaves one behind.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::unistd::Pid;
use vane_testkit::net;
use vane_testkit::process::{terminate_child, try_spawn_announced};

/// The line vane-control prints on stdout once it accepts connections.
pub(crate) const CONTROL_LISTENING: &str = "vane-control listening on ";
/// The line vane-agent prints on stdout once its admin endpoint listens.
pub(crate) const AGENT_LISTENING: &str = "vane-agent admin listening on ";
/// The line vane-proxy prints on stdout once its admin endpoint listens.
pub(crate) const PROXY_LISTENING: &str = "vane-proxy admin listening on ";

/// How long a process may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Proc {
    name: &'static str,
    pid: u32,
    /// `None` once it was stopped or killed.
    child: Option<Child>,
}

impl Proc {
    pub(crate) fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            pid: child.id(),
            child: Some(child),
        }
    }

    /// Its process id, for signals and /proc.
    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX))
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`]; fails (after a SIGKILL)
    /// when it did not exit in time. Returns how it exited and how long
    /// that took.
    pub(crate) fn stop(&mut self) -> Result<(ExitStatus, Duration)> {
        let child = self
            .child
            .take()
            .with_context(|| format!("{} was already stopped", self.name))?;
        let start = Instant::now();
        match terminate_child(child, STOP_TIMEOUT) {
            Some(status) => Ok((status, start.elapsed())),
            None => bail!(
                "{} did not exit within {}s of SIGTERM; killed it",
                self.name,
                STOP_TIMEOUT.as_secs()
            ),
        }
    }

    /// SIGKILL: no warning, no drain.
    pub(crate) fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} was already stopped", self.name))?;
        child
            .kill()
            .with_context(|| format!("cannot kill {}", self.name))?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) && terminate_child(child, STOP_TIMEOUT).is_none() {
            eprintln!(
                "warning: {} did not stop after SIGTERM; killed it",
                self.name
            );
        }
    }
}

/// Starts `cmd` (stderr to `log`) and waits for the stdout line starting
/// with `prefix` that our binaries print once they listen; returns the
/// process and the rest of that line.
pub(crate) fn spawn_announced(
    name: &'static str,
    cmd: Command,
    prefix: &'static str,
    log: &Path,
) -> Result<(Proc, String)> {
    let (child, rest) = try_spawn_announced(cmd, prefix, log, STARTUP_TIMEOUT)
        .map_err(|e| anyhow!("{name} did not start: {e}"))?;
    Ok((Proc::new(name, child), rest))
}

/// A running process of ours that announced its address (vane-control,
/// vane-agent, vane-proxy), with its log; stopped when dropped.
pub(crate) struct Server {
    pub(crate) name: &'static str,
    proc: Proc,
    pub(crate) addr: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Server {
    /// Starts `program ARGS` and waits for the address it prints after
    /// `prefix`. Its stderr goes to `WORK/<name>.log` (`<name>-2.log` for a
    /// second start, and so on, so a restart keeps the earlier log).
    pub(crate) fn start(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        prefix: &'static str,
        work: &Path,
    ) -> Result<Self> {
        let log = (1..)
            .map(|n| match n {
                1 => work.join(format!("{name}.log")),
                n => work.join(format!("{name}-{n}.log")),
            })
            .find(|p| !p.exists())
            .unwrap_or_else(|| work.join(format!("{name}.log")));
        let mut cmd = Command::new(program);
        cmd.args(args);
        let (proc, rest) = spawn_announced(name, cmd, prefix, &log)?;
        let addr = parse_addr(&rest)
            .with_context(|| format!("{name} announced {rest:?}, not an address"))?;
        Ok(Self {
            name,
            proc,
            addr,
            log,
        })
    }

    /// SIGTERM, then wait (SIGKILL after a while); see [`Proc::stop`].
    pub(crate) fn stop(&mut self) -> Result<(ExitStatus, Duration)> {
        self.proc.stop()
    }

    /// SIGKILL, saying so as a shell line.
    pub(crate) fn kill(&mut self) -> Result<()> {
        println!("$ kill -9 {}   # {}", self.proc.pid, self.name);
        self.proc.kill()
    }
}

/// The address at the start of what follows a `<prefix>` line.
fn parse_addr(rest: &str) -> Option<SocketAddr> {
    rest.split_whitespace().next()?.parse().ok()
}

/// `GET path` over HTTP/1.1 on loopback; the body when the status is 200.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let (code, body) =
        net::http_get(addr, path).with_context(|| format!("GET http://{addr}{path}"))?;
    ensure!(code == 200, "GET http://{addr}{path}: status {code}");
    Ok(body)
}

/// Waits until `addr` accepts connections (for up to 20 s).
pub(crate) fn wait_accepting(addr: SocketAddr, what: &str) -> Result<()> {
    ensure!(
        net::wait_accepting(addr, Duration::from_secs(20)),
        "{what} never accepted on {addr}"
    );
    Ok(())
}

/// Polls `done` every 50 ms for up to 30 s.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !done() {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:40123"),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert_eq!(
            parse_addr("127.0.0.1:40123 (plaintext)").map(|a| a.port()),
            Some(40123)
        );
        assert_eq!(parse_addr("something else"), None);
    }

    #[test]
    fn a_process_that_never_announces_fails_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo oops >&2; exit 3"]);
        let err = spawn_announced("sh", cmd, CONTROL_LISTENING, &dir.path().join("sh.log"))
            .err()
            .unwrap();
        let text = format!("{err:#}");
        assert!(text.starts_with("sh did not start"), "{text}");
        assert!(text.contains("oops"), "{text}");
    }

    #[test]
    fn a_dropped_process_is_stopped() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        drop(Proc::new("sleep", child));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
