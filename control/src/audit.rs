//! The audit log writer: every push and rollback, and every refused attempt
//! (bad credentials, no permission, rate limit, invalid snapshot, conflict),
//! with identity, time, group, version, hash, message and result, appended
//! to the store in batches.
//!
//! Entries of pushes that changed something are written before the push
//! answers ([`AuditLog::record`] waits). Refusals are queued without
//! waiting ([`AuditLog::refused`]): a flood of them is batched, and past
//! the queue's capacity counted as dropped rather than allowed to slow the
//! server down or grow its memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::auth::Caller;
use vane_store::{AuditRecord, Store, StoreError, now_unix_ms};

/// Entries waiting to be written at most; refusals beyond it are dropped
/// (and counted).
pub const QUEUE: usize = 4096;
/// Most entries written in one store call.
const BATCH: usize = 256;
/// Longest group, message or reason kept in an entry, in bytes.
const MAX_FIELD: usize = 1024;

struct Item {
    entry: AuditRecord,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The audit log of one server.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Item>,
    replica: String,
    dropped: AtomicU64,
    failed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.entry.fmt(f)
    }
}

impl AuditLog {
    /// Starts the writer on `tasks`; it ends once every handle is dropped
    /// and the queue is written.
    pub fn spawn(store: Arc<dyn Store>, replica: String, tasks: &TaskTracker) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Item>(QUEUE);
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::clone(&failed);
        tasks.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let (entries, waiters): (Vec<_>, Vec<_>) =
                    batch.drain(..).map(|i| (i.entry, i.done)).unzip();
                let n = entries.len();
                let written = store.append_audit(entries).await;
                if let Err(e) = &written {
                    failures.fetch_add(n as u64, Ordering::Relaxed);
                    tracing::error!(error = %e, entries = n, "audit entries not written");
                }
                for waiter in waiters.into_iter().flatten() {
                    let _ = waiter.send(written.clone());
                }
            }
        });
        Arc::new(Self {
            tx,
            replica,
            dropped: AtomicU64::new(0),
            failed,
        })
    }

    /// Writes `entry` and waits until it is durable. A failure is logged
    /// and returned; the caller's own operation has already happened.
    pub async fn record(&self, mut entry: AuditRecord) -> Result<(), StoreError> {
        self.fill(&mut entry);
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Item {
                entry,
                done: Some(done),
            })
            .await
            .map_err(|_| StoreError::Unavailable("the audit log is closed".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("the audit log is closed".into()))?
    }

    /// Queues the refusal of `action` on `group` by `caller` with `status`,
    /// without waiting.
    pub fn refused(
        &self,
        caller: &Caller,
        action: &str,
        group: &str,
        message: &str,
        status: &Status,
    ) {
        let mut entry = AuditRecord {
            identity: caller.identity.clone(),
            peer: caller.peer.clone(),
            action: action.to_owned(),
            group: group.to_owned(),
            message: message.to_owned(),
            result: "refused".to_owned(),
            code: code_name(status.code()).to_owned(),
            reason: status.message().to_owned(),
            ..AuditRecord::default()
        };
        self.fill(&mut entry);
        match self.tx.try_send(Item { entry, done: None }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                if (before + 1).is_power_of_two() {
                    tracing::warn!(dropped = before + 1, "audit queue full; refusals dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Refusals dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Entries the store failed to write.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn fill(&self, entry: &mut AuditRecord) {
        if entry.at_unix_ms == 0 {
            entry.at_unix_ms = now_unix_ms();
        }
        entry.replica.clone_from(&self.replica);
        for field in [
            &mut entry.group,
            &mut entry.message,
            &mut entry.reason,
            &mut entry.identity,
        ] {
            crate::text::cut(field, MAX_FIELD);
        }
    }
}

/// The gRPC code's name as vanectl shows it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Source;
    use vane_store::RedbStore;

    #[tokio::test]
    async fn records_and_refusals_reach_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).await.unwrap());
        let tasks = TaskTracker::new();
        let log = AuditLog::spawn(Arc::clone(&store), "r1".into(), &tasks);
        log.record(AuditRecord {
            identity: "operator".into(),
            action: "push".into(),
            group: "edge".into(),
            version: 1,
            result: "created".into(),
            ..AuditRecord::default()
        })
        .await
        .unwrap();
        let caller = Caller {
            identity: "reader".into(),
            source: Source::Certificate,
            peer: "127.0.0.1:9".into(),
        };
        log.refused(
            &caller,
            "push",
            &"g".repeat(5000),
            "m",
            &Status::permission_denied("no"),
        );
        drop(log);
        tasks.close();
        tasks.wait().await;
        let all = store.audit(None, 0).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].result, "refused");
        assert_eq!(all[0].code, "PermissionDenied");
        assert_eq!(all[0].group.len(), MAX_FIELD);
        assert_eq!(all[0].replica, "r1");
        assert_eq!(all[1].identity, "operator");
        assert!(all[1].at_unix_ms > 0);
        assert_eq!(store.audit(Some("edge"), 0).await.unwrap().len(), 1);
        store.close().await.unwrap();
    }
}
