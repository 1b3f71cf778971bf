//! The open database file, shared by the readers and the writer thread: how
//! it is opened (checked page by page, so a damaged file is an error, not a
//! panic), reopened after an I/O error, compacted, and whether it accepts
//! writes now.
//!
//! redb refuses every operation on a database once one write failed with an
//! I/O error ("Previous I/O error occurred. Please close and re-open the
//! database."). Closing and opening the file again recovers it to its last
//! commit (the failed one never happened), so the writer reopens it and the
//! store heals without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use super::records::{
    AUDIT, CACHE_BYTES, HEADS, META, PRUNED, SCHEMA_KEY, SCHEMA_VERSION, VERSIONS, damaged,
    open_error, storage,
};
use super::rollouts::ROLLOUTS;
use crate::error::StoreError;

/// Where the database is.
enum Slot {
    Open(Database),
    /// Between a failed open and the next attempt: why reads fail.
    Unavailable(String),
    Closed,
}

/// The database file and what the store knows about it.
pub(super) struct Handle {
    path: PathBuf,
    // Readers and the writer hold the read lock for one operation; reopening,
    // compacting and closing take the write lock, so they wait for those to
    // end and block new ones for as long as they take (milliseconds).
    slot: RwLock<Slot>,
    /// Why the store does not accept writes now (`None`: it does).
    degraded: Mutex<Option<String>>,
    commits: AtomicU64,
    reopens: AtomicU64,
}

impl Handle {
    /// Opens (or creates) the database, checking every page of the file
    /// first: redb trusts a cleanly closed file, and may panic reading one
    /// that was changed outside it.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = match open_database(path, true) {
            Ok(db) => db,
            // The check commits what it verified; on a full disk that
            // write fails, and a cleanly closed file opens without writing.
            Err(StoreError::Io(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "integrity check at open could not write; opening without it");
                open_database(path, false)?
            }
            // A page that fails its checksum: serve what is readable rather
            // than nothing. Every body the server uses is checked against
            // its content hash first, so damaged content is reported (and
            // never sent); a damaged page redb cannot read at all is a
            // clear error (or a caught panic) on that read.
            Err(StoreError::Corrupt(why)) if !why.contains("schema version") => {
                tracing::error!(
                    path = %path.display(),
                    error = %why,
                    "the database file failed its integrity check; opening it unchecked to serve what is readable: \
                     run `vane-control check` with the server stopped, and restore from a backup"
                );
                open_database(path, false)?
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_path_buf(),
            slot: RwLock::new(Slot::Open(db)),
            degraded: Mutex::new(None),
            commits: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the open database. A panic inside redb (a page damaged
    /// since the check at open) is the file's fault, reported as such.
    pub(super) fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Slot::Open(db) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(db)))
                .unwrap_or_else(|panic| {
                    Err(damaged(
                        &self.path,
                        &format!("reading failed: {}", panic_text(&panic)),
                    ))
                }),
            Slot::Unavailable(why) => Err(StoreError::Unavailable(why.clone())),
            Slot::Closed => Err(super::records::closed()),
        }
    }

    /// A read transaction's work, with [`Self::with_db`]'s guarantees.
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            f(&txn)
        })
    }

    /// Closes the file and opens it again (redb recovers it to its last
    /// commit). Without an integrity check: the file was good at open and
    /// only redb wrote it since.
    pub(super) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        if matches!(*slot, Slot::Closed) {
            return Err(super::records::closed());
        }
        if let Slot::Open(db) = std::mem::replace(&mut *slot, Slot::Unavailable(String::new())) {
            // Dropping closes it too; close() says why it could not.
            if let Err(e) = db.close() {
                tracing::debug!(error = %e, "closing the database before reopening it");
            }
        }
        self.reopens.fetch_add(1, Ordering::Relaxed);
        match open_database(&self.path, false) {
            Ok(db) => {
                *slot = Slot::Open(db);
                tracing::info!(path = %self.path.display(), "store reopened");
                Ok(())
            }
            Err(e) => {
                *slot = Slot::Unavailable(format!("the store is being reopened: {e}"));
                Err(e)
            }
        }
    }

    /// Gives redb's free pages back to the file system. Waits for reads in
    /// progress and holds new ones back while it runs.
    pub(super) fn compact(&self) -> Result<bool, StoreError> {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        match &mut *slot {
            Slot::Open(db) => db
                .compact()
                .map_err(|e| StoreError::Io(format!("compacting {}: {e}", self.path.display()))),
            Slot::Unavailable(why) => Err(StoreError::Unavailable(why.clone())),
            Slot::Closed => Err(super::records::closed()),
        }
    }

    /// Closes the file; later operations fail with `Unavailable`.
    pub(super) fn close(&self) -> Result<(), StoreError> {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        if let Slot::Open(db) = std::mem::replace(&mut *slot, Slot::Closed) {
            db.close()
                .map_err(|e| StoreError::Io(format!("closing {}: {e}", self.path.display())))?;
            tracing::info!(path = %self.path.display(), "store closed");
        }
        Ok(())
    }

    pub(super) fn is_closed(&self) -> bool {
        matches!(
            *self.slot.read().unwrap_or_else(PoisonError::into_inner),
            Slot::Closed
        )
    }

    pub(super) fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set_degraded(&self, why: Option<String>) {
        *self.degraded.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    pub(super) fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub(super) fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }
}

