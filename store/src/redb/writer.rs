//! The embedded store's one writer thread: group commit of pushes, the
//! retention pass, and healing after a failed write.
//!
//! # Group commit
//! Pushes reach the thread over a bounded channel with a oneshot for the
//! answer; it takes whatever pushes are queued (up to [`MAX_BATCH`] or
//! [`MAX_BATCH_BYTES`]), applies them in arrival order in one write
//! transaction, each checked against the heads as the transaction sees
//! them, commits once (one fsync for the whole batch) and then answers
//! every request. A conflicting or unchanged request writes nothing and does
//! not affect the others; a storage error fails the whole batch, which then
//! stores nothing.
//!
//! # Healing ([`State`])
//! A write that fails with an I/O error (a full disk, EIO) leaves redb
//! refusing every later operation until the file is closed and opened again.
//! The writer then reopens the file at once (so reads keep working), marks
//! the store degraded with the error as the reason, and while degraded
//! proves the file writable again with a probe write after each backoff
//! delay (100 ms doubling to 2 s): the first probe or push that commits
//! makes the store writable again. Pushes that arrive meanwhile are tried
//! as usual (and fail fast with the reason if the disk is still full).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, Table};
use tokio::sync::{mpsc, oneshot};
use vane_backoff::{ExponentialBackoff, Jitter};

use super::handle::Handle;
use super::prune;
use super::records::{
    AUDIT, HEADS, META, PROBE_KEY, PRUNED, TOMBSTONES, VERSIONS, encode_record,
    head_without_version, read_info, read_record, storage,
};
use super::rollouts::{self, ROLLOUTS};
use crate::contract::{
    AUDIT_RETENTION, AuditRecord, DeleteGroup, Deleted, NewVersion, PruneReport, PushOutcome,
    Retention, RolloutPut, RolloutRecord, VersionRecord, encode_audit, now_unix_ms,
};
use crate::error::StoreError;

/// Most pushes committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Once a batch holds this many snapshot bytes it is committed without
/// waiting for more, so one transaction never grows without bound.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Free space the probe wants on the file system before it writes: a disk
/// with less is still full for any push worth the name.
pub(super) const PROBE_HEADROOM_BYTES: u64 = 1024 * 1024;
/// First and longest pause between two probes while degraded.
pub(super) const PROBE_MIN: Duration = Duration::from_millis(100);
pub(super) const PROBE_MAX: Duration = Duration::from_secs(2);

/// What the writer thread is asked to do.
pub(super) enum Request {
    Push {
        new: NewVersion,
        reply: oneshot::Sender<Result<PushOutcome, StoreError>>,
    },
    Audit {
        entries: Vec<AuditRecord>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Prune {
        retention: Retention,
        pinned: prune::Pinned,
        reply: oneshot::Sender<Result<PruneReport, StoreError>>,
    },
    PutRollout {
        group: String,
        put: RolloutPut,
        reply: oneshot::Sender<Result<RolloutRecord, StoreError>>,
    },
    Delete {
        delete: DeleteGroup,
        reply: oneshot::Sender<Result<Deleted, StoreError>>,
    },
}

/// Whether the file accepts writes.
///
/// ```text
///   Writable ──write fails (I/O)──▶ Degraded ──probe/push fails──▶ Degraded (longer wait)
///      ▲                               │
///      └──────probe/push commits───────┘
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    /// The last write committed (or none failed yet): wait for requests.
    Writable,
    /// The last write failed with `reason`; `failures` probes and pushes
    /// have failed in a row. Wait at most the backoff's delay for a request,
    /// then probe.
    Degraded { reason: String, failures: u32 },
}

impl State {
    /// The state after a write (a batch, a prune or a probe) ended with
    /// `outcome`; `None` for a write that did not touch the file.
    pub(super) fn after(self, outcome: Option<&Result<(), StoreError>>) -> Self {
        match (self, outcome) {
            (state, None) => state,
            (_, Some(Ok(()))) => Self::Writable,
            (Self::Writable, Some(Err(e))) => Self::Degraded {
                reason: e.to_string(),
                failures: 1,
            },
            (Self::Degraded { failures, .. }, Some(Err(e))) => Self::Degraded {
                reason: e.to_string(),
                failures: failures.saturating_add(1),
            },
        }
    }

