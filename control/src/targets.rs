//! Which version each agent of a group should run while a rollout runs:
//! members of the cohort get the candidate, the others keep the stable
//! version ([`target`]). A group's cohort lives in a latest-wins channel
//! ([`Cohorts`]) next to the hub's head, so a stream re-decides when either
//! changes.
//!
//! The rule is safe by default: a head marked as a rollout's candidate is
//! sent to nobody until this server knows that rollout's cohort (a replica
//! that sees the candidate on the etcd feed before the rollout record), so
//! a candidate never reaches the whole fleet by a race.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use crate::hub::{Head, Published};

/// A group's rollout as its streams need it.
#[derive(Debug)]
pub struct Cohort {
    /// The rollout.
    pub rollout_id: String,
    /// Its candidate version.
    pub candidate_version: u64,
    /// Who gets what.
    pub phase: Phase,
}

/// Whether the rollout still splits the group.
#[derive(Debug)]
pub enum Phase {
    /// Members get the candidate; the others `stable`.
    Running {
        /// The cohort's node ids.
        members: HashSet<String>,
        /// The version the others keep (`None`: this server does not have
        /// it; they are sent nothing new).
        stable: Option<Arc<Published>>,
    },
    /// Completed: the candidate goes to everyone.
    Ended,
}

/// What a group's channel holds.
pub type CohortView = Option<Arc<Cohort>>;

/// The version `node` should be sent now, given the group's head and
/// cohort; `None`: nothing (no version yet, or a candidate whose cohort is
/// not known here).
pub fn target(head: &Head, cohort: &CohortView, node: &str) -> Head {
    let head = head.as_ref()?;
    let Some(mark) = &head.candidate else {
        return Some(Arc::clone(head));
    };
    let cohort = cohort
        .as_ref()
        .filter(|c| c.rollout_id == mark.rollout_id && c.candidate_version == head.version)?;
    match &cohort.phase {
        Phase::Ended => Some(Arc::clone(head)),
        Phase::Running { members, .. } if members.contains(node) => Some(Arc::clone(head)),
        Phase::Running { stable, .. } => stable.clone(),
    }
}

/// `"candidate"` or `"stable"` while `cohort` splits the group whose head
/// is `head`; `""` otherwise.
pub fn role(head: &Head, cohort: &CohortView, node: &str) -> &'static str {
    let splitting = head.as_ref().is_some_and(|h| {
        h.candidate.is_some()
            && cohort.as_ref().is_some_and(|c| {
                c.candidate_version == h.version && matches!(c.phase, Phase::Running { .. })
            })
    });
    match cohort.as_deref() {
        Some(Cohort {
            phase: Phase::Running { members, .. },
            ..
        }) if splitting => {
            if members.contains(node) {
                "candidate"
            } else {
                "stable"
            }
        }
        _ => "",
    }
}

/// The per-group cohort channels.
#[derive(Debug, Default)]
pub struct Cohorts {
    groups: RwLock<HashMap<String, watch::Sender<CohortView>>>,
}

impl Cohorts {
    /// No cohorts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the group's cohort; streams are woken only when it changed.
    pub fn set(&self, group: &str, cohort: CohortView) {
        self.with(group, |tx| {
            tx.send_if_modified(|current| {
                let same = match (current.as_deref(), cohort.as_deref()) {
                    (None, None) => true,
                    (Some(a), Some(b)) => same_cohort(a, b),
                    _ => false,
                };
                if !same {
                    *current = cohort;
                }
                !same
            });
        });
    }

    /// The group's cohort now.
    pub fn get(&self, group: &str) -> CohortView {
        self.read().get(group).and_then(|tx| tx.borrow().clone())
    }

    /// A receiver of the group's cohort, marked as seen.
    pub fn subscribe(&self, group: &str) -> watch::Receiver<CohortView> {
        let mut rx = self.with(group, watch::Sender::subscribe);
        rx.mark_unchanged();
        rx
    }

