//! The embedded store: one redb file in the data directory, written by a
//! single group-committing writer thread that heals the file after an I/O
//! error and applies retention.
//!
//! # Layout
//! - table `heads`: group -> head version.
//! - table `versions`: (group, version) -> encoded `vane.v1.StoredVersion`
//!   (the version's metadata and the exact snapshot bytes agents receive).
//! - table `pruned`: group -> how many of its versions retention removed.
//! - table `audit`: sequence -> encoded `vane.v1.AuditEntry`.
//! - table `tombstones`: group -> last version of a deleted group, until it
//!   is pushed again (its next version follows this one).
//! - table `meta`: `"schema"` -> [`SCHEMA_VERSION`], so a future layout change
//!   is detected instead of misread.
//!
//! # Durability and atomicity
//! A version and its group's head are written in the same transaction, so a
//! crash leaves each group at its old or its new version. Every commit uses
//! `Durability::Immediate`: it is fsynced before any push in it is answered.
//! The next version is always `head + 1` read inside the writing
//! transaction, and the head is never removed, so a number is never handed
//! out twice, retention or not.
//!
//! # Integrity
//! The file is opened with redb's integrity check (every page's checksum),
//! so a file damaged outside redb is refused with one line naming it and
//! what to do, never read (or panicked on). Reads run in read transactions
//! on the blocking pool and never wait for the writer.
//!
//! The writer thread, its group commit and its healing: [`writer`].

mod handle;
mod prune;
mod records;
mod rollouts;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::ReadableTable;
use tokio::sync::{mpsc, oneshot};

use crate::contract::{
    AuditRecord, DeleteGroup, Deleted, NewVersion, Pinned, PruneReport, PushOutcome, Retention,
    RolloutPut, RolloutRecord, Store, StoreHealth, VersionMeta, VersionRecord, decode_audit,
};
use crate::error::StoreError;
use handle::Handle;
use records::{
    AUDIT, HEADS, PRUNED, TOMBSTONES, VERSIONS, closed, decode_info, head_without_version, meta_of,
    read_record, storage,
};
use writer::Request;

pub use records::{CACHE_BYTES, DB_FILE, SCHEMA_VERSION};
pub use writer::{MAX_BATCH, MAX_BATCH_BYTES};

struct Writer {
    tx: mpsc::Sender<Request>,
    thread: JoinHandle<()>,
}

