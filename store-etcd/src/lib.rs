//! The clustered store: every replica of the control plane keeps its versions
//! in one etcd cluster, allocates version numbers with compare-and-set
//! transactions, and follows the other replicas' pushes with an etcd watch.
//!
//! # Layout (under the configured prefix, `/vane` by default)
//! - `schema` -> [`SCHEMA_VERSION`], so a future layout change is detected.
//! - `heads/<group>` -> [`HeadValue`]: the head version, its hash and the
//!   id of the push that created it; for a deleted group, its tombstone
//!   (marked deleted, keeping the last version: see `delete.rs`).
//! - `versions/<group>/<version, 20 digits>` -> [`StoredVersion`]: the
//!   version's metadata and a reference to its body. Zero-padded so a range
//!   read returns versions in order; small, so `history` never reads bodies.
//! - `blobs/<sha256 of the body>/<chunk, 6 digits>` -> up to [`CHUNK_BYTES`]
//!   of the encoded snapshot. Content-addressed: a rollback or a repeated
//!   content stores nothing new.
//! - `pruned/<group>` -> how many of the group's versions retention removed
//!   (decimal); see `prune.rs`.
//! - `agents/<group>/<node id>/<lease id>` -> [`StoredAgent`], bound to the
//!   writing replica's lease (see [`EtcdAgents`]).
//! - `rollouts/<group>` -> [`StoredRollout`]: the group's current (or last)
//!   rollout record: its id, whether it is active, the control server's
//!   encoded body. Its revision is the key's `mod_revision`.
//!
//! # A push
//! Pushes of one group are serialized inside a replica (a per-group lock), so
//! compare-and-set only ever races against other replicas. Each attempt
//! reads the head, checks `expected_version` and "unchanged" against it, and
//! commits one transaction: *if the head key's `mod_revision` is still the
//! one read (or the key is absent)*, put the head, the version record and —
//! for a body of one chunk — the chunk. A body larger than one chunk (etcd
//! refuses requests over 1.5 MiB by default) is written chunk by chunk
//! *before* that transaction, which also compares that every chunk exists:
//! a reader never finds a head whose body is missing. A lost race re-reads
//! and tries again; `--expect-version` is the same compare, so a stale
//! expectation is a [`StoreError::Conflict`].
//!
//! The same read takes the group's rollout record, and the commit also
//! compares the record key's `mod_revision` with the one read (0 when
//! absent). A plain push is refused with [`StoreError::RolloutActive`]
//! while the record read is active, and the compare makes that check hold
//! at the commit: a rollout starting (or any record write) in between fails
//! the transaction and the push re-reads. A push carrying a record
//! (`NewVersion::rollout`) is refused with [`StoreError::RolloutMoved`]
//! unless the revision read is its `expected_revision`, and puts the record
//! in the same transaction (its body then goes first, like a large one, so
//! the two share no request). `Store::put_rollout` is the same compare and
//! put on its own (see `rollouts.rs`).
//!
//! Every push carries a random id, stored in the head and the version. When
//! etcd does not answer a commit (timeout, member killed), the outcome is
//! unknown; the next attempt first reads the head and the version numbers the
//! unanswered commits aimed at, and returns `Created` if one of them carries
//! the push's id. So a push is never stored twice, even across etcd leader
//! changes, and one that returns success is stored.
//!
//! # Availability
//! Every call to etcd is bounded by `request_timeout` (transient failures are
//! retried within it); past it the push fails with
//! [`StoreError::Degraded`], saying whether anything may have been stored.
//! The last outcome of the calls and the state of the feed make
//! [`Store::health`]: while etcd is away the replica is read-only and keeps
//! streaming what it has.
//!
//! # TLS and authentication
//! With `https://` endpoints the store verifies etcd's certificate against
//! the configured CA and may present a client certificate; with a user it
//! authenticates and renews etcd's token when it expires. A refusal of
//! either (an unknown CA, a wrong password, a missing role) is a
//! configuration error, not an outage: it is not retried, it names the
//! settings to check, and the replica is degraded until it goes away.
//!
//! # The feed
//! [`Store::feed`] reads every head at one revision, then watches
//! `versions/` from the next one, and reports new versions in revision order
//! (only the newest of a group per batch: the hub wants heads). It resumes
//! after the last revision it reported when the watch breaks, and re-reads
//! every head when etcd says that revision was compacted.
//!
//! # Code layout
//! - `config`: [`EtcdConfig`]; `credentials`: TLS and users to etcd.
//! - `layout`: keys and the records stored under them.
//! - `failure`: error classes; `shared`: the client and the bounded,
//!   retrying `call` every operation goes through.
//! - `connect`: schemes, the client, the layout version.
//! - `store`: [`EtcdStore`] and its reads; `push`: compare-and-set pushes;
//!   `rollouts`: rollout records.
//! - `feed`: the change feed; `agents`: [`EtcdAgents`].

mod agents;
mod config;
mod connect;
mod credentials;
mod delete;
mod failure;
mod feed;
mod layout;
mod prune;
mod push;
mod rollouts;
mod shared;
mod store;

pub use agents::EtcdAgents;
pub use config::EtcdConfig;
pub use credentials::{EtcdAuth, EtcdCredentialError, EtcdTls};
pub use layout::{CHUNK_BYTES, SCHEMA_VERSION};
pub use store::EtcdStore;

// What the tests (`tests.rs`, `use super::*`) take from the crate root.
#[cfg(test)]
use {
    bytes::Bytes,
    connect::plaintext_beyond_loopback,
    etcd_client::{Client, GetOptions},
    layout::Keys,
    std::collections::BTreeMap,
    std::sync::Arc,
    std::time::Duration,
    tokio::time::Instant,
    vane_store::agents::{AgentChange, AgentRecord, SharedAgent},
    vane_store::{FeedEvent, PushOutcome, Store, StoreError},
};

#[cfg(test)]
mod feed_tests;
#[cfg(test)]
mod rollouts_tests;
#[cfg(test)]
mod tests;
