//! The Vane control server: stores versioned snapshots per group and streams
//! them to agents; the home of the `vane-control` binary.
//!
//! # Layout
//! - [`hub`]: one latest-wins channel per group holding its head; each
//!   version is encoded once and shared by every stream.
//! - [`integrity`]: every body read from the store is checked against its
//!   hash before it reaches an agent or an operator; corrupt heads degrade
//!   their group.
//! - [`agents`]: what each agent was sent, acked and refused (for `Status`);
//!   [`replication`] shares it with the other replicas when clustered.
//! - [`watch`]: the `ConfigDiscovery.Watch` stream, xDS-style ACK/NACK, with
//!   delta responses for agents that accept them.
//! - [`reach`]: whether this replica reaches its clustered store, as its
//!   watch streams tell their agents.
//! - [`http`]: the HTTP long-poll API on the main port, beside gRPC.
//! - [`admin`]: the `Admin` service `vanectl` talks to.
//! - [`auth`], [`audit`]: who is calling and what they may do; the audit log.
//! - [`secrets`]: private keys on the way out: redacted unless an admin
//!   asks, never in plaintext to a peer off loopback.
//! - [`accept`]: the server's own accept loop (TLS handshake, connection caps).
//! - [`metrics`], [`collectors`]: Prometheus metrics and the admin HTTP endpoint;
//!   [`metered_store`]: the store's operations timed;
//!   [`health`]: readiness (`/readyz`, `grpc.health.v1.Health`).
//! - [`console`]: the web console (`vane-console`) on `--console-listen`,
//!   its API going through [`admin`].
//! - [`retention`]: the background pass that keeps history bounded.
//! - [`check`]: `vane-control check`, every stored version verified offline.
//! - [`server`]: wiring, startup and bounded shutdown; the binary is a thin
//!   shell around [`server::Server`].
//!
//! The store is `vane-store` (the trait, redb) and `vane-store-etcd`; the
//! operators' CLI is the `vanectl` crate, which shares nothing with this one
//! but the wire contract.
//!
//! # Data flow
//! `Admin.Push` validates the snapshot (`vane_model`), encodes it canonically,
//! stores it (`Store::push`, durable on return) and publishes it to
//! the [`hub::Hub`]; every watch stream of the group wakes, sends the new
//! version if it is newer than what it sent, and records the agent's ACK or
//! NACK in the [`agents::AgentRegistry`]. With etcd, a push made through
//! another replica reaches this hub through the store's feed
//! (`Store::feed`), and the hub's "only forward" rule makes the two
//! paths safe to overlap.

pub mod accept;
pub mod admin;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod check;
pub mod collectors;
pub mod console;
pub mod health;
pub mod http;
pub mod hub;
pub mod integrity;
pub mod metered_store;
pub mod metrics;
pub mod openfeature;
pub mod reach;
pub mod replication;
pub mod retention;
pub mod rollout;
pub mod secrets;
pub mod server;
pub mod targets;
mod text;
pub mod watch;
pub mod xds;

pub use server::{Config, Server, ServerError, run};
