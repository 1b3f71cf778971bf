//! The versioned snapshot store: the one interface every backend implements
//! (embedded redb for a single server, etcd for a cluster of replicas), and
//! the types that cross it.
//!
//! # Contract
//! - Versions are per group, start at 1, and strictly increase by one. A
//!   version number is never reused: not after a rollback (which is a new
//!   version), a restart or a crash.
//! - A push whose content hash equals the group's head is
//!   [`PushOutcome::Unchanged`]: nothing is stored and the head is returned.
//! - With `expected_version: Some(n)`, a push is refused with
//!   [`StoreError::Conflict`] unless the head is `n` (0: the group has no
//!   version yet). The conflict check comes before the unchanged check, so a
//!   stale compare-and-set always says so.
//! - A push that returns `Ok` is durable; a push that fails changes nothing.
//! - Retention ([`Store::prune`]) removes old versions but never a head, and
//!   never frees a number: a removed version reads as absent, the next push
//!   is still head + 1.
//! - Deleting a group ([`Store::delete_group`]) keeps a tombstone with its
//!   last version: a group pushed again continues at that version + 1.
//!
//! - A backend that other processes write too (etcd: every replica) offers a
//!   change feed ([`Store::feed`]) that reports every head any writer
//!   creates; a backend whose only writer is this process has none, since the
//!   Admin API publishes its own pushes.
//!
//! Every backend must pass the generic suite in [`suite`] (feature `suite`).
//!
//! # Layout
//! - `contract`: the [`Store`] trait and the records that cross it;
//!   `error`: [`StoreError`].
//! - [`agents`]: agents' ACK/NACK records and the [`agents::AgentDirectory`]
//!   replicas share them through.
//! - [`redb`]: the embedded backend (one file, group commit, fsync).
//! - [`suite`]: the contract as tests, run against every backend.
//!
//! The etcd backend is its own crate (`vane-store-etcd`), so that only the
//! control server's build needs `protoc`.

pub mod agents;
mod contract;
mod error;
pub mod redb;
#[cfg(any(test, feature = "suite"))]
pub mod suite;

pub use contract::{
    AUDIT_RETENTION, AuditRecord, CandidateOf, DeleteGroup, Deleted, FeedEvent, HeadFeed,
    NewVersion, Pinned, PruneReport, PushOutcome, Retention, RolloutPut, RolloutRecord, Store,
    StoreHealth, VersionMeta, VersionRecord, decode_audit, encode_audit, now_unix_ms,
};
pub use error::StoreError;
pub use redb::RedbStore;
