//! Retention on etcd: removes the version records a [`Retention`] lets go,
//! counts them under `pruned/<group>`, then deletes the bodies no remaining
//! version refers to.
//!
//! Any replica may run a pass at any time, also several at once: a group's
//! records go in transactions that first compare that each record still
//! exists and that the group's counter is the one read (a replica that lost
//! the race leaves the group to the next pass), so nothing is counted
//! twice. Bodies are deleted only in a transaction that compares that no
//! head changed since the versions were read, so a body a new push refers
//! to is never removed; a multi-chunk push racing the deletion fails its own
//! "every chunk exists" compare and says so.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use vane_store::{Pinned, PruneReport, Retention, StoreError, now_unix_ms};

use crate::layout::{decode_head, decode_version};
use crate::store::EtcdStore;

/// Records deleted per transaction (each also has its own compare).
const PER_TXN: usize = 30;

/// One stored version as retention sees it.
struct Seen {
    version: u64,
    created_at_unix_ms: i64,
    body: Option<String>,
}

impl EtcdStore {
    /// See [`vane_store::Store::prune`].
    pub(crate) async fn prune_versions(
        &self,
        retention: Retention,
        pinned: &Pinned,
    ) -> Result<PruneReport, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        // The heads first: their revision guards the body deletion.
        let heads_prefix = sh.keys.heads();
        let heads_resp = sh.read_prefix(&heads_prefix).await?;
        let read_revision = heads_resp.header().map_or(0, |h| h.revision());
        let mut heads = BTreeMap::new();
        for kv in heads_resp.kvs() {
            let Some(group) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&heads_prefix))
            else {
                continue;
            };
            heads.insert(group.to_owned(), decode_head(group, kv.value())?.version);
        }

        let versions_resp = sh.read_prefix(&sh.keys.versions()).await?;
        let mut groups: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
        for kv in versions_resp.kvs() {
            let Some((group, version)) = sh.keys.parse_version(kv.key()) else {
                continue;
            };
            // A record that does not decode stays for `vane-control check`.
            let Ok(stored) = decode_version(&group, version, kv.value()) else {
                continue;
            };
            let created_at_unix_ms = stored.info.as_ref().map_or(0, |i| i.created_at_unix_ms);
            groups.entry(group).or_default().push(Seen {
                version,
                created_at_unix_ms,
                body: stored.body.map(|b| b.sha256),
            });
        }

        let now = now_unix_ms();
        let mut report = PruneReport::default();
        let mut referenced: BTreeSet<String> = BTreeSet::new();
        for (group, mut seen) in groups {
            seen.sort_by_key(|s| std::cmp::Reverse(s.version));
            let head = heads.get(&group).copied().unwrap_or(0);
            let keep = pinned.get(&group);
            let mut doomed = Vec::new();
            let mut doomed_bodies = Vec::new();
            for (rank, s) in (0u64..).zip(&seen) {
                let removable = head > 0
                    && s.version < head
                    && !keep.is_some_and(|k| k.contains(&s.version))
                    && retention.removes(rank, s.created_at_unix_ms, now);
                if removable {
                    doomed.push(s.version);
                    doomed_bodies.extend(s.body.clone());
                } else if let Some(sha) = &s.body {
                    referenced.insert(sha.clone());
                }
            }
            let removed = self.remove_versions(&group, &doomed).await?;
            if removed < doomed.len() as u64 {
                // Some records stay (another replica raced): so do their bodies.
                referenced.extend(doomed_bodies);
            }
            if removed > 0 {
                report.versions += removed;
                report.groups += 1;
            }
        }
        if report.versions > 0 {
            self.remove_unreferenced_bodies(&referenced, read_revision)
                .await?;
        }
        Ok(report)
    }

    /// How many versions of `group` retention removed.
    pub(crate) async fn pruned_count(&self, group: &str) -> Result<u64, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        Ok(self.read_counter(group).await?.0)
    }

    async fn read_counter(&self, group: &str) -> Result<(u64, i64), StoreError> {
        let sh = &self.shared;
        let key = sh.keys.pruned(group);
        let resp = sh
            .call(sh.deadline(), |mut kv| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|f| sh.read_error(f))?;
        match resp.kvs().first() {
            None => Ok((0, 0)),
            Some(kv) => {
                let count = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "group {group:?}: pruned count is not a number"
                        ))
                    })?;
                Ok((count, kv.mod_revision()))
            }
        }
    }

    /// Deletes `doomed` records of `group` and adds them to its counter;
    /// returns how many this replica removed.
    async fn remove_versions(&self, group: &str, doomed: &[u64]) -> Result<u64, StoreError> {
        let sh = &self.shared;
        let mut removed = 0;
        for chunk in doomed.chunks(PER_TXN) {
            let (count, revision) = self.read_counter(group).await?;
            let counter = sh.keys.pruned(group);
            let mut compares: Vec<Compare> = chunk
                .iter()
                .map(|v| Compare::version(sh.keys.version(group, *v), CompareOp::Greater, 0))
                .collect();
            compares.push(Compare::mod_revision(
                counter.clone(),
                CompareOp::Equal,
                revision,
            ));
            let mut ops: Vec<TxnOp> = chunk
                .iter()
                .map(|v| TxnOp::delete(sh.keys.version(group, *v), None))
                .collect();
            let total = count.saturating_add(chunk.len() as u64);
            ops.push(TxnOp::put(counter, total.to_string(), None));
            let resp = sh
                .call(sh.deadline(), |mut kv| {
                    let txn = Txn::new().when(compares.clone()).and_then(ops.clone());
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|f| sh.push_error(f, true))?;
            if !resp.succeeded() {
                tracing::debug!(
                    group,
                    "another replica is pruning this group; left to the next pass"
                );
                break;
            }
            removed += chunk.len() as u64;
        }
        Ok(removed)
    }

    /// Deletes every body not in `referenced`, unless a head moved after
    /// `read_revision` (then the next pass does it).
    async fn remove_unreferenced_bodies(
        &self,
        referenced: &BTreeSet<String>,
        read_revision: i64,
    ) -> Result<(), StoreError> {
        let sh = &self.shared;
        let blobs_prefix = sh.keys.blobs();
        let resp = sh
            .call(sh.deadline(), |mut kv| {
                let prefix = blobs_prefix.clone();
                let options = GetOptions::new().with_prefix().with_keys_only();
                async move { kv.get(prefix, Some(options)).await }
            })
            .await
            .map_err(|f| sh.read_error(f))?;
        let mut unreferenced = BTreeSet::new();
        for kv in resp.kvs() {
            let Some(sha) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&blobs_prefix))
                .and_then(|rest| rest.split('/').next())
            else {
                continue;
            };
            if !referenced.contains(sha) {
                unreferenced.insert(sha.to_owned());
            }
        }
        let unreferenced: Vec<String> = unreferenced.into_iter().collect();
        for chunk in unreferenced.chunks(PER_TXN) {
            let guard = Compare::mod_revision(sh.keys.heads(), CompareOp::Less, read_revision + 1)
                .with_prefix();
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|sha| {
                    TxnOp::delete(
                        sh.keys.blob(sha),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )
                })
                .collect();
            let resp = sh
                .call(sh.deadline(), |mut kv| {
                    let txn = Txn::new().when([guard.clone()]).and_then(ops.clone());
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|f| sh.push_error(f, true))?;
            if !resp.succeeded() {
                tracing::debug!("a push landed while bodies were collected; left to the next pass");
                break;
            }
        }
        Ok(())
    }
}