    /// Drops the channels nobody watches and that hold nothing.
    pub fn sweep(&self) {
        self.groups
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, tx| tx.borrow().is_some() || tx.receiver_count() > 0);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, watch::Sender<CohortView>>> {
        self.groups.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(&self, group: &str, f: impl FnOnce(&watch::Sender<CohortView>) -> T) -> T {
        if let Some(tx) = self.read().get(group) {
            return f(tx);
        }
        let mut groups = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        f(groups
            .entry(group.to_owned())
            .or_insert_with(|| watch::Sender::new(None)))
    }
}

fn same_cohort(a: &Cohort, b: &Cohort) -> bool {
    a.rollout_id == b.rollout_id
        && a.candidate_version == b.candidate_version
        && match (&a.phase, &b.phase) {
            (Phase::Ended, Phase::Ended) => true,
            (
                Phase::Running {
                    members: ma,
                    stable: sa,
                },
                Phase::Running {
                    members: mb,
                    stable: sb,
                },
            ) => ma == mb && sa.as_ref().map(|s| s.version) == sb.as_ref().map(|s| s.version),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use vane_store::CandidateOf;

    use super::*;

    fn published(version: u64, candidate: bool) -> Arc<Published> {
        Arc::new(
            Published::new("g".into(), version, format!("h{version}"), 1, Bytes::new())
                .with_candidate(candidate.then(|| CandidateOf {
                    rollout_id: "r".into(),
                    stable_version: version - 1,
                })),
        )
    }

    fn running(members: &[&str], stable: Option<Arc<Published>>) -> CohortView {
        Some(Arc::new(Cohort {
            rollout_id: "r".into(),
            candidate_version: 2,
            phase: Phase::Running {
                members: members.iter().map(|m| (*m).to_owned()).collect(),
                stable,
            },
        }))
    }

    fn version(head: &Head) -> Option<u64> {
        head.as_ref().map(|h| h.version)
    }

    #[test]
    fn members_get_the_candidate_and_the_others_the_stable_version() {
        let head = Some(published(2, true));
        let cohort = running(&["a"], Some(published(1, false)));
        assert_eq!(version(&target(&head, &cohort, "a")), Some(2));
        assert_eq!(version(&target(&head, &cohort, "b")), Some(1));
        assert_eq!(role(&head, &cohort, "a"), "candidate");
        assert_eq!(role(&head, &cohort, "b"), "stable");
    }

    #[test]
    fn a_candidate_goes_nowhere_until_its_cohort_is_known() {
        let head = Some(published(2, true));
        assert_eq!(version(&target(&head, &None, "a")), None);
        // Another rollout's cohort does not count.
        let other = Some(Arc::new(Cohort {
            rollout_id: "other".into(),
            candidate_version: 2,
            phase: Phase::Ended,
        }));
        assert_eq!(version(&target(&head, &other, "a")), None);
        // Without the stable version at hand, the others get nothing new.
        assert_eq!(version(&target(&head, &running(&[], None), "b")), None);
    }

    #[test]
    fn an_ended_rollout_or_a_newer_head_goes_to_everyone() {
        let ended = Some(Arc::new(Cohort {
            rollout_id: "r".into(),
            candidate_version: 2,
            phase: Phase::Ended,
        }));
        let head = Some(published(2, true));
        assert_eq!(version(&target(&head, &ended, "b")), Some(2));
        assert_eq!(role(&head, &ended, "b"), "");
        // The rollback's version is no candidate: everyone, whatever the cohort.
        let restored = Some(published(3, false));
        let cohort = running(&["a"], Some(published(1, false)));
        assert_eq!(version(&target(&restored, &cohort, "b")), Some(3));
        assert_eq!(role(&restored, &cohort, "b"), "");
        assert_eq!(version(&target(&None, &cohort, "b")), None);
    }

    #[tokio::test]
    async fn streams_wake_only_on_a_change() {
        let cohorts = Cohorts::new();
        let mut rx = cohorts.subscribe("g");
        cohorts.set("g", running(&["a"], None));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        cohorts.set("g", running(&["a"], None));
        assert!(!rx.has_changed().unwrap(), "same cohort: no wake-up");
        cohorts.set("g", running(&["a", "b"], None));
        assert!(rx.has_changed().unwrap());
        assert!(cohorts.get("g").is_some());
        drop(rx);
        cohorts.set("g", None);
        cohorts.sweep();
        assert!(cohorts.read().is_empty());
    }
}
