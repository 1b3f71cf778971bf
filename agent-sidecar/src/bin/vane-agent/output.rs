//! The sidecar's files and commands: the output file (rewritten atomically on
//! every apply), the candidate handed to `--check-cmd`, and `--on-change`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vane_agent::Current;

use crate::counters::{Ended, ran};
use vane_agent::cache::{write_atomic, write_atomic_private};

/// Most bytes of a check (or health) command's stderr kept as the NACK
/// (or degraded) reason.
const MAX_REASON_BYTES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Json,
    Yaml,
}

/// Renders a configuration: the canonical snapshot with `group`, `version`,
/// `hash` and `source` added at the top. Private keys are never written:
/// each is its placeholder (`redacted:sha256:<fingerprint>`); a program that
/// needs a key reads it from the agent host (`private_key_file`).
pub(crate) fn render(c: &Current, group: &str, format: OutputFormat) -> Result<Vec<u8>, String> {
    let mut doc = serde_json::Map::new();
    doc.insert("group".into(), group.into());
    doc.insert("version".into(), c.version.into());
    doc.insert("hash".into(), c.hash.clone().into());
    doc.insert("source".into(), c.source.as_str().into());
    let body = if c.snapshot.has_private_keys() {
        let mut shown = vane_model::Snapshot::clone(&c.snapshot);
        vane_model::redact::redact_snapshot(&mut shown);
        shown.to_json()
    } else {
        c.snapshot.to_json()
    };
    if let serde_json::Value::Object(body) = body {
        doc.extend(body);
    }
    let doc = serde_json::Value::Object(doc);
    match format {
        OutputFormat::Json => serde_json::to_vec_pretty(&doc)
            .map(|mut v| {
                v.push(b'\n');
                v
            })
            .map_err(|e| e.to_string()),
        OutputFormat::Yaml => serde_norway::to_string(&doc)
            .map(String::into_bytes)
            .map_err(|e| e.to_string()),
    }
}

pub(crate) struct Outputs {
    output: Option<PathBuf>,
    format: OutputFormat,
    group: String,
    scratch_dir: PathBuf,
    check_cmd: Option<String>,
    check_timeout: Duration,
}

impl Outputs {
    pub(crate) fn new(
        output: Option<PathBuf>,
        format: OutputFormat,
        group: String,
        cache_dir: PathBuf,
        check_cmd: Option<String>,
        check_timeout: Duration,
    ) -> Self {
        // Candidates go next to the output (same filesystem, same
        // permissions as what the checked program reads), else to the cache.
        let scratch_dir = output
            .as_ref()
            .and_then(|o| o.parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or(cache_dir);
        Self {
            output,
            format,
            group,
            scratch_dir,
            check_cmd,
            check_timeout,
        }
    }

    /// The sink: rewrites the output file atomically.
    pub(crate) fn write(&self, c: &Current) -> Result<(), String> {
        let Some(path) = &self.output else {
            return Ok(());
        };
        let bytes = render(c, &self.group, self.format)?;
        write(path, &bytes, c).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The validator: runs `--check-cmd` on the candidate.
    pub(crate) fn check(&self, candidate: &Current) -> Result<(), String> {
        let Some(cmd) = &self.check_cmd else {
            return Ok(());
        };
        let ext = match self.format {
            OutputFormat::Json => "json",
            OutputFormat::Yaml => "yaml",
        };
        std::fs::create_dir_all(&self.scratch_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.scratch_dir.display()))?;
        let path = self.scratch_dir.join(format!(
            ".vane-candidate-{}-v{}.{ext}",
            std::process::id(),
            candidate.version
        ));
        let bytes = render(candidate, &self.group, self.format)?;
        write(&path, &bytes, candidate)
            .map_err(|e| format!("cannot write the candidate {}: {e}", path.display()))?;
        let result = run_check(cmd, &path, self.check_timeout);
        let _ = std::fs::remove_file(&path);
        result
    }
}

/// Writes a rendered configuration: only its owner may read it when the
/// snapshot has secrets (certificates, CA bundles, key fingerprints).
fn write(path: &Path, bytes: &[u8], c: &Current) -> std::io::Result<()> {
    if c.snapshot.secrets.is_empty() {
        write_atomic(path, bytes)
    } else {
        write_atomic_private(path, bytes)
    }
}

/// Runs `sh -c '<cmd> "$1"' <path>`; Ok on exit 0, else the trimmed stderr.
fn run_check(cmd: &str, candidate: &Path, timeout: Duration) -> Result<(), String> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("{cmd} \"$1\""))
        .arg("vane-check")
        .arg(candidate);
    run_sh(command, "check-cmd", cmd, timeout)
}

