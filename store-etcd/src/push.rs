//! A push on etcd: compare-and-set on the group's head and its rollout
//! record, bodies written content-addressed in chunks, and an outcome that
//! is never unknown (a commit etcd did not answer is looked for by its push
//! id).

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};
use prost::Message as _;
use tokio::time::Instant;
use vane_proto as pb;
use vane_store::{NewVersion, PushOutcome, StoreError, VersionRecord, now_unix_ms};

use crate::failure::*;
use crate::layout::*;
use crate::rollouts::{check_push, decode_rollout, put_op, revision_of, unmoved};
use crate::store::EtcdStore;

impl EtcdStore {
    /// A push, its group's lock held. The body is kept for this replica's
    /// feed until it reports the version (the feed then does not read it
    /// back from etcd); a push that stored nothing drops it. One whose
    /// outcome is an error keeps it: it may have been stored.
    pub(crate) async fn push_locked(&self, new: NewVersion) -> Result<PushOutcome, StoreError> {
        let push_id = format!("{:032x}", rand::random::<u128>());
        self.shared
            .remember_own_body(&push_id, new.snapshot.clone());
        let outcome = self.push_as(new, &push_id).await;
        if matches!(
            outcome,
            Ok(PushOutcome::Unchanged(_))
                | Err(StoreError::Conflict { .. }
                    | StoreError::RolloutActive { .. }
                    | StoreError::RolloutMoved { .. })
        ) {
            self.shared.take_own_body(&push_id);
        }
        outcome
    }

    async fn push_as(&self, new: NewVersion, push_id: &str) -> Result<PushOutcome, StoreError> {
        let sh = &self.shared;
        let keys = &sh.keys;
        let group = new.group.as_str();
        let deadline = sh.deadline();
        let now = now_unix_ms();
        let sha = sha256_hex(&new.snapshot);
        let chunks: Vec<Bytes> = if new.snapshot.is_empty() {
            vec![Bytes::new()]
        } else {
            (0..new.snapshot.len())
                .step_by(CHUNK_BYTES)
                .map(|at| {
                    new.snapshot
                        .slice(at..(at + CHUNK_BYTES).min(new.snapshot.len()))
                })
                .collect()
        };
        let body = BodyRef {
            sha256: sha.clone(),
            size: new.snapshot.len() as u64,
            chunks: u32::try_from(chunks.len())
                .map_err(|_| StoreError::Io("snapshot: too many chunks".into()))?,
        };
        // A large body goes first, piece by piece: the head that points to
        // it is written only once every piece is there. So does the body of
        // a push that writes a rollout record, which would otherwise share
        // etcd's request limit with it.
        let chunks_first = chunks.len() > 1 || new.rollout.is_some();
        if chunks_first {
            for (i, chunk) in chunks.iter().enumerate() {
                let key = keys.chunk(&sha, i);
                sh.call(deadline, |mut kv| {
                    let (key, chunk) = (key.clone(), chunk.to_vec());
                    async move { kv.put(key, chunk, None).await }
                })
                .await
                .map_err(|f| sh.push_error(f, false))?;
            }
        }
        let created = |version: u64| VersionRecord {
            candidate: new.candidate.clone(),
            group: group.to_owned(),
            version,
            hash: new.hash.clone(),
            message: new.message.clone(),
            author: new.author.clone(),
            created_at_unix_ms: now,
            rollback_of: new.rollback_of,
            snapshot: new.snapshot.clone(),
        };
        let head_key = keys.head(group);
        let rollout_key = keys.rollout(group);
        // Versions that commits without an answer may have created.
        let mut unanswered: Vec<u64> = Vec::new();
        let mut sent = false;
        let mut rounds = 0u32;
        loop {
            // The head, the rollout record and the versions unanswered
            // commits aimed at, at one revision.
            let mut ops = vec![
                TxnOp::get(head_key.clone(), None),
                TxnOp::get(rollout_key.clone(), None),
            ];
            ops.extend(
                unanswered
                    .iter()
                    .map(|v| TxnOp::get(keys.version(group, *v), None)),
            );
            let read = sh
                .call(deadline, |mut kv| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|f| sh.push_error(f, sent))?;
            let responses = read.op_responses();
            let head = match txn_get(&responses, 0) {
                Some(kv) => Some((decode_head(group, kv.value())?, kv.mod_revision())),
                None => None,
            };
            if let Some((h, _)) = &head
                && h.push_id == push_id
            {
                return Ok(PushOutcome::Created(created(h.version)));
            }
            let mut still_open = Vec::new();
            for (i, version) in unanswered.iter().enumerate() {
                match txn_get(&responses, i + 2) {
                    Some(kv) => {
                        let stored = decode_version(group, *version, kv.value())?;
                        if stored.push_id == push_id {
                            return Ok(PushOutcome::Created(created(*version)));
                        }
                        // Another push took that number: ours did not land there.
                    }
                    None => still_open.push(*version),
                }
            }
            unanswered = still_open;

            // A deleted group's head is its tombstone: absent to the
            // compare-and-set, but its number stays taken.
            let head_version = head
                .as_ref()
                .filter(|(h, _)| !h.deleted)
                .map_or(0, |(h, _)| h.version);
            let last_version = head.as_ref().map_or(0, |(h, _)| h.version);
            if let Some(expected) = new.expected_version
                && expected != head_version
            {
                return Err(StoreError::Conflict {
                    group: group.to_owned(),
                    expected,
                    actual: head_version,
                });
            }
            let rollout = txn_get(&responses, 1)
                .map(|kv| decode_rollout(group, kv).map(|(record, _)| record))
                .transpose()?;
            check_push(group, new.rollout.as_ref(), rollout.as_ref())?;
            let rollout_revision = rollout.as_ref().map_or(0, |r| r.revision);
            if let Some((h, _)) = &head
                && !h.deleted
                && h.hash == new.hash
            {
                let current = sh
                    .read_record(group, h.version, deadline)
                    .await?
                    .ok_or_else(|| head_without_version(group, h.version))?;
                return Ok(PushOutcome::Unchanged(current));
            }
            let version = last_version.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt(format!("group {group:?}: version space exhausted"))
            })?;