    /// How long to wait for a request before probing; `None`: forever.
    pub(super) fn wait(&self, backoff: &ExponentialBackoff) -> Option<Duration> {
        match self {
            Self::Writable => None,
            Self::Degraded { failures, .. } => Some(backoff.delay(failures.saturating_sub(1))),
        }
    }

    /// What the store reports while in this state.
    pub(super) fn reason(&self) -> Option<String> {
        match self {
            Self::Writable => None,
            Self::Degraded { reason, .. } => Some(format!("read-only, retrying: {reason}")),
        }
    }
}

/// The writer thread's body: runs until every sender is gone.
pub(super) fn run(handle: &Arc<Handle>, mut rx: mpsc::Receiver<Request>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "store writer cannot start its timer");
            return;
        }
    };
    let backoff = match ExponentialBackoff::new(PROBE_MIN, PROBE_MAX, Jitter::None) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "store writer backoff");
            return;
        }
    };
    let mut state = State::Writable;
    let mut pending: Option<Request> = None;
    loop {
        let next = match pending.take() {
            Some(req) => Some(req),
            None => match state.wait(&backoff) {
                None => match runtime.block_on(rx.recv()) {
                    Some(req) => Some(req),
                    None => break,
                },
                // The timer is made inside the runtime that drives it.
                Some(delay) => {
                    match runtime.block_on(async { tokio::time::timeout(delay, rx.recv()).await }) {
                        Ok(Some(req)) => Some(req),
                        Ok(None) => break,
                        Err(_) => None,
                    }
                }
            },
        };
        let outcome = match next {
            None => Some(probe(handle).map_err(|e| failure(handle.path(), e))),
            Some(Request::Push { new, reply }) => {
                let (outcome, stashed) = push_batch(handle, &mut rx, new, reply);
                pending = stashed;
                outcome
            }
            Some(Request::Audit { entries, reply }) => {
                let result = handle
                    .with_db(|db| append_audit(db, &entries))
                    .map_err(|e| failure(handle.path(), e));
                let _ = reply.send(result.clone());
                Some(result)
            }
            Some(Request::PutRollout { group, put, reply }) => {
                let result = handle
                    .with_db(|db| put_rollout(db, &group, &put))
                    .map_err(|e| failure(handle.path(), e));
                let (answer, outcome) = match result {
                    Ok(Ok(record)) => (Ok(record), Some(Ok(()))),
                    Ok(Err(refused)) => (Err(refused), None),
                    Err(e) => (Err(e.clone()), Some(Err(e))),
                };
                let _ = reply.send(answer);
                outcome
            }
            Some(Request::Delete { delete, reply }) => {
                let result = handle
                    .with_db(|db| delete_group(db, &delete))
                    .map_err(|e| failure(handle.path(), e));
                let (answer, outcome) = match result {
                    Ok(Ok(deleted)) => {
                        let wrote = matches!(deleted, Deleted::Deleted { .. });
                        (Ok(deleted), wrote.then_some(Ok(())))
                    }
                    Ok(Err(refused)) => (Err(refused), None),
                    Err(e) => (Err(e.clone()), Some(Err(e))),
                };
                let _ = reply.send(answer);
                outcome
            }
            Some(Request::Prune {
                retention,
                pinned,
                reply,
            }) => {
                let result = handle
                    .with_db(|db| prune::run(db, &retention, &pinned, now_unix_ms()))
                    .map_err(|e| failure(handle.path(), e));
                match result {
                    Ok(mut pruned) => {
                        pruned.file_bytes = file_len(handle.path());
                        if pruned.should_compact() {
                            compact(handle);
                        }
                        let wrote = pruned.report.versions > 0;
                        let _ = reply.send(Ok(pruned.report));
                        wrote.then_some(Ok(()))
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.clone()));
                        Some(Err(e))
                    }
                }
            }
        };
        let was_writable = state == State::Writable;
        state = state.after(outcome.as_ref());
        match (&state, was_writable) {
            (State::Writable, false) => {
                tracing::info!(path = %handle.path().display(), "store writable again");
                handle.set_degraded(None);
            }
            (State::Writable, true) => {}
            (State::Degraded { reason, failures }, _) => {
                if was_writable || *failures % 20 == 1 {
                    tracing::warn!(path = %handle.path().display(), %reason, failures, "store read-only");
                }
                handle.set_degraded(state.reason());
                // redb refuses everything after an I/O error until reopened.
                if let Err(e) = handle.reopen() {
                    tracing::warn!(error = %e, "reopening the store failed; retrying");
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
}

/// A write's error as the operator reads it: with the file it was for.
fn failure(path: &Path, e: StoreError) -> StoreError {
    match e {
        StoreError::Io(msg) => StoreError::Io(format!("writing {}: {msg}", path.display())),
        other => other,
    }
}

/// Pushes `first` and whatever pushes are queued behind it in one commit.
/// Returns the write's outcome (`None` when nothing needed writing) and a
/// queued request that was not a push, to run next.
fn push_batch(
    handle: &Handle,
    rx: &mut mpsc::Receiver<Request>,
    new: NewVersion,
    reply: oneshot::Sender<Result<PushOutcome, StoreError>>,
) -> (Option<Result<(), StoreError>>, Option<Request>) {
    let mut bytes = new.snapshot.len();
    let mut news = vec![new];
    let mut replies = vec![reply];
    let mut stashed = None;
    while news.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(Request::Push { new, reply }) => {
                bytes += new.snapshot.len();
                news.push(new);
                replies.push(reply);
            }
            Ok(other) => {
                stashed = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    let outcome = match handle.with_db(|db| apply_batch(db, &news)) {
        Ok((outcomes, committed)) => {
            if committed {
                handle.committed();
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The caller may have stopped waiting; the outcome stands.
                let _ = reply.send(outcome);
            }
            committed.then_some(Ok(()))
        }
        Err(e) => {
            let e = failure(handle.path(), e);
            tracing::error!(error = %e, pushes = news.len(), "store commit failed");
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            Some(Err(e))
        }
    };
    (outcome, stashed)
}

/// Proves the file writable: enough free space, then a small commit.
fn probe(handle: &Handle) -> Result<(), StoreError> {
    let dir = handle.path().parent().unwrap_or(Path::new("."));
    match nix::sys::statvfs::statvfs(dir) {
        Ok(fs) => {
            let free = fs.blocks_available().saturating_mul(fs.fragment_size());
            if free < PROBE_HEADROOM_BYTES {
                return Err(StoreError::Io(format!(
                    "No space left on device: {free} bytes free in {}",
                    dir.display()
                )));
            }
        }
        Err(e) => tracing::debug!(error = %e, "statvfs of the data dir"),
    }
    handle.with_db(|db| {
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(PROBE_KEY, u64::try_from(now_unix_ms()).unwrap_or(0))
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    })
}

fn compact(handle: &Handle) {
    let started = std::time::Instant::now();
    let before = file_len(handle.path());
    // Each pass moves what it can; a few give back nearly everything.
    for _ in 0..4 {
        match handle.compact() {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(error = %e, "compacting the store failed");
                return;
            }
        }
    }
    tracing::info!(
        before_bytes = before,
        after_bytes = file_len(handle.path()),
        took_ms = started.elapsed().as_millis() as u64,
        "store compacted"
    );
}

pub(super) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

type BatchOutcome = (Vec<Result<PushOutcome, StoreError>>, bool);

/// Applies a batch in one transaction. The outer error (storage) fails the
/// whole batch, which then stores nothing; the inner results are per push.
/// The flag says whether anything was committed.
fn apply_batch(db: &Database, batch: &[NewVersion]) -> Result<BatchOutcome, StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    // Immediate is redb's default; set it anyway because the store's contract
    // (a push is on disk before it is answered) depends on it.
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let now = now_unix_ms();
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut heads = txn.open_table(HEADS).map_err(storage)?;
        let mut versions = txn.open_table(VERSIONS).map_err(storage)?;
        let mut rollouts = txn.open_table(ROLLOUTS).map_err(storage)?;
        let mut tombstones = txn.open_table(TOMBSTONES).map_err(storage)?;
        for new in batch {
            outcomes.push(apply_one(
                &mut Tables {
                    heads: &mut heads,
                    versions: &mut versions,
                    rollouts: &mut rollouts,
                    tombstones: &mut tombstones,
                },
                new,
                now,
            )?);
        }
    }
    let created = outcomes
        .iter()
        .any(|o| matches!(o, Ok(PushOutcome::Created(_))));
    if created {
        txn.commit().map_err(storage)?;
    } else {
        // Nothing written: skip the fsync.
        txn.abort().map_err(storage)?;
    }
    Ok((outcomes, created))
}

