//! Where the tools that check `deploy/` are installed, pinned: the
//! Kubernetes schema validator (PyPI's `kubernetes-validate`, which bundles
//! the JSON schemas of every Kubernetes release, so no cluster is needed),
//! its place under the build directory and the environment variable that
//! points elsewhere, plus the script and the vendored CRD the test runs it
//! with. `cargo xtask test` installs it when missing; the tests find it
//! here. Standard library only, like `xds_tools`.

use std::path::{Path, PathBuf};

/// What pip installs: the validator and every package it pulls in, each
/// pinned (a `--target` install resolves nothing later).
pub const KUBERNETES_VALIDATE_PIP: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "attrs==26.1.0",
    "importlib_resources==7.1.0",
    "packaging==26.4",
    "PyYAML==6.0.4",
    "typing_extensions==4.16.0",
];

/// The Kubernetes releases the manifests are validated against: the
/// oldest they support (native sidecars, `restartPolicy: Always` on an
/// init container, are on by default from 1.29) and the newest the
/// validator knows.
pub const KUBERNETES_VERSIONS: &[&str] = &["1.29", "1.37"];

/// The `PYTHONPATH` holding the validator, instead of the one under the
/// build directory.
pub const ENV_KUBERNETES_VALIDATE: &str = "VANE_KUBERNETES_VALIDATE_PYTHONPATH";

/// The validation script, from the workspace root.
pub const VALIDATE_SCRIPT: &str = "tests/deploy/validate_manifests.py";
/// The Prometheus Operator's ServiceMonitor CRD (v0.93.0), from the
/// workspace root: its schema checks the ServiceMonitor.
pub const SERVICE_MONITOR_CRD: &str = "tests/deploy/servicemonitor-crd.yaml";

/// `pip install --target` directory of the validator under the cargo
/// target directory `target`.
pub fn kubernetes_validate_dir(target: &Path) -> PathBuf {
    target.join("deploy-deps").join("kubernetes-validate")
}

/// The validator's `PYTHONPATH`: [`ENV_KUBERNETES_VALIDATE`] when set
/// (xtask sets it), else the install under `target`.
pub fn locate_kubernetes_validate(target: &Path) -> PathBuf {
    std::env::var_os(ENV_KUBERNETES_VALIDATE)
        .filter(|v| !v.is_empty())
        .map_or_else(|| kubernetes_validate_dir(target), PathBuf::from)
}

/// What is missing at `pythonpath`, or `None` when the validator is there.
pub fn kubernetes_validate_missing(pythonpath: &Path) -> Option<String> {
    let init = pythonpath.join("kubernetes_validate").join("__init__.py");
    (!init.is_file()).then(|| {
        format!(
            "kubernetes-validate ({}; ${ENV_KUBERNETES_VALIDATE} overrides): run `cargo xtask \
             test`, which installs it",
            pythonpath.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validator_is_pinned_with_everything_it_needs() {
        assert!(KUBERNETES_VALIDATE_PIP.iter().all(|s| s.contains("==")));
        assert!(KUBERNETES_VALIDATE_PIP[0].starts_with("kubernetes-validate=="));
    }

    #[test]
    fn a_missing_install_is_named() {
        let dir = kubernetes_validate_dir(Path::new("/surely/not/here"));
        assert_eq!(
            dir,
            Path::new("/surely/not/here/deploy-deps/kubernetes-validate")
        );
        let missing = kubernetes_validate_missing(&dir).unwrap();
        assert!(missing.contains("cargo xtask test"), "{missing}");
    }
}