            let stored = StoredVersion {
                info: Some(pb::VersionInfo {
                    rollout_id: new
                        .candidate
                        .as_ref()
                        .map(|c| c.rollout_id.clone())
                        .unwrap_or_default(),
                    rollout_stable_version: new.candidate.as_ref().map_or(0, |c| c.stable_version),
                    version,
                    hash: new.hash.clone(),
                    message: new.message.clone(),
                    created_at_unix_ms: now,
                    author: new.author.clone(),
                    rollback_of: new.rollback_of.unwrap_or(0),
                    size_bytes: new.snapshot.len() as u64,
                }),
                push_id: push_id.to_owned(),
                body: Some(body.clone()),
            };
            let head_value = HeadValue {
                version,
                hash: new.hash.clone(),
                push_id: push_id.to_owned(),
                deleted: false,
            };
            // The record must still be the one checked above: a plain push
            // never lands after a rollout started, nor a record write after
            // another.
            let mut compares = vec![
                match &head {
                    Some((_, mod_revision)) => {
                        Compare::mod_revision(head_key.clone(), CompareOp::Equal, *mod_revision)
                    }
                    None => Compare::create_revision(head_key.clone(), CompareOp::Equal, 0),
                },
                unmoved(&rollout_key, rollout_revision),
            ];
            let mut puts = vec![
                TxnOp::put(head_key.clone(), head_value.encode_to_vec(), None),
                TxnOp::put(keys.version(group, version), stored.encode_to_vec(), None),
            ];
            if let Some(put) = &new.rollout {
                puts.push(put_op(&rollout_key, put, push_id));
            }
            if !chunks_first {
                puts.push(TxnOp::put(keys.chunk(&sha, 0), chunks[0].to_vec(), None));
            } else {
                compares.extend(
                    (0..chunks.len())
                        .map(|i| Compare::version(keys.chunk(&sha, i), CompareOp::Greater, 0)),
                );
            }
            let txn = Txn::new().when(compares).and_then(puts).or_else(vec![
                TxnOp::get(head_key.clone(), None),
                TxnOp::get(rollout_key.clone(), None),
            ]);
            let mut once = |mut kv: KvClient| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            };
            match sh.call_once(deadline, &mut once).await {
                Ok(resp) if resp.succeeded() => {
                    return Ok(PushOutcome::Created(created(version)));
                }
                Ok(resp) => {
                    let responses = resp.op_responses();
                    let now_head = txn_get(&responses, 0).map(|kv| kv.mod_revision());
                    let now_rollout = txn_get(&responses, 1).map_or(0, revision_of);
                    if now_head == head.as_ref().map(|(_, r)| *r) && now_rollout == rollout_revision
                    {
                        // Neither the head nor the record moved, so a chunk
                        // compare failed.
                        return Err(StoreError::Io(format!(
                            "group {group:?}: a chunk of body {sha} vanished before the commit"
                        )));
                    }
                    rounds += 1;
                    if rounds >= MAX_CAS_ROUNDS {
                        // Not `Unavailable`: vanectl would call this
                        // server unreachable.
                        return Err(StoreError::Io(format!(
                            "group {group:?}: lost {rounds} compare-and-set rounds in a row to \
                             pushes through other replicas; nothing was stored, try again"
                        )));
                    }
                    tracing::debug!(
                        group,
                        version,
                        "another replica moved the head or the rollout record; retrying"
                    );
                }
                Err(Failure::TimedOut(last)) => {
                    sent = true;
                    unanswered.push(version);
                    if Instant::now() >= deadline {
                        return Err(sh.push_error(Failure::TimedOut(last), true));
                    }
                    tracing::debug!(group, version, error = ?last, "commit unanswered; checking");
                    let pause = backoff(unanswered.len() as u32, Duration::from_millis(500))
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
                Err(failure) => return Err(sh.push_error(failure, sent)),
            }
        }
    }
}