/// Opens the file and makes sure its tables exist. A file written by a newer
/// layout, or damaged, is refused with one line saying what to do.
fn open_database(path: &Path, check_integrity: bool) -> Result<Database, StoreError> {
    // redb may panic reading a page damaged outside it (an unchecked open
    // trusts the file): that is the file's fault, reported as such.
    std::panic::catch_unwind(|| open_unguarded(path, check_integrity)).unwrap_or_else(|panic| {
        Err(damaged(
            path,
            &format!("opening failed: {}", panic_text(&panic)),
        ))
    })
}

fn open_unguarded(path: &Path, check_integrity: bool) -> Result<Database, StoreError> {
    // redb caches up to 1 GiB of pages by default: far more than a server's
    // working set (the heads, served from the hub's memory), and memory the
    // process would hold for nothing.
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(check_integrity)
        .create(path)
        .map_err(|e| open_error(path, e))?;
    init_schema(&db).map_err(|e| match e {
        StoreError::Corrupt(msg) if !msg.contains("schema version") => damaged(path, &msg),
        other => other,
    })?;
    Ok(db)
}

/// Creates the tables on first open and checks the layout version. Reads
/// first, and writes only for a new file or a missing table: a full disk
/// must not stop a server from starting and serving what it has.
fn init_schema(db: &Database) -> Result<(), StoreError> {
    {
        let txn = db.begin_read().map_err(storage)?;
        let found = match txn.open_table(META) {
            Ok(meta) => meta.get(SCHEMA_KEY).map_err(storage)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage(e)),
        };
        match found {
            Some(SCHEMA_VERSION) => {
                let complete = [
                    txn.open_table(HEADS).is_ok(),
                    txn.open_table(VERSIONS).is_ok(),
                    txn.open_table(AUDIT).is_ok(),
                    txn.open_table(PRUNED).is_ok(),
                    txn.open_table(ROLLOUTS).is_ok(),
                ];
                if complete.iter().all(|ok| *ok) {
                    return Ok(());
                }
            }
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "store schema version {other} is not supported (this build reads {SCHEMA_VERSION})"
                )));
            }
            None => {}
        }
    }
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        if meta.get(SCHEMA_KEY).map_err(storage)?.is_none() {
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION).map_err(storage)?;
        }
        txn.open_table(HEADS).map_err(storage)?;
        txn.open_table(VERSIONS).map_err(storage)?;
        txn.open_table(AUDIT).map_err(storage)?;
        txn.open_table(PRUNED).map_err(storage)?;
        txn.open_table(ROLLOUTS).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// The message of a caught panic.
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
