//! How the store lays out its keys under the prefix, and the records
//! stored there (heads, versions, body references, agents, rollout
//! records), with their
//! decoding and the limits that shape them.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::TxnOpResponse;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use vane_proto as pb;
use vane_store::agents::{AgentRecord, SharedAgent};
use vane_store::{CandidateOf, StoreError, VersionRecord};

/// Layout version stored under `<prefix>/schema`.
pub const SCHEMA_VERSION: u64 = 1;
/// Largest piece of a body in one key: well under etcd's default request
/// limit of 1.5 MiB, with room for the head and version record that share
/// the transaction of a one-chunk body.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest etcd response this store accepts (a range of chunks, a history,
/// the agents of a big fleet).
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Most operations per transaction (etcd's default limit is 128).
pub(crate) const MAX_TXN_OPS: usize = 64;
/// How long `Status` waits for the other replicas' agents.
pub(crate) const AGENTS_READ_TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest pause of the feed between two attempts.
pub(crate) const FEED_RETRY_CAP: Duration = Duration::from_secs(2);
/// Compare-and-set rounds lost to other replicas before a push gives up.
pub(crate) const MAX_CAS_ROUNDS: u32 = 64;

/// `heads/<group>`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HeadValue {
    #[prost(uint64, tag = "1")]
    pub(crate) version: u64,
    #[prost(string, tag = "2")]
    pub(crate) hash: String,
    #[prost(string, tag = "3")]
    pub(crate) push_id: String,
    /// Set when the group was deleted: the key stays as its tombstone,
    /// `version` its last version, so the group's next push continues the
    /// sequence (see `delete.rs`).
    #[prost(bool, tag = "4")]
    pub(crate) deleted: bool,
}

/// Where a body is: `blobs/<sha256>/<chunk>`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BodyRef {
    #[prost(string, tag = "1")]
    pub(crate) sha256: String,
    #[prost(uint64, tag = "2")]
    pub(crate) size: u64,
    #[prost(uint32, tag = "3")]
    pub(crate) chunks: u32,
}

/// `versions/<group>/<version>`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredVersion {
    #[prost(message, optional, tag = "1")]
    pub(crate) info: Option<pb::VersionInfo>,
    #[prost(string, tag = "2")]
    pub(crate) push_id: String,
    #[prost(message, optional, tag = "3")]
    pub(crate) body: Option<BodyRef>,
}

/// `rollouts/<group>`: the group's rollout record. Its revision is the
/// key's `mod_revision`, so it is not stored.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredRollout {
    #[prost(string, tag = "1")]
    pub(crate) id: String,
    #[prost(bool, tag = "2")]
    pub(crate) active: bool,
    #[prost(bytes = "bytes", tag = "3")]
    pub(crate) body: Bytes,
    /// Random per write: finds a write whose commit etcd did not answer.
    #[prost(string, tag = "4")]
    pub(crate) write_id: String,
}

/// `agents/<group>/<node>/<lease>`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredAgent {
    #[prost(string, tag = "1")]
    pub(crate) replica: String,
    #[prost(string, tag = "2")]
    pub(crate) node_id: String,
    #[prost(string, tag = "3")]
    pub(crate) group: String,
    #[prost(btree_map = "string, string", tag = "4")]
    pub(crate) labels: BTreeMap<String, String>,
    #[prost(string, tag = "5")]
    pub(crate) agent_build: String,
    #[prost(string, tag = "6")]
    pub(crate) peer: String,
    #[prost(bool, tag = "7")]
    pub(crate) connected: bool,
    #[prost(int64, tag = "8")]
    pub(crate) connected_since_unix_ms: i64,
    #[prost(int64, tag = "9")]
    pub(crate) last_seen_unix_ms: i64,
    #[prost(uint64, tag = "10")]
    pub(crate) sent_version: u64,
    #[prost(uint64, tag = "11")]
    pub(crate) acked_version: u64,
    #[prost(string, tag = "12")]
    pub(crate) acked_hash: String,
    #[prost(uint64, tag = "13")]
    pub(crate) last_nacked_version: u64,
    #[prost(string, tag = "14")]
    pub(crate) nack_reason: String,
    #[prost(int32, tag = "15")]
    pub(crate) nack_code: i32,
    #[prost(bool, tag = "16")]
    pub(crate) health_degraded: bool,
    #[prost(string, tag = "17")]
    pub(crate) health_reason: String,
    #[prost(uint64, tag = "18")]
    pub(crate) health_version: u64,
    #[prost(uint64, tag = "19")]
    pub(crate) sessions: u64,
    #[prost(string, tag = "20")]
    pub(crate) client: String,
}

