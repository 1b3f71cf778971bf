//! Deleting a group on etcd: one compare-and-set transaction replaces the
//! head with a tombstone (the same key, marked deleted, keeping the last
//! version) and removes the group's version records and retention counter.
//! Keeping the head key is what makes numbers survive the delete on every
//! replica and across restarts: the next push of the group compares against
//! it and continues at its version + 1. Bodies of the removed versions are
//! collected by the next retention pass that removes anything.

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use prost::Message as _;
use vane_store::{DeleteGroup, Deleted, StoreError};

use crate::layout::*;
use crate::rollouts::{check_push, decode_rollout, put_op, unmoved};
use crate::store::EtcdStore;

impl EtcdStore {
    /// A delete, its group's lock held.
    pub(crate) async fn delete_locked(&self, delete: DeleteGroup) -> Result<Deleted, StoreError> {
        let sh = &self.shared;
        let group = delete.group.as_str();
        let deadline = sh.deadline();
        let delete_id = format!("delete-{:032x}", rand::random::<u128>());
        let head_key = sh.keys.head(group);
        let rollout_key = sh.keys.rollout(group);
        let versions_prefix = sh.keys.versions_of(group);
        // Versions counted by the round whose commit went out unanswered.
        let mut counted: Option<u64> = None;
        // The head the first round saw: later rounds delete that version
        // or nothing. A commit that went out unanswered may be followed by
        // a push through another replica before the re-read, and the
        // operator never saw that newer version: deleting it would be a
        // surprise, so it is a conflict instead (as with --expect-version).
        let mut expected_version = delete.expected_version;
        for _ in 0..MAX_CAS_ROUNDS {
            let ops = vec![
                TxnOp::get(head_key.clone(), None),
                TxnOp::get(rollout_key.clone(), None),
                TxnOp::get(
                    versions_prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            ];
            let read = sh
                .call(deadline, |mut kv| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|f| sh.read_error(f))?;
            let responses = read.op_responses();
            let head = match txn_get(&responses, 0) {
                Some(kv) => Some((decode_head(group, kv.value())?, kv.mod_revision())),
                None => None,
            };
            let Some((head, head_revision)) = head else {
                return Ok(Deleted::Absent);
            };
            if head.deleted {
                return Ok(match counted {
                    Some(versions) if head.push_id == delete_id => Deleted::Deleted {
                        last_version: head.version,
                        versions,
                    },
                    _ => Deleted::Absent,
                });
            }
            if let Some(expected) = expected_version
                && expected != head.version
            {
                return Err(StoreError::Conflict {
                    group: group.to_owned(),
                    expected,
                    actual: head.version,
                });
            }
            let rollout = txn_get(&responses, 1)
                .map(|kv| decode_rollout(group, kv).map(|(record, _)| record))
                .transpose()?;
            check_push(group, delete.rollout.as_ref(), rollout.as_ref())?;
            let versions = match responses.get(2) {
                Some(TxnOpResponse::Get(get)) => u64::try_from(get.count()).unwrap_or(0),
                _ => 0,
            };
            let tombstone = HeadValue {
                version: head.version,
                hash: String::new(),
                push_id: delete_id.clone(),
                deleted: true,
            };
            let mut writes = vec![
                TxnOp::put(head_key.clone(), tombstone.encode_to_vec(), None),
                TxnOp::delete(
                    versions_prefix.clone(),
                    Some(DeleteOptions::new().with_prefix()),
                ),
                TxnOp::delete(sh.keys.pruned(group), None),
            ];
            if let Some(put) = &delete.rollout {
                writes.push(put_op(&rollout_key, put, &delete_id));
            }
            let compares = vec![
                Compare::mod_revision(head_key.clone(), CompareOp::Equal, head_revision),
                unmoved(&rollout_key, rollout.as_ref().map_or(0, |r| r.revision)),
            ];
            counted = Some(versions);
            expected_version = Some(head.version);
            let committed = sh
                .call(deadline, |mut kv| {
                    let txn = Txn::new().when(compares.clone()).and_then(writes.clone());
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|f| sh.push_error(f, true))?;
            if committed.succeeded() {
                tracing::info!(
                    group,
                    last_version = head.version,
                    versions,
                    "group deleted"
                );
                return Ok(Deleted::Deleted {
                    last_version: head.version,
                    versions,
                });
            }
            // A push through another replica (or a retried commit of ours)
            // moved the head or the rollout record: look again (a moved
            // head is then a conflict, see `expected_version`).
        }
        Err(StoreError::Io(format!(
            "group {group:?}: lost {MAX_CAS_ROUNDS} compare-and-set rounds in a row to \
             pushes through other replicas; nothing was deleted, try again"
        )))
    }
}
