//! Shared helpers for Vane's end-to-end tests: find the built binaries, run a
//! real `vane-control` process on a loopback port, run `vanectl`, and speak the
//! watch protocol the way a minimal agent would.
//!
//! # Layout
//! - [`process`]: where `cargo build --workspace --bins` put a binary
//!   ([`process::bin_path`]), starting one that announces its address,
//!   running one to its end, stopping one.
//! - [`net`]: free loopback ports, a minimal HTTP client, waiting for a
//!   listener.
//! - [`ControlServer`]: one `vane-control` child process with its own data
//!   directory; it can be killed (SIGKILL), terminated (SIGTERM) and restarted
//!   on the same data, and it is always killed when dropped.
//! - [`vanectl`]: run the CLI once and capture exit code, stdout and stderr.
//! - [`WatchClient`]: a scripted agent on `ConfigDiscovery.Watch`.
//! - [`fixtures`]: snapshot files built at runtime from `examples/snapshot.yaml`.
//! - [`etcd`]: etcd members as child processes, and `vane-control` replicas
//!   on them.
//! - [`sidecar`]: `vane-agent` as a child process.
//! - [`proxy`]: `vane-proxy` as a child process, backends, HTTP clients and
//!   load, and snapshot builders for it.
//! - [`xds_tools`], [`envoy_config`]: where the real xDS clients (Envoy,
//!   grpcio, grpc-js-xds) are installed, pinned, and Envoy's bootstrap for
//!   following Vane (light: xtask uses them to install and for the demo).
//! - [`openfeature_tools`]: where the real OpenFeature clients (the Python
//!   and Node SDKs with their flagd providers) are installed, pinned, and
//!   the client scripts that drive them (light, like `xds_tools`).
//! - [`deploy_tools`]: where the Kubernetes schema validator that checks
//!   `deploy/kubernetes/` is installed, pinned (light, like `xds_tools`).
//! - [`xds`]: Envoy and gRPC's proxyless clients as child processes,
//!   following a control server over xDS.
//!
//! Every wait here is bounded by a generous timeout, so a hung server fails a
//! test instead of hanging it; none of the assertions depend on how fast
//! anything runs.
//!
//! `net`, `process`, `xds_tools`, `openfeature_tools`, `console_tools`, `deploy_tools` and `envoy_config` need nothing but the standard library and `nix`;
//! everything else is behind the default feature `full` (gRPC, HTTP, the
//! model), which xtask leaves out so that `cargo xtask` starts quickly.

#![allow(clippy::unwrap_used)] // Test support: a panic is how a test fails.

pub mod console_tools;
pub mod deploy_tools;
pub mod envoy_config;
pub mod net;
pub mod openfeature_tools;
pub mod process;
pub mod xds_tools;

#[cfg(feature = "full")]
mod control;
#[cfg(feature = "full")]
pub mod curl;
#[cfg(feature = "full")]
pub mod etcd;
#[cfg(feature = "full")]
pub mod lines;
#[cfg(feature = "full")]
pub mod openfeature;
#[cfg(feature = "full")]
pub mod policy;
#[cfg(feature = "full")]
pub mod proxy;
#[cfg(feature = "full")]
pub mod sidecar;
#[cfg(feature = "full")]
pub mod xds;

#[cfg(feature = "full")]
pub use control::*;