/// The tables a push writes.
struct Tables<'a, 't> {
    heads: &'a mut Table<'t, &'static str, u64>,
    versions: &'a mut Table<'t, (&'static str, u64), &'static [u8]>,
    rollouts: &'a mut Table<'t, &'static str, &'static [u8]>,
    tombstones: &'a mut Table<'t, &'static str, u64>,
}

fn apply_one(
    tables: &mut Tables<'_, '_>,
    new: &NewVersion,
    now: i64,
) -> Result<Result<PushOutcome, StoreError>, StoreError> {
    let Tables {
        heads,
        versions,
        rollouts,
        tombstones,
    } = tables;
    let group = new.group.as_str();
    let head = heads.get(group).map_err(storage)?.map_or(0, |v| v.value());
    // A deleted group's numbers stay taken: its first version after the
    // delete follows the tombstone's.
    let last = match head {
        0 => tombstones
            .get(group)
            .map_err(storage)?
            .map_or(0, |v| v.value()),
        head => head,
    };
    if let Some(expected) = new.expected_version
        && expected != head
    {
        return Ok(Err(StoreError::Conflict {
            group: group.to_owned(),
            expected,
            actual: head,
        }));
    }
    if let Err(refused) = rollouts::check_push(rollouts, group, new.rollout.as_ref())? {
        return Ok(Err(refused));
    }
    if head > 0 {
        // Compare hashes on the metadata alone; copy the head's snapshot out
        // only when it is the answer.
        // A damaged record fails this push only; storage errors fail the batch.
        let info = match read_info(&**versions, group, head) {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(Err(head_without_version(group, head))),
            Err(e @ StoreError::Corrupt(_)) => return Ok(Err(e)),
            Err(e) => return Err(e),
        };
        if info.hash == new.hash {
            return match read_record(&**versions, group, head) {
                Ok(Some(current)) => Ok(Ok(PushOutcome::Unchanged(current))),
                Ok(None) => Ok(Err(head_without_version(group, head))),
                Err(e @ StoreError::Corrupt(_)) => Ok(Err(e)),
                Err(e) => Err(e),
            };
        }
    }
    let Some(version) = last.checked_add(1) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "group {group:?}: version space exhausted"
        ))));
    };
    // Never overwrite: a stored version above the head means the heads table
    // went backwards, and reusing the number would break the contract.
    if versions.get((group, version)).map_err(storage)?.is_some() {
        return Ok(Err(StoreError::Corrupt(format!(
            "group {group:?}: version {version} is stored but the head is {last}"
        ))));
    }
    let record = VersionRecord {
        group: group.to_owned(),
        version,
        hash: new.hash.clone(),
        message: new.message.clone(),
        author: new.author.clone(),
        created_at_unix_ms: now,
        rollback_of: new.rollback_of,
        snapshot: new.snapshot.clone(),
        candidate: new.candidate.clone(),
    };
    if let Some(put) = &new.rollout
        && let Err(refused) = rollouts::put(rollouts, group, put)?
    {
        return Ok(Err(refused));
    }
    versions
        .insert((group, version), encode_record(&record).as_slice())
        .map_err(storage)?;
    heads.insert(group, version).map_err(storage)?;
    if last != head {
        tombstones.remove(group).map_err(storage)?;
    }
    Ok(Ok(PushOutcome::Created(record)))
}

