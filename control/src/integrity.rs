//! Stored content checked against its hash: every body the server reads
//! from the store passes [`verify`] before it is published to agents or
//! shown to an operator, and [`CorruptHeads`] remembers the groups whose
//! newest stored version failed (for `Status` and the metrics).
//!
//! The hash covers the canonical form (`vane_model`), not the stored bytes,
//! so verifying means decoding the body through the model and hashing it
//! again, exactly as an agent does before it applies a version. The store
//! crates cannot do it themselves: they never depend on the model.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use vane_model::Snapshot;
use vane_store::{Store, StoreError, VersionRecord};

/// A stored version whose body does not match its hash (or does not decode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {version} of group {group:?} is corrupt: {detail}")]
pub struct Corrupt {
    /// The group.
    pub group: String,
    /// The version.
    pub version: u64,
    /// The hash the store recorded when the version was pushed.
    pub hash: String,
    /// What is wrong, e.g. `its content hashes to 1f2e…, not the recorded 9a8b…`.
    pub detail: String,
}

impl Corrupt {
    /// A version the store itself could not read back (`StoreError::Corrupt`:
    /// the record does not decode), with the store's words.
    pub fn unreadable(group: &str, version: u64, detail: impl Into<String>) -> Self {
        Self {
            group: group.to_owned(),
            version,
            hash: String::new(),
            detail: detail.into(),
        }
    }
}

/// Checks a stored version's body against its recorded hash: it must decode
/// and validate as a snapshot, and its canonical form must hash to
/// `record.hash`. Costs what an agent's apply costs (decode, validate,
/// hash): call it off the async workers ([`verify_off_thread`]).
pub fn verify(record: &VersionRecord) -> Result<(), Corrupt> {
    let corrupt = |detail: String| Corrupt {
        group: record.group.clone(),
        version: record.version,
        hash: record.hash.clone(),
        detail,
    };
    let snapshot = Snapshot::decode(&record.snapshot)
        .map_err(|e| corrupt(format!("its content does not decode: {e}")))?;
    let actual = snapshot.content_hash().to_hex();
    if actual == record.hash {
        Ok(())
    } else {
        Err(corrupt(format!(
            "its content hashes to {actual}, not the recorded {}",
            record.hash
        )))
    }
}

/// [`verify`] on the blocking pool. A failed task (it panicked or the
/// runtime is shutting down) counts as "not verified": the record is not
/// trusted.
pub async fn verify_off_thread(record: VersionRecord) -> (VersionRecord, Result<(), Corrupt>) {
    let (group, version, hash) = (record.group.clone(), record.version, record.hash.clone());
    tokio::task::spawn_blocking(move || {
        let verdict = verify(&record);
        (record, verdict)
    })
    .await
    .unwrap_or_else(|e| {
        let record = VersionRecord {
            candidate: None,
            group: group.clone(),
            version,
            hash: hash.clone(),
            message: String::new(),
            author: String::new(),
            created_at_unix_ms: 0,
            rollback_of: None,
            snapshot: bytes::Bytes::new(),
        };
        let verdict = Err(Corrupt {
            group,
            version,
            hash,
            detail: format!("could not be verified: {e}"),
        });
        (record, verdict)
    })
}

/// Splits records read from the store into the verified ones and the
/// corrupt ones (each logged), on the blocking pool.
pub async fn verified(records: Vec<VersionRecord>) -> (Vec<VersionRecord>, Vec<Corrupt>) {
    let (mut good, mut bad) = (Vec::with_capacity(records.len()), Vec::new());
    for record in records {
        match verify_off_thread(record).await {
            (record, Ok(())) => good.push(record),
            (_, Err(corrupt)) => {
                tracing::error!(
                    group = %corrupt.group,
                    version = corrupt.version,
                    error = %corrupt,
                    "corrupt version in the store: not sent to agents (run `vane-control check`)"
                );
                bad.push(corrupt);
            }
        }
    }
    (good, bad)
}

