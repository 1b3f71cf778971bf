//! The sidecar's files and commands: the output file and the `--template`
//! files (all rendered first, then each rewritten atomically on every
//! apply), the candidate handed to `--check-cmd`, and `--on-change`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vane_agent::Current;

use crate::counters::{Ended, ran};
use vane_agent::atomic_file::{self, Staged, write_atomic, write_atomic_private};

use crate::templates::Templates;

/// Most bytes of a check (or health) command's stderr kept as the NACK
/// (or degraded) reason.
const MAX_REASON_BYTES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Json,
    Yaml,
}

/// The document a configuration is written as (and the templates' context):
/// the canonical snapshot with `group`, `version`, `hash` and `source` added
/// at the top. Private keys are never in it: each is its placeholder
/// (`redacted:sha256:<fingerprint>`); a program that needs a key reads it
/// from the agent host (`private_key_file`).
pub(crate) fn document(c: &Current, group: &str) -> serde_json::Value {
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
    serde_json::Value::Object(doc)
}

/// [`document`] as pretty JSON (with a final newline) or YAML.
pub(crate) fn encode(doc: &serde_json::Value, format: OutputFormat) -> Result<Vec<u8>, String> {
    match format {
        OutputFormat::Json => serde_json::to_vec_pretty(doc)
            .map(|mut v| {
                v.push(b'\n');
                v
            })
            .map_err(|e| e.to_string()),
        OutputFormat::Yaml => yaml_serde::to_string(doc)
            .map(String::into_bytes)
            .map_err(|e| e.to_string()),
    }
}

/// Renders a configuration as `--output` is written without a template.
pub(crate) fn render(c: &Current, group: &str, format: OutputFormat) -> Result<Vec<u8>, String> {
    encode(&document(c, group), format)
}

/// One file of a version, rendered and not yet written.
struct Rendered {
    path: PathBuf,
    bytes: Vec<u8>,
    /// The exact mode to give it; `None`: the default (0666 less the
    /// umask, 0600 when the snapshot has secrets).
    mode: Option<u32>,
}

/// The sidecar's files: `--output` (its JSON/YAML, or the short-form
/// template's rendering) and every `--template` destination.
pub(crate) struct Outputs {
    output: Option<PathBuf>,
    format: OutputFormat,
    output_mode: Option<u32>,
    templates: Templates,
    group: String,
    scratch_dir: PathBuf,
    check_cmd: Option<String>,
    check_timeout: Duration,
    /// Counts the applies that changed the content (or mode) of any file;
    /// `--on-change` runs only when it moved.
    changes: AtomicU64,
}

/// How the sidecar writes its files, from its flags.
pub(crate) struct OutputsConfig {
    pub(crate) output: Option<PathBuf>,
    pub(crate) format: OutputFormat,
    pub(crate) output_mode: Option<u32>,
    pub(crate) templates: Templates,
    pub(crate) group: String,
    pub(crate) cache_dir: PathBuf,
    pub(crate) check_cmd: Option<String>,
    pub(crate) check_timeout: Duration,
}

