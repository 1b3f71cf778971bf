//! The fan-out of new versions to watch streams: one latest-wins channel per
//! group holding the group's head.
//!
//! Each version is encoded once (by the Admin API, into [`Published`]) and
//! every stream of the group shares the same `Arc` and `Bytes`. A slow stream
//! never makes the hub hold more than the head: `tokio::sync::watch` keeps
//! only the latest value, and a stream that falls behind skips straight to it.
//!
//! A push answers before the streams wake ([`Hub::publish_prepared_deferred`]):
//! the version becomes the head at once (any new stream, poll or read sees
//! it), and the group's receivers are woken when the [`Wake`] it returns
//! is dropped, which the Admin API does once the push's answer is handed
//! to the connection. Waking ten thousand streams first put the push's own
//! answer behind all of their work on the same runtime.
//!
//! For deltas the head also keeps the bytes of the few versions before it
//! ([`DELTA_BASES`]) and, per base, the encoded delta to the head, built once
//! on first use and shared by every stream (the cache is bounded by the
//! bases, and dropped with the head).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;

use vane_store::{CandidateOf, VersionRecord};

use crate::integrity::{self, Corrupt, CorruptHeads};

/// How many versions before the head the hub keeps (their bytes only) to
/// build deltas from. An agent further behind receives the full snapshot.
pub const DELTA_BASES: usize = 4;

/// A delta is sent only when it encodes to less than this share
/// (numerator, denominator) of the full snapshot: past that the full costs
/// the agent less work and cannot fail on a base mismatch.
pub const DELTA_MAX_SHARE: (usize, usize) = (1, 2);

/// One version of a group as streams send it.
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
    /// When this server published it (monotonic): where push-to-ACK time
    /// starts.
    pub published_at: Instant,
    /// Set when the version is a rollout's candidate: agents outside the
    /// cohort keep the stable version (see `targets.rs`).
    pub candidate: Option<CandidateOf>,
    /// Up to [`DELTA_BASES`] versions before this one, newest first, each
    /// with the delta from it to this version once a stream asked for it.
    /// Set by [`Hub::publish`]. Bounded, and dropped with this version.
    bases: Vec<Base>,
    /// The version as xDS resources (`crate::xds`), translated once, by
    /// the first xDS stream that needs it, and shared by every other.
    xds: OnceCell<crate::xds::Translated>,
    /// The version's HTTP bodies (`crate::http`), each rendered once.
    http: crate::http::render::Bodies,
    /// The version's flags (`crate::openfeature`), decoded once.
    flags: OnceCell<crate::openfeature::flagset::Decoded>,
    /// Whether it holds a private key in clear (`crate::secrets`), found
    /// once by the first channel that asks.
    keys: std::sync::OnceLock<bool>,
}

