//! The change feed: every head any replica creates and every group any
//! replica deletes, in etcd's revision order, resumed after a broken watch
//! and re-read after a compaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use etcd_client::{EventType, WatchOptions, WatchStream};
use tokio::time::Instant;
use vane_store::{FeedEvent, HeadFeed, StoreError};

use crate::failure::*;
use crate::layout::*;
use crate::shared::*;

/// Where the feed is.
pub(crate) enum FeedState {
    /// Read every head, then watch from the next revision.
    Resync { attempt: u32 },
    /// Open a watch from `from`.
    Watch { from: i64, attempt: u32 },
    /// Watching; `next` is the first revision not yet reported. `resumed`:
    /// this watch replaces one that was lost, which is reported once etcd
    /// confirms it.
    Streaming {
        stream: Box<WatchStream>,
        next: i64,
        resumed: bool,
    },
    /// Report `event`, then go on with `then` (a batch that both created
    /// heads and deleted groups, or a re-read that found deleted groups).
    Emit {
        event: Box<FeedEvent>,
        then: Box<FeedState>,
    },
    /// Wait, then go on.
    Backoff {
        until: Instant,
        then: Box<FeedState>,
    },
}

pub(crate) fn feed(shared: Arc<Shared>) -> HeadFeed {
    Box::pin(futures::stream::unfold(
        (shared, FeedState::Resync { attempt: 0 }),
        |(shared, state)| async move {
            let (event, state) = feed_step(&shared, state).await?;
            Some((event, (shared, state)))
        },
    ))
}

