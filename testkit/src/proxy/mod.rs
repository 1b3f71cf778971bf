//! Helpers for the proxy's end-to-end tests: `vane-proxy` as a real process,
//! backends (HTTP and TCP) in the test process that answer with their own
//! id, HTTP clients and a load generator that counts every failed request,
//! and snapshot builders and pushers.
//!
//! Backends and load run on the test's Tokio runtime; the proxy and the
//! control server are real processes, so they can be SIGKILLed.
//!
//! # Layout
//! - [`ProxyProcess`] (`process.rs`): the child process and its admin
//!   endpoint.
//! - [`Backend`], [`TcpBackend`] (`backend.rs`): what the proxy sends
//!   traffic to, scripted by the test (status, delay, holding requests,
//!   counting those in flight).
//! - [`UpgradeBackend`], [`UpgradeClient`] (`ws.rs`): both ends of an
//!   HTTP/1.1 upgrade (WebSocket or another protocol), over raw sockets.
//! - [`HttpClient`], [`OneConnection`], [`Load`] (`client.rs`): what sends
//!   traffic to the proxy.
//! - [`GrpcBackend`], [`raw_health_check`] (`grpc.rs`): a gRPC upstream
//!   (the health service over h2c) and a raw gRPC call that shows trailers.
//! - [`TlsBackend`] (`tls_backend.rs`): an HTTPS upstream with a private
//!   CA's certificate, HTTP/1.1 and HTTP/2 by ALPN, optional client certs.
//! - [`SlowBackend`], [`get_streamed`] (`stream.rs`): answers that stall or
//!   drip, and a client that sees how a body ended.
//! - [`TlsClient`], [`TlsConn`], [`TlsFiles`] (`tls.rs`): the client side
//!   of TLS listeners (CA, SNI, client certificate; the serial and ALPN the
//!   server chose; HTTP/1.1 kept alive over it), certificates on disk.
//! - [`spec`]: snapshot builders; [`push`], [`AdminPusher`] (`push.rs`):
//!   pushing them.
//!
//! None of these files uses another: each stands on the crate's
//! [`crate::net`], [`crate::process`] and [`crate::control::ControlServer`] only.
//! Free ports for listeners come from [`crate::net::free_addr`].

mod backend;
mod client;
mod grpc;
mod process;
mod push;
pub mod spec;
mod stream;
mod tls;
mod tls_backend;
mod ws;

pub use backend::{Backend, TcpBackend};
pub use client::{HttpClient, Load, LoadReport, OneConnection, Reply};
pub use grpc::{GrpcBackend, RawGrpcReply, raw_health_check};
pub use process::{ProxyProcess, WAIT};
pub use push::{AdminPusher, push};
pub use stream::{SlowBackend, StreamOutcome, get_streamed};
pub use tls::{TlsClient, TlsConn, TlsFiles, TlsHttp1, serial_of};
pub use tls_backend::{TlsBackend, TlsBackendConfig};
pub use ws::{UpgradeBackend, UpgradeClient, accept_key};
