//! Rollout records in the embedded store: one per group, written with a
//! revision that grows on every write, checked by pushes (a plain push is
//! refused while the group's rollout is active) and compare-and-set by
//! [`put`].

use bytes::Bytes;
use prost::Message as _;
use redb::{ReadableTable, Table, TableDefinition};

use super::records::storage;
use crate::contract::{RolloutPut, RolloutRecord};
use crate::error::StoreError;

/// group -> encoded [`Envelope`].
pub(super) const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");

/// What the embedded store keeps of a rollout record.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(bool, tag = "2")]
    active: bool,
    #[prost(bytes = "bytes", tag = "3")]
    body: Bytes,
    #[prost(uint64, tag = "4")]
    revision: u64,
}

fn decode(group: &str, bytes: &[u8]) -> Result<RolloutRecord, StoreError> {
    let e = Envelope::decode(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "group {group:?}: rollout record does not decode: {e}"
        ))
    })?;
    Ok(RolloutRecord {
        group: group.to_owned(),
        id: e.id,
        active: e.active,
        body: e.body,
        revision: e.revision,
    })
}

/// The group's record, if any.
pub(super) fn read(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    group: &str,
) -> Result<Option<RolloutRecord>, StoreError> {
    match table.get(group).map_err(storage)? {
        Some(v) => decode(group, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Every group's record, sorted by group.
pub(super) fn read_all(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<RolloutRecord>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (group, value) = entry.map_err(storage)?;
        out.push(decode(group.value(), value.value())?);
    }
    Ok(out)
}

/// Whether a push to `group` carrying `put` (or none: a plain push) may
/// proceed. The outer error fails the transaction; the inner is this
/// push's refusal.
pub(super) fn check_push(
    table: &Table<'_, &'static str, &'static [u8]>,
    group: &str,
    put: Option<&RolloutPut>,
) -> Result<Result<(), StoreError>, StoreError> {
    let current = match read(table, group) {
        Ok(current) => current,
        Err(e @ StoreError::Corrupt(_)) => return Ok(Err(e)),
        Err(e) => return Err(e),
    };
    Ok(RolloutPut::check(group, put, current.as_ref()))
}

/// Writes `put` as the group's record if its revision matches (the inner
/// error otherwise); the caller commits.
pub(super) fn put(
    table: &mut Table<'_, &'static str, &'static [u8]>,
    group: &str,
    put: &RolloutPut,
) -> Result<Result<RolloutRecord, StoreError>, StoreError> {
    let current = match read(table, group) {
        Ok(current) => current,
        Err(e @ StoreError::Corrupt(_)) => return Ok(Err(e)),
        Err(e) => return Err(e),
    };
    if let Err(e) = RolloutPut::check(group, Some(put), current.as_ref()) {
        return Ok(Err(e));
    }
    let record = RolloutRecord {
        group: group.to_owned(),
        id: put.id.clone(),
        active: put.active,
        body: put.body.clone(),
        revision: current.map_or(0, |c| c.revision) + 1,
    };
    let envelope = Envelope {
        id: record.id.clone(),
        active: record.active,
        body: record.body.clone(),
        revision: record.revision,
    };
    table
        .insert(group, envelope.encode_to_vec().as_slice())
        .map_err(storage)?;
    Ok(Ok(record))
}
