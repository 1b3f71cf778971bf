//! `vane-proxy-core`: Vane's data plane, an L7 (HTTP/1.1, h2c; over TLS,
//! HTTP/1.1 and h2) and L4 (TCP, and TCP behind TLS termination) proxy
//! that follows a Vane control server through the embedded
//! [`vane_agent`] and never waits on it: requests read a configuration
//! compiled ahead of time, so a slow, dead or misbehaving control plane
//! cannot fail or delay a single request.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vane_proxy_core::ProxyError> {
//! use vane_proxy_core::{Proxy, ProxyConfig};
//! let mut config = ProxyConfig::default();
//! config.agent.servers = vec!["http://127.0.0.1:7070".into()];
//! config.agent.node_id = "edge-1".into();
//! config.agent.group = "edge".into();
//! config.agent.cache_dir = Some("/var/cache/vane".into());
//! let proxy = Proxy::start(config)?; // serves the cache at once, if any
//! // ... on SIGTERM:
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! Top to bottom; a file only imports files below it.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/config_dump`, `/metrics`.
//! - [`proxy`]: the whole: starts the workers, the listeners and the agent,
//!   and hands the agent its validator and sink.
//! - `activate`: the one path every configuration takes: validator (bind,
//!   compile aside) -> sink (one swap, reconcile listeners) -> the agent's
//!   swap and ACK.
//! - `listeners`: the listener manager: binding in the validator, start,
//!   drain on removal, socket hand-over between listeners; `socket` binds,
//!   `accept` runs the accept loops and hands connections to the serving
//!   code.
//! - `http`: downstream connections (`server`), forwarding (`forward`),
//!   which failed attempts are retried (`retry`), HTTP/1.1 upgrades
//!   (`upgrade`) and the tunnels they become (`tunnel`), local errors
//!   (`local`), bodies and their timeouts (`body`), the connection's
//!   request bookkeeping (`conn`), header rules (`headers`).
//! - `tcp`: the L4 proxy.
//! - `conn`: a running listener as its connections see it, and the signals
//!   it sends them: the bottom of the serving code.
//! - `shared`: the state every listener and connection shares (the
//!   compiled configuration, metrics, settings, workers).
//! - `compile`: snapshot -> `Compiled` (one `ArcSwap`), carrying runtime
//!   state across snapshots.
//! - `tls`: TLS termination: each `https`/`tls` listener's server
//!   configuration (secrets read at validation, certificate by SNI name,
//!   client certificates), the handshake of each accepted connection.
//! - `route`: compiled route matching (host, path, headers; first wins).
//! - `cluster`: endpoints and their state, load balancing (`lb`), outlier
//!   detection (`outlier`), retry budget (`budget`), how endpoints are
//!   reached (`transport`: protocol, rustls settings, pool key).
//! - `ratelimit`: lock-free token buckets (GCRA).
//! - `upstream`: upstream connections (HTTP/1.1 and HTTP/2, plaintext or
//!   TLS), pooled per worker thread.
//! - `metrics`, `histogram`: Prometheus families resolved at compile time.
//! - `workers`: thread per core: one single-threaded runtime per worker;
//!   connections and their upstream pools stay on the worker that accepted.
//! - `clock`: a monotonic clock as integers, for atomics.
//! - `health`: the proxy's own health (the share of 502/503/504 answers
//!   over a sliding window since the version was applied), reported
//!   through the agent to the control plane.
//!
//! # Invariants
//! - The request path never awaits the control plane: it reads the
//!   compiled configuration with one lock-free `ArcSwap` load, and takes no
//!   lock (atomics only; the ejection decision takes a per-cluster lock, and
//!   only when an endpoint's failure streak reaches its threshold).
//! - A snapshot applies whole or not at all: listener addresses are bound
//!   in the agent's validator, before anything is swapped, so a bind error
//!   is a NACK and leaves the running configuration untouched.
//! - ACK after apply: the agent's sink switches the data plane (routes and
//!   listeners) before the agent swaps and ACKs, so an ACKed version is
//!   one the data plane serves.
//! - Runtime state (ejections, cursors, budgets, token buckets, pooled
//!   connections) survives every snapshot that keeps its cluster, endpoint
//!   or limit.
//! - Every answer the proxy makes itself carries `x-vane-error` naming its
//!   cause; none is ever caused by the control plane being unavailable.
//!
//! # Threads
//! The embedder's runtime runs the control side (agent, admin, listener
//! drains); the validator and the sink run where the agent runs its apply
//! path (a blocking thread).
//! The data plane runs on its own worker threads, one single-threaded
//! runtime each, every listener accepting on every worker through a
//! `SO_REUSEPORT` group; a connection and all its work stay on one thread.

mod activate;
pub mod admin;
mod clock;
mod cluster;
mod compile;
mod conn;
mod error;
mod health;
mod histogram;
mod http;
mod listeners;
mod metrics;
pub mod proxy;
mod ratelimit;
mod route;
mod shared;
mod tcp;
mod tls;
mod upstream;
mod workers;

pub use error::ProxyError;
pub use health::HealthConfig;
pub use proxy::{Proxy, ProxyConfig, ProxyHandle};
