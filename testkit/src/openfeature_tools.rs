//! Where the real OpenFeature clients the tests run are installed, pinned:
//! the Python SDK with its flagd provider (pip) and the Node server SDK with
//! its flagd provider (`npm ci` from the lock file), their versions, their
//! places under the build directory, the environment variables that point
//! elsewhere, and the client scripts in `tests/openfeature-clients/`.
//! `cargo xtask test` installs them there when missing; the tests find them
//! here. Standard library only, so xtask can use it without the heavy part
//! of the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What pip installs into the Python target: the SDK and the flagd
/// provider, and every transitive dependency at the version they were
/// tested with (grpcio is the xDS tests' pin), so that a later release of
/// any of them changes nothing here.
pub const PYTHON_PIP: &[&str] = &[
    "openfeature-sdk==0.10.0",
    "openfeature-provider-flagd==0.6.1",
    "openfeature-flagd-core==2.0.0",
    "openfeature-flagd-api==1.0.0",
    "grpcio==1.85.1",
    "protobuf==7.36.2",
    "cachebox==5.2.3",
    "cbor2==5.9.0",
    "mmh3==5.3.1",
    "panzi-json-logic==1.0.1",
    "pyyaml==6.0.4",
    "semver==3.2.0",
    "typing_extensions==4.16.0",
];
/// The flagd provider version pip installs (also in [`PYTHON_PIP`]).
pub const PYTHON_PROVIDER_VERSION: &str = "0.6.1";
/// The directory (from the workspace root) holding the client scripts and
/// `package.json` with `package-lock.json` for `npm ci`:
/// `@openfeature/server-sdk` 1.23.0, `@openfeature/flagd-provider` 0.16.1,
/// `@openfeature/core` 1.12.0 and `@grpc/grpc-js` 1.14.5, every transitive
/// version pinned by the lock file.
pub const CLIENTS_DIR: &str = "tests/openfeature-clients";
/// The Python client script, in [`CLIENTS_DIR`].
pub const PYTHON_CLIENT: &str = "flagd_client.py";
/// The Node client script, in [`CLIENTS_DIR`].
pub const NODE_CLIENT: &str = "flagd_client.js";

/// The `PYTHONPATH` holding the Python SDK and provider, instead of the one
/// under the build directory.
pub const ENV_PYTHONPATH: &str = "VANE_OF_PYTHONPATH";
/// The `node_modules` holding the Node SDK and provider, instead of the one
/// under the build directory.
pub const ENV_NODE_PATH: &str = "VANE_OF_NODE_PATH";

/// The two install directories under `<target>/openfeature-deps/`; each
/// gets the stamp file [`crate::xds_tools::STAMP`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFeatureDirs {
    /// `pip install --target` for the Python SDK and provider.
    pub python: PathBuf,
    /// `npm ci --prefix` for the Node SDK and provider.
    pub node: PathBuf,
}

impl OpenFeatureDirs {
    /// The layout under the cargo target directory `target`.
    pub fn under(target: &Path) -> Self {
        let root = target.join("openfeature-deps");
        Self {
            python: root.join("python"),
            node: root.join("node"),
        }
    }
}

/// The paths the tests use: the `PYTHONPATH` and the `NODE_PATH` with the
/// SDKs and flagd providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFeatureTools {
    /// A directory to put on `PYTHONPATH` (the pip target).
    pub pythonpath: PathBuf,
    /// A directory to put on `NODE_PATH` (`node_modules`).
    pub node_path: PathBuf,
}

impl OpenFeatureTools {
    /// Where the install directories `dirs` put the packages.
    pub fn in_dirs(dirs: &OpenFeatureDirs) -> Self {
        Self {
            pythonpath: dirs.python.clone(),
            node_path: dirs.node.join("node_modules"),
        }
    }

    /// The packages from [`ENV_PYTHONPATH`] and [`ENV_NODE_PATH`] where set
    /// (xtask sets them), else under `target`.
    pub fn locate(target: &Path) -> Self {
        let default = Self::in_dirs(&OpenFeatureDirs::under(target));
        let var = |name: &str, fallback: PathBuf| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map_or(fallback, PathBuf::from)
        };
        Self {
            pythonpath: var(ENV_PYTHONPATH, default.pythonpath),
            node_path: var(ENV_NODE_PATH, default.node_path),
        }
    }

    /// What is missing, one line each (empty when everything is there).
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let provider = self
            .pythonpath
            .join("openfeature")
            .join("contrib")
            .join("provider")
            .join("flagd")
            .join("__init__.py");
        if !provider.is_file() {
            missing.push(format!(
                "openfeature-provider-flagd {PYTHON_PROVIDER_VERSION} ({}; ${ENV_PYTHONPATH} \
                 overrides)",
                self.pythonpath.display()
            ));
        }
        let node_provider = self
            .node_path
            .join("@openfeature")
            .join("flagd-provider")
            .join("package.json");
        if !node_provider.is_file() {
            missing.push(format!(
                "@openfeature/flagd-provider ({}; ${ENV_NODE_PATH} overrides)",
                self.node_path.display()
            ));
        }
        missing
    }

    /// The environment variables that point a test run at these packages.
    pub fn env(&self) -> [(&'static str, &Path); 2] {
        [
            (ENV_PYTHONPATH, self.pythonpath.as_path()),
            (ENV_NODE_PATH, self.node_path.as_path()),
        ]
    }
}

