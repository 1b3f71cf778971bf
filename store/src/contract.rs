//! The [`Store`] trait every backend implements, and the records that
//! cross it: versions to store and stored, audit entries, the outcome of a
//! push, the backend's health and its change feed.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::agents::AgentDirectory;
use crate::error::StoreError;

/// A version to store: what the Admin API hands to [`Store::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    /// The group (already checked with `vane_model::names::check_group`).
    pub group: String,
    /// The encoded canonical `vane.v1.Snapshot`: exactly the bytes agents receive.
    pub snapshot: Bytes,
    /// The content hash of the snapshot (lowercase hex SHA-256).
    pub hash: String,
    /// The operator's message.
    pub message: String,
    /// Who pushed ("" when unauthenticated).
    pub author: String,
    /// For a rollback: the version whose content this restores.
    pub rollback_of: Option<u64>,
    /// Compare-and-set: refuse unless the head is this version (0: absent).
    pub expected_version: Option<u64>,
    /// Set when the version is a rollout's candidate.
    pub candidate: Option<CandidateOf>,
    /// The group's rollout record to write in the same transaction, when
    /// the version is created (start, supersede, rollback of a rollout).
    /// `None`: a plain push, refused with [`StoreError::RolloutActive`]
    /// while the group has an active rollout.
    pub rollout: Option<RolloutPut>,
}

impl RolloutPut {
    /// Whether a push to `group` carrying `put` (`None`: a plain push) may
    /// go on over the stored record `current`: a plain push is refused
    /// while the record is active, a record write unless the stored
    /// revision is the expected one. Every backend applies this rule
    /// inside the write.
    pub fn check(
        group: &str,
        put: Option<&RolloutPut>,
        current: Option<&RolloutRecord>,
    ) -> Result<(), StoreError> {
        match (put, current) {
            (None, Some(current)) if current.active => Err(StoreError::RolloutActive {
                group: group.to_owned(),
                id: current.id.clone(),
            }),
            (None, _) => Ok(()),
            (Some(put), current) => {
                let actual = current.map_or(0, |c| c.revision);
                if actual == put.expected_revision {
                    Ok(())
                } else {
                    Err(StoreError::RolloutMoved {
                        group: group.to_owned(),
                        expected: put.expected_revision,
                        actual,
                    })
                }
            }
        }
    }
}

/// Marks a version as a rollout's candidate: until the rollout says
/// otherwise, agents outside its cohort keep `stable_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateOf {
    /// The rollout.
    pub rollout_id: String,
    /// The version agents outside the cohort keep.
    pub stable_version: u64,
}

/// A group's rollout record as stored. The body (an encoded
/// `vane.v1.StoredRollout`) is the control server's; the store knows only
/// the id, whether it is active, and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    /// The group.
    pub group: String,
    /// The rollout's id.
    pub id: String,
    /// Whether the rollout is still running (plain pushes are refused).
    pub active: bool,
    /// The encoded record.
    pub body: Bytes,
    /// Grows with every write of the group's record (never 0 once stored).
    pub revision: u64,
}

/// A compare-and-set write of a group's rollout record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPut {
    /// The rollout's id.
    pub id: String,
    /// Whether it is still running after this write.
    pub active: bool,
    /// The encoded record.
    pub body: Bytes,
    /// Refuse unless the stored record has this revision (0: none stored).
    pub expected_revision: u64,
}

/// A group to delete (see [`Store::delete_group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteGroup {
    /// The group.
    pub group: String,
    /// Compare-and-set: refuse unless the head is this version.
    pub expected_version: Option<u64>,
    /// The group's rollout record to write in the same transaction (a
    /// running rollout ended by the delete). `None`: the delete is refused
    /// with [`StoreError::RolloutActive`] while the group has an active
    /// rollout.
    pub rollout: Option<RolloutPut>,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The group is gone; its last version is kept as a tombstone.
    Deleted {
        /// The head at the time of the delete (what the tombstone keeps).
        last_version: u64,
        /// Versions removed (the head and those retention had kept).
        versions: u64,
    },
    /// The group has no version (never pushed, or already deleted).
    Absent,
}