impl Outputs {
    pub(crate) fn new(c: OutputsConfig) -> Self {
        // Candidates go next to the output (same filesystem, same
        // permissions as what the checked program reads), else to the cache.
        let scratch_dir = c
            .output
            .as_ref()
            .and_then(|o| o.parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or(c.cache_dir);
        Self {
            output: c.output,
            format: c.format,
            output_mode: c.output_mode,
            templates: c.templates,
            group: c.group,
            scratch_dir,
            check_cmd: c.check_cmd,
            check_timeout: c.check_timeout,
            changes: AtomicU64::new(0),
        }
    }

    /// Whether there is any file to write.
    pub(crate) fn has_files(&self) -> bool {
        self.output.is_some() || !self.templates.items().is_empty()
    }

    /// How many applies changed a file so far.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Every file of `c`, rendered in memory: `--output` first, then the
    /// templates in flag order. Any failure (a template naming an undefined
    /// value) fails the whole set, so nothing is written.
    fn render_all(&self, c: &Current) -> Result<Vec<Rendered>, String> {
        let doc = document(c, &self.group);
        let mut files = Vec::with_capacity(self.templates.items().len() + 1);
        if let Some(path) = &self.output
            && self.templates.for_output(path).is_none()
        {
            files.push(Rendered {
                path: path.clone(),
                bytes: encode(&doc, self.format)?,
                mode: self.output_mode,
            });
        }
        for t in self.templates.items() {
            files.push(Rendered {
                path: t.dest.clone(),
                bytes: self.templates.render(t, &doc)?,
                mode: t.mode.or(self.output_mode),
            });
        }
        Ok(files)
    }

    /// The sink: renders every file, then rewrites those that changed as
    /// one set (a file whose content and mode are already right is left
    /// alone): every new file is first written and fsynced beside its
    /// destination, and only when all are staged are they renamed into
    /// place. A failed write (disk full) therefore changes nothing: the
    /// staged files are removed and the version is refused.
    pub(crate) fn write(&self, c: &Current) -> Result<(), String> {
        let files = self.render_all(c)?;
        let private = !c.snapshot.secrets.is_empty();
        let mut staged = Vec::new();
        for f in &files {
            if is_current(&f.path, &f.bytes, f.mode, private) {
                continue;
            }
            match stage(&f.path, &f.bytes, f.mode, private) {
                Ok(s) => staged.push(s),
                Err(e) => {
                    for s in &staged {
                        s.discard();
                    }
                    return Err(format!("cannot write {}: {e}", f.path.display()));
                }
            }
        }
        let changed = !staged.is_empty();
        // Renames need no space: once every file is staged, the set goes
        // in. Should one still fail, the rest are discarded, not renamed.
        let mut failed = None;
        for s in &staged {
            if failed.is_some() {
                s.discard();
            } else if let Err(e) = s.commit() {
                s.discard();
                failed = Some(format!("cannot write {}: {e}", s.path().display()));
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if changed {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The validator: renders every file (a template error refuses the
    /// candidate before any command runs), then runs `--check-cmd` on the
    /// candidate of `--output` (its template's rendering when the short
    /// form is used; the JSON/YAML document otherwise).
    pub(crate) fn check(&self, candidate: &Current) -> Result<(), String> {
        let files = self.render_all(candidate)?;
        let Some(cmd) = &self.check_cmd else {
            return Ok(());
        };
        let format_ext = match self.format {
            OutputFormat::Json => "json",
            OutputFormat::Yaml => "yaml",
        };
        let output = self
            .output
            .as_ref()
            .and_then(|o| files.iter().find(|f| &f.path == o));
        let (bytes, ext) = match output {
            Some(f) => (
                f.bytes.clone(),
                f.path
                    .extension()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format_ext.to_owned()),
            ),
            None => (
                render(candidate, &self.group, self.format)?,
                format_ext.to_owned(),
            ),
        };
        std::fs::create_dir_all(&self.scratch_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.scratch_dir.display()))?;
        let path = self.scratch_dir.join(format!(
            ".vane-candidate-{}-v{}.{ext}",
            std::process::id(),
            candidate.version
        ));
        write(&path, &bytes, candidate)
            .map_err(|e| format!("cannot write the candidate {}: {e}", path.display()))?;
        let result = run_check(cmd, &path, self.check_timeout);
        let _ = std::fs::remove_file(&path);
        result
    }
}

/// Whether `path` already holds `bytes` with the mode it would be written
/// with (`mode` exactly; by default, owner-only when `private`).
fn is_current(path: &Path, bytes: &[u8], mode: Option<u32>, private: bool) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let has = meta.permissions().mode() & 0o7777;
    let mode_ok = match mode {
        Some(m) => has == m,
        None => !private || has & 0o077 == 0,
    };
    if !mode_ok {
        return false;
    }
    meta.len() == bytes.len() as u64 && std::fs::read(path).is_ok_and(|old| old == bytes)
}

/// Stages one file: with `mode` exactly (not less the umask: the operator
/// asked for it), else 0600 when the snapshot has secrets and 0666 less
/// the umask otherwise (as the agent's cache writes).
fn stage(path: &Path, bytes: &[u8], mode: Option<u32>, private: bool) -> std::io::Result<Staged> {
    let create = mode.unwrap_or(if private { 0o600 } else { 0o666 });
    atomic_file::stage(path, bytes, create, mode)
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

/// Runs `--on-change` after every apply that changed a file, once all of
/// its files are written (the sink writes them before the new version is
/// published), one run at a time (latest wins: versions arriving while it
/// runs are coalesced into one more run). An apply that left every file as
/// it was does not run it; with no file at all (no `--output`, no
/// `--template`) every apply does, as before templates existed.
///
/// The caller marks the running configuration seen in `changes`, and reads
/// `handled` from [`Outputs::changes`], right after the agent started: the
/// configuration loaded at startup is not a change.
pub(crate) async fn run_on_change(
    cmd: String,
    mut changes: watch::Receiver<Arc<Current>>,
    outputs: Arc<Outputs>,
    mut handled: u64,
    output: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        let current = changes.borrow_and_update().clone();
        if outputs.has_files() {
            let now = outputs.changes();
            if now == handled {
                tracing::info!(
                    version = current.version,
                    "every file is unchanged; not running the on-change command"
                );
                continue;
            }
            handled = now;
        }
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

    fn current(version: u64, mode: &str) -> Current {
        let mut snapshot = vane_model::Snapshot::default();
        snapshot
            .values
            .insert("mode".into(), serde_json::json!(mode));
        Current {
            version,
            hash: format!("h{version}"),
            source: vane_agent::Source::Live,
            snapshot: Arc::new(snapshot),
            applied_at: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn every_file_is_rendered_first_written_with_its_mode_and_only_when_changed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a.tmpl"), "mode={{ values.mode }}\n").unwrap();
        std::fs::write(p("b.tmpl"), "{{ values.mode }}/{{ values.other }}\n").unwrap();
        let args = [
            crate::templates::parse_template_arg(&format!(
                "{}:{}:0600",
                p("a.tmpl").display(),
                p("a.conf").display()
            ))
            .unwrap(),
            crate::templates::parse_template_arg(&format!(
                "{}:{}",
                p("b.tmpl").display(),
                p("b.conf").display()
            ))
            .unwrap(),
        ];
        let outputs = Outputs::new(OutputsConfig {
            output: Some(p("out.json")),
            format: OutputFormat::Json,
            output_mode: Some(0o640),
            templates: Templates::load(&args, Some(&p("out.json"))).unwrap(),
            group: "edge".into(),
            cache_dir: p("cache"),
            check_cmd: None,
            check_timeout: Duration::from_secs(1),
        });
        let mode = |n: &str| std::fs::metadata(p(n)).unwrap().permissions().mode() & 0o777;

        // b.tmpl needs values.other: nothing at all is written.
        let e = outputs.write(&current(1, "x")).unwrap_err();
        assert!(e.contains("b.tmpl:1: undefined value"), "{e}");
        assert!(!p("out.json").exists() && !p("a.conf").exists());
        assert_eq!(outputs.changes(), 0);

        let mut c = current(2, "x");
        Arc::make_mut(&mut c.snapshot)
            .values
            .insert("other".into(), serde_json::json!(1));
        outputs.write(&c).unwrap();
        assert_eq!(std::fs::read_to_string(p("a.conf")).unwrap(), "mode=x\n");
        assert_eq!(std::fs::read_to_string(p("b.conf")).unwrap(), "x/1\n");
        assert_eq!(
            (mode("a.conf"), mode("b.conf"), mode("out.json")),
            (0o600, 0o640, 0o640)
        );
        assert_eq!(outputs.changes(), 1);

        // The same content again: nothing rewritten, no change counted.
        let before = std::fs::metadata(p("out.json"))
            .unwrap()
            .modified()
            .unwrap();
        outputs.write(&c).unwrap();
        assert_eq!(outputs.changes(), 1);
        assert_eq!(
            std::fs::metadata(p("out.json"))
                .unwrap()
                .modified()
                .unwrap(),
            before
        );
        // A mode changed by hand is put back, and counts as a change.
        std::fs::set_permissions(p("a.conf"), std::fs::Permissions::from_mode(0o644)).unwrap();
        outputs.write(&c).unwrap();
        assert_eq!((mode("a.conf"), outputs.changes()), (0o600, 2));
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