/// The embedded redb store. Open it with [`RedbStore::open`]; close it with
/// [`Store::close`] (dropping it also stops the writer, blocking until the
/// batch in progress is committed).
pub struct RedbStore {
    handle: Arc<Handle>,
    writer: Mutex<Option<Writer>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.handle.path())
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `data_dir`, creating the directory.
    /// Opening checks the whole file and may repair it after a crash, so it
    /// runs on the blocking pool.
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
        let handle = Arc::new(Handle::open(&path)?);

        // Bounded: a burst of pushes waits here instead of queueing without
        // limit. The snapshots it holds already live in the waiting requests.
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let writer_handle = Arc::clone(&handle);
        let thread = std::thread::Builder::new()
            .name("vane-store-writer".into())
            .spawn(move || writer::run(&writer_handle, rx))
            .map_err(|e| StoreError::Io(format!("cannot start the store writer thread: {e}")))?;
        tracing::info!(path = %path.display(), "store opened");
        Ok(Self {
            handle,
            writer: Mutex::new(Some(Writer { tx, thread })),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.handle.path()
    }

    /// Write transactions committed since open: with group commit, fewer
    /// than the versions created under concurrent load.
    pub fn commits(&self) -> u64 {
        self.handle.commits()
    }

    /// How many times the file was reopened after a failed write.
    pub fn reopens(&self) -> u64 {
        self.handle.reopens()
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let handle = Arc::clone(&self.handle);
        tokio::task::spawn_blocking(move || handle.read(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store read task failed: {e}")))?
    }

    async fn ask<T>(
        &self,
        req: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, StoreError> {
        // Clone the sender so the lock is not held across the await.
        let tx = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|w| w.tx.clone())
            .ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(req(reply)).await.map_err(|_| closed())?;
        // Only queued requests (not waiting callers) keep the writer alive
        // after `close`.
        drop(tx);
        answer
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))
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
        if let Err(e) = self.handle.close() {
            tracing::warn!(error = %e, "closing the store");
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn push(&self, new: NewVersion) -> Result<PushOutcome, StoreError> {
        self.ask(|reply| Request::Push { new, reply }).await?
    }

    async fn get(
        &self,
        group: &str,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let group = group.to_owned();
        self.read(move |txn| {
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
        self.read(move |txn| {
            let versions = txn.open_table(VERSIONS).map_err(storage)?;
            let mut out = Vec::new();
            let range = versions
                .range((group.as_str(), 1u64)..=(group.as_str(), u64::MAX))
                .map_err(storage)?;
            for entry in range.rev().take(limit) {
                let (key, value) = entry.map_err(storage)?;
                let version = key.value().1;
                let info = decode_info(&group, version, value.value())?;
                out.push(meta_of(&group, version, info));
            }
            Ok(out)
        })
        .await
    }

    async fn heads(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.read(|txn| {
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
        self.read(|txn| {
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

    async fn prune(
        &self,
        retention: Retention,
        pinned: &Pinned,
    ) -> Result<PruneReport, StoreError> {
        let pinned = pinned.clone();
        self.ask(|reply| Request::Prune {
            retention,
            pinned,
            reply,
        })
        .await?
    }

    async fn pruned(&self, group: &str) -> Result<u64, StoreError> {
        let group = group.to_owned();
        self.read(move |txn| {
            let pruned = txn.open_table(PRUNED).map_err(storage)?;
            Ok(pruned
                .get(group.as_str())
                .map_err(storage)?
                .map_or(0, |v| v.value()))
        })
        .await
    }

    async fn delete_group(&self, delete: DeleteGroup) -> Result<Deleted, StoreError> {
        self.ask(|reply| Request::Delete { delete, reply }).await?
    }

    async fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|txn| match txn.open_table(TOMBSTONES) {
            Ok(table) => {
                let mut out = Vec::new();
                for entry in table.iter().map_err(storage)? {
                    let (group, last) = entry.map_err(storage)?;
                    out.push((group.value().to_owned(), last.value()));
                }
                Ok(out)
            }
            // A file written before deletes existed, opened read-only.
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(storage(e)),
        })
        .await
    }

    async fn rollout(&self, group: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let group = group.to_owned();
        self.read(move |txn| match txn.open_table(rollouts::ROLLOUTS) {
            Ok(table) => rollouts::read(&table, &group),
            // A file written before rollouts existed, opened read-only.
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(storage(e)),
        })
        .await
    }

    async fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.read(|txn| match txn.open_table(rollouts::ROLLOUTS) {
            Ok(table) => rollouts::read_all(&table),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(storage(e)),
        })
        .await
    }

    async fn put_rollout(&self, group: &str, put: RolloutPut) -> Result<RolloutRecord, StoreError> {
        let group = group.to_owned();
        self.ask(|reply| Request::PutRollout { group, put, reply })
            .await?
    }

    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Its own write transaction, not the push writer's batch: audit
        // entries are few (pushes are rate-limited, refusals batched by the
        // caller), and a push must not wait for them.
        // Through the writer, so a failed write heals the file like a push's.
        self.ask(|reply| Request::Audit { entries, reply }).await?
    }

    async fn audit(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let group = group.map(str::to_owned);
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.read(move |txn| {
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
        let handle = Arc::clone(&self.handle);
        tokio::task::spawn_blocking(move || handle.close())
            .await
            .map_err(|e| StoreError::Unavailable(format!("closing the store: {e}")))?
    }

    fn health(&self) -> StoreHealth {
        let degraded = if self.handle.is_closed() {
            Some("the store is closed".to_owned())
        } else {
            self.handle.degraded()
        };
        StoreHealth {
            backend: "embedded",
            location: self.handle.path().display().to_string(),
            degraded,
        }
    }
}

#[cfg(test)]
mod tests;