/// Deletes a group in one transaction: its versions, head and retention
/// counter go, its tombstone keeps the last version. The outer error is
/// storage's; the inner a refusal that wrote nothing.
fn delete_group(
    db: &Database,
    delete: &DeleteGroup,
) -> Result<Result<Deleted, StoreError>, StoreError> {
    let group = delete.group.as_str();
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let outcome = {
        let mut heads = txn.open_table(HEADS).map_err(storage)?;
        let mut versions = txn.open_table(VERSIONS).map_err(storage)?;
        let mut rollouts = txn.open_table(ROLLOUTS).map_err(storage)?;
        let mut tombstones = txn.open_table(TOMBSTONES).map_err(storage)?;
        let mut pruned = txn.open_table(PRUNED).map_err(storage)?;
        let head = heads.get(group).map_err(storage)?.map_or(0, |v| v.value());
        if let Some(expected) = delete.expected_version
            && expected != head
        {
            Err(StoreError::Conflict {
                group: group.to_owned(),
                expected,
                actual: head,
            })
        } else if head == 0 {
            Ok(Deleted::Absent)
        } else if let Err(refused) =
            rollouts::check_push(&rollouts, group, delete.rollout.as_ref())?
        {
            Err(refused)
        } else if let Some(Err(refused)) = delete
            .rollout
            .as_ref()
            .map(|put| rollouts::put(&mut rollouts, group, put))
            .transpose()?
        {
            Err(refused)
        } else {
            let mut removed = 0u64;
            versions
                .retain_in((group, 1u64)..=(group, u64::MAX), |_, _| {
                    removed += 1;
                    false
                })
                .map_err(storage)?;
            heads.remove(group).map_err(storage)?;
            pruned.remove(group).map_err(storage)?;
            tombstones.insert(group, head).map_err(storage)?;
            Ok(Deleted::Deleted {
                last_version: head,
                versions: removed,
            })
        }
    };
    if matches!(outcome, Ok(Deleted::Deleted { .. })) {
        txn.commit().map_err(storage)?;
    } else {
        txn.abort().map_err(storage)?;
    }
    Ok(outcome)
}

