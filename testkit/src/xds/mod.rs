//! Real xDS clients for the end-to-end tests: Envoy as a child process
//! following a control server over ADS (state of the world or delta), and
//! gRPC's proxyless clients (grpcio in Python, grpc-js-xds in Node) calling
//! `xds:///NAME` targets, with gRPC backends that answer with their name.
//!
//! # Layout
//! - [`tools`], [`wait_for`] (`support.rs`): the installed tools ([`crate::xds_tools`]), or a test
//!   failure saying to run `cargo xtask test`, which installs them.
//! - [`Envoy`], [`EnvoyOptions`] (`envoy.rs`): the process, its bootstrap
//!   and its admin endpoint (`/config_dump`, `/clusters`, `/stats`).
//! - [`GrpcClient`], [`GrpcBackend`], [`grpc_bootstrap`] (`grpc.rs`): the
//!   scripts in `tests/xds-clients/` as child processes.
//!
//! Neither of the first two uses the other. Every wait is bounded; a process is killed
//! when its handle is dropped, and its log is printed when a test fails.

mod envoy;
mod grpc;
mod support;

pub use envoy::{AdsFlavour, Envoy, EnvoyOptions, EnvoyTls};
pub use grpc::{GrpcBackend, GrpcClient, Lang, grpc_bootstrap};
pub use support::{XDS_WAIT, client_script, tail, tools, wait_for};