impl OpenFeatureTools {
    /// The installed packages, for a test. A missing one fails the test,
    /// saying how to install it: the OpenFeature tests are part of the
    /// suite, never skipped.
    #[track_caller]
    pub fn for_tests() -> Self {
        let target = crate::process::bin_dir()
            .parent()
            .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
        let tools = Self::locate(&target);
        let missing = tools.missing();
        assert!(
            missing.is_empty(),
            "the OpenFeature tests need clients that are not installed: {}. Run `cargo xtask \
             test` (it installs them, pinned, into {}/openfeature-deps), then run the tests again",
            missing.join("; "),
            target.display()
        );
        tools
    }

    /// `python3 flagd_client.py` with `PYTHONPATH` set; add the client's
    /// arguments (`--host`, `--port`, `--selector`, `--eval`, ...).
    pub fn python_client(&self) -> Command {
        let (script, _) = client_scripts(&crate::process::workspace_root());
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(script)
            .env("PYTHONPATH", &self.pythonpath);
        cmd
    }

    /// `node flagd_client.js` with `NODE_PATH` set; the same arguments as
    /// [`Self::python_client`].
    pub fn node_client(&self) -> Command {
        let (_, script) = client_scripts(&crate::process::workspace_root());
        let mut cmd = Command::new("node");
        cmd.arg(script).env("NODE_PATH", &self.node_path);
        cmd
    }
}

/// The client scripts under the workspace root `root`: `(python, node)`.
pub fn client_scripts(root: &Path) -> (PathBuf, PathBuf) {
    let dir = root.join(CLIENTS_DIR);
    (dir.join(PYTHON_CLIENT), dir.join(NODE_CLIENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_under_the_target_directory() {
        let tools = OpenFeatureTools::in_dirs(&OpenFeatureDirs::under(Path::new("/t")));
        assert_eq!(tools.pythonpath, Path::new("/t/openfeature-deps/python"));
        assert_eq!(
            tools.node_path,
            Path::new("/t/openfeature-deps/node/node_modules")
        );
    }

    #[test]
    fn missing_packages_are_named() {
        let tools = OpenFeatureTools::in_dirs(&OpenFeatureDirs::under(Path::new("/surely/not")));
        let missing = tools.missing();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(
            missing[0].starts_with("openfeature-provider-flagd 0.6.1"),
            "{missing:?}"
        );
        assert!(missing[1].contains(ENV_NODE_PATH), "{missing:?}");
    }

    #[test]
    fn every_python_package_is_pinned_exactly() {
        for spec in PYTHON_PIP {
            assert!(spec.contains("=="), "{spec} is not pinned with ==");
        }
        assert!(PYTHON_PIP.contains(&"openfeature-provider-flagd==0.6.1"));
        // One grpcio for both the xDS and the OpenFeature clients.
        let grpcio = PYTHON_PIP.iter().find(|s| s.starts_with("grpcio=="));
        assert!(crate::xds_tools::GRPCIO_PIP.contains(grpcio.unwrap()));
    }

    #[test]
    fn the_client_commands_run_the_committed_scripts_with_the_packages() {
        let tools = OpenFeatureTools::in_dirs(&OpenFeatureDirs::under(Path::new("/t")));
        let py = tools.python_client();
        assert_eq!(py.get_program(), "python3");
        let script = py.get_args().nth(1).unwrap();
        assert!(Path::new(script).is_file(), "{script:?}");
        let env: Vec<_> = py.get_envs().collect();
        assert_eq!(
            env,
            [(
                "PYTHONPATH".as_ref(),
                Some("/t/openfeature-deps/python".as_ref())
            )]
        );
        let js = tools.node_client();
        assert!(Path::new(js.get_args().next().unwrap()).is_file());
        let env: Vec<_> = js.get_envs().collect();
        assert_eq!(
            env,
            [(
                "NODE_PATH".as_ref(),
                Some("/t/openfeature-deps/node/node_modules".as_ref())
            )]
        );
    }

    #[test]
    fn the_scripts_are_in_the_clients_directory() {
        let (py, js) = client_scripts(Path::new("/w"));
        assert_eq!(
            py,
            Path::new("/w/tests/openfeature-clients/flagd_client.py")
        );
        assert_eq!(
            js,
            Path::new("/w/tests/openfeature-clients/flagd_client.js")
        );
    }
}
