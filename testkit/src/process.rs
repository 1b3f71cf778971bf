//! Child processes of the workspace's binaries: where they were built,
//! starting one and waiting for the line that says it listens, running one
//! to its end with its output captured, and stopping one with SIGTERM, then
//! SIGKILL. Written once for the tests, the benchmarks and the demo.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to print its address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's binaries for this profile.
///
/// A test binary lives in `<target>/<profile>/deps/`, the binaries (and
/// xtask) in `<target>/<profile>/`. When `CARGO_TARGET_DIR` is set and the
/// running binary was not built there, the same profile under it is tried
/// as well.
///
/// # Panics
/// When the running binary has no path.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running binary has a path");
    let deps = exe
        .parent()
        .expect("the running binary lives in a directory");
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap_or(deps).to_path_buf()
    } else {
        deps.to_path_buf()
    };
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let profile = profile_dir
            .file_name()
            .map(|p| p.to_os_string())
            .unwrap_or_else(|| "debug".into());
        let candidate = PathBuf::from(target).join(profile);
        if candidate.join(exe_name("vane-control")).exists() {
            return candidate;
        }
    }
    profile_dir
}

fn exe_name(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// The path of a workspace binary (`vane-control`, `vanectl`, …).
///
/// # Panics
/// When the binary has not been built.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(exe_name(name));
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first \
         (`cargo xtask test` does this for you)",
        path.display()
    );
    path
}

/// The root of the workspace (for `examples/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Spawns `cmd` with stdout piped and stderr written to `log`, and waits up
/// to `within` for a stdout line starting with `prefix`, which our binaries
/// print once they listen. Returns the child and the rest of that line (an
/// address). Stdout keeps being drained so the child can never block on a
/// full pipe. On failure the child is killed and the error holds its log.
pub fn try_spawn_announced(
    mut cmd: Command,
    prefix: &'static str,
    log: &Path,
    within: Duration,
) -> Result<(Child, String), String> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file))
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{program}: stdout is not piped"));
    };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.trim().strip_prefix(prefix)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(within) {
        Ok(line) => Ok((child, line)),
        Err(_) => {
            let status = child.try_wait().ok().flatten();
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{program} did not print {prefix:?}<addr> within {within:?} \
                 (exit status: {status:?}); its stderr:\n{}",
                read_lossy(log)
            ))
        }
    }
}

/// [`try_spawn_announced`] within [`STARTUP_TIMEOUT`], for tests: panics
/// with the child's log when it does not start.
pub fn spawn_announced(cmd: Command, prefix: &'static str, log: &Path) -> (Child, String) {
    try_spawn_announced(cmd, prefix, log, STARTUP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; after
/// that it is SIGKILLed and `None` is returned.
pub fn terminate_child(mut child: Child, within: Duration) -> Option<ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// What a child run to its end by [`run_captured`] did.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Exit code; -1 when the process died of a signal.
    pub code: i32,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

/// Runs `cmd` to its end with `input` (if any) on its stdin and stdout and
/// stderr captured. A child still running after `within` is SIGKILLed and
/// the error says so, with what it printed on stderr.
///
/// Both pipes are drained by threads, and the input is written by one, so a
/// child that prints a lot while it reads a large input cannot deadlock
/// against the test.
pub fn run_captured(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    within: Duration,
) -> Result<Captured, String> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not finish within {within:?}; its stderr:\n{}",
                    stderr.join().unwrap_or_default()
                ));
            }
        }
    };
    Ok(Captured {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// A file's text, lossily; empty when it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
