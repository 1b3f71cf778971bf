//! The embedded store: one redb file in the data directory, written by a
//! single group-committing writer thread.
//!
//! # Layout
//! - table `heads`: group -> head version.
//! - table `versions`: (group, version) -> encoded `vane.v1.StoredVersion`
//!   (the version's metadata and the exact snapshot bytes agents receive).
//! - table `meta`: `"schema"` -> [`SCHEMA_VERSION`], so a future layout change
//!   is detected instead of misread.
//!
//! # Durability and atomicity
//! A version and its group's head are written in the same transaction, so a
//! crash leaves each group at its old or its new version. Every commit uses
//! `Durability::Immediate`: it is fsynced before any push in it is answered.
//! Versions are never deleted and the next version is always `head + 1` read
//! inside the writing transaction, so a number is never handed out twice.
//!
//! # Group commit
//! One thread owns all writes. Pushes reach it over a bounded channel with a
//! oneshot for the answer; it takes whatever is queued (up to [`MAX_BATCH`]
//! requests or [`MAX_BATCH_BYTES`]), applies them in arrival order in one
//! write transaction, each checked against the heads as the transaction sees
//! them, commits once (one fsync for the whole batch) and then answers every
//! request. A conflicting or unchanged request writes nothing and does not
//! affect the others; a storage error fails the whole batch, which then
//! stores nothing. Reads run in read transactions on the blocking pool and
//! never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition,
};
use tokio::sync::{mpsc, oneshot};
use vane_proto as pb;

use crate::contract::{
    AUDIT_RETENTION, AuditRecord, NewVersion, PushOutcome, Store, StoreHealth, VersionMeta,
    VersionRecord, decode_audit, encode_audit, now_unix_ms,
};
use crate::error::StoreError;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "vane.redb";
/// Layout version recorded in the `meta` table.
pub const SCHEMA_VERSION: u64 = 1;
/// The database's page cache.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Most pushes committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Once a batch holds this many snapshot bytes it is committed without
/// waiting for more, so one transaction never grows without bound.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

const HEADS: TableDefinition<&str, u64> = TableDefinition::new("heads");
const VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The audit log: sequence number -> encoded `vane.v1.AuditEntry`.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const SCHEMA_KEY: &str = "schema";

/// Only the `info` field of a `vane.v1.StoredVersion`: decoding it skips the
/// snapshot bytes instead of copying them, which keeps `history` cheap.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredVersionInfo {
    #[prost(message, optional, tag = "1")]
    info: Option<pb::VersionInfo>,
}

struct WriteRequest {
    new: NewVersion,
    reply: oneshot::Sender<Result<PushOutcome, StoreError>>,
}

struct Writer {
    tx: mpsc::Sender<WriteRequest>,
    thread: JoinHandle<()>,
}

/// The embedded redb store. Open it with [`RedbStore::open`]; close it with
/// [`Store::close`] (dropping it also stops the writer, blocking until the
/// batch in progress is committed).
pub struct RedbStore {
    path: PathBuf,
    // `None` once closed. Readers clone the `Arc` and release the lock at
    // once, so the lock is never held across I/O or an await.
    db: RwLock<Option<Arc<Database>>>,
    writer: Mutex<Option<Writer>>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `data_dir`, creating the directory.
    /// Opening may repair the file after a crash, so it runs on the blocking
    /// pool.
    pub async fn open(data_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = data_dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the store failed: {e}")))?
    }

