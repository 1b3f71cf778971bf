//! Sharing this replica's agents with the other replicas of a clustered
//! control plane: one task ([`replicate`]) writes the registry's changed
//! records to the store's [`AgentDirectory`] under this replica's lease, and
//! [`merge`] combines them with the other replicas' for `Status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vane_backoff::{ExponentialBackoff, Jitter};
use vane_store::agents::{AgentDirectory, AgentRecord, SharedAgent};

use crate::agents::AgentRegistry;

/// How long the replication task waits after a change before writing, so an
/// agent's "sent" and its ACK a few milliseconds later make one write.
pub const PUBLISH_COALESCE: Duration = Duration::from_millis(100);
/// First wait before retrying a failed write; it doubles per failure.
const PUBLISH_RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest wait between retries of a failed write.
const PUBLISH_RETRY_CAP: Duration = Duration::from_secs(5);
/// How long shutdown waits for the lease to be revoked.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes `registry`'s changes to `directory` as replica `replica` and
/// keeps the replica's lease alive, until `stop`; then withdraws the
/// replica's records. Failed writes are retried with backoff, always with
/// the agents' latest state.
pub async fn replicate(
    registry: Arc<AgentRegistry>,
    directory: Arc<dyn AgentDirectory>,
    replica: String,
    stop: CancellationToken,
) {
    registry.track_changes();
    let mut renew = tokio::time::interval(directory.renew_every());
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch = 0u64;
    let mut failures = 0u32;
    let mut renew_failing = false;
    let mut retry_at: Option<Instant> = None;
    loop {
        let publish_now = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = renew.tick() => {
                match directory.renew().await {
                    Ok(e) => {
                        if std::mem::take(&mut renew_failing) {
                            tracing::info!("renewing this replica's lease again");
                        }
                        note_epoch(&registry, &mut epoch, e);
                    }
                    // Once per outage: the store's health says the rest.
                    Err(e) if !renew_failing => {
                        renew_failing = true;
                        tracing::warn!(error = %e, "cannot renew this replica's lease");
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot renew this replica's lease"),
                }
                false
            }
            () = sleep_until_opt(retry_at) => {
                retry_at = None;
                true
            }
            () = registry.changed(), if retry_at.is_none() => {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(PUBLISH_COALESCE) => {}
                }
                true
            }
        };
        if !publish_now {
            continue;
        }
        let changes = registry.take_changes(&replica);
        if changes.is_empty() {
            continue;
        }
        match directory.publish(&changes).await {
            Ok(e) => {
                if std::mem::take(&mut failures) > 0 {
                    tracing::info!("sharing agent status with the other replicas again");
                }
                note_epoch(&registry, &mut epoch, e);
            }
            Err(e) => {
                registry.requeue(&changes);
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                // Once per outage at warn: the store's health says the rest.
                if failures == 1 {
                    tracing::warn!(
                        error = %e,
                        agents = changes.len(),
                        retry_in = ?delay,
                        "cannot share agent status with the other replicas"
                    );
                } else {
                    tracing::debug!(error = %e, retry_in = ?delay, "still cannot share agent status");
                }
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
    match tokio::time::timeout(WITHDRAW_TIMEOUT, directory.withdraw()).await {
        Ok(Ok(())) => tracing::debug!("withdrew this replica's agent records"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot withdraw this replica's agent records; they expire with its lease")
        }
        Err(_) => tracing::warn!(
            "withdrawing this replica's agent records timed out; they expire with its lease"
        ),
    }
}

fn note_epoch(registry: &AgentRegistry, epoch: &mut u64, new: u64) {
    if new != *epoch {
        if *epoch != 0 {
            tracing::warn!("this replica's lease was replaced; sharing every agent again");
            registry.mark_all_changed();
        }
        *epoch = new;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// [`PUBLISH_RETRY_MIN`], doubling per failure, at most
/// [`PUBLISH_RETRY_CAP`]; no jitter: one writer per replica, nobody to
/// collide with.
fn retry_delay(failures: u32) -> Duration {
    ExponentialBackoff::new(PUBLISH_RETRY_MIN, PUBLISH_RETRY_CAP, Jitter::None)
        .map_or(PUBLISH_RETRY_CAP, |b| b.delay(failures.saturating_sub(1)))
}

/// This replica's agents merged with the other replicas': one entry per
/// (group, node id), sorted. An agent that moved keeps an entry on the
/// replica it left until that one forgets it (or dies), so the entry shown
/// is the one with an open stream, else the most recently seen. Its
/// `sessions` is the sum over the replicas: each replica counts the streams
/// it held, so an agent that reconnects to another replica still adds one.
pub fn merge(local: Vec<AgentRecord>, replica: &str, others: Vec<SharedAgent>) -> Vec<SharedAgent> {
    let mut best: HashMap<(String, String), SharedAgent> = HashMap::new();
    let mut sessions: HashMap<(String, String), u64> = HashMap::new();
    let all = local
        .into_iter()
        .map(|record| SharedAgent {
            replica: replica.to_owned(),
            record,
        })
        .chain(others);
    for agent in all {
        let key = (agent.record.group.clone(), agent.record.node_id.clone());
        let total = sessions.entry(key.clone()).or_default();
        *total = total.saturating_add(agent.record.sessions);
        match best.get(&key) {
            Some(current) if !newer(&agent.record, &current.record) => {}
            _ => {
                best.insert(key, agent);
            }
        }
    }
    let mut out: Vec<SharedAgent> = best
        .into_iter()
        .map(|(key, mut agent)| {
            agent.record.sessions = sessions.get(&key).copied().unwrap_or_default();
            agent
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.record.group, &a.record.node_id).cmp(&(&b.record.group, &b.record.node_id))
    });
    out
}

/// Whether `a` describes the agent better than `b`: connected beats
/// disconnected, then the later stream, then the later sign of life.
fn newer(a: &AgentRecord, b: &AgentRecord) -> bool {
    (a.connected, a.connected_since_unix_ms, a.last_seen_unix_ms)
        > (b.connected, b.connected_since_unix_ms, b.last_seen_unix_ms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use vane_store::StoreError;
    use vane_store::agents::AgentChange;

    use super::*;
    use crate::agents::NodeInfo;

    #[test]
    fn failed_writes_back_off_from_250_ms_to_5_s() {
        let ms: Vec<u128> = (1..=7).map(|f| retry_delay(f).as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            client: "vane-agent".to_owned(),
            id: id.into(),
            group: "edge".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            agent_build: "test/1".into(),
        }
    }

    fn record() -> AgentRecord {
        AgentRecord {
            node_id: "n".into(),
            group: "g".into(),
            connected: true,
            ..AgentRecord::default()
        }
    }

    fn keys(changes: &[AgentChange]) -> Vec<(String, bool)> {
        changes
            .iter()
            .map(|c| (c.key().1.to_owned(), matches!(c, AgentChange::Put(_))))
            .collect()
    }

    #[test]
    fn merge_shows_the_open_stream() {
        let mut left = record();
        left.node_id = "moved".into();
        left.connected = false;
        left.connected_since_unix_ms = 10;
        left.last_seen_unix_ms = 50;
        left.sessions = 3;
        let mut joined = left.clone();
        joined.connected = true;
        joined.connected_since_unix_ms = 40;
        joined.sessions = 1;
        let mut elsewhere = record();
        elsewhere.node_id = "other".into();
        let merged = merge(
            vec![left],
            "a",
            vec![
                SharedAgent {
                    replica: "b".into(),
                    record: joined,
                },
                SharedAgent {
                    replica: "b".into(),
                    record: elsewhere,
                },
            ],
        );
        let shown: Vec<(&str, &str, bool)> = merged
            .iter()
            .map(|a| {
                (
                    a.record.node_id.as_str(),
                    a.replica.as_str(),
                    a.record.connected,
                )
            })
            .collect();
        assert_eq!(shown, vec![("moved", "b", true), ("other", "b", true)]);
        // Three streams on a, then one on b: four in all.
        assert_eq!(merged[0].record.sessions, 4);
    }

    /// A scripted directory: records what is published, fails on demand,
    /// and replaces its lease on demand.
    #[derive(Default)]
    struct FakeDirectory {
        published: Mutex<Vec<Vec<AgentChange>>>,
        failing: std::sync::atomic::AtomicBool,
        epoch: std::sync::atomic::AtomicU64,
        withdrawn: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl AgentDirectory for FakeDirectory {
        async fn publish(&self, changes: &[AgentChange]) -> Result<u64, StoreError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.failing.load(SeqCst) {
                return Err(StoreError::Degraded("etcd away".into()));
            }
            self.published.lock().unwrap().push(changes.to_vec());
            Ok(self.epoch.load(SeqCst).max(1))
        }
        async fn renew(&self) -> Result<u64, StoreError> {
            Ok(self.epoch.load(std::sync::atomic::Ordering::SeqCst).max(1))
        }
        fn renew_every(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn others(&self, _: Option<&str>) -> Result<Vec<SharedAgent>, StoreError> {
            Ok(Vec::new())
        }
        async fn withdraw(&self) -> Result<(), StoreError> {
            self.withdrawn
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replication_retries_and_republishes_after_a_new_lease() {
        use std::sync::atomic::Ordering::SeqCst;
        let reg = Arc::new(AgentRegistry::default());
        let dir = Arc::new(FakeDirectory::default());
        let stop = CancellationToken::new();
        let a = reg.connect(&node("a"), "", None);
        let task = tokio::spawn(replicate(
            Arc::clone(&reg),
            Arc::clone(&dir) as Arc<dyn AgentDirectory>,
            "r1".into(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(dir.published.lock().unwrap().len(), 1, "the initial state");

        // Failing writes are retried with the latest state.
        dir.failing.store(true, SeqCst);
        reg.record_ack(&a, 3, "h3");
        tokio::time::sleep(Duration::from_secs(2)).await;
        reg.record_ack(&a, 4, "h4");
        dir.failing.store(false, SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let last = dir.published.lock().unwrap().last().cloned().unwrap();
        match &last[..] {
            [AgentChange::Put(shared)] => assert_eq!(shared.record.acked_version, 4),
            other => panic!("{other:?}"),
        }

        // A replaced lease took every record along: all are written again.
        let before = dir.published.lock().unwrap().len();
        dir.epoch.store(2, SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        {
            let published = dir.published.lock().unwrap();
            assert!(published.len() > before, "nothing republished");
            assert_eq!(keys(published.last().unwrap()), vec![("a".into(), true)]);
        }

        stop.cancel();
        task.await.unwrap();
        assert!(dir.withdrawn.load(SeqCst));
    }
}
