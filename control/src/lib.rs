//! The Vane control server: stores versioned snapshots per group and streams
//! them to agents; also the home of the `vane-control` and `vanectl` binaries.
//!
//! # Layout
//! - [`store`]: the [`store::Store`] trait (push/get/history/heads) and its
//!   embedded redb backend, with group commit and fsync before every answer.
//! - [`hub`]: one latest-wins channel per group holding its head; each
//!   version is encoded once and shared by every stream.
//! - [`agents`]: what each agent was sent, acked and refused (for `Status`).
//! - [`watch`]: the `ConfigDiscovery.Watch` stream, xDS-style ACK/NACK.
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
//! NACK in the [`agents::AgentRegistry`].

pub mod admin;
pub mod agents;
pub mod cli;
pub mod hub;
pub mod server;
pub mod store;
pub mod watch;

pub use server::{Config, Server, ServerError, run};