    /// [`Self::open`] for callers outside an async context.
    pub fn open_blocking(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        // redb caches up to 1 GiB of pages by default: far more than a
        // server's working set (the heads, served from the hub's memory),
        // and memory the process would hold for nothing.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                    "{} is in use by another process",
                    path.display()
                )),
                e => open_error(&path, e),
            })?;
        init_schema(&db)?;
        let db = Arc::new(db);

        // Bounded: a burst of pushes waits here instead of queueing without
        // limit. The snapshots it holds already live in the waiting requests.
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let writer_db = Arc::clone(&db);
        let commits = Arc::new(AtomicU64::new(0));
        let writer_commits = Arc::clone(&commits);
        let thread = std::thread::Builder::new()
            .name("vane-store-writer".into())
            .spawn(move || writer_loop(&writer_db, rx, &writer_commits))
            .map_err(|e| StoreError::Io(format!("cannot start the store writer thread: {e}")))?;
        tracing::info!(path = %path.display(), "store opened");
        Ok(Self {
            path,
            db: RwLock::new(Some(db)),
            writer: Mutex::new(Some(Writer { tx, thread })),
            commits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write transactions committed since open: with group commit, fewer
    /// than the versions created under concurrent load.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(closed)
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store read task failed: {e}")))?
    }

    fn take_writer(&self) -> Option<Writer> {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the batch in progress;
        // joining it means the file is released when drop returns (a reopen
        // in the same process then succeeds).
        if let Some(writer) = self.take_writer() {
            drop(writer.tx);
            if writer.thread.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn push(&self, new: NewVersion) -> Result<PushOutcome, StoreError> {
        // Clone the sender so the lock is not held across the await.
        let tx = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|w| w.tx.clone())
            .ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(WriteRequest { new, reply })
            .await
            .map_err(|_| closed())?;
        // Only queued requests (not waiting callers) keep the writer alive
        // after `close`.
        drop(tx);
        answer
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    async fn get(
        &self,
        group: &str,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let group = group.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let version = match version {
                Some(v) => v,
                None => {
                    let heads = txn.open_table(HEADS).map_err(storage)?;
                    match heads.get(group.as_str()).map_err(storage)? {
                        Some(v) => v.value(),
                        None => return Ok(None),
                    }
                }
            };
            let versions = txn.open_table(VERSIONS).map_err(storage)?;
            read_record(&versions, &group, version)
        })
        .await
    }

    async fn history(&self, group: &str, limit: usize) -> Result<Vec<VersionMeta>, StoreError> {
        let group = group.to_owned();
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.read(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let versions = txn.open_table(VERSIONS).map_err(storage)?;
            let mut out = Vec::new();
            let range = versions
                .range((group.as_str(), 1u64)..=(group.as_str(), u64::MAX))
                .map_err(storage)?;
            for entry in range.rev().take(limit) {
                let (key, value) = entry.map_err(storage)?;
                let version = key.value().1;
                let info = decode_info(&group, version, value.value())?;
                out.push(VersionMeta {
                    group: group.clone(),
                    version,
                    hash: info.hash,
                    message: info.message,
                    author: info.author,
                    created_at_unix_ms: info.created_at_unix_ms,
                    rollback_of: nonzero(info.rollback_of),
                    size_bytes: info.size_bytes,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn heads(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let heads = txn.open_table(HEADS).map_err(storage)?;
            let versions = txn.open_table(VERSIONS).map_err(storage)?;
            let mut out = Vec::new();
            for entry in heads.iter().map_err(storage)? {
                let (group, head) = entry.map_err(storage)?;
                let (group, head) = (group.value().to_owned(), head.value());
                let record = read_record(&versions, &group, head)?
                    .ok_or_else(|| head_without_version(&group, head))?;
                out.push(record);
            }
            Ok(out)
        })
        .await
    }

    async fn groups(&self) -> Result<Vec<String>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let heads = txn.open_table(HEADS).map_err(storage)?;
            let mut out = Vec::new();
            for entry in heads.iter().map_err(storage)? {
                let (group, _) = entry.map_err(storage)?;
                out.push(group.value().to_owned());
            }
            Ok(out)
        })
        .await
    }

    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Its own write transaction, not the push writer's batch: audit
        // entries are few (pushes are rate-limited, refusals batched by the
        // caller), and a push must not wait for them.
        self.read(move |db| {
            let mut txn = db.begin_write().map_err(storage)?;
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            {
                let mut audit = txn.open_table(AUDIT).map_err(storage)?;
                let next = audit
                    .last()
                    .map_err(storage)?
                    .map_or(1, |(k, _)| k.value() + 1);
                for (seq, entry) in (next..).zip(&entries) {
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
        })
        .await
    }

    async fn audit(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let group = group.map(str::to_owned);
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.read(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let audit = txn.open_table(AUDIT).map_err(storage)?;
            let mut out = Vec::new();
            for entry in audit.iter().map_err(storage)?.rev() {
                if out.len() >= limit {
                    break;
                }
                let (key, value) = entry.map_err(storage)?;
                let record = decode_audit(&key.value().to_string(), value.value())?;
                if group.as_deref().is_none_or(|g| g == record.group) {
                    out.push(record);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if let Some(writer) = self.take_writer() {
            // Pushes already queued (or holding a cloned sender) are still
            // answered: the writer exits once every sender is gone and the
            // queue is empty.
            drop(writer.tx);
            tokio::task::spawn_blocking(move || writer.thread.join())
                .await
                .map_err(|e| StoreError::Unavailable(format!("joining the store writer: {e}")))?
                .map_err(|_| StoreError::Unavailable("store writer thread panicked".into()))?;
        }
        let db = self
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(db) = db {
            // A read still running holds a reference; redb then closes the
            // file when that read drops it.
            if let Ok(db) = Arc::try_unwrap(db) {
                tokio::task::spawn_blocking(move || db.close())
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("closing the store: {e}")))?
                    .map_err(|e| StoreError::Io(format!("closing the store: {e}")))?;
            }
            tracing::info!(path = %self.path.display(), "store closed");
        }
        Ok(())
    }

    fn health(&self) -> StoreHealth {
        let closed = self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        StoreHealth {
            backend: "embedded",
            location: self.path.display().to_string(),
            degraded: closed.then(|| "the store is closed".to_owned()),
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

/// Maps any redb error: corruption is `Corrupt`, everything else `Io`.
fn storage(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(msg),
        redb::Error::DatabaseClosed => closed(),
        e => StoreError::Io(e.to_string()),
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match storage(e) {
        StoreError::Corrupt(msg) => StoreError::Corrupt(format!("{}: {msg}", path.display())),
        StoreError::Io(msg) => StoreError::Io(format!("opening {}: {msg}", path.display())),
        other => other,
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

fn head_without_version(group: &str, head: u64) -> StoreError {
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

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// Creates the tables on first open and checks the layout version.
fn init_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let found = meta.get(SCHEMA_KEY).map_err(storage)?.map(|v| v.value());
        match found {
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "store schema version {other} is not supported (this build reads {SCHEMA_VERSION})"
                )));
            }
            None => {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION).map_err(storage)?;
            }
        }
        txn.open_table(HEADS).map_err(storage)?;
        txn.open_table(VERSIONS).map_err(storage)?;
        txn.open_table(AUDIT).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

fn read_info(
    versions: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    group: &str,
    version: u64,
) -> Result<Option<pb::VersionInfo>, StoreError> {
    let Some(value) = versions.get((group, version)).map_err(storage)? else {
        return Ok(None);
    };
    decode_info(group, version, value.value()).map(Some)
}

fn decode_info(group: &str, version: u64, bytes: &[u8]) -> Result<pb::VersionInfo, StoreError> {
    let info = StoredVersionInfo::decode(bytes)
        .map_err(|e| corrupt_record(group, version, &e))?
        .info
        .ok_or_else(|| missing_info(group, version))?;
    check_version(group, version, &info)?;
    Ok(info)
}

fn read_record(
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
    Ok(Some(VersionRecord {
        group: group.to_owned(),
        version,
        hash: info.hash,
        message: info.message,
        author: info.author,
        created_at_unix_ms: info.created_at_unix_ms,
        rollback_of: nonzero(info.rollback_of),
        snapshot: stored.snapshot,
    }))
}

fn writer_loop(db: &Database, mut rx: mpsc::Receiver<WriteRequest>, commits: &AtomicU64) {
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.new.snapshot.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(req) => {
                    bytes += req.new.snapshot.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        let (news, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|r| (r.new, r.reply)).unzip();
        match apply_batch(db, &news) {
            Ok((outcomes, committed)) => {
                if committed {
                    commits.fetch_add(1, Ordering::Relaxed);
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The caller may have stopped waiting; the outcome stands.
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, pushes = news.len(), "store commit failed");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
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
        for new in batch {
            outcomes.push(apply_one(&mut heads, &mut versions, new, now)?);
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

fn apply_one(
    heads: &mut Table<'_, &'static str, u64>,
    versions: &mut Table<'_, (&'static str, u64), &'static [u8]>,
    new: &NewVersion,
    now: i64,
) -> Result<Result<PushOutcome, StoreError>, StoreError> {
    let group = new.group.as_str();
    let head = heads.get(group).map_err(storage)?.map_or(0, |v| v.value());
    if let Some(expected) = new.expected_version
        && expected != head
    {
        return Ok(Err(StoreError::Conflict {
            group: group.to_owned(),
            expected,
            actual: head,
        }));
    }
    if head > 0 {
        // Compare hashes on the metadata alone; copy the head's snapshot out
        // only when it is the answer.
        // A damaged record fails this push only; storage errors fail the batch.
        let info = match read_info(versions, group, head) {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(Err(head_without_version(group, head))),
            Err(e @ StoreError::Corrupt(_)) => return Ok(Err(e)),
            Err(e) => return Err(e),
        };
        if info.hash == new.hash {
            return match read_record(versions, group, head) {
                Ok(Some(current)) => Ok(Ok(PushOutcome::Unchanged(current))),
                Ok(None) => Ok(Err(head_without_version(group, head))),
                Err(e @ StoreError::Corrupt(_)) => Ok(Err(e)),
                Err(e) => Err(e),
            };
        }
    }
    let Some(version) = head.checked_add(1) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "group {group:?}: version space exhausted"
        ))));
    };
    // Never overwrite: a stored version above the head means the heads table
    // went backwards, and reusing the number would break the contract.
    if versions.get((group, version)).map_err(storage)?.is_some() {
        return Ok(Err(StoreError::Corrupt(format!(
            "group {group:?}: version {version} is stored but the head is {head}"
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
    };
    let stored = pb::StoredVersion {
        info: Some(pb::VersionInfo {
            version,
            hash: record.hash.clone(),
            message: record.message.clone(),
            created_at_unix_ms: now,
            author: record.author.clone(),
            rollback_of: record.rollback_of.unwrap_or(0),
            size_bytes: record.snapshot.len() as u64,
        }),
        snapshot: Bytes::clone(&record.snapshot),
    };
    versions
        .insert((group, version), stored.encode_to_vec().as_slice())
        .map_err(storage)?;
    heads.insert(group, version).map_err(storage)?;
    Ok(Ok(PushOutcome::Created(record)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite;

    fn opener(dir: &Path) -> impl Fn() -> suite::OpenFuture + Send + Sync + 'static {
        let dir = dir.to_path_buf();
        move || {
            let dir = dir.clone();
            Box::pin(async move {
                let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir).await.expect("open"));
                store
            })
        }
    }

    #[tokio::test]
    async fn suite_sequence() {
        let dir = tempfile::tempdir().unwrap();
        suite::sequence(opener(dir.path())).await;
    }

    #[tokio::test]
    async fn suite_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        suite::unchanged(opener(dir.path())).await;
    }

    #[tokio::test]
    async fn suite_conflict() {
        let dir = tempfile::tempdir().unwrap();
        suite::conflict(opener(dir.path())).await;
    }

    #[tokio::test]
    async fn suite_reads() {
        let dir = tempfile::tempdir().unwrap();
        suite::reads(opener(dir.path())).await;
    }

    #[tokio::test]
    async fn suite_rollback() {
        let dir = tempfile::tempdir().unwrap();
        suite::rollback(opener(dir.path())).await;
    }

    #[tokio::test]
    async fn suite_reopen() {
        let dir = tempfile::tempdir().unwrap();
        suite::reopen(opener(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn suite_concurrent() {
        let dir = tempfile::tempdir().unwrap();
        suite::concurrent(opener(dir.path())).await;
    }

    #[tokio::test]
    async fn suite_closed() {
        let dir = tempfile::tempdir().unwrap();
        suite::closed(opener(dir.path())).await;
    }

    #[tokio::test]
    async fn second_open_of_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = RedbStore::open(dir.path()).await.unwrap();
        let err = RedbStore::open(dir.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        first.close().await.unwrap();
        let again = RedbStore::open(dir.path()).await.unwrap();
        again.close().await.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_store_releases_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).await.unwrap();
        store.push(suite::new_version("g", b"a")).await.unwrap();
        drop(store);
        let store = RedbStore::open(dir.path()).await.unwrap();
        let head = store.get("g", None).await.unwrap().unwrap();
        assert_eq!(head.version, 1);
        store.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pushes_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).await.unwrap());
        let pushes = (0..200).map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .push(suite::new_version("g", format!("{i}").as_bytes()))
                    .await
                    .unwrap()
            })
        });
        let pushes: Vec<_> = pushes.collect();
        for p in pushes {
            p.await.unwrap();
        }
        assert_eq!(store.get("g", None).await.unwrap().unwrap().version, 200);
        let commits = store.commits();
        assert!(
            commits < 200,
            "no batching: {commits} commits for 200 pushes"
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn history_meta_matches_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).await.unwrap();
        let rec = store
            .push(suite::new_version("g", b"abc"))
            .await
            .unwrap()
            .into_record();
        let history = store.history("g", 0).await.unwrap();
        assert_eq!(history, vec![rec.meta()]);
        store.close().await.unwrap();
    }
}