/// Writes a rollout record on its own (compare-and-set). The outer error
/// is storage's; the inner a refusal that wrote nothing.
fn put_rollout(
    db: &Database,
    group: &str,
    put: &RolloutPut,
) -> Result<Result<RolloutRecord, StoreError>, StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let outcome = {
        let mut table = txn.open_table(ROLLOUTS).map_err(storage)?;
        rollouts::put(&mut table, group, put)?
    };
    if outcome.is_ok() {
        txn.commit().map_err(storage)?;
    } else {
        txn.abort().map_err(storage)?;
    }
    Ok(outcome)
}

/// Appends audit entries and drops the oldest beyond [`AUDIT_RETENTION`].
fn append_audit(db: &redb::Database, entries: &[AuditRecord]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    {
        let mut audit = txn.open_table(AUDIT).map_err(storage)?;
        let next = audit
            .last()
            .map_err(storage)?
            .map_or(1, |(k, _)| k.value() + 1);
        for (seq, entry) in (next..).zip(entries) {
            audit
                .insert(seq, encode_audit(entry).as_slice())
                .map_err(storage)?;
        }
        let kept = audit.len().map_err(storage)?;
        let excess = kept.saturating_sub(AUDIT_RETENTION as u64);
        if excess > 0 {
            let first = audit
                .first()
                .map_err(storage)?
                .map_or(1, |(k, _)| k.value());
            audit
                .retain_in(first..first + excess, |_, _| false)
                .map_err(storage)?;
        }
    }
    txn.commit().map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> ExponentialBackoff {
        ExponentialBackoff::new(PROBE_MIN, PROBE_MAX, Jitter::None).unwrap()
    }

    fn io(msg: &str) -> Result<(), StoreError> {
        Err(StoreError::Io(msg.into()))
    }

    #[test]
    fn a_failed_write_degrades_with_its_reason() {
        let state = State::Writable.after(Some(&io("No space left on device")));
        assert_eq!(
            state,
            State::Degraded {
                reason: "store I/O error: No space left on device".into(),
                failures: 1
            }
        );
        assert_eq!(
            state.reason().unwrap(),
            "read-only, retrying: store I/O error: No space left on device"
        );
        assert_eq!(state.wait(&backoff()), Some(PROBE_MIN));
    }

    #[test]
    fn failing_probes_wait_longer_up_to_the_cap() {
        let mut state = State::Writable;
        let mut waits = Vec::new();
        for _ in 0..8 {
            state = state.after(Some(&io("full")));
            waits.push(state.wait(&backoff()).unwrap());
        }
        assert_eq!(waits[0], PROBE_MIN);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), PROBE_MAX);
    }

    #[test]
    fn a_commit_heals_and_no_write_changes_nothing() {
        let degraded = State::Writable.after(Some(&io("full")));
        assert_eq!(degraded.clone().after(None), degraded);
        let healed = degraded.after(Some(&Ok(())));
        assert_eq!(healed, State::Writable);
        assert_eq!(healed.wait(&backoff()), None);
        assert_eq!(healed.reason(), None);
    }
}