/// Every group's head, read at startup: `Store::heads`, or, when the store
/// cannot read one of them back (`StoreError::Corrupt`: a record or body
/// that does not decode or match its checksum), each group's head on its
/// own, so that one damaged version degrades its group instead of stopping
/// the server. The heads returned are not verified yet
/// (`Hub::publish_verified` does that).
pub async fn read_heads(
    store: &dyn Store,
) -> Result<(Vec<VersionRecord>, Vec<Corrupt>), StoreError> {
    match store.heads().await {
        Ok(heads) => return Ok((heads, Vec::new())),
        Err(StoreError::Corrupt(e)) => {
            tracing::error!(error = %e, "a head cannot be read back; reading each group's head on its own");
        }
        Err(e) => return Err(e),
    }
    let (mut heads, mut corrupt) = (Vec::new(), Vec::new());
    for group in store.groups().await? {
        match store.get(&group, None).await {
            Ok(Some(record)) => heads.push(record),
            Ok(None) => {}
            Err(StoreError::Corrupt(detail)) => {
                // Which version: the history reads no body.
                let Some(meta) = store.history(&group, 1).await?.into_iter().next() else {
                    return Err(StoreError::Corrupt(detail));
                };
                let found = Corrupt {
                    hash: meta.hash,
                    ..Corrupt::unreadable(&group, meta.version, detail)
                };
                tracing::error!(group = %group, version = found.version, error = %found, "corrupt version in the store: not sent to agents (run `vane-control check`)");
                corrupt.push(found);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((heads, corrupt))
}

/// What this server knows to be corrupt: per group, its newest stored
/// version when that one is corrupt (the group is degraded: agents keep
/// what they run until a push or a rollback creates a good newer version),
/// and every corrupt version found since start (marked in `history`).
#[derive(Debug, Default)]
pub struct CorruptHeads {
    inner: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// Group -> its corrupt newest version.
    heads: BTreeMap<String, Corrupt>,
    /// (group, version) found corrupt since start.
    found: BTreeSet<(String, u64)>,
}

impl CorruptHeads {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        // A poisoned lock only means a panic elsewhere; the sets are whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a corrupt version; it becomes the group's corrupt head when
    /// it is newer than `served` (the version agents are sent, 0: none) and
    /// than the corrupt head already known.
    pub fn found(&self, corrupt: Corrupt, served: u64) {
        let mut known = self.lock();
        known.found.insert((corrupt.group.clone(), corrupt.version));
        if corrupt.version <= served {
            return;
        }
        let newer = known
            .heads
            .get(&corrupt.group)
            .is_none_or(|c| corrupt.version > c.version);
        if newer {
            known.heads.insert(corrupt.group.clone(), corrupt);
        }
    }

    /// `version` of `group` became the head: a corrupt head before it no
    /// longer matters (the group is healthy again).
    pub fn superseded(&self, group: &str, version: u64) {
        let mut known = self.lock();
        if known.heads.get(group).is_some_and(|c| c.version < version) {
            known.heads.remove(group);
            tracing::info!(
                group,
                version,
                "group healthy again: a good version superseded its corrupt head"
            );
        }
    }

    /// The group was deleted: its corrupt head (deleted with every other
    /// version) no longer degrades it.
    pub fn forget(&self, group: &str) {
        self.lock().heads.remove(group);
    }

    /// The group's corrupt head, if it has one.
    pub fn head(&self, group: &str) -> Option<Corrupt> {
        self.lock().heads.get(group).cloned()
    }

    /// Every group's corrupt head, sorted by group.
    pub fn heads(&self) -> Vec<Corrupt> {
        self.lock().heads.values().cloned().collect()
    }

    /// Whether this version was found corrupt since start.
    pub fn is_known(&self, group: &str, version: u64) -> bool {
        self.lock().found.contains(&(group.to_owned(), version))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(version: u64, marker: &str) -> VersionRecord {
        let spec = vane_model::parse_file(
            format!(r#"{{"values": {{"marker": "{marker}"}}}}"#).as_bytes(),
            vane_model::Format::Json,
        )
        .unwrap();
        let snapshot = vane_model::validate(spec).unwrap();
        let (encoded, hash) = snapshot.encode_and_hash();
        VersionRecord {
            candidate: None,
            group: "edge".into(),
            version,
            hash: hash.to_hex(),
            message: String::new(),
            author: String::new(),
            created_at_unix_ms: 0,
            rollback_of: None,
            snapshot: Bytes::from(encoded),
        }
    }

    #[test]
    fn a_stored_body_verifies_and_one_changed_byte_does_not() {
        let good = record(2, "MARKER-abc");
        assert_eq!(verify(&good), Ok(()));

        let mut bytes = good.snapshot.to_vec();
        let at = bytes
            .windows(3)
            .position(|w| w == b"abc")
            .expect("the marker is in the body");
        bytes[at] = b'x';
        let flipped = VersionRecord {
            snapshot: Bytes::from(bytes),
            ..good.clone()
        };
        let err = verify(&flipped).unwrap_err();
        assert_eq!((err.group.as_str(), err.version), ("edge", 2));
        let text = err.to_string();
        assert!(
            text.starts_with(r#"version 2 of group "edge" is corrupt: its content hashes to "#),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("not the recorded {}", good.hash)),
            "{text}"
        );

        let garbage = VersionRecord {
            snapshot: Bytes::from_static(&[0xff, 0xff, 0xff]),
            ..good
        };
        let err = verify(&garbage).unwrap_err();
        assert!(
            err.detail.starts_with("its content does not decode"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_head_lasts_until_a_newer_version_supersedes_it() {
        let heads = CorruptHeads::default();
        let corrupt = |v| Corrupt::unreadable("edge", v, "x");
        // An old version found corrupt while a newer one is served: history only.
        heads.found(corrupt(1), 2);
        assert_eq!(heads.heads(), vec![]);
        assert!(heads.is_known("edge", 1));
        // The newest stored version: the group is degraded.
        heads.found(corrupt(3), 2);
        heads.found(corrupt(1), 0);
        assert_eq!(heads.head("edge").map(|c| c.version), Some(3));
        // Publishing an older or equal version changes nothing; a newer one heals.
        heads.superseded("edge", 3);
        assert_eq!(heads.heads().len(), 1);
        heads.superseded("edge", 4);
        assert_eq!(heads.heads(), vec![]);
        assert!(heads.is_known("edge", 3));
    }
}
