//! Whether this replica reaches its store, as its agents are told: a
//! replica cut off from etcd keeps streaming what it has, but what it has
//! may no longer be the group's head, so its watch streams say so
//! (`store_unreachable` on every response, and store notices; see
//! docs/protocol.md#store-reachability).
//!
//! One task polls [`Store::health`] (cheap: no I/O, it reports what the
//! store's last operations saw) and publishes a change on a latest-wins
//! `watch` channel every stream subscribes to. Only clustered stores are
//! followed: a single server is the only writer of its store, so what it
//! streams is the head even while it cannot write.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vane_store::Store;

/// How often the store's health is read. A replica cut off from etcd
/// notices within etcd's request timeout (3 s) anyway; this adds little.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// Whether the replica reaches its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreReach {
    /// It does (or it is the only writer of its store).
    #[default]
    Reachable,
    /// It has not since `since` (when this replica first saw it fail).
    Unreachable {
        /// When the store was first seen degraded.
        since: Instant,
    },
}

impl StoreReach {
    /// The response fields: `store_unreachable` and `store_unreachable_ms`
    /// as of `now`.
    pub fn fields(self, now: Instant) -> (bool, u64) {
        match self {
            StoreReach::Reachable => (false, 0),
            StoreReach::Unreachable { since } => (
                true,
                u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }

    /// Whether the store is reachable.
    pub fn is_reachable(self) -> bool {
        self == StoreReach::Reachable
    }
}

/// Follows `store`'s health into `reach` until `stop` is cancelled.
pub async fn follow(
    store: Arc<dyn Store>,
    reach: watch::Sender<StoreReach>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let degraded = store.health().degraded;
        let was = *reach.borrow();
        match (was, degraded) {
            (StoreReach::Reachable, Some(reason)) => {
                tracing::warn!(%reason, "the store is unreachable; telling this replica's agents");
                reach.send_replace(StoreReach::Unreachable {
                    since: Instant::now(),
                });
            }
            (StoreReach::Unreachable { since }, None) => {
                tracing::info!(after = ?since.elapsed(), "the store is reachable again; telling this replica's agents");
                reach.send_replace(StoreReach::Reachable);
            }
            _ => {}
        }
    }
}
