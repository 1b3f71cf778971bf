//! The task that drives rollouts ([`Rollouts`]): every tick it re-reads the
//! groups' rollout records from the store (other replicas write them too),
//! publishes each group's cohort to the watch streams, and for the rollouts
//! it holds the lease on, applies what the engine decides — storing every
//! change compare-and-set, and on an abort storing a new version with the
//! stable content.
//!
//! # Lease
//! With several replicas, each rollout is driven by one of them: the record
//! names its driver and until when the lease holds; a replica takes over a
//! lease that has run out (its driver died). Every write is compare-and-set
//! on the record's revision, so even two replicas that both believe they
//! drive (clock skew) cannot both write: the loser re-reads and follows.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vane_store::agents::AgentRecord;
use vane_store::{
    AuditRecord, NewVersion, PushOutcome, RolloutPut, RolloutRecord, Store, StoreError, now_unix_ms,
};

use crate::agents::AgentRegistry;
use crate::audit::AuditLog;
use crate::hub::{Hub, Published};
use crate::integrity::verify_off_thread;
use crate::rollout::engine::{self, Evidence, Next};
use crate::rollout::model::{Rollout, State};
use crate::targets::{Cohort, Cohorts, Phase};

/// How often rollouts are re-read and advanced.
pub const TICK: Duration = Duration::from_millis(500);
/// How long a driver's lease holds without renewal.
pub const LEASE: Duration = Duration::from_secs(6);

/// A group's rollout as this server last read or wrote it.
#[derive(Debug, Clone)]
pub struct Known {
    /// The rollout.
    pub rollout: Rollout,
    /// The stored record's revision.
    pub revision: u64,
}

/// Why a rollout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("group {group:?}: the stored rollout {detail}")]
    Corrupt {
        /// The group.
        group: String,
        /// What is wrong.
        detail: String,
    },
    /// The stable version is gone or damaged: nothing to roll back to.
    #[error("group {group:?}: cannot restore stable version {version}: {detail}")]
    NoStable {
        /// The group.
        group: String,
        /// The stable version.
        version: u64,
        /// Why.
        detail: String,
    },
}

