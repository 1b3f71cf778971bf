//! Retention: a background task that keeps each group's history to what
//! `--retain-versions` and `--retain-age` allow, never removing a head or a
//! version an agent runs (its last ACK, and what it was last sent), on
//! either store. Version numbers stay taken (see `vane_store::Store::prune`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use vane_store::{Pinned, Retention, Store};

use crate::agents::AgentRegistry;
use crate::rollout::driver::Rollouts;

/// Versions of each group always kept, by default.
pub const DEFAULT_RETAIN_VERSIONS: u64 = 1000;
/// Versions younger than this are always kept, by default.
pub const DEFAULT_RETAIN_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often retention runs, by default.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// What the task needs.
pub struct Task {
    /// The store to prune.
    pub store: Arc<dyn Store>,
    /// This replica's agents.
    pub agents: Arc<AgentRegistry>,
    /// What to keep.
    pub retention: Retention,
    /// How often to run.
    pub interval: Duration,
    /// Versions removed so far (`vane_control_pruned_versions`).
    pub pruned: Counter,
    /// Running rollouts: their stable and candidate versions are kept.
    pub rollouts: Option<Arc<Rollouts>>,
}

impl Task {
    /// Runs a pass every `interval` (the first one after `interval`) until
    /// `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // A pass is bounded by the store's own timeouts; stopping waits
            // for the one in progress.
            self.pass().await;
        }
    }

    async fn pass(&self) {
        let Some(pinned) = self.pinned().await else {
            return;
        };
        match self.store.prune(self.retention, &pinned).await {
            Ok(report) if report.versions > 0 => {
                self.pruned.inc_by(report.versions);
                tracing::info!(
                    versions = report.versions,
                    groups = report.groups,
                    keep_versions = self.retention.keep_versions,
                    keep_age_s = self.retention.keep_age.as_secs(),
                    "retention removed old versions"
                );
            }
            Ok(_) => {}
            // Read-only or away: the next pass tries again.
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    }

    /// The versions agents run, here and (clustered) at the other
    /// replicas; `None` when the other replicas' cannot be read, since
    /// pruning then could remove what one of their agents runs.
    async fn pinned(&self) -> Option<Pinned> {
        let mut records = self.agents.list(None);
        if let Some(directory) = self.store.agent_directory() {
            match directory.others(None).await {
                Ok(others) => records.extend(others.into_iter().map(|a| a.record)),
                Err(e) => {
                    tracing::debug!(error = %e, "retention waits: the other replicas' agents are unknown");
                    return None;
                }
            }
        }
        let mut pinned = Pinned::new();
        for (group, version) in self.rollouts.iter().flat_map(|r| r.pinned()) {
            pinned.entry(group).or_default().insert(version);
        }
        for r in records {
            let versions = pinned.entry(r.group).or_default();
            for v in [r.acked_version, r.sent_version] {
                if v > 0 {
                    versions.insert(v);
                }
            }
        }
        Some(pinned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::NodeInfo;
    use vane_store::RedbStore;
    use vane_store::suite::new_version;

    #[tokio::test]
    async fn keeps_what_agents_run_and_counts_what_it_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).await.unwrap());
        for i in 1..=10 {
            store
                .push(new_version("edge", format!("v{i}").as_bytes()))
                .await
                .unwrap();
        }
        let agents = Arc::new(AgentRegistry::new(Duration::from_secs(3600)));
        let node = NodeInfo {
            client: "vane-agent".to_owned(),
            id: "n1".into(),
            group: "edge".into(),
            labels: Default::default(),
            agent_build: String::new(),
        };
        let key = agents.connect(&node, "peer", None);
        agents.record_sent(&key, 3);
        agents.record_ack(&key, 3, "hash-of-v3");
        let task = Task {
            store: Arc::clone(&store),
            agents,
            retention: Retention {
                keep_versions: 2,
                keep_age: Duration::ZERO,
            },
            interval: Duration::from_secs(1),
            pruned: Counter::default(),
            rollouts: None,
        };
        task.pass().await;
        let kept: Vec<u64> = store
            .history("edge", 0)
            .await
            .unwrap()
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(kept, [10, 9, 3]);
        assert_eq!(task.pruned.get(), 7);
        assert_eq!(store.pruned("edge").await.unwrap(), 7);
    }
}

#[cfg(test)]
mod rollout_tests {
    use super::*;
    use crate::hub::Hub;
    use crate::rollout::service::Start;
    use crate::rollout::spec::Spec;
    use crate::targets::Cohorts;
    use vane_store::RedbStore;
    use vane_store::suite::new_version;

    #[tokio::test]
    async fn a_running_rollouts_stable_version_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).await.unwrap());
        for i in 1..=5 {
            store
                .push(new_version("edge", format!("v{i}").as_bytes()))
                .await
                .unwrap();
        }
        let agents = Arc::new(AgentRegistry::new(Duration::from_secs(3600)));
        let rollouts = Rollouts::new(
            Arc::clone(&store),
            Arc::new(Hub::new()),
            Arc::new(Cohorts::new()),
            Arc::clone(&agents),
            "r".into(),
            None,
        );
        let candidate = new_version("edge", b"v6");
        rollouts
            .start(Start {
                group: "edge".into(),
                snapshot: candidate.snapshot,
                hash: candidate.hash,
                spec: Spec::try_from(vane_proto::RolloutSpec {
                    steps: vec![100],
                    ..vane_proto::RolloutSpec::default()
                })
                .unwrap(),
                message: String::new(),
                author: String::new(),
                expected_version: None,
            })
            .await
            .unwrap();
        let task = |rollouts: Option<Arc<Rollouts>>| Task {
            store: Arc::clone(&store),
            agents: Arc::clone(&agents),
            retention: Retention {
                keep_versions: 1,
                keep_age: Duration::ZERO,
            },
            interval: Duration::from_secs(1),
            pruned: Counter::default(),
            rollouts,
        };
        let kept = || async {
            let h = store.history("edge", 0).await.unwrap();
            h.iter().map(|m| m.version).collect::<Vec<u64>>()
        };
        // The stable version (5) is kept although only the head (6) should be.
        task(Some(Arc::clone(&rollouts))).pass().await;
        assert_eq!(kept().await, [6, 5]);
        // Without the rollout's pins it would go.
        task(None).pass().await;
        assert_eq!(kept().await, [6]);
    }
}
