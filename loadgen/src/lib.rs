//! Vane's control-plane load generator: thousands of simulated agents on
//! real gRPC watch streams, concurrent pushers, and thousands of held HTTP
//! long polls (against `vane-control`, or etcd watches as the peer) on a
//! running server, with the figures `cargo xtask bench` reports.
//!
//! It is a crate of its own because it must run as an optimised binary
//! beside a release server (`cargo xtask` itself is a debug build), and it
//! belongs neither in the server nor in the agent library: it is a fake
//! fleet.
//!
//! # Layout
//! - [`fleet`]: N simulated agents over C HTTP/2 connections (multiplexed
//!   when C < N), each speaking the watch protocol like `vane-agent` does:
//!   first request, apply (verify the hash), ACK, deltas with fallback to
//!   full, and the times each response arrived and was ACKed; with
//!   `reconnect`, one connection per agent and reconnects paced by the
//!   agent's own `vane_agent::pacing::Pacing`. `check` holds the check of a
//!   response, `times` the per-agent time stamps.
//! - [`snapshots`]: the snapshots the benchmark pushes (R routes).
//! - [`fanout`]: the fan-out scenario (connect, full pushes, one-route
//!   pushes) and its report; [`pusher`] makes its writes from a thread of
//!   their own.
//! - [`etcd_fanout`]: the same fleet as plain etcd watches (its peer), for
//!   `cargo xtask bench fanout --vs etcd`.
//! - [`push`]: the durable-push throughput scenario and its report.
//! - [`storm`]: the reconnect-storm scenario: a fleet that reconnects with
//!   the agent's own pacing, and the time to re-sync after each outage.
//! - [`longpoll`]: N held HTTP long polls (vane) or etcd gateway watches
//!   on one server, one write: memory per held request and the time until
//!   every client has the new version. [`http1`] is its raw HTTP/1.1
//!   client.
//! - [`sys`]: RLIMIT_NOFILE, and a process's RSS and CPU time from `/proc`.
//! - [`stats`]: percentiles of latency samples.

mod check;
pub mod etcd_fanout;
pub mod fanout;
pub mod fleet;
pub mod http1;
pub mod longpoll;
pub mod push;
pub mod pusher;
pub mod snapshots;
pub mod stats;
pub mod storm;
pub mod sys;
mod times;
