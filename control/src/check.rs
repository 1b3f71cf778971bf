//! `vane-control check`: reads every version of every group from a store
//! and checks each body against its hash, without serving anything. The
//! binary prints one line per corrupt version and exits 1 when there is
//! any.

use vane_store::{Store, StoreError};

use crate::integrity::{Corrupt, verify};

/// What a check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Groups read.
    pub groups: usize,
    /// Versions read and verified (corrupt ones included).
    pub versions: u64,
    /// The corrupt versions, by group then version.
    pub corrupt: Vec<Corrupt>,
}

impl Report {
    /// True when every version matched its hash.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
    }
}

/// Reads every version of every group of `store` and verifies it. A version
/// the store cannot decode, or lists without content, counts as corrupt; an
/// error reaching the store (I/O, etcd unreachable) ends the check.
pub async fn check(store: &dyn Store) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for group in store.groups().await? {
        report.groups += 1;
        for meta in store.history(&group, 0).await? {
            report.versions += 1;
            let found = match store.get(&group, Some(meta.version)).await {
                Ok(Some(record)) => verify(&record).err(),
                Ok(None) => Some(Corrupt::unreadable(
                    &group,
                    meta.version,
                    "listed in the history, but its record is missing",
                )),
                Err(StoreError::Corrupt(detail)) => {
                    Some(Corrupt::unreadable(&group, meta.version, detail))
                }
                Err(e) => return Err(e),
            };
            if let Some(mut corrupt) = found {
                if corrupt.hash.is_empty() {
                    corrupt.hash = meta.hash;
                }
                report.corrupt.push(corrupt);
            }
        }
    }
    report
        .corrupt
        .sort_by(|a, b| (&a.group, a.version).cmp(&(&b.group, b.version)));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use vane_store::{NewVersion, RedbStore};

    use super::*;

    fn version(group: &str, marker: &str) -> NewVersion {
        let spec = vane_model::parse_file(
            format!(r#"{{"values": {{"marker": "{marker}"}}}}"#).as_bytes(),
            vane_model::Format::Json,
        )
        .unwrap();
        let (encoded, hash) = vane_model::validate(spec).unwrap().encode_and_hash();
        NewVersion {
            candidate: None,
            rollout: None,
            group: group.into(),
            snapshot: Bytes::from(encoded),
            hash: hash.to_hex(),
            message: String::new(),
            author: String::new(),
            rollback_of: None,
            expected_version: None,
        }
    }

    #[tokio::test]
    async fn a_clean_store_and_one_with_a_version_whose_hash_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).await.unwrap();
        store.push(version("edge", "one")).await.unwrap();
        store.push(version("edge", "two")).await.unwrap();
        store.push(version("api", "one")).await.unwrap();
        let report = check(&store).await.unwrap();
        assert_eq!((report.groups, report.versions), (2, 3));
        assert!(report.is_clean(), "{report:?}");

        // Content stored under another content's hash (what a changed byte
        // looks like once the record still decodes).
        let mut wrong = version("edge", "three");
        wrong.hash = version("edge", "four").hash;
        store.push(wrong).await.unwrap();
        let report = check(&store).await.unwrap();
        assert_eq!(report.versions, 4);
        let listed: Vec<(&str, u64)> = report
            .corrupt
            .iter()
            .map(|c| (c.group.as_str(), c.version))
            .collect();
        assert_eq!(listed, vec![("edge", 3)]);
        assert!(
            report.corrupt[0]
                .to_string()
                .starts_with(r#"version 3 of group "edge" is corrupt: its content hashes to"#),
            "{}",
            report.corrupt[0]
        );
        store.close().await.unwrap();
    }
}