/// An older version a delta to the head can start from.
struct Base {
    version: u64,
    hash: String,
    snapshot: Bytes,
    /// The encoded `vane.v1.SnapshotDelta` from this base to the version
    /// holding it (`None`: not worth sending, or it could not be built).
    /// Computed once, by the first stream that needs it; every other stream
    /// shares the bytes.
    delta: OnceCell<Option<Bytes>>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("group", &self.group)
            .field("version", &self.version)
            .field("hash", &self.hash)
            .field("created_at_unix_ms", &self.created_at_unix_ms)
            .field("snapshot_bytes", &self.snapshot.len())
            .field(
                "bases",
                &self.bases.iter().map(|b| b.version).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Published {
    /// A version ready to publish, published now.
    pub fn new(
        group: String,
        version: u64,
        hash: String,
        created_at_unix_ms: i64,
        snapshot: Bytes,
    ) -> Self {
        Self {
            group,
            version,
            hash,
            created_at_unix_ms,
            snapshot,
            published_at: Instant::now(),
            candidate: None,
            bases: Vec::new(),
            xds: OnceCell::new(),
            http: crate::http::render::Bodies::default(),
            flags: OnceCell::new(),
            keys: std::sync::OnceLock::new(),
        }
    }

    /// Whether the version holds a private key in clear: what no channel
    /// sends in plaintext to a peer off loopback.
    pub fn has_private_keys(&self) -> bool {
        *self
            .keys
            .get_or_init(|| crate::secrets::encoded_has_keys(&self.snapshot))
    }

    /// The version's HTTP bodies (JSON, YAML, values), rendered on first use.
    pub(crate) fn http_bodies(&self) -> &crate::http::render::Bodies {
        &self.http
    }

    /// The version as xDS resources, or why it has no xDS form; translated
    /// on the blocking pool by the first caller, shared after.
    pub async fn xds(&self) -> crate::xds::Translated {
        self.xds
            .get_or_init(|| crate::xds::translate(self.snapshot.clone()))
            .await
            .clone()
    }

    /// The version's flags, or why it has none; decoded on the blocking
    /// pool by the first caller, shared after.
    pub async fn flags(&self) -> crate::openfeature::flagset::Decoded {
        self.flags
            .get_or_init(|| {
                crate::openfeature::flagset::decode(
                    self.group.clone(),
                    self.version,
                    self.snapshot.clone(),
                )
            })
            .await
            .clone()
    }

    /// Marks it as a rollout's candidate.
    #[must_use]
    pub fn with_candidate(mut self, candidate: Option<CandidateOf>) -> Self {
        self.candidate = candidate;
        self
    }

    /// The versions a delta to this one can start from, newest first.
    pub fn delta_bases(&self) -> Vec<u64> {
        self.bases.iter().map(|b| b.version).collect()
    }

    /// The encoded delta from `(version, hash)` to this version, when the
    /// hub kept that base and the delta is small enough to be worth sending
    /// (see [`DELTA_MAX_SHARE`]). The first caller computes it on the
    /// blocking pool; concurrent callers wait for that one computation.
    pub async fn delta_from(&self, version: u64, hash: &str) -> Option<Bytes> {
        let base = self
            .bases
            .iter()
            .find(|b| b.version == version && b.hash == hash)?;
        base.delta
            .get_or_init(|| async {
                let (old, new) = (base.snapshot.clone(), self.snapshot.clone());
                let built = tokio::task::spawn_blocking(move || build_delta(&old, &new)).await;
                match built {
                    Ok(Ok(delta)) => {
                        tracing::debug!(
                            group = %self.group,
                            from = version,
                            to = self.version,
                            delta_bytes = delta.as_ref().map(Bytes::len),
                            full_bytes = self.snapshot.len(),
                            "delta built"
                        );
                        delta
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(
                            group = %self.group,
                            from = version,
                            to = self.version,
                            error = %e,
                            "cannot build a delta; sending full snapshots"
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "delta task failed; sending full snapshots");
                        None
                    }
                }
            })
            .await
            .clone()
    }
}

/// The delta from `old` to `new` (both encoded canonical snapshots), or
/// `None` when it would not be much smaller than `new`.
fn build_delta(old: &[u8], new: &[u8]) -> Result<Option<Bytes>, vane_model::delta::DeltaError> {
    let delta = vane_model::delta::diff_encoded(old, new)?;
    let (num, den) = DELTA_MAX_SHARE;
    let worth_it = delta.len().saturating_mul(den) < new.len().saturating_mul(num);
    Ok(worth_it.then(|| Bytes::from(delta)))
}

impl From<&VersionRecord> for Published {
    fn from(r: &VersionRecord) -> Self {
        // Cloning `snapshot` is a reference-count increment, not a copy.
        Self::new(
            r.group.clone(),
            r.version,
            r.hash.clone(),
            r.created_at_unix_ms,
            r.snapshot.clone(),
        )
        .with_candidate(r.candidate.clone())
    }
}

/// The longest a published version waits for its [`Wake`] to be dropped
/// before the receivers are woken anyway (a pusher that never reads its
/// answer cannot hold back the fan-out).
pub const WAKE_DEFERRED_AT_MOST: std::time::Duration = std::time::Duration::from_millis(100);

/// Wakes a group's receivers (streams, held polls) for a version already
/// made the head, on the first drop of any clone, or after
/// [`WAKE_DEFERRED_AT_MOST`], whichever comes first; once.
#[derive(Clone)]
pub struct Wake(Arc<WakeOnce>);

struct WakeOnce {
    sender: watch::Sender<Head>,
    done: std::sync::atomic::AtomicBool,
}

impl WakeOnce {
    fn wake(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.sender.send_modify(|_| {});
        }
    }
}

impl Wake {
    fn new(sender: watch::Sender<Head>) -> Self {
        let once = Arc::new(WakeOnce {
            sender,
            done: std::sync::atomic::AtomicBool::new(false),
        });
        // The deadline: a bounded sleep, its own end. Outside a runtime
        // (never in the server) the drop alone wakes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let later = Arc::clone(&once);
            runtime.spawn(async move {
                tokio::time::sleep(WAKE_DEFERRED_AT_MOST).await;
                later.wake();
            });
        }
        Self(once)
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        self.0.wake();
    }
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wake")
            .field("done", &self.0.done.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a group's channel holds: its head, `None` before the first version.
pub type Head = Option<Arc<Published>>;

/// One group's channel and what the metrics read of it.
#[derive(Debug, Clone)]
struct Channel {
    sender: watch::Sender<Head>,
    /// Versions published (made head) since the server started.
    published: Arc<AtomicU64>,
    /// The last version of the group when it was deleted (0: never): a
    /// version at or below it is a deleted one and is never published again,
    /// whatever order a racing push and the delete finish in. Read and
    /// written only inside the sender's lock (`send_if_modified`).
    deleted_through: Arc<AtomicU64>,
}

/// The per-group channels.
#[derive(Debug, Default)]
pub struct Hub {
    // A std lock: every critical section is a map lookup or insert, never an
    // await, and the watch channels themselves need no lock to send.
    groups: RwLock<HashMap<String, Channel>>,
    /// Groups whose newest stored version is corrupt: never published, so
    /// streams keep the head they have (see `integrity.rs`).
    corrupt: CorruptHeads,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `published` the head of its group if it is newer than the
    /// current head. Returns whether it did. Versions only move forward, so
    /// two pushes finishing in either order leave the newer one published.
    /// The previous head and its own bases become the new head's delta bases.
    pub fn publish(&self, published: Published) -> bool {
        let (group, version) = (published.group.clone(), published.version);
        let sent = self.with_channel(&group, |channel| Self::publish_to(channel, published));
        if sent {
            self.corrupt.superseded(&group, version);
        }
        sent
    }

    /// Publishes records read from the store (the heads at startup, the
    /// etcd feed) after checking each body against its hash; a corrupt one
    /// is not published (streams keep what they have) and makes its group
    /// degraded. Records not newer than the group's head are skipped
    /// unverified: publishing them would be a no-op. Returns how many were
    /// published.
    pub async fn publish_verified(&self, records: Vec<VersionRecord>) -> usize {
        let newer: Vec<VersionRecord> = records
            .into_iter()
            .filter(|r| self.head(&r.group).is_none_or(|h| r.version > h.version))
            .collect();
        let (good, bad) = integrity::verified(newer).await;
        for corrupt in bad {
            self.found_corrupt(corrupt);
        }
        good.iter()
            .filter(|record| self.publish(Published::from(*record)))
            .count()
    }

    /// Records a version found corrupt when read from the store: when it is
    /// newer than the group's head, the group is degraded until a newer
    /// version is published.
    pub fn found_corrupt(&self, corrupt: Corrupt) {
        let served = self.head(&corrupt.group).map_or(0, |h| h.version);
        self.corrupt.found(corrupt, served);
    }

    /// What the hub knows to be corrupt (degraded groups, versions found).
    pub fn corrupt(&self) -> &CorruptHeads {
        &self.corrupt
    }

    /// Like [`Self::publish_prepared`], but the group's receivers are woken
    /// only when the returned [`Wake`] is dropped (or after
    /// [`WAKE_DEFERRED_AT_MOST`]); the version is the head at once. `None`
    /// when it was not newer than the head (nothing to wake).
    pub async fn publish_prepared_deferred(&self, mut published: Published) -> Option<Wake> {
        if let Some(current) = self.head(&published.group)
            && published.version > current.version
        {
            published.bases = bases_after(&current);
            let _ = published.delta_from(current.version, &current.hash).await;
        }
        let (group, version) = (published.group.clone(), published.version);
        let sender = self.with_channel(&group, |channel| {
            Self::publish_quietly(channel, published).then(|| channel.sender.clone())
        })?;
        self.corrupt.superseded(&group, version);
        Some(Wake::new(sender))
    }

    fn publish_to(channel: &Channel, published: Published) -> bool {
        let sent = Self::publish_quietly(channel, published);
        if sent {
            // The head was set without a notification: this one wakes the
            // receivers (and marks the value changed for them).
            channel.sender.send_modify(|_| {});
        }
        sent
    }

    /// Makes `published` the head if it is newer, **without waking** the
    /// receivers: a receiver that reads the head sees it, `changed()` fires
    /// only at the next notification. Returns whether it became the head.
    fn publish_quietly(channel: &Channel, mut published: Published) -> bool {
        let mut newer = false;
        channel.sender.send_if_modified(|head| {
            newer = head
                .as_ref()
                .is_none_or(|current| published.version > current.version)
                && published.version > channel.deleted_through.load(Ordering::Relaxed);
            if newer {
                // Bases prepared against this very head are kept (with the
                // delta `publish_prepared` built); otherwise they are made
                // from the head the version actually follows.
                let prepared_for = published.bases.first().map(|b| (b.version, &b.hash));
                let current = head.as_deref().map(|h| (h.version, &h.hash));
                if prepared_for != current {
                    published.bases = head.as_deref().map(bases_after).unwrap_or_default();
                }
                *head = Some(Arc::new(published));
            }
            // No notification here: the caller wakes the receivers.
            false
        });
        if newer {
            channel.published.fetch_add(1, Ordering::Relaxed);
        }
        newer
    }

    /// Like [`Self::publish`], but first builds the delta from the current
    /// head to `published` (on the blocking pool), so the streams it wakes
    /// find it ready instead of all waiting for its first build. A push is
    /// answered after this: the delta costs its one build before the version
    /// counts as accepted, not while ten thousand agents wait.
    pub async fn publish_prepared(&self, mut published: Published) -> bool {
        if let Some(current) = self.head(&published.group)
            && published.version > current.version
        {
            published.bases = bases_after(&current);
            // Its result stays in the base's cell; `None` (not worth it) too.
            let _ = published.delta_from(current.version, &current.hash).await;
        }
        self.publish(published)
    }

    /// Forgets a deleted group's head **without waking anyone**: streams of
    /// the group keep the version they sent (and agents keep running it), a
    /// stream opened later is sent nothing until the group is pushed again,
    /// and that version (numbered after the deleted ones) goes to every
    /// stream as any newer head does. Returns whether the group had a head.
    ///
    /// `last_version` is the deleted group's last version: a head newer than
    /// it (a push that recreated the group after the store's delete) stays,
    /// and no version at or below it is published afterwards (a push stored
    /// before the delete but published after it), so the hub ends up with
    /// what the store holds in either order.
    pub fn forget(&self, group: &str, last_version: u64) -> bool {
        let forgot = self.with_channel(group, |channel| {
            let mut had = false;
            channel.sender.send_if_modified(|head| {
                channel
                    .deleted_through
                    .fetch_max(last_version, Ordering::Relaxed);
                if head.as_ref().is_some_and(|h| h.version <= last_version) {
                    had = head.take().is_some();
                }
                // No notification: a deletion is nothing to send.
                false
            });
            had
        });
        self.corrupt.forget(group);
        forgot
    }

    /// A receiver of the group's head, marked as seen: `changed()` fires on
    /// the next version. Creates the group's channel if needed, so an agent
    /// may watch a group before its first push.
    pub fn subscribe(&self, group: &str) -> watch::Receiver<Head> {
        let mut rx = self.with_channel(group, |channel| channel.sender.subscribe());
        rx.mark_unchanged();
        rx
    }

    /// Drops the channels of groups that have no version and nobody
    /// watching: any agent may name any valid group, and without this every
    /// name ever named would stay in memory. Returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let mut groups = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        let before = groups.len();
        // A deleted group's channel is kept: it remembers which versions
        // were deleted (one per `vanectl delete`, an operator's action).
        groups.retain(|_, channel| {
            channel.sender.borrow().is_some()
                || channel.sender.receiver_count() > 0
                || channel.deleted_through.load(Ordering::Relaxed) > 0
        });
        before - groups.len()
    }

    /// Whether some client (a stream, or a held poll) waits on the group.
    pub fn watched(&self, group: &str) -> bool {
        self.read()
            .get(group)
            .is_some_and(|channel| channel.sender.receiver_count() > 0)
    }

    /// The group's head.
    pub fn head(&self, group: &str) -> Head {
        self.read()
            .get(group)
            .and_then(|channel| channel.sender.borrow().clone())
    }

    /// The head of every group that has one, sorted by group.
    pub fn heads(&self) -> Vec<Arc<Published>> {
        let mut heads: Vec<_> = self
            .read()
            .values()
            .filter_map(|channel| channel.sender.borrow().clone())
            .collect();
        heads.sort_by(|a, b| a.group.cmp(&b.group));
        heads
    }

    /// Versions published per group since the server started (seeding
    /// included), sorted by group.
    pub fn published_counts(&self) -> Vec<(String, u64)> {
        let mut out: Vec<_> = self
            .read()
            .iter()
            .map(|(g, c)| (g.clone(), c.published.load(Ordering::Relaxed)))
            .collect();
        out.sort();
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Channel>> {
        // A poisoned lock only means a panic elsewhere; the map is still whole.
        self.groups.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the group's channel (created if needed) while holding
    /// the map's lock, so [`Self::sweep`] can never drop a channel between a
    /// lookup and a publish or subscribe on it. `f` must not block: it is a
    /// watch send or subscribe.
    fn with_channel<T>(&self, group: &str, f: impl FnOnce(&Channel) -> T) -> T {
        if let Some(channel) = self.read().get(group) {
            return f(channel);
        }
        let mut groups = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        let channel = groups.entry(group.to_owned()).or_insert_with(|| Channel {
            sender: watch::Sender::new(None),
            published: Arc::new(AtomicU64::new(0)),
            deleted_through: Arc::new(AtomicU64::new(0)),
        });
        f(channel)
    }
}

/// The delta bases of the version published after `previous`: `previous`
/// itself, then its own bases, at most [`DELTA_BASES`] in all. Only bytes are
/// shared; deltas are computed anew against the new head.
fn bases_after(previous: &Published) -> Vec<Base> {
    std::iter::once((previous.version, &previous.hash, &previous.snapshot))
        .chain(
            previous
                .bases
                .iter()
                .map(|b| (b.version, &b.hash, &b.snapshot)),
        )
        .take(DELTA_BASES)
        .map(|(version, hash, snapshot)| Base {
            version,
            hash: hash.clone(),
            snapshot: snapshot.clone(),
            delta: OnceCell::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(group: &str, version: u64) -> Published {
        Published::new(
            group.into(),
            version,
            format!("h{version}"),
            1,
            Bytes::from(vec![version as u8]),
        )
    }

    #[tokio::test]
    async fn a_deferred_publish_is_the_head_at_once_and_wakes_on_drop() {
        let hub = Hub::new();
        assert!(hub.publish(published("g", 1)));
        let mut rx = hub.subscribe("g");
        let wake = hub
            .publish_prepared_deferred(published("g", 2))
            .await
            .expect("newer: published");
        // The head already, for every reader; nobody woken yet.
        assert_eq!(hub.head("g").unwrap().version, 2);
        assert!(!rx.has_changed().unwrap());
        let copy = wake.clone();
        drop(wake);
        assert!(rx.has_changed().unwrap(), "the first drop wakes");
        assert_eq!(rx.borrow_and_update().as_ref().unwrap().version, 2);
        drop(copy);
        assert!(!rx.has_changed().unwrap(), "once only");
        // Not newer: nothing to wake, the head stays.
        assert!(
            hub.publish_prepared_deferred(published("g", 2))
                .await
                .is_none()
        );
        assert!(
            hub.publish_prepared_deferred(published("g", 1))
                .await
                .is_none()
        );
        assert_eq!(hub.head("g").unwrap().version, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_never_dropped_still_wakes_after_the_deadline() {
        let hub = Hub::new();
        let mut rx = hub.subscribe("g");
        let wake = hub.publish_prepared_deferred(published("g", 1)).await;
        let started = Instant::now();
        rx.changed().await.unwrap();
        assert!(started.elapsed() >= WAKE_DEFERRED_AT_MOST);
        assert_eq!(rx.borrow().as_ref().unwrap().version, 1);
        drop(wake);
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

    /// A record whose body is `marker`'s snapshot, under `hash_of`'s hash.
    fn record(group: &str, version: u64, marker: &str, hash_of: &str) -> VersionRecord {
        let encode = |marker: &str| {
            let spec = vane_model::parse_file(
                format!(r#"{{"values": {{"m": "{marker}"}}}}"#).as_bytes(),
                vane_model::Format::Json,
            )
            .unwrap();
            vane_model::validate(spec).unwrap().encode_and_hash()
        };
        VersionRecord {
            candidate: None,
            group: group.into(),
            version,
            hash: encode(hash_of).1.to_hex(),
            message: String::new(),
            author: String::new(),
            created_at_unix_ms: 0,
            rollback_of: None,
            snapshot: Bytes::from(encode(marker).0),
        }
    }

    #[tokio::test]
    async fn only_verified_records_are_published_and_a_corrupt_head_degrades_its_group() {
        let hub = Hub::new();
        let seeded = hub
            .publish_verified(vec![
                record("a", 7, "a7", "a7"),
                record("b", 3, "b3", "b3"),
                record("c", 2, "c2", "something else"),
            ])
            .await;
        assert_eq!(seeded, 2);
        let heads: Vec<(String, u64)> = hub
            .heads()
            .iter()
            .map(|p| (p.group.clone(), p.version))
            .collect();
        assert_eq!(heads, vec![("a".into(), 7), ("b".into(), 3)]);
        assert!(hub.head("c").is_none());
        assert_eq!(hub.corrupt().head("c").map(|c| c.version), Some(2));

        // From the feed: a corrupt newer version leaves the head alone.
        let mut watching = hub.subscribe("a");
        assert_eq!(
            hub.publish_verified(vec![record("a", 8, "a8", "x")]).await,
            0
        );
        assert!(!watching.has_changed().unwrap());
        assert_eq!(hub.head("a").unwrap().version, 7);
        assert_eq!(hub.corrupt().head("a").map(|c| c.version), Some(8));
        // A good newer version is published and heals the group.
        assert_eq!(
            hub.publish_verified(vec![record("a", 9, "a9", "a9")]).await,
            1
        );
        assert_eq!(watching.borrow_and_update().as_ref().unwrap().version, 9);
        assert!(hub.corrupt().head("a").is_none());
        assert_eq!(
            hub.corrupt()
                .heads()
                .iter()
                .map(|c| c.group.as_str())
                .collect::<Vec<_>>(),
            vec!["c"]
        );
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

    fn real(version: u64, routes: usize, timeout: u64) -> Published {
        let routes: Vec<String> = (0..routes)
            .map(|i| {
                format!(
                    r#"{{"match": {{"path_prefix": "/r{i}"}}, "cluster": "c", "timeout_ms": {}}}"#,
                    if i == 0 { timeout } else { 1000 }
                )
            })
            .collect();
        let json = format!(
            r#"{{"clusters": [{{"name": "c", "endpoints": [{{"address": "127.0.0.1:1"}}]}}],
                "route_tables": [{{"name": "main", "routes": [{}]}}]}}"#,
            routes.join(",")
        );
        let spec = vane_model::parse_file(json.as_bytes(), vane_model::Format::Json).unwrap();
        let s = vane_model::validate(spec).unwrap();
        Published::new(
            "g".into(),
            version,
            s.content_hash().to_hex(),
            0,
            Bytes::from(s.encode()),
        )
    }

    #[test]
    fn keeps_a_bounded_number_of_bases() {
        let hub = Hub::new();
        hub.publish(published("g", 1));
        assert!(hub.head("g").unwrap().delta_bases().is_empty());
        for v in 2..=10 {
            hub.publish(published("g", v));
        }
        assert_eq!(hub.head("g").unwrap().delta_bases(), vec![9, 8, 7, 6]);
        assert_eq!(hub.published_counts(), vec![("g".to_owned(), 10)]);
    }

    #[tokio::test]
    async fn deltas_are_built_once_and_shared() {
        let hub = Hub::new();
        let v1 = real(1, 50, 1000);
        let h1 = v1.hash.clone();
        hub.publish(v1);
        hub.publish(real(2, 50, 2000));
        let head = hub.head("g").unwrap();
        let a = head.delta_from(1, &h1).await.expect("a delta from 1");
        let b = head.delta_from(1, &h1).await.unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not rebuilt");
        assert!(a.len() * 10 < head.snapshot.len());
        // Unknown base, or the right number with another hash: no delta.
        assert!(head.delta_from(7, &h1).await.is_none());
        assert!(head.delta_from(1, "other").await.is_none());

        // The first route changed and routes were added at the end: the
        // splice covers the whole table, so the delta is not worth sending.
        hub.publish(real(3, 60, 7));
        let head = hub.head("g").unwrap();
        let h2 = real(2, 50, 2000).hash;
        assert!(head.delta_from(2, &h2).await.is_none());
    }

    #[tokio::test]
    async fn prepared_deltas_are_ready_when_published() {
        let hub = Hub::new();
        let v1 = real(1, 50, 1000);
        let h1 = v1.hash.clone();
        hub.publish(v1);
        assert!(hub.publish_prepared(real(2, 50, 2000)).await);
        let head = hub.head("g").unwrap();
        assert_eq!(head.delta_bases(), vec![1]);
        let ready = head.bases[0]
            .delta
            .get()
            .expect("built before publication")
            .clone()
            .expect("worth sending");
        let got = head.delta_from(1, &h1).await.unwrap();
        assert_eq!(got.as_ptr(), ready.as_ptr(), "not built again");
        // Prepared against a head that moved on meanwhile: bases rebuilt.
        let mut stale = real(3, 50, 3000);
        stale.bases = bases_after(&real(1, 50, 1000));
        assert!(hub.publish(stale));
        assert_eq!(hub.head("g").unwrap().delta_bases(), vec![2, 1]);
        // Not newer: nothing happens.
        assert!(!hub.publish_prepared(real(3, 50, 9)).await);
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    fn version(group: &str, v: u64) -> Published {
        Published::new(group.into(), v, format!("h{v}"), 0, Bytes::new())
    }

    #[test]
    fn a_delete_and_a_racing_push_end_as_the_store_does() {
        let hub = Hub::new();
        let rx = hub.subscribe("edge");
        assert!(hub.publish(version("edge", 3)));
        // The delete's store write removed 1..=4 (a push stored 4 just
        // before it), then the push publishes 4 after the forget: refused.
        assert!(hub.forget("edge", 4));
        assert!(!hub.publish(version("edge", 4)));
        assert!(hub.head("edge").is_none());
        // A deleted group's channel survives a sweep, so it keeps refusing.
        drop(rx);
        assert_eq!(hub.sweep(), 0);
        assert!(!hub.publish(version("edge", 2)));
        // The group pushed again continues the sequence and is served.
        assert!(hub.publish(version("edge", 5)));
        // A push that recreated the group (6, stored after the store's
        // delete of 1..=5) and was published before a late forget stays.
        assert!(hub.publish(version("edge", 6)));
        assert!(!hub.forget("edge", 5));
        assert_eq!(hub.head("edge").map(|h| h.version), Some(6));
    }

    #[test]
    fn sweep_drops_only_empty_unwatched_groups() {
        let hub = Hub::new();
        let watched = hub.subscribe("watched");
        drop(hub.subscribe("gone"));
        hub.publish(Published::new(
            "pushed".into(),
            1,
            "h".into(),
            0,
            Bytes::new(),
        ));
        assert_eq!(hub.sweep(), 1);
        assert!(hub.head("pushed").is_some());
        // The watched group's channel is still the one its receiver listens on.
        hub.publish(Published::new(
            "watched".into(),
            1,
            "h".into(),
            0,
            Bytes::new(),
        ));
        assert!(watched.has_changed().unwrap());
    }
}
