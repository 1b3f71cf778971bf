//! The real OpenFeature clients the end-to-end tests run, installed pinned
//! into `<target>/openfeature-deps/` when missing (the layout and versions
//! are vane-testkit's `openfeature_tools`, where the tests look): the Python
//! SDK with its flagd provider by pip, and the Node server SDK with its
//! flagd provider by `npm ci` from the lock file in
//! `tests/openfeature-clients/`, each stamped like the xDS clients
//! (`pinned`).

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use vane_testkit::openfeature_tools::{
    CLIENTS_DIR, OpenFeatureDirs, OpenFeatureTools, PYTHON_PIP, PYTHON_PROVIDER_VERSION,
};

use crate::apt::Apt;
use crate::pinned::{NodePackage, ensure_npm_install, ensure_pip_install};
use crate::process::target_dir;

/// What the messages say these installs are for.
const PURPOSE: &str = "the OpenFeature tests";

/// Makes sure both SDKs and flagd providers are installed under the target
/// directory, installing what is missing (python3 with pip, node and npm
/// come from apt when missing and we are root); returns where they are.
pub(crate) fn ensure(root: &Path, apt: &mut Apt) -> Result<OpenFeatureTools> {
    let dirs = OpenFeatureDirs::under(&target_dir(root));
    let package = NodePackage::read(&root.join(CLIENTS_DIR), CLIENTS_DIR)?;

    ensure_pip_install(
        apt,
        &dirs.python,
        PYTHON_PIP,
        &format!("openfeature-provider-flagd {PYTHON_PROVIDER_VERSION}"),
        PURPOSE,
    )?;
    ensure_npm_install(
        apt,
        &dirs.node,
        &package,
        "@openfeature/flagd-provider",
        PURPOSE,
    )?;

    let tools = OpenFeatureTools::in_dirs(&dirs);
    let missing = tools.missing();
    ensure!(
        missing.is_empty(),
        "the OpenFeature test clients are still missing after installing them: {}; remove {} \
         and run `cargo xtask test` again",
        missing.join("; "),
        target_dir(root).join("openfeature-deps").display()
    );
    Ok(tools)
}

/// The packages as the tests' environment (see vane-testkit's
/// `openfeature_tools`).
pub(crate) fn test_env(tools: &OpenFeatureTools) -> Vec<(&'static str, PathBuf)> {
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
    fn the_lock_file_pins_the_sdk_and_the_flagd_provider() {
        let root = crate::workspace_root();
        let lock =
            std::fs::read_to_string(root.join(CLIENTS_DIR).join("package-lock.json")).unwrap();
        let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
        let packages = &lock["packages"];
        let version = |name: &str| packages[format!("node_modules/{name}")]["version"].clone();
        assert_eq!(version("@openfeature/flagd-provider"), "0.16.1");
        assert_eq!(version("@openfeature/server-sdk"), "1.23.0");
        assert_eq!(version("@openfeature/core"), "1.12.0");
        assert_eq!(version("@grpc/grpc-js"), "1.14.5");
    }

    #[test]
    fn the_client_scripts_are_committed_next_to_the_lock_file() {
        let root = crate::workspace_root();
        let (py, js) = vane_testkit::openfeature_tools::client_scripts(&root);
        assert!(py.is_file(), "{}", py.display());
        assert!(js.is_file(), "{}", js.display());
    }
}
