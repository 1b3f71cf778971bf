//! The `Admin` gRPC service (what `vanectl` talks to): push, get, history,
//! diff, rollback and status.
//!
//! Every refusal names the field and the reason in one line, with the gRPC
//! code saying whose fault it is: `InvalidArgument` for a bad request,
//! `FailedPrecondition` for a compare-and-set conflict or a rollback target
//! that no longer validates or a store that is read-only (etcd away),
//! `NotFound` for an unknown group or version, `Unavailable`/`Internal` for
//! the store's own failures.
//!
//! # Layout
//! - `service`: [`AdminService`], its settings and the checks every handler
//!   starts with.
//! - `handlers`: the gRPC methods.
//! - `push`: pushes and rollbacks (validate, store, publish).
//! - `convert`: limits, field checks, statuses and messages.
//! - `groups`: list, delete and watch groups; what `status` shares with them.
//! - `metered`: every call counted by method and code, and timed.

pub(crate) mod convert;
mod groups;
mod handlers;
pub mod metered;
mod push;
mod service;

pub use convert::{
    DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT, MAX_MESSAGE_LEN, prepare, request_size_limit,
};
pub use service::AdminService;

#[cfg(test)]
mod tests;