/// Everything known about one stored version except its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    /// The group.
    pub group: String,
    /// The version, from 1.
    pub version: u64,
    /// The content hash (lowercase hex SHA-256).
    pub hash: String,
    /// The operator's message.
    pub message: String,
    /// Who pushed ("" when unauthenticated).
    pub author: String,
    /// When the version was stored, Unix milliseconds.
    pub created_at_unix_ms: i64,
    /// For a rollback: the version whose content was restored.
    pub rollback_of: Option<u64>,
    /// Size of the encoded snapshot in bytes.
    pub size_bytes: u64,
    /// Set when the version was stored as a rollout's candidate.
    pub candidate: Option<CandidateOf>,
}

/// One stored version with its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// The group.
    pub group: String,
    /// The version, from 1.
    pub version: u64,
    /// The content hash (lowercase hex SHA-256).
    pub hash: String,
    /// The operator's message.
    pub message: String,
    /// Who pushed ("" when unauthenticated).
    pub author: String,
    /// When the version was stored, Unix milliseconds.
    pub created_at_unix_ms: i64,
    /// For a rollback: the version whose content was restored.
    pub rollback_of: Option<u64>,
    /// The encoded canonical `vane.v1.Snapshot`.
    pub snapshot: Bytes,
    /// Set when the version was stored as a rollout's candidate.
    pub candidate: Option<CandidateOf>,
}

impl VersionRecord {
    /// The record without its content.
    pub fn meta(&self) -> VersionMeta {
        VersionMeta {
            group: self.group.clone(),
            version: self.version,
            hash: self.hash.clone(),
            message: self.message.clone(),
            author: self.author.clone(),
            created_at_unix_ms: self.created_at_unix_ms,
            rollback_of: self.rollback_of,
            size_bytes: self.snapshot.len() as u64,
            candidate: self.candidate.clone(),
        }
    }
}

/// One entry of the audit log: a push, rollback or watch attempt, what it
/// did or why it was refused. Stored as an encoded `vane.v1.AuditEntry`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecord {
    /// When the server decided, Unix milliseconds.
    pub at_unix_ms: i64,
    /// Who asked ("" when anonymous).
    pub identity: String,
    /// `push`, `rollback` or `watch`.
    pub action: String,
    /// The group asked for (as sent, cut to 1024 bytes).
    pub group: String,
    /// The version created, or the head when unchanged; 0 when refused.
    pub version: u64,
    /// Its content hash ("" when refused before validation).
    pub hash: String,
    /// The operator's message.
    pub message: String,
    /// `created`, `unchanged` or `refused`.
    pub result: String,
    /// For `refused`: the gRPC code's name.
    pub code: String,
    /// For `refused`: the error the caller received.
    pub reason: String,
    /// The caller's address.
    pub peer: String,
    /// The replica that answered.
    pub replica: String,
    /// For a rollback: the version restored.
    pub rollback_of: u64,
}

/// How many audit entries a store keeps; older ones are dropped.
pub const AUDIT_RETENTION: usize = 100_000;

/// What a successful push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// A new version was stored (and is durable).
    Created(VersionRecord),
    /// The content equals the head: nothing was stored; this is the head.
    Unchanged(VersionRecord),
}

impl PushOutcome {
    /// The created version, or the head when unchanged.
    pub fn record(&self) -> &VersionRecord {
        match self {
            Self::Created(r) | Self::Unchanged(r) => r,
        }
    }

    /// Takes the record out.
    pub fn into_record(self) -> VersionRecord {
        match self {
            Self::Created(r) | Self::Unchanged(r) => r,
        }
    }

    /// True when nothing was stored.
    pub fn is_unchanged(&self) -> bool {
        matches!(self, Self::Unchanged(_))
    }
}