impl From<&SharedAgent> for StoredAgent {
    fn from(a: &SharedAgent) -> Self {
        let r = &a.record;
        Self {
            replica: a.replica.clone(),
            node_id: r.node_id.clone(),
            group: r.group.clone(),
            labels: r.labels.clone(),
            agent_build: r.agent_build.clone(),
            peer: r.peer.clone(),
            connected: r.connected,
            connected_since_unix_ms: r.connected_since_unix_ms,
            last_seen_unix_ms: r.last_seen_unix_ms,
            sent_version: r.sent_version,
            acked_version: r.acked_version,
            acked_hash: r.acked_hash.clone(),
            last_nacked_version: r.last_nacked_version,
            nack_reason: r.nack_reason.clone(),
            nack_code: r.nack_code,
            health_degraded: r.health_degraded,
            health_reason: r.health_reason.clone(),
            health_version: r.health_version,
            sessions: r.sessions,
            client: r.client.clone(),
        }
    }
}

impl From<StoredAgent> for SharedAgent {
    fn from(a: StoredAgent) -> Self {
        Self {
            replica: a.replica,
            record: AgentRecord {
                node_id: a.node_id,
                group: a.group,
                labels: a.labels,
                agent_build: a.agent_build,
                peer: a.peer,
                connected: a.connected,
                connected_since_unix_ms: a.connected_since_unix_ms,
                last_seen_unix_ms: a.last_seen_unix_ms,
                sent_version: a.sent_version,
                acked_version: a.acked_version,
                acked_hash: a.acked_hash,
                last_nacked_version: a.last_nacked_version,
                nack_reason: a.nack_reason,
                nack_code: a.nack_code,
                health_degraded: a.health_degraded,
                health_reason: a.health_reason,
                health_version: a.health_version,
                sessions: a.sessions,
                client: a.client,
            },
        }
    }
}

/// The keys of one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    pub(crate) fn schema(&self) -> String {
        format!("{}/schema", self.prefix)
    }
    pub(crate) fn heads(&self) -> String {
        format!("{}/heads/", self.prefix)
    }
    pub(crate) fn head(&self, group: &str) -> String {
        format!("{}/heads/{group}", self.prefix)
    }
    pub(crate) fn versions(&self) -> String {
        format!("{}/versions/", self.prefix)
    }
    pub(crate) fn versions_of(&self, group: &str) -> String {
        format!("{}/versions/{group}/", self.prefix)
    }
    pub(crate) fn version(&self, group: &str, version: u64) -> String {
        format!("{}/versions/{group}/{version:020}", self.prefix)
    }
    pub(crate) fn blobs(&self) -> String {
        format!("{}/blobs/", self.prefix)
    }
    pub(crate) fn pruned(&self, group: &str) -> String {
        format!("{}/pruned/{group}", self.prefix)
    }
    pub(crate) fn blob(&self, sha256: &str) -> String {
        format!("{}/blobs/{sha256}/", self.prefix)
    }
    pub(crate) fn chunk(&self, sha256: &str, index: usize) -> String {
        format!("{}/blobs/{sha256}/{index:06}", self.prefix)
    }
    pub(crate) fn audit(&self, group: Option<&str>) -> String {
        match group {
            Some(group) => format!("{}/audit/{}/", self.prefix, audit_dir(group)),
            None => format!("{}/audit/", self.prefix),
        }
    }
    pub(crate) fn rollouts(&self) -> String {
        format!("{}/rollouts/", self.prefix)
    }
    pub(crate) fn rollout(&self, group: &str) -> String {
        format!("{}/rollouts/{group}", self.prefix)
    }
    pub(crate) fn agents(&self, group: Option<&str>) -> String {
        match group {
            Some(group) => format!("{}/agents/{group}/", self.prefix),
            None => format!("{}/agents/", self.prefix),
        }
    }
    pub(crate) fn agent(&self, group: &str, node_id: &str, lease: i64) -> String {
        format!("{}/agents/{group}/{node_id}/{lease:016x}", self.prefix)
    }

    /// (group, version) of a `versions/` key.
    pub(crate) fn parse_version(&self, key: &[u8]) -> Option<(String, u64)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.versions())?;
        let (group, version) = rest.rsplit_once('/')?;
        Some((group.to_owned(), version.parse().ok()?))
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) fn missing(group: &str, version: u64, what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "group {group:?} version {version}: record has no {what}"
    ))
}