/// Runs `command` (an `sh -c` of the operator's `cmd`, the `--what` flag);
/// Ok on exit 0, else the trimmed stderr, cut to [`MAX_REASON_BYTES`] (or
/// the exit status when it said nothing). Blocks until it ends or
/// `timeout` passes.
///
/// The command runs in its own process group so a timeout kills everything it
/// started, and nothing it leaves behind (a background process holding its
/// stderr open) can keep the caller waiting past the deadline.
pub(crate) fn run_sh(
    mut command: Command,
    what: &str,
    cmd: &str,
    timeout: Duration,
) -> Result<(), String> {
    use std::os::unix::process::CommandExt as _;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            ran(what, Ended::Failed);
            format!("{what}: cannot run {cmd:?}: {e}")
        })?;
    let group = i32::try_from(child.id())
        .ok()
        .map(nix::unistd::Pid::from_raw);
    // Read stderr on a thread so a chatty command cannot block on a full pipe.
    let stderr = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                if let Some(pgid) = group {
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                ran(what, Ended::Timeout);
                return Err(format!("{what} timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                ran(what, Ended::Failed);
                return Err(format!("{what}: {e}"));
            }
        }
    };
    // Whatever stderr said until now; a leftover holder of the pipe cannot
    // stretch this past the deadline (plus a moment to drain).
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let stderr = rx.recv_timeout(wait).unwrap_or_default();
    if status.success() {
        ran(what, Ended::Ok);
        return Ok(());
    }
    ran(what, Ended::Failed);
    let mut text = String::from_utf8_lossy(&stderr).trim().to_string();
    if text.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    if text.is_empty() {
        text = format!("{what} failed with {status}");
    }
    Err(text)
}

/// Runs `--on-change` after every apply, one at a time (latest wins: changes
/// arriving while it runs are coalesced into one more run).
pub(crate) async fn run_on_change(
    cmd: String,
    mut changes: watch::Receiver<std::sync::Arc<Current>>,
    output: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    // The configuration loaded at startup is not a change.
    changes.borrow_and_update();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        let current = changes.borrow_and_update().clone();
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(&cmd)
            .env("VANE_VERSION", current.version.to_string())
            .env("VANE_HASH", &current.hash)
            .env("VANE_SOURCE", current.source.as_str())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(o) = &output {
            command.env("VANE_OUTPUT", o);
        }
        match tokio::time::timeout(Duration::from_secs(60), command.status()).await {
            Ok(Ok(s)) if s.success() => {
                ran("on-change", Ended::Ok);
                tracing::info!(version = current.version, "on-change command succeeded");
            }
            Ok(Ok(s)) => {
                ran("on-change", Ended::Failed);
                tracing::warn!(version = current.version, status = %s, "on-change command failed")
            }
            Ok(Err(e)) => {
                ran("on-change", Ended::Failed);
                tracing::warn!(error = %e, "on-change command could not run");
            }
            Err(_) => {
                ran("on-change", Ended::Timeout);
                tracing::warn!("on-change command timed out after 60s");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("candidate.json");
        std::fs::write(&path, "{}").unwrap();
        (dir, path)
    }

    #[test]
    fn exit_codes_and_trimmed_stderr() {
        let (_d, path) = candidate();
        assert!(run_check("test -f", &path, Duration::from_secs(10)).is_ok());
        let e = run_check(
            "echo '  port 80 is taken  ' >&2; false",
            &path,
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert_eq!(e, "port 80 is taken");
        let e = run_check("exit 3 ||", &path, Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("check-cmd failed"), "{e}");
    }

    #[test]
    fn a_slow_check_times_out_and_is_killed() {
        let (_d, path) = candidate();
        let started = Instant::now();
        let e = run_check("sleep 30; true", &path, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_background_leftover_does_not_wedge_the_apply() {
        let (_d, path) = candidate();
        let started = Instant::now();
        // The check succeeds at once but leaves a process holding stderr.
        run_check("(sleep 30 &) ; true", &path, Duration::from_millis(500)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