/// What retention keeps of each group's history (see [`Store::prune`]).
/// A version is removed only when it is outside the newest
/// `keep_versions` of its group **and** older than `keep_age`, and never
/// when it is the head or [`Pinned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest versions of each group always kept (the head counts).
    pub keep_versions: u64,
    /// Versions younger than this are always kept.
    pub keep_age: Duration,
}

impl Retention {
    /// Whether a version, `rank` places from the newest (the head is 0) and
    /// stored at `created_at_unix_ms`, may be removed at `now_unix_ms`.
    pub fn removes(&self, rank: u64, created_at_unix_ms: i64, now_unix_ms: i64) -> bool {
        let age_ms = u128::try_from(now_unix_ms.saturating_sub(created_at_unix_ms)).unwrap_or(0);
        rank > 0 && rank >= self.keep_versions && age_ms >= self.keep_age.as_millis()
    }
}

/// Versions retention keeps whatever their rank and age, per group: the
/// last version each agent ACKed (a NACKing agent still runs it).
pub type Pinned = BTreeMap<String, BTreeSet<u64>>;

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Versions removed, over every group.
    pub versions: u64,
    /// Groups that lost at least one version.
    pub groups: u64,
}

/// The versioned snapshot store. `Arc<dyn Store>` is what the server holds.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new version of a group, or reports it unchanged or conflicting.
    /// Returns only once the version is durable.
    async fn push(&self, new: NewVersion) -> Result<PushOutcome, StoreError>;

    /// One version of a group; the head when `version` is `None`. `Ok(None)`
    /// when the group or that version does not exist.
    async fn get(
        &self,
        group: &str,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, StoreError>;

    /// The versions of a group, newest first, at most `limit` (0: all).
    /// Empty when the group does not exist.
    async fn history(&self, group: &str, limit: usize) -> Result<Vec<VersionMeta>, StoreError>;

    /// The head of every group, sorted by group (seeds the hub at startup).
    async fn heads(&self) -> Result<Vec<VersionRecord>, StoreError>;

    /// Every group that has at least one version, sorted.
    async fn groups(&self) -> Result<Vec<String>, StoreError>;

    /// Removes the versions `retention` lets go, except the heads and the
    /// `pinned` ones. Numbers stay taken: the next version of a group is
    /// still its head + 1, and a removed version reads as absent.
    async fn prune(&self, retention: Retention, pinned: &Pinned)
    -> Result<PruneReport, StoreError>;

    /// How many versions of `group` retention has removed so far.
    async fn pruned(&self, group: &str) -> Result<u64, StoreError>;

    /// Deletes a group: every stored version, its head and its retention
    /// counter, in one write. A tombstone keeps the group's last version, so
    /// a group pushed again later continues the sequence (the next version is
    /// the tombstone's + 1: numbers are never reused, also across restarts).
    /// The rollout record is kept (ended, when `delete.rollout` ends it), so
    /// its revision keeps growing. Durable on return.
    async fn delete_group(&self, delete: DeleteGroup) -> Result<Deleted, StoreError>;

    /// The tombstones: every deleted group not pushed again since, with its
    /// last version, sorted by group.
    async fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// The group's current (or last) rollout record.
    async fn rollout(&self, group: &str) -> Result<Option<RolloutRecord>, StoreError>;

    /// Every group's rollout record, sorted by group.
    async fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;

    /// Writes the group's rollout record if its revision is still
    /// `put.expected_revision` ([`StoreError::RolloutMoved`] otherwise);
    /// durable on return. Returns the record as stored.
    async fn put_rollout(&self, group: &str, put: RolloutPut) -> Result<RolloutRecord, StoreError>;

    /// Appends entries to the audit log, durable on return. The log keeps
    /// the newest [`AUDIT_RETENTION`] entries (approximately, with etcd).
    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError>;
    /// The audit log, newest first, at most `limit` entries (0: all kept),
    /// of one group or of all.
    async fn audit(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Finishes the writes in progress, stops the backend's workers and
    /// releases its resources. Later calls fail with `Unavailable`.
    async fn close(&self) -> Result<(), StoreError>;

    /// Which backend this is, where its data lives, and whether it accepts
    /// writes now. Cheap (no I/O): it reports what the last operations saw.
    fn health(&self) -> StoreHealth;

    /// The change feed: the heads every writer creates, in the order the
    /// backend committed them. `None` when this process is the only writer.
    /// Each call starts a new feed, which first re-reads every head.
    fn feed(&self) -> Option<HeadFeed> {
        None
    }

    /// Where replicas share their agents' ACK/NACK state, so `Status` on any
    /// replica lists every agent. `None` for a single server.
    fn agent_directory(&self) -> Option<Arc<dyn AgentDirectory>> {
        None
    }
}

/// Which backend a store is and whether it accepts writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// `"embedded"` or `"etcd"`.
    pub backend: &'static str,
    /// Where the data lives: the database file, or the etcd endpoints and
    /// key prefix.
    pub location: String,
    /// Why the store is read-only now; `None` while it accepts writes.
    pub degraded: Option<String>,
}