pub(crate) fn head_without_version(group: &str, head: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "group {group:?}: head is version {head} but that version is not stored"
    ))
}

pub(crate) fn decode_version(
    group: &str,
    version: u64,
    bytes: &[u8],
) -> Result<StoredVersion, StoreError> {
    let stored = StoredVersion::decode(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "group {group:?} version {version}: record does not decode: {e}"
        ))
    })?;
    match &stored.info {
        Some(info) if info.version == version => Ok(stored),
        Some(info) => Err(StoreError::Corrupt(format!(
            "group {group:?} version {version}: record says version {}",
            info.version
        ))),
        None => Err(missing(group, version, "info")),
    }
}

pub(crate) fn decode_head(group: &str, bytes: &[u8]) -> Result<HeadValue, StoreError> {
    HeadValue::decode(bytes)
        .map_err(|e| StoreError::Corrupt(format!("group {group:?}: head does not decode: {e}")))
}

pub(crate) fn record(
    group: &str,
    version: u64,
    info: pb::VersionInfo,
    snapshot: Bytes,
) -> VersionRecord {
    VersionRecord {
        candidate: candidate_of(&info),
        group: group.to_owned(),
        version,
        hash: info.hash,
        message: info.message,
        author: info.author,
        created_at_unix_ms: info.created_at_unix_ms,
        rollback_of: (info.rollback_of != 0).then_some(info.rollback_of),
        snapshot,
    }
}

/// The candidate mark of a stored version, if it has one.
pub(crate) fn candidate_of(info: &pb::VersionInfo) -> Option<CandidateOf> {
    (!info.rollout_id.is_empty()).then(|| CandidateOf {
        rollout_id: info.rollout_id.clone(),
        stable_version: info.rollout_stable_version,
    })
}

/// Group names become key segments: they must not contain `/`.
/// The key directory of a group's audit entries: the group, or `-` for a
/// name that cannot be a key segment (an audited refusal of a bad name).
pub(crate) fn audit_dir(group: &str) -> &str {
    if group.is_empty() || group.contains('/') {
        "-"
    } else {
        group
    }
}

/// Audit appends between two prunes of the log.
pub(crate) const AUDIT_PRUNE_EVERY: u64 = 256;

pub(crate) fn check_group(group: &str) -> Result<(), StoreError> {
    if group.is_empty() || group.contains('/') {
        Err(StoreError::Io(format!(
            "group {group:?}: not a valid group name for the etcd store"
        )))
    } else {
        Ok(())
    }
}

/// The first `Get` of a transaction's responses at `index`.
pub(crate) fn txn_get(responses: &[TxnOpResponse], index: usize) -> Option<&etcd_client::KeyValue> {
    match responses.get(index)? {
        TxnOpResponse::Get(get) => get.kvs().first(),
        _ => None,
    }
}