/// Advances the feed to its next event; `None` once the store is closed.
pub(crate) async fn feed_step(
    shared: &Shared,
    mut state: FeedState,
) -> Option<(FeedEvent, FeedState)> {
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return None;
        }
        state = match state {
            FeedState::Backoff { until, then } => {
                tokio::time::sleep_until(until).await;
                *then
            }
            FeedState::Emit { event, then } => return Some((*event, *then)),
            FeedState::Resync { attempt } => match shared.read_heads().await {
                Ok(read) => {
                    shared.link().feed = None;
                    let mut next = FeedState::Watch {
                        from: read.revision + 1,
                        attempt: 0,
                    };
                    // A group deleted while the feed was not looking is
                    // only a tombstone now: say so after the heads.
                    if !read.tombstones.is_empty() {
                        next = FeedState::Emit {
                            event: Box::new(FeedEvent::Deleted(read.tombstones)),
                            then: Box::new(next),
                        };
                    }
                    return Some((FeedEvent::Resynced(read.records), next));
                }
                Err(error) => {
                    return Some(lost(
                        shared,
                        error,
                        attempt,
                        FeedState::Resync {
                            attempt: attempt + 1,
                        },
                    ));
                }
            },
            FeedState::Watch { from, attempt } => {
                let options = WatchOptions::new().with_prefix().with_start_revision(from);
                let mut client = shared
                    .client
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                let opened = tokio::time::timeout(
                    shared.config.request_timeout,
                    client.watch(shared.keys.versions(), Some(options)),
                )
                .await;
                match opened {
                    Ok(Ok(stream)) => FeedState::Streaming {
                        stream: Box::new(stream),
                        next: from,
                        resumed: attempt > 0,
                    },
                    Ok(Err(e)) => {
                        let error = StoreError::Degraded(format!(
                            "watching etcd at {}: {}",
                            shared.endpoints(),
                            shared.explain(&e)
                        ));
                        return Some(lost(
                            shared,
                            error,
                            attempt,
                            FeedState::Watch {
                                from,
                                attempt: attempt + 1,
                            },
                        ));
                    }
                    Err(_) => {
                        let error = StoreError::Degraded(format!(
                            "watching etcd: {}",
                            shared.unreachable(shared.config.request_timeout, None)
                        ));
                        return Some(lost(
                            shared,
                            error,
                            attempt,
                            FeedState::Watch {
                                from,
                                attempt: attempt + 1,
                            },
                        ));
                    }
                }
            }
            FeedState::Streaming {
                mut stream,
                next,
                resumed,
            } => {
                let ended = match stream.message().await {
                    Ok(Some(resp)) => Ok(resp),
                    Ok(None) => Err("the watch stream ended".to_owned()),
                    Err(e) => Err(shared.explain(&e)),
                };
                let resp = match ended {
                    Ok(resp) => resp,
                    Err(why) => {
                        let error = StoreError::Degraded(format!(
                            "watching etcd at {}: {why}",
                            shared.endpoints()
                        ));
                        return Some(lost(
                            shared,
                            error,
                            0,
                            FeedState::Watch {
                                from: next,
                                attempt: 1,
                            },
                        ));
                    }
                };
                if resp.compact_revision() > 0 {
                    tracing::warn!(
                        from = next,
                        compacted = resp.compact_revision(),
                        "etcd compacted the history this replica had not read yet; re-reading every head"
                    );
                    FeedState::Resync { attempt: 0 }
                } else if resp.canceled() {
                    let error = StoreError::Degraded(format!(
                        "etcd cancelled the watch: {}",
                        resp.cancel_reason()
                    ));
                    return Some(lost(
                        shared,
                        error,
                        0,
                        FeedState::Watch {
                            from: next,
                            attempt: 1,
                        },
                    ));
                } else {
                    if resp.created() {
                        shared.link().feed = None;
                        tracing::debug!(from = next, "watching etcd");
                        if resumed {
                            let state = FeedState::Streaming {
                                stream,
                                next,
                                resumed: false,
                            };
                            return Some((FeedEvent::Resumed, state));
                        }
                    }
                    // Newest version per group in this batch.
                    let mut latest: BTreeMap<String, (u64, StoredVersion)> = BTreeMap::new();
                    let mut last_revision = None;
                    // Groups some of whose versions were removed: by a
                    // delete of the group, or by retention (told apart by
                    // the head key, below).
                    let mut removed: BTreeSet<String> = BTreeSet::new();
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        last_revision = Some(kv.mod_revision());
                        let Some((group, version)) = shared.keys.parse_version(kv.key()) else {
                            continue;
                        };
                        if event.event_type() != EventType::Put {
                            removed.insert(group);
                            continue;
                        }
                        match decode_version(&group, version, kv.value()) {
                            Ok(stored) => {
                                if latest.get(&group).is_none_or(|(v, _)| version > *v) {
                                    latest.insert(group, (version, stored));
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "skipping a version record"),
                        }
                    }
                    let deadline = shared.deadline();
                    let mut records = Vec::with_capacity(latest.len());
                    for (group, (version, stored)) in latest {
                        match shared
                            .complete_for_feed(&group, version, stored, deadline)
                            .await
                        {
                            Ok(record) => records.push(record),
                            Err(e @ StoreError::Corrupt(_)) => {
                                tracing::error!(error = %e, "skipping a version whose body is unreadable");
                            }
                            Err(error) => {
                                // Read the batch again once etcd answers.
                                return Some(lost(
                                    shared,
                                    error,
                                    0,
                                    FeedState::Watch {
                                        from: next,
                                        attempt: 1,
                                    },
                                ));
                            }
                        }
                    }
                    let mut deleted = Vec::new();
                    for group in removed {
                        match shared.read_head(&group).await {
                            Ok(Some(head)) if head.deleted => deleted.push((group, head.version)),
                            Ok(_) => {}
                            Err(error) => {
                                // Read the batch again once etcd answers.
                                return Some(lost(
                                    shared,
                                    error,
                                    0,
                                    FeedState::Watch {
                                        from: next,
                                        attempt: 1,
                                    },
                                ));
                            }
                        }
                    }
                    let next = last_revision.map_or(next, |r| r + 1);
                    let mut state = FeedState::Streaming {
                        stream,
                        next,
                        resumed: false,
                    };
                    if !deleted.is_empty() {
                        state = FeedState::Emit {
                            event: Box::new(FeedEvent::Deleted(deleted)),
                            then: Box::new(state),
                        };
                    }
                    if !records.is_empty() {
                        return Some((FeedEvent::Heads(records), state));
                    }
                    state
                }
            }
        };
    }
}

/// The feed lost etcd: note it and retry after a pause.
pub(crate) fn lost(
    shared: &Shared,
    error: StoreError,
    attempt: u32,
    then: FeedState,
) -> (FeedEvent, FeedState) {
    shared.link().feed = Some(match &error {
        StoreError::Degraded(e) => e.clone(),
        other => other.to_string(),
    });
    let retry_in = backoff(attempt, FEED_RETRY_CAP);
    (
        FeedEvent::Lost { error, retry_in },
        FeedState::Backoff {
            until: Instant::now() + retry_in,
            then: Box::new(then),
        },
    )
}
