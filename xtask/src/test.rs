//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failure. Tools the tests need are installed first when missing (etcd,
//! protoc and promtool with apt, the xDS clients by `xds_deps`, the
//! OpenFeature clients by `openfeature_deps`, Chromium and Playwright by
//! `console_deps`, the checkers of `deploy/` and
//! cargo-deny by `deploy_deps`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::apt::Apt;
use crate::process::{cargo, display, on_path, run as run_cmd, seconds};

/// Programs the end-to-end tests run, with the Debian package that provides
/// each: `(binary, package)`. Debian's etcd-server installs `/usr/bin/etcd`.
/// wrk loads the proxy in the retry test as in the benchmarks; promtool
/// (Debian's `prometheus`) checks the three /metrics endpoints.
const TOOLS: &[(&str, &str)] = &[
    ("etcd", "etcd-server"),
    ("wrk", "wrk"),
    ("promtool", "prometheus"),
];

/// Debian packages that give a `protoc` able to build the etcd client: the
/// compiler, and the well-known `.proto` files (`google/protobuf/*.proto`)
/// that etcd's protos import, which Debian ships separately.
const PROTOC_PACKAGES: &[&str] = &["protobuf-compiler", "libprotobuf-dev"];

pub(crate) fn run(root: &Path) -> Result<()> {
    let start = Instant::now();
    ensure_cargo_component("fmt", "rustfmt")?;
    ensure_cargo_component("clippy", "clippy")?;
    let mut apt = Apt::default();
    ensure_protoc(&mut apt)?;
    for (bin, package) in TOOLS {
        apt.ensure_tool(bin, package)?;
    }
    // Envoy, grpcio and grpc-js-xds for the xDS tests, pinned, under the
    // target directory; the tests are told where (and fail, saying to run
    // this, when they are missing).
    let xds = crate::xds_deps::ensure(root, &mut apt)?;
    let mut tools_env = crate::xds_deps::test_env(&xds);
    // The OpenFeature SDKs with their flagd providers, the same way.
    let openfeature = crate::openfeature_deps::ensure(root, &mut apt)?;
    tools_env.extend(crate::openfeature_deps::test_env(&openfeature));
    // Chromium (apt) and Playwright (pip, pinned) for the console's tests.
    let console = crate::console_deps::ensure(root, &mut apt)?;
    tools_env.extend(crate::console_deps::test_env(&console));
    // systemd-analyze and the Kubernetes schema validator for deploy/.
    tools_env.extend(crate::deploy_deps::ensure(root, &mut apt)?);

    let mut steps: Vec<(&str, Step)> = Vec::new();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    steps.push(("format", Step::Command(fmt)));
    // Right after the format check: it is as quick, and a circle or a wrong
    // dependency is better found before a long build.
    steps.push((
        "tidy",
        Step::InProcess("cargo xtask tidy", crate::tidy::run),
    ));
    // Licenses, bans and sources of the dependency tree (deny.toml);
    // cargo-deny is installed, pinned, on the first run.
    steps.push((
        "deny",
        Step::InProcess("cargo-deny check licenses bans sources", supply_chain),
    ));
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    steps.push(("lint", Step::Command(clippy)));
    // The end-to-end tests in tests/ run the built binaries from target/debug.
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    steps.push(("build", Step::Command(build)));
    if nextest_installed() {
        let mut tests = cargo();
        tests
            .args(["nextest", "run", "--workspace"])
            .envs(tools_env.clone());
        steps.push(("test", Step::Command(tests)));
        // nextest does not run doctests; rustdoc runs only on the
        // libraries that have some (a minute saved on two cores).
        let with_doctests = crate::doctests::packages_with_doctests(root)?;
        if !with_doctests.is_empty() {
            let mut doc = cargo();
            doc.args(["test", "--doc"]);
            for package in &with_doctests {
                doc.args(["-p", package]);
            }
            steps.push(("doctest", Step::Command(doc)));
        }
    } else {
        let mut tests = cargo();
        tests.args(["test", "--workspace"]).envs(tools_env);
        steps.push(("test", Step::Command(tests)));
    }

    let total = steps.len();
    let mut took: Vec<(&str, Duration)> = Vec::new();
    for (i, (name, step)) in steps.into_iter().enumerate() {
        let d = match step {
            Step::Command(mut cmd) => {
                cmd.current_dir(root);
                println!("==> [{}/{total}] {name}: {}", i + 1, display(&cmd));
                run_cmd(&mut cmd)?
            }
            Step::InProcess(shown, task) => {
                println!("==> [{}/{total}] {name}: {shown}", i + 1);
                let start = Instant::now();
                task(root)?;
                start.elapsed()
            }
        };
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

/// The supply-chain step: cargo-deny (installed when missing) over the
/// workspace with `deny.toml`.
fn supply_chain(root: &Path) -> Result<()> {
    let deny = crate::deploy_deps::cargo_deny(root)?;
    let mut check = crate::deploy_deps::deny_check(&deny);
    check.current_dir(root);
    println!("==> {}", display(&check));
    run_cmd(&mut check)?;
    Ok(())
}

/// One step of the run.
enum Step {
    /// A command, run with inherited output.
    Command(Command),
    /// One of our own tasks, run in this process; shown as the command that
    /// runs it on its own.
    InProcess(&'static str, fn(&Path) -> Result<()>),
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

/// Makes sure the build has a `protoc` that finds the well-known types
/// (the `etcd-client` crate's build script compiles etcd's protos with it),
/// installing Debian's packages when it does not. Child cargo commands get
/// it as `PROTOC` (see `process::cargo`).
pub(crate) fn ensure_protoc(apt: &mut Apt) -> Result<()> {
    if protoc_works() {
        return Ok(());
    }
    apt.install(
        PROTOC_PACKAGES,
        "`protoc` and the well-known types, to build the etcd client",
    )?;
    if !protoc_works() {
        bail!(
            "installed {}, but `protoc` still cannot compile a proto importing \
             google/protobuf/descriptor.proto",
            PROTOC_PACKAGES.join(" ")
        );
    }
    Ok(())
}

/// Whether the `protoc` cargo would use compiles a file importing a
/// well-known type: exactly what the etcd client's build needs.
fn protoc_works() -> bool {
    let Some(protoc) = crate::process::protoc() else {
        return false;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let probe = dir.path().join("probe.proto");
    let source = "syntax = \"proto3\";\nimport \"google/protobuf/descriptor.proto\";\n";
    if std::fs::write(&probe, source).is_err() {
        return false;
    }
    let mut cmd = Command::new(protoc);
    cmd.arg("-I")
        .arg(dir.path())
        .arg("--descriptor_set_out")
        .arg(dir.path().join("out.pb"))
        .arg(&probe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // PROTOC_INCLUDE is where prost-build looks for the well-known types
    // when protoc does not know them itself.
    if let Some(include) = std::env::var_os("PROTOC_INCLUDE") {
        cmd.arg("-I").arg(include);
    }
    cmd.status().is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tools_include_etcd() {
        assert!(TOOLS.contains(&("etcd", "etcd-server")));
    }
}
