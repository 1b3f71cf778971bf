//! The tools that check `deploy/` and the supply chain, installed pinned
//! when missing: `systemd-analyze` (Debian's systemd) for the units, the
//! Kubernetes schema validator by pip into `<target>/deploy-deps/` (the
//! layout and pins are vane-testkit's `deploy_tools`, where the tests
//! look), and cargo-deny by `cargo install --locked` into
//! `<target>/cargo-deny/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use vane_testkit::deploy_tools::{
    ENV_KUBERNETES_VALIDATE, KUBERNETES_VALIDATE_PIP, kubernetes_validate_dir,
    kubernetes_validate_missing,
};

use crate::apt::Apt;
use crate::pinned::ensure_pip_install;
use crate::process::{cargo, display, run as run_cmd, seconds, target_dir};

/// The cargo-deny release `cargo xtask test` runs (`--locked`: with the
/// versions of its own lock file).
pub(crate) const CARGO_DENY_VERSION: &str = "0.20.2";

/// Profile overrides for installing cargo-deny (cargo's configuration
/// outranks the package's manifest).
const QUICK_RELEASE: [(&str, &str); 3] = [
    ("CARGO_PROFILE_RELEASE_LTO", "false"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1"),
];

/// Makes sure `systemd-analyze` and the Kubernetes validator are there,
/// installing what is missing; returns the tests' environment for them.
pub(crate) fn ensure(root: &Path, apt: &mut Apt) -> Result<Vec<(&'static str, PathBuf)>> {
    // Debian's systemd package ships systemd-analyze; on a machine without
    // systemd running it still verifies unit files.
    apt.ensure_tool("systemd-analyze", "systemd")?;
    let dir = kubernetes_validate_dir(&target_dir(root));
    ensure_pip_install(
        apt,
        &dir,
        KUBERNETES_VALIDATE_PIP,
        "kubernetes-validate",
        "the deploy/ tests",
    )?;
    if let Some(missing) = kubernetes_validate_missing(&dir) {
        bail!(
            "still missing after installing it: {missing}; remove {} and run again",
            dir.display()
        );
    }
    Ok(vec![(ENV_KUBERNETES_VALIDATE, dir)])
}

/// The pinned cargo-deny under the target directory, installed when
/// missing or of another version.
pub(crate) fn cargo_deny(root: &Path) -> Result<PathBuf> {
    let install_root = target_dir(root).join("cargo-deny");
    let bin = install_root.join("bin").join("cargo-deny");
    if reports_version(&bin) {
        return Ok(bin);
    }
    let mut install = cargo();
    install
        .args(["install", "--locked", "--version", CARGO_DENY_VERSION])
        .arg("--root")
        .arg(&install_root)
        .arg("cargo-deny")
        // cargo-deny's own release profile asks for fat LTO and one codegen
        // unit: about 220 s on two cores, for a check that then runs in
        // under 4 s. A plain optimised build takes about half as long and
        // checks the same.
        .envs(QUICK_RELEASE);
    println!(
        "==> installing cargo-deny {CARGO_DENY_VERSION} for the supply-chain check: {}",
        display(&install)
    );
    let took = run_cmd(&mut install).context(
        "installing cargo-deny needs crates.io once; fix the error above and run \
         `cargo xtask test` again",
    )?;
    println!("==> cargo-deny installed in {}", seconds(took));
    if !reports_version(&bin) {
        bail!(
            "{} does not report version {CARGO_DENY_VERSION} after installing it",
            bin.display()
        );
    }
    Ok(bin)
}

/// Whether `bin` runs and says it is the pinned version.
fn reports_version(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .any(|word| word == CARGO_DENY_VERSION)
        })
}

/// `cargo-deny check licenses bans sources` over the workspace, with the
/// policy of `deny.toml`. Advisories are left out: they need the RustSec
/// database fetched from the network, which a test run must not depend on.
/// Each finding is one line, without the tree of crates that pull it in
/// (a duplicate-version warning's tree runs to a hundred lines).
pub(crate) fn deny_check(deny: &Path) -> Command {
    let mut cmd = Command::new(deny);
    cmd.args([
        "--locked",
        "check",
        "--hide-inclusion-graph",
        "licenses",
        "bans",
        "sources",
    ]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_leaves_advisories_out() {
        let cmd = deny_check(Path::new("cargo-deny"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "--locked",
                "check",
                "--hide-inclusion-graph",
                "licenses",
                "bans",
                "sources"
            ],
            "{args:?}"
        );
    }

    #[test]
    fn a_missing_binary_is_not_the_pinned_version() {
        assert!(!reports_version(Path::new("/surely/not/here/cargo-deny")));
    }
}
