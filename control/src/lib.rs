//! The Vane control server: stores versioned snapshots per group and streams
//! them to agents; also the home of the `vane-control` and `vanectl` binaries.
//!
//! # Layout
//! - [`store`]: the [`store::Store`] trait (push/get/history/heads, health,
//!   change feed) and its two backends: embedded redb (group commit, fsync
//!   before every answer) for a single server, and etcd (compare-and-set
//!   transactions, a watch feed) shared by the replicas of a cluster.
//! - [`hub`]: one latest-wins channel per group holding its head; each
//!   version is encoded once and shared by every stream.
//! - [`agents`]: what each agent was sent, acked and refused (for `Status`),
//!   shared with the other replicas through the store when clustered.
//! - [`watch`]: the `ConfigDiscovery.Watch` stream, xDS-style ACK/NACK, with
//!   delta responses for agents that accept them.
//! - [`metrics`]: Prometheus metrics (convergence, agents per state, bytes
//!   sent) and the admin HTTP endpoint serving them.
//! - [`admin`]: the `Admin` service `vanectl` talks to.
//! - [`server`]: wiring, startup and bounded shutdown; the binary is a thin
//!   shell around [`server::Server`].
//! - [`cli`]: `vanectl`, the operators' CLI (a gRPC client of `Admin`).
//!
//! # Data flow
//! `Admin.Push` validates the snapshot (`vane_model`), encodes it canonically,
//! stores it ([`store::Store::push`], durable on return) and publishes it to
//! the [`hub::Hub`]; every watch stream of the group wakes, sends the new
//! version if it is newer than what it sent, and records the agent's ACK or
//! NACK in the [`agents::AgentRegistry`]. With etcd, a push made through
//! another replica reaches this hub through the store's feed
//! ([`store::Store::feed`]), and the hub's "only forward" rule makes the two
//! paths safe to overlap.

pub mod admin;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
pub mod watch;

pub use server::{Config, Server, ServerError, run};
