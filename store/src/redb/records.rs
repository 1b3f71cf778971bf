//! The embedded store's tables and records: how a version is encoded and
//! read back, and how redb's errors become [`StoreError`]s.

use std::path::Path;

use bytes::Bytes;
use prost::Message as _;
use redb::{ReadableTable, TableDefinition};
use vane_proto as pb;

use crate::contract::{CandidateOf, VersionMeta, VersionRecord};
use crate::error::StoreError;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "vane.redb";
/// Layout version recorded in the `meta` table.
pub const SCHEMA_VERSION: u64 = 1;
/// The database's page cache.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// group -> head version.
pub(super) const HEADS: TableDefinition<&str, u64> = TableDefinition::new("heads");
/// (group, version) -> encoded `vane.v1.StoredVersion`.
pub(super) const VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");
/// `"schema"` -> layout version; `"probe"` -> when the writer last proved the
/// file writable after a failure.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The audit log: sequence number -> encoded `vane.v1.AuditEntry`.
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// group -> how many of its versions retention removed.
pub(super) const PRUNED: TableDefinition<&str, u64> = TableDefinition::new("pruned");
/// group -> the last version of a deleted group (its tombstone), until the
/// group is pushed again.
pub(super) const TOMBSTONES: TableDefinition<&str, u64> = TableDefinition::new("tombstones");
pub(super) const SCHEMA_KEY: &str = "schema";
pub(super) const PROBE_KEY: &str = "probe";

/// Only the `info` field of a `vane.v1.StoredVersion`: decoding it skips the
/// snapshot bytes instead of copying them, which keeps `history` cheap.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredVersionInfo {
    #[prost(message, optional, tag = "1")]
    info: Option<pb::VersionInfo>,
}

pub(super) fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

/// Maps any redb error: corruption is `Corrupt`, everything else `Io`.
pub(super) fn storage(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(msg),
        redb::Error::DatabaseClosed => closed(),
        e => StoreError::Io(e.to_string()),
    }
}

/// What the operator reads when the file cannot be opened or read: the
/// file, what is wrong, and what to do.
pub(super) fn damaged(path: &Path, what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "{}: {what}: the database file is damaged; restore it from a backup \
         (see docs/operations.md), or run `vane-control check --data-dir {}` to list what is readable",
        path.display(),
        path.parent().unwrap_or(Path::new(".")).display()
    ))
}

pub(super) fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            StoreError::Unavailable(format!("{} is in use by another process", path.display()))
        }
        e => match storage(e) {
            StoreError::Corrupt(msg) => damaged(path, &msg),
            StoreError::Io(msg) => StoreError::Io(format!("opening {}: {msg}", path.display())),
            other => other,
        },
    }
}

fn corrupt_record(group: &str, version: u64, e: &prost::DecodeError) -> StoreError {
    StoreError::Corrupt(format!(
        "group {group:?} version {version}: record does not decode: {e}"
    ))
}

fn missing_info(group: &str, version: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "group {group:?} version {version}: record has no info"
    ))
}

pub(super) fn head_without_version(group: &str, head: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "group {group:?}: head is version {head} but that version is not stored"
    ))
}

fn check_version(group: &str, version: u64, info: &pb::VersionInfo) -> Result<(), StoreError> {
    if info.version == version {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "group {group:?} version {version}: record says version {}",
            info.version
        )))
    }
}

pub(super) fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

pub(super) fn read_info(
    versions: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    group: &str,
    version: u64,
) -> Result<Option<pb::VersionInfo>, StoreError> {
    let Some(value) = versions.get((group, version)).map_err(storage)? else {
        return Ok(None);
    };
    decode_info(group, version, value.value()).map(Some)
}

pub(super) fn decode_info(
    group: &str,
    version: u64,
    bytes: &[u8],
) -> Result<pb::VersionInfo, StoreError> {
    let info = StoredVersionInfo::decode(bytes)
        .map_err(|e| corrupt_record(group, version, &e))?
        .info
        .ok_or_else(|| missing_info(group, version))?;
    check_version(group, version, &info)?;
    Ok(info)
}

pub(super) fn meta_of(group: &str, version: u64, info: pb::VersionInfo) -> VersionMeta {
    let candidate = candidate_of(&info);
    VersionMeta {
        group: group.to_owned(),
        version,
        hash: info.hash,
        message: info.message,
        author: info.author,
        created_at_unix_ms: info.created_at_unix_ms,
        rollback_of: nonzero(info.rollback_of),
        size_bytes: info.size_bytes,
        candidate,
    }
}

pub(super) fn read_record(
    versions: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    group: &str,
    version: u64,
) -> Result<Option<VersionRecord>, StoreError> {
    let Some(value) = versions.get((group, version)).map_err(storage)? else {
        return Ok(None);
    };
    let stored =
        pb::StoredVersion::decode(value.value()).map_err(|e| corrupt_record(group, version, &e))?;
    let info = stored.info.ok_or_else(|| missing_info(group, version))?;
    check_version(group, version, &info)?;
    let candidate = candidate_of(&info);
    Ok(Some(VersionRecord {
        group: group.to_owned(),
        version,
        candidate,
        hash: info.hash,
        message: info.message,
        author: info.author,
        created_at_unix_ms: info.created_at_unix_ms,
        rollback_of: nonzero(info.rollback_of),
        snapshot: stored.snapshot,
    }))
}

/// The candidate mark of a stored version, if it has one.
pub(super) fn candidate_of(info: &pb::VersionInfo) -> Option<CandidateOf> {
    (!info.rollout_id.is_empty()).then(|| CandidateOf {
        rollout_id: info.rollout_id.clone(),
        stable_version: info.rollout_stable_version,
    })
}

/// The stored form of a new version.
pub(super) fn encode_record(record: &VersionRecord) -> Vec<u8> {
    pb::StoredVersion {
        info: Some(pb::VersionInfo {
            rollout_id: record
                .candidate
                .as_ref()
                .map(|c| c.rollout_id.clone())
                .unwrap_or_default(),
            rollout_stable_version: record.candidate.as_ref().map_or(0, |c| c.stable_version),
            version: record.version,
            hash: record.hash.clone(),
            message: record.message.clone(),
            created_at_unix_ms: record.created_at_unix_ms,
            author: record.author.clone(),
            rollback_of: record.rollback_of.unwrap_or(0),
            size_bytes: record.snapshot.len() as u64,
        }),
        snapshot: Bytes::clone(&record.snapshot),
    }
    .encode_to_vec()
}
