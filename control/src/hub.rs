//! The fan-out of new versions to watch streams: one latest-wins channel per
//! group holding the group's head.
//!
//! Each version is encoded once (by the Admin API, into [`Published`]) and
//! every stream of the group shares the same `Arc` and `Bytes`. A slow stream
//! never makes the hub hold more than the head: `tokio::sync::watch` keeps
//! only the latest value, and a stream that falls behind skips straight to it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

use crate::store::VersionRecord;

/// One version of a group as streams send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The group.
    pub group: String,
    /// The version.
    pub version: u64,
    /// The content hash (lowercase hex SHA-256).
    pub hash: String,
    /// When the version was stored, Unix milliseconds.
    pub created_at_unix_ms: i64,
    /// The encoded canonical `vane.v1.Snapshot`, shared by every stream.
    pub snapshot: Bytes,
}

impl From<&VersionRecord> for Published {
    fn from(r: &VersionRecord) -> Self {
        Self {
            group: r.group.clone(),
            version: r.version,
            hash: r.hash.clone(),
            created_at_unix_ms: r.created_at_unix_ms,
            // A reference-count increment, not a copy.
            snapshot: r.snapshot.clone(),
        }
    }
}

/// What a group's channel holds: its head, `None` before the first version.
pub type Head = Option<Arc<Published>>;

/// The per-group channels.
#[derive(Debug, Default)]
pub struct Hub {
    // A std lock: every critical section is a map lookup or insert, never an
    // await, and the watch channels themselves need no lock to send.
    groups: RwLock<HashMap<String, watch::Sender<Head>>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub holding these heads (from `Store::heads` at startup).
    pub fn seeded(heads: &[VersionRecord]) -> Self {
        let hub = Self::new();
        for record in heads {
            hub.publish(Published::from(record));
        }
        hub
    }

    /// Makes `published` the head of its group if it is newer than the
    /// current head. Returns whether it did. Versions only move forward, so
    /// two pushes finishing in either order leave the newer one published.
    pub fn publish(&self, published: Published) -> bool {
        let sender = self.sender(&published.group);
        let published = Arc::new(published);
        sender.send_if_modified(|head| {
            let newer = head
                .as_ref()
                .is_none_or(|current| published.version > current.version);
            if newer {
                *head = Some(Arc::clone(&published));
            }
            newer
        })
    }

    /// A receiver of the group's head, marked as seen: `changed()` fires on
    /// the next version. Creates the group's channel if needed, so an agent
    /// may watch a group before its first push.
    pub fn subscribe(&self, group: &str) -> watch::Receiver<Head> {
        let mut rx = self.sender(group).subscribe();
        rx.mark_unchanged();
        rx
    }

    /// The group's head.
    pub fn head(&self, group: &str) -> Head {
        self.read()
            .get(group)
            .and_then(|sender| sender.borrow().clone())
    }

    /// The head of every group that has one, sorted by group.
    pub fn heads(&self) -> Vec<Arc<Published>> {
        let mut heads: Vec<_> = self
            .read()
            .values()
            .filter_map(|sender| sender.borrow().clone())
            .collect();
        heads.sort_by(|a, b| a.group.cmp(&b.group));
        heads
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, watch::Sender<Head>>> {
        // A poisoned lock only means a panic elsewhere; the map is still whole.
        self.groups.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn sender(&self, group: &str) -> watch::Sender<Head> {
        if let Some(sender) = self.read().get(group) {
            return sender.clone();
        }
        self.groups
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(group.to_owned())
            .or_insert_with(|| watch::Sender::new(None))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(group: &str, version: u64) -> Published {
        Published {
            group: group.into(),
            version,
            hash: format!("h{version}"),
            created_at_unix_ms: 1,
            snapshot: Bytes::from(vec![version as u8]),
        }
    }

    #[test]
    fn never_goes_backward() {
        let hub = Hub::new();
        assert!(hub.publish(published("g", 2)));
        assert!(!hub.publish(published("g", 1)));
        assert!(!hub.publish(published("g", 2)));
        assert_eq!(hub.head("g").unwrap().version, 2);
        assert!(hub.publish(published("g", 5)));
        assert_eq!(hub.head("g").unwrap().version, 5);
        assert!(hub.head("other").is_none());
    }

    #[tokio::test]
    async fn subscribers_see_only_newer_versions() {
        let hub = Hub::new();
        let mut early = hub.subscribe("g");
        assert!(early.borrow().is_none());
        hub.publish(published("g", 1));
        early.changed().await.unwrap();
        assert_eq!(early.borrow_and_update().as_ref().unwrap().version, 1);

        let mut late = hub.subscribe("g");
        assert_eq!(late.borrow().as_ref().unwrap().version, 1);
        assert!(!late.has_changed().unwrap());
        hub.publish(published("g", 0));
        assert!(
            !late.has_changed().unwrap(),
            "an older version must not wake anyone"
        );
        hub.publish(published("g", 3));
        late.changed().await.unwrap();
        assert_eq!(late.borrow_and_update().as_ref().unwrap().version, 3);
    }

    #[test]
    fn bytes_are_shared_not_copied() {
        let hub = Hub::new();
        hub.publish(published("g", 1));
        let a = hub.subscribe("g").borrow().clone().unwrap();
        let b = hub.subscribe("g").borrow().clone().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn seeded_from_heads() {
        let records: Vec<VersionRecord> = [("b", 3), ("a", 7)]
            .into_iter()
            .map(|(g, v)| VersionRecord {
                group: g.into(),
                version: v,
                hash: "h".into(),
                message: String::new(),
                author: String::new(),
                created_at_unix_ms: 0,
                rollback_of: None,
                snapshot: Bytes::new(),
            })
            .collect();
        let hub = Hub::seeded(&records);
        let heads: Vec<(String, u64)> = hub
            .heads()
            .iter()
            .map(|p| (p.group.clone(), p.version))
            .collect();
        assert_eq!(heads, vec![("a".into(), 7), ("b".into(), 3)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishers_leave_the_newest() {
        let hub = Arc::new(Hub::new());
        let mut tasks = Vec::new();
        for v in (1..=200u64).rev() {
            let hub = Arc::clone(&hub);
            tasks.push(tokio::spawn(async move {
                hub.publish(published("g", v));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(hub.head("g").unwrap().version, 200);
    }
}