/// Every group's rollout on this server, and the machinery to drive them.
pub struct Rollouts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) cohorts: Arc<Cohorts>,
    pub(crate) agents: Arc<AgentRegistry>,
    pub(crate) replica: String,
    pub(crate) audit: Option<Arc<AuditLog>>,
    board: RwLock<HashMap<String, Known>>,
    /// Stable versions of running rollouts, by group, as streams send them.
    stables: RwLock<HashMap<String, Arc<Published>>>,
    wake: Notify,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Rollouts {
    /// Rollouts over `store`, publishing versions to `hub` and cohorts to
    /// `cohorts`, judging on `agents` (and the other replicas' agents).
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        cohorts: Arc<Cohorts>,
        agents: Arc<AgentRegistry>,
        replica: String,
        audit: Option<Arc<AuditLog>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            hub,
            cohorts,
            agents,
            replica,
            audit,
            board: RwLock::new(HashMap::new()),
            stables: RwLock::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    /// The group's running rollout as last known here (re-read from the
    /// store every tick): what a plain push is told before the store's own
    /// check in the write refuses it.
    pub fn running_known(&self, group: &str) -> Option<Known> {
        self.known(group).filter(|k| k.rollout.state.is_active())
    }

    /// The group's rollout as last known here.
    pub fn known(&self, group: &str) -> Option<Known> {
        self.board
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(group)
            .cloned()
    }

    /// Every known rollout, sorted by group.
    pub fn all(&self) -> Vec<Known> {
        let mut all: Vec<Known> = self
            .board
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.rollout.group.cmp(&b.rollout.group));
        all
    }

    /// Versions retention must keep: the stable and candidate versions of
    /// every running rollout.
    pub fn pinned(&self) -> Vec<(String, u64)> {
        self.all()
            .into_iter()
            .filter(|k| k.rollout.state.is_active())
            .flat_map(|k| {
                let g = k.rollout.group;
                [
                    (g.clone(), k.rollout.stable.version),
                    (g, k.rollout.candidate.version),
                ]
            })
            .collect()
    }

    /// Asks the driver to look again now (after a start or an action).
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    /// Every agent of `group` this server knows of, its own and the other
    /// replicas'.
    pub async fn fleet(&self, group: &str) -> Vec<AgentRecord> {
        let others = match self.store.agent_directory() {
            Some(directory) => directory.others(Some(group)).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "rollout evidence without the other replicas' agents");
                Vec::new()
            }),
            None => Vec::new(),
        };
        crate::replication::merge(self.agents.list(Some(group)), &self.replica, others)
            .into_iter()
            .map(|a| a.record)
            .collect()
    }

    /// The group's rollout with its cohort's evidence now.
    pub async fn with_evidence(&self, group: &str) -> Option<(Known, Evidence)> {
        let known = self.known(group)?;
        let fleet = self.fleet(group).await;
        let ev = engine::evidence(&known.rollout, &fleet);
        Some((known, ev))
    }

    /// Reads every rollout record and publishes the cohorts, before the
    /// server serves agents (a candidate head goes nowhere until then).
    pub async fn load(&self) -> Result<(), DriveError> {
        self.refresh().await
    }

    /// Drives rollouts until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
            }
            // Channels of groups nobody watches and no rollout holds.
            self.cohorts.sweep();
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reading rollouts failed; retrying");
                continue;
            }
            for known in self.all() {
                if !known.rollout.state.is_active() {
                    continue;
                }
                if let Err(e) = self.drive(known).await {
                    tracing::warn!(error = %e, "driving a rollout failed; retrying");
                }
            }
        }
        tracing::debug!("rollout driver stopped");
    }

    /// Re-reads the records (other replicas write them too) and publishes
    /// every group's cohort.
    async fn refresh(&self) -> Result<(), DriveError> {
        let records = self.store.rollouts().await?;
        for record in records {
            let newer = self
                .known(&record.group)
                .is_none_or(|k| record.revision > k.revision);
            if newer {
                let known = decode(&record)?;
                self.remember(known).await;
            }
        }
        Ok(())
    }

    /// Takes `known` as the group's rollout and publishes its cohort.
    pub(crate) async fn remember(&self, known: Known) {
        let rollout = &known.rollout;
        let group = rollout.group.clone();
        // Only a completed rollout sends its candidate to everyone. A rolled
        // back or superseded one keeps splitting the group until the newer
        // head (the restored or superseding version) is published here,
        // which then goes to everyone anyway: the record may arrive first
        // (another replica wrote it; a status call re-read it).
        let phase = if rollout.state != State::Complete {
            Phase::Running {
                members: rollout.members.iter().map(|m| m.node_id.clone()).collect(),
                stable: self.stable_of(rollout).await,
            }
        } else {
            self.stables
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&group);
            Phase::Ended
        };
        self.cohorts.set(
            &group,
            Some(Arc::new(Cohort {
                rollout_id: rollout.id.clone(),
                candidate_version: rollout.candidate.version,
                phase,
            })),
        );
        self.board
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group, known);
    }

    /// The stable version as streams send it: from the hub's memory when
    /// the candidate's delta bases still hold it, else read from the store
    /// and checked against its hash. `None` when it cannot be had (agents
    /// outside the cohort are then sent nothing new).
    async fn stable_of(&self, rollout: &Rollout) -> Option<Arc<Published>> {
        let group = &rollout.group;
        if let Some(stable) = self
            .stables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(group)
            .filter(|s| s.version == rollout.stable.version)
        {
            return Some(Arc::clone(stable));
        }
        let record = match self.store.get(group, Some(rollout.stable.version)).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::error!(
                    group,
                    version = rollout.stable.version,
                    "a rollout's stable version is not stored"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(group, error = %e, "reading a rollout's stable version");
                return None;
            }
        };
        let (record, verdict) = verify_off_thread(record).await;
        if let Err(corrupt) = verdict {
            self.hub.found_corrupt(corrupt);
            return None;
        }
        let stable = Arc::new(Published::from(&record));
        self.stables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group.clone(), Arc::clone(&stable));
        Some(stable)
    }

    /// One turn for one running rollout, if this replica holds (or may
    /// take) its lease.
    async fn drive(&self, known: Known) -> Result<(), DriveError> {
        let now = now_unix_ms();
        let mine = known.rollout.driver == self.replica;
        if !mine && known.rollout.driver_until_ms > now {
            return Ok(());
        }
        let mut rollout = known.rollout.clone();
        let fleet = self.fleet(&rollout.group).await;
        let next = engine::step(&mut rollout, &fleet, now);
        let renew = !mine
            || rollout.driver_until_ms - now < i64::try_from(LEASE.as_millis() / 2).unwrap_or(0);
        match next {
            Next::Abort => self.abort(known.revision, rollout).await,
            Next::Save => self.save(known.revision, rollout, "").await.map(drop),
            Next::Stay if renew => self.save(known.revision, rollout, "").await.map(drop),
            Next::Stay => Ok(()),
        }
    }

    /// Stores `rollout` over revision `expected` (renewing this replica's
    /// lease), audits a state change, and publishes its cohort.
    pub(crate) async fn save(
        &self,
        expected: u64,
        mut rollout: Rollout,
        identity: &str,
    ) -> Result<Known, DriveError> {
        let before = self.known(&rollout.group).map(|k| k.rollout.events.len());
        self.hold_lease(&mut rollout);
        let record = self
            .store
            .put_rollout(&rollout.group, put(&rollout, expected))
            .await
            .inspect_err(|e| {
                if matches!(e, StoreError::RolloutMoved { .. }) {
                    // Someone else wrote it: follow them on the next turn.
                    self.kick();
                }
            })?;
        let known = Known {
            rollout,
            revision: record.revision,
        };
        if before.is_some_and(|n| known.rollout.events.len() > n) {
            self.audit_transition(&known.rollout, identity).await;
        }
        self.remember(known.clone()).await;
        Ok(known)
    }

    fn hold_lease(&self, rollout: &mut Rollout) {
        rollout.driver = self.replica.clone();
        rollout.driver_until_ms =
            now_unix_ms().saturating_add(i64::try_from(LEASE.as_millis()).unwrap_or(6_000));
    }

    /// Finishes an abort: ABORTING is stored first (so a driver that dies
    /// here is followed by one that finishes it), then a new version with
    /// the stable content, in the same write as the ROLLED_BACK record.
    pub(crate) async fn abort(&self, expected: u64, rollout: Rollout) -> Result<(), DriveError> {
        let known = match self.known(&rollout.group) {
            Some(k) if k.revision == expected && k.rollout.state == State::Aborting => k,
            _ => self.save(expected, rollout, "").await?,
        };
        let mut rollout = known.rollout.clone();
        let group = rollout.group.clone();
        let stable_version = rollout.stable.version;
        let no_stable = |detail: String| DriveError::NoStable {
            group: group.clone(),
            version: stable_version,
            detail,
        };
        let stable = self
            .store
            .get(&group, Some(stable_version))
            .await?
            .ok_or_else(|| no_stable("it is not stored".into()))?;
        let (stable, verdict) = verify_off_thread(stable).await;
        verdict.map_err(|c| no_stable(c.to_string()))?;
        let head = self
            .hub
            .head(&group)
            .map_or(rollout.candidate.version, |h| h.version);
        let restored = head + 1;
        let now = now_unix_ms();
        let reason = rollout.reason.clone();
        rollout.restored = Some(crate::rollout::model::VersionRef {
            version: restored,
            hash: stable.hash.clone(),
        });
        rollout.enter(
            State::RolledBack,
            now,
            format!("{reason}; version {restored} restores version {stable_version}"),
            "",
        );
        self.hold_lease(&mut rollout);
        let outcome = self
            .store
            .push(NewVersion {
                group: group.clone(),
                snapshot: stable.snapshot.clone(),
                hash: stable.hash.clone(),
                message: format!("rollback of rollout {}: {reason}", rollout.id),
                author: format!("rollout {}", rollout.id),
                rollback_of: Some(stable_version),
                expected_version: Some(head),
                candidate: None,
                rollout: Some(put(&rollout, known.revision)),
            })
            .await?;
        let PushOutcome::Created(record) = outcome else {
            return Err(no_stable("the stable content equals the head".into()));
        };
        self.hub.publish_prepared(Published::from(&record)).await;
        let revision = self
            .store
            .rollout(&group)
            .await?
            .map_or(known.revision + 1, |r| r.revision);
        tracing::warn!(group, rollout = %rollout.id, restored, %reason, "rollout rolled back");
        self.audit_transition(&rollout, "").await;
        self.remember(Known { rollout, revision }).await;
        Ok(())
    }

    async fn audit_transition(&self, rollout: &Rollout, identity: &str) {
        let Some(audit) = &self.audit else { return };
        let Some(event) = rollout.events.last() else {
            return;
        };
        let action = match event.state {
            State::Progressing if rollout.events.len() == 1 => "rollout.start",
            State::Progressing => "rollout.step",
            State::Baking { .. } => "rollout.bake",
            State::Paused { .. } => "rollout.pause",
            State::Aborting => "rollout.abort",
            State::Complete => "rollout.complete",
            State::RolledBack => "rollout.rollback",
            State::Superseded => "rollout.supersede",
        };
        let entry = AuditRecord {
            identity: if identity.is_empty() {
                event.identity.clone()
            } else {
                identity.to_owned()
            },
            action: action.to_owned(),
            group: rollout.group.clone(),
            version: rollout
                .restored
                .as_ref()
                .map_or(rollout.candidate.version, |r| r.version),
            hash: rollout
                .restored
                .as_ref()
                .map_or(rollout.candidate.hash.clone(), |r| r.hash.clone()),
            message: format!(
                "rollout {} {} step {} ({}%): {}",
                rollout.id,
                event.state.name(),
                event.step + 1,
                rollout.spec.steps.get(event.step).copied().unwrap_or(100),
                event.reason
            ),
            result: event.state.name().to_ascii_lowercase(),
            rollback_of: rollout
                .restored
                .as_ref()
                .map_or(0, |_| rollout.stable.version),
            ..AuditRecord::default()
        };
        if let Err(e) = audit.record(entry).await {
            tracing::error!(error = %e, group = %rollout.group, "audit entry of a rollout transition not written");
        }
    }
}

/// The compare-and-set write of `rollout` over revision `expected`.
pub(crate) fn put(rollout: &Rollout, expected: u64) -> RolloutPut {
    RolloutPut {
        id: rollout.id.clone(),
        active: rollout.state.is_active(),
        body: rollout.encode(),
        expected_revision: expected,
    }
}

/// A stored record as a [`Known`] rollout.
pub(crate) fn decode(record: &RolloutRecord) -> Result<Known, DriveError> {
    let rollout = Rollout::decode(&record.body).map_err(|detail| DriveError::Corrupt {
        group: record.group.clone(),
        detail,
    })?;
    Ok(Known {
        rollout,
        revision: record.revision,
    })
}
