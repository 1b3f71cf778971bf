//! Helpers for running commands: cargo itself, timed steps, the target
//! directory, PATH lookups.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The cargo that runs us (so `cargo +nightly xtask` stays on nightly),
/// with `PROTOC` set for build scripts that compile protos (the etcd client)
/// when a `protoc` is on PATH and none was chosen already.
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    if std::env::var_os("PROTOC").is_none()
        && let Some(protoc) = which("protoc")
    {
        cmd.env("PROTOC", protoc);
    }
    cmd
}

/// The `protoc` builds use: `$PROTOC`, else the one on PATH.
pub(crate) fn protoc() -> Option<PathBuf> {
    match std::env::var_os("PROTOC") {
        Some(path) => Some(PathBuf::from(path)),
        None => which("protoc"),
    }
}

/// The full path of `bin` on `$PATH`.
pub(crate) fn which(bin: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR` or `<root>/target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Runs `cmd` with inherited stdio; fails with the command line when it fails.
/// Returns how long it took.
pub(crate) fn run(cmd: &mut Command) -> Result<Duration> {
    let line = display(cmd);
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    let took = start.elapsed();
    if !status.success() {
        bail!("`{line}` failed ({status}) after {}", seconds(took));
    }
    Ok(took)
}

/// The command as a shell line (program name without its directory).
pub(crate) fn display(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program());
    std::iter::once(program)
        .chain(cmd.get_args())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes an argument the way a person would type it in a shell.
pub(crate) fn shell_quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `1.23s`.
pub(crate) fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Whether `bin` is an executable file on `$PATH` (what `which` answers).
pub(crate) fn on_path(bin: &str) -> bool {
    which(bin).is_some()
}

/// Checks that a build left every binary a command is about to run in
/// `bin`; the error names the one missing, rather than a failed spawn later.
pub(crate) fn ensure_built(bin: &Path, binaries: &[&str]) -> Result<()> {
    for name in binaries {
        anyhow::ensure!(
            bin.join(name).exists(),
            "{name} was not built in {} (the build above should have made it)",
            bin.display()
        );
    }
    Ok(())
}

/// Runs `cmd`, returning its stdout; fails with its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let line = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// `cargo metadata --no-deps` of the workspace at `root`: its packages,
/// their targets and dependencies.
pub(crate) fn workspace_metadata(root: &Path) -> Result<serde_json::Value> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root);
    serde_json::from_slice(&output(&mut cmd)?).context("`cargo metadata` did not print JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace's binaries per package, from `cargo metadata`.
    fn binaries_of(packages: &[&str]) -> std::collections::BTreeSet<String> {
        let out = cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .expect("cargo metadata runs");
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
        let mut bins = std::collections::BTreeSet::new();
        for package in meta["packages"].as_array().expect("packages") {
            if !packages.contains(&package["name"].as_str().unwrap_or_default()) {
                continue;
            }
            for target in package["targets"].as_array().expect("targets") {
                let is_bin = target["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"));
                if is_bin && let Some(name) = target["name"].as_str() {
                    bins.insert(name.to_owned());
                }
            }
        }
        bins
    }

    /// A command that builds some packages and runs their binaries must
    /// build the packages that hold them (after a crate split, `-p
    /// vane-agent` builds no binary at all).
    #[test]
    fn the_packages_built_hold_the_binaries_run() {
        for (what, packages, binaries) in [
            ("demo", crate::demo::PACKAGES, crate::demo::BINARIES),
            (
                "cluster demo",
                crate::cluster_demo::PACKAGES,
                crate::cluster_demo::BINARIES,
            ),
            (
                "bench proxy",
                crate::bench::proxy::PACKAGES,
                crate::bench::proxy::BINARIES,
            ),
        ] {
            let built = binaries_of(packages);
            for binary in binaries {
                assert!(
                    built.contains(*binary),
                    "the {what} runs {binary} but builds only {built:?}"
                );
            }
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(OsStr::new("edge")), "edge");
        assert_eq!(shell_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("")), "''");
        let mut cmd = Command::new("/usr/bin/vanectl");
        cmd.args(["push", "edge", "-m", "first version"]);
        assert_eq!(display(&cmd), "vanectl push edge -m 'first version'");
    }

    #[test]
    fn path_lookup() {
        assert!(on_path("sh"));
        assert!(!on_path("surely-no-such-binary-here"));
    }
}
