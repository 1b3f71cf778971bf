//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failure. Tools the tests need are installed first when missing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::process::{cargo, display, on_path, run as run_cmd, seconds};

/// Programs the end-to-end tests run, with the Debian package that provides
/// each: `(binary, package)`. Later features add e.g. `("etcd", "etcd-server")`,
/// `("wrk", "wrk")`, `("nginx", "nginx")`.
const TOOLS: &[(&str, &str)] = &[];

pub(crate) fn run(root: &Path) -> Result<()> {
    let start = Instant::now();
    ensure_cargo_component("fmt", "rustfmt")?;
    ensure_cargo_component("clippy", "clippy")?;
    let mut apt = Apt::default();
    for (bin, package) in TOOLS {
        apt.ensure_tool(bin, package)?;
    }

    let mut steps: Vec<(&str, Command)> = Vec::new();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    steps.push(("format", fmt));
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    steps.push(("lint", clippy));
    // The end-to-end tests in tests/ run the built binaries from target/debug.
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    steps.push(("build", build));
    if nextest_installed() {
        let mut tests = cargo();
        tests.args(["nextest", "run", "--workspace"]);
        steps.push(("test", tests));
        // nextest does not run doctests.
        let mut doc = cargo();
        doc.args(["test", "--workspace", "--doc"]);
        steps.push(("doctest", doc));
    } else {
        let mut tests = cargo();
        tests.args(["test", "--workspace"]);
        steps.push(("test", tests));
    }

    let total = steps.len();
    let mut took: Vec<(&str, Duration)> = Vec::new();
    for (i, (name, mut cmd)) in steps.into_iter().enumerate() {
        cmd.current_dir(root);
        println!("==> [{}/{total}] {name}: {}", i + 1, display(&cmd));
        let d = run_cmd(&mut cmd)?;
        println!("==> {name} ok in {}", seconds(d));
        took.push((name, d));
    }
    println!();
    for (name, d) in &took {
        println!("    {name:<8} {:>9}", seconds(*d));
    }
    println!("all checks passed in {}", seconds(start.elapsed()));
    Ok(())
}

/// Makes sure `cargo SUBCOMMAND` works, adding the rustup component that
/// provides it when it does not (a minimal toolchain has neither rustfmt nor clippy).
fn ensure_cargo_component(subcommand: &str, component: &str) -> Result<()> {
    if cargo_subcommand_works(subcommand) {
        return Ok(());
    }
    if !on_path("rustup") {
        bail!("`cargo {subcommand}` is not available and there is no rustup to add {component}");
    }
    println!("==> adding the rustup component {component}");
    run_cmd(Command::new("rustup").args(["component", "add", component]))?;
    Ok(())
}

fn cargo_subcommand_works(subcommand: &str) -> bool {
    cargo()
        .args([subcommand, "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn nextest_installed() -> bool {
    cargo_subcommand_works("nextest")
}

/// Installs missing tools with apt-get, running `apt-get update` at most once.
#[derive(Debug, Default)]
pub(crate) struct Apt {
    updated: bool,
}

impl Apt {
    /// Makes sure `bin` is on `$PATH`, installing the Debian package `package`
    /// when it is not and we are root. Without root (or apt-get) it fails
    /// with the command to run, rather than letting the tests fail later
    /// with a less clear error.
    pub(crate) fn ensure_tool(&mut self, bin: &str, package: &str) -> Result<()> {
        if on_path(bin) {
            return Ok(());
        }
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "the tests need `{bin}`, which is not installed; install it with \
                 `sudo apt-get install -y {package}` and run again"
            );
        }
        if !on_path("apt-get") {
            bail!(
                "the tests need `{bin}` (Debian package {package}), which is not installed, \
                 and there is no apt-get here to install it: install it and run again"
            );
        }
        println!("==> installing {package} (for `{bin}`)");
        if !self.updated {
            let mut update = Command::new("apt-get");
            update
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive");
            run_cmd(&mut update)?;
            self.updated = true;
        }
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut install)?;
        if !on_path(bin) {
            bail!("installed {package}, but `{bin}` is still not on PATH");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_tools_need_nothing() {
        // `sh` is always there, so neither apt-get nor root is needed.
        let mut apt = Apt::default();
        apt.ensure_tool("sh", "dash").unwrap();
        assert!(!apt.updated);
    }
}