/// What a [`HeadFeed`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// New heads (at most one per group), in commit order.
    Heads(Vec<VersionRecord>),
    /// Every head, re-read: when the feed starts, and whenever it lost track
    /// of the changes in between (history compacted).
    Resynced(Vec<VersionRecord>),
    /// Groups deleted (through any replica), each with its last version:
    /// their heads are gone, and no version at or below that one may be
    /// served again. Reported as the deletes happen and, after every
    /// [`Self::Resynced`], for every deleted group (what a re-read cannot
    /// tell apart from a group that never was).
    Deleted(Vec<(String, u64)>),
    /// The feed follows the backend again after it was [`Self::Lost`]
    /// (resuming where it stopped: nothing was missed).
    Resumed,
    /// The feed lost the backend; it retries by itself after `retry_in` and
    /// resumes where it stopped.
    Lost {
        /// What went wrong.
        error: StoreError,
        /// When it tries again.
        retry_in: Duration,
    },
}

/// A store's change feed (see [`Store::feed`]). It ends only when the store
/// is closed.
pub type HeadFeed = Pin<Box<dyn Stream<Item = FeedEvent> + Send>>;

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl From<&AuditRecord> for vane_proto::AuditEntry {
    fn from(r: &AuditRecord) -> Self {
        Self {
            at_unix_ms: r.at_unix_ms,
            identity: r.identity.clone(),
            action: r.action.clone(),
            group: r.group.clone(),
            version: r.version,
            hash: r.hash.clone(),
            message: r.message.clone(),
            result: r.result.clone(),
            code: r.code.clone(),
            reason: r.reason.clone(),
            peer: r.peer.clone(),
            replica: r.replica.clone(),
            rollback_of: r.rollback_of,
        }
    }
}

impl From<vane_proto::AuditEntry> for AuditRecord {
    fn from(e: vane_proto::AuditEntry) -> Self {
        let vane_proto::AuditEntry {
            at_unix_ms,
            identity,
            action,
            group,
            version,
            hash,
            message,
            result,
            code,
            reason,
            peer,
            replica,
            rollback_of,
        } = e;
        Self {
            at_unix_ms,
            identity,
            action,
            group,
            version,
            hash,
            message,
            result,
            code,
            reason,
            peer,
            replica,
            rollback_of,
        }
    }
}

/// Decodes a stored audit entry; `key` names it in the error.
pub fn decode_audit(key: &str, bytes: &[u8]) -> Result<AuditRecord, StoreError> {
    use prost::Message as _;
    vane_proto::AuditEntry::decode(bytes)
        .map(AuditRecord::from)
        .map_err(|e| StoreError::Corrupt(format!("audit entry {key}: does not decode: {e}")))
}

/// Encodes an audit entry for storage.
pub fn encode_audit(r: &AuditRecord) -> Vec<u8> {
    use prost::Message as _;
    vane_proto::AuditEntry::from(r).encode_to_vec()
}
