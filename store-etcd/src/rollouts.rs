//! Rollout records on etcd: one key per group, `rollouts/<group>`, whose
//! `mod_revision` is the record's revision. Written compare-and-set on that
//! revision, alone ([`EtcdStore::write_rollout`]) or in the transaction of
//! the push that creates a rollout's version; a plain push reads the key
//! with the head, is refused while the record is active, and commits only
//! if the key's `mod_revision` is still the one it read.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, KeyValue, KvClient, Txn, TxnOp};
use prost::Message as _;
use tokio::time::Instant;
use vane_store::{RolloutPut, RolloutRecord, StoreError};

use crate::failure::*;
use crate::layout::*;
use crate::shared::Shared;
use crate::store::EtcdStore;

/// The record stored at `kv` (a `rollouts/<group>` key) and the id of the
/// write that stored it.
pub(crate) fn decode_rollout(
    group: &str,
    kv: &KeyValue,
) -> Result<(RolloutRecord, String), StoreError> {
    let stored = StoredRollout::decode(kv.value()).map_err(|e| {
        StoreError::Corrupt(format!(
            "group {group:?}: rollout record does not decode: {e}"
        ))
    })?;
    let record = RolloutRecord {
        group: group.to_owned(),
        id: stored.id,
        active: stored.active,
        body: stored.body,
        revision: revision_of(kv),
    };
    Ok((record, stored.write_id))
}

/// The record's revision: the key's `mod_revision` (0: no key).
pub(crate) fn revision_of(kv: &KeyValue) -> u64 {
    u64::try_from(kv.mod_revision()).unwrap_or(0)
}

/// Whether a push to `group` carrying `put` (`None`: a plain push) may go
/// on, given the record read with the head ([`RolloutPut::check`]). The
/// commit then compares the key against what was read.
pub(crate) fn check_push(
    group: &str,
    put: Option<&RolloutPut>,
    current: Option<&RolloutRecord>,
) -> Result<(), StoreError> {
    RolloutPut::check(group, put, current)
}

/// The compare a commit makes on the record key: its `mod_revision` is
/// `revision` (0 also holds for an absent key). A revision beyond `i64`
/// compares against -1, which no key has.
pub(crate) fn unmoved(key: &str, revision: u64) -> Compare {
    Compare::mod_revision(
        key.to_owned(),
        CompareOp::Equal,
        i64::try_from(revision).unwrap_or(-1),
    )
}

/// The put of `put` as the group's record.
pub(crate) fn put_op(key: &str, put: &RolloutPut, write_id: &str) -> TxnOp {
    let stored = StoredRollout {
        id: put.id.clone(),
        active: put.active,
        body: put.body.clone(),
        write_id: write_id.to_owned(),
    };
    TxnOp::put(key.to_owned(), stored.encode_to_vec(), None)
}

/// The error of a record write that failed; `sent` says whether a commit
/// may have reached etcd.
fn write_error(sh: &Shared, f: Failure, sent: bool) -> StoreError {
    let outcome = if sent {
        "the rollout record may or may not have been written"
    } else {
        "nothing was written"
    };
    match f {
        Failure::TimedOut(last) => StoreError::Degraded(format!(
            "{}; {outcome}",
            sh.unreachable(sh.config.request_timeout, last.as_deref())
        )),
        Failure::Refused(e) => {
            StoreError::Io(format!("etcd refused the rollout record write: {e}"))
        }
        Failure::Rejected(reason) => {
            StoreError::Degraded(format!("{}; {outcome}", sh.rejected(&reason)))
        }
    }
}

impl EtcdStore {
    /// The group's record, if any.
    pub(crate) async fn read_rollout(
        &self,
        group: &str,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        check_group(group)?;
        let key = sh.keys.rollout(group);
        let resp = sh
            .call(sh.deadline(), |mut kv| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|f| sh.read_error(f))?;
        resp.kvs()
            .first()
            .map(|kv| decode_rollout(group, kv).map(|(record, _)| record))
            .transpose()
    }

    /// Every group's record, sorted by group.
    pub(crate) async fn read_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        let prefix = sh.keys.rollouts();
        let resp = sh.read_prefix(&prefix).await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let group = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
                .ok_or_else(|| StoreError::Corrupt("a rollout key is not UTF-8".into()))?;
            out.push(decode_rollout(group, kv)?.0);
        }
        out.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(out)
    }

    /// Writes the group's record if its revision is still
    /// `put.expected_revision`. A commit etcd did not answer is retried
    /// with the same compare until the deadline: if the first one landed,
    /// the retry's compare fails and the record it reads back carries this
    /// write's id, which is success.
    pub(crate) async fn write_rollout(
        &self,
        group: &str,
        put: RolloutPut,
    ) -> Result<RolloutRecord, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        check_group(group)?;
        let key = sh.keys.rollout(group);
        let write_id = format!("{:032x}", rand::random::<u128>());
        let txn = Txn::new()
            .when(vec![unmoved(&key, put.expected_revision)])
            .and_then(vec![put_op(&key, &put, &write_id)])
            .or_else(vec![TxnOp::get(key.clone(), None)]);
        let deadline = sh.deadline();
        let mut attempts = 0u32;
        loop {
            let mut once = |mut kv: KvClient| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            };
            match sh.call_once(deadline, &mut once).await {
                Ok(resp) if resp.succeeded() => {
                    let revision = resp.header().map_or(0, |h| h.revision());
                    return Ok(RolloutRecord {
                        group: group.to_owned(),
                        id: put.id,
                        active: put.active,
                        body: put.body,
                        revision: u64::try_from(revision).unwrap_or(0),
                    });
                }
                Ok(resp) => {
                    let current = txn_get(&resp.op_responses(), 0)
                        .map(|kv| decode_rollout(group, kv))
                        .transpose()?;
                    return match current {
                        Some((record, id)) if id == write_id => Ok(record),
                        current => Err(StoreError::RolloutMoved {
                            group: group.to_owned(),
                            expected: put.expected_revision,
                            actual: current.map_or(0, |(record, _)| record.revision),
                        }),
                    };
                }
                Err(Failure::TimedOut(last)) => {
                    attempts += 1;
                    if Instant::now() >= deadline {
                        return Err(write_error(sh, Failure::TimedOut(last), true));
                    }
                    tracing::debug!(group, error = ?last, "rollout record write unanswered; retrying");
                    let pause = backoff(attempts, Duration::from_millis(500))
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
                Err(failure) => return Err(write_error(sh, failure, attempts > 0)),
            }
        }
    }
}
