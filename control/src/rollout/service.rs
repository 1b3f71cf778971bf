//! What the Admin API asks of rollouts: start one (the candidate and the
//! record in one write), act on one (pause, resume, promote, abort), end
//! one by a superseding push, and show one.

use std::sync::Arc;

use bytes::Bytes;
use tonic::Status;
use vane_proto as pb;
use vane_store::{NewVersion, PushOutcome, RolloutPut, now_unix_ms};

use crate::admin::convert::{capped, store_status};
use crate::hub::Published;
use crate::rollout::driver::{self, DriveError, Known, Rollouts};
use crate::rollout::engine::{self, Action, Next};
use crate::rollout::model::{Event, Rollout, State, VersionRef};
use crate::rollout::spec::Spec;
use crate::targets::{Cohort, Phase};

/// A validated request to start a rollout.
#[derive(Debug)]
pub struct Start {
    /// The group.
    pub group: String,
    /// The candidate's encoded canonical snapshot and its hash.
    pub snapshot: Bytes,
    /// See `snapshot`.
    pub hash: String,
    /// The plan.
    pub spec: Spec,
    /// The operator's message.
    pub message: String,
    /// Who starts it.
    pub author: String,
    /// Compare-and-set on the group's head.
    pub expected_version: Option<u64>,
}

pub(crate) fn drive_status(e: DriveError) -> Status {
    match e {
        DriveError::Store(e) => store_status(e),
        e @ DriveError::Corrupt { .. } => Status::data_loss(capped(e.to_string())),
        e @ DriveError::NoStable { .. } => Status::failed_precondition(capped(e.to_string())),
    }
}

/// The refusal of a plain push or rollback while `known` runs.
pub fn in_progress(known: &Known) -> Status {
    let r = &known.rollout;
    Status::failed_precondition(format!(
        "group {:?} has rollout {} in progress (state {}, step {} of {} at {}%); wait for it \
         (vanectl rollout status {} -w), abort it (vanectl rollout abort {}), or push with --supersede",
        r.group,
        r.id,
        r.state.name(),
        r.step + 1,
        r.spec.steps.len(),
        r.percent(),
        r.group,
        r.group
    ))
}

impl Rollouts {
    /// The group's running rollout, read from the store (not this
    /// server's memory: another replica may have started it).
    pub async fn running(&self, group: &str) -> Result<Option<Known>, Status> {
        let Some(record) = self.store.rollout(group).await.map_err(store_status)? else {
            return Ok(None);
        };
        if !record.active {
            return Ok(None);
        }
        driver::decode(&record).map(Some).map_err(drive_status)
    }

    /// Starts a rollout: stores the candidate (head + 1, marked) and the
    /// record in one write, publishes the candidate (to nobody yet: the
    /// cohort is empty) and wakes the driver to pick the first cohort.
    pub async fn start(&self, start: Start) -> Result<Known, Status> {
        let group = start.group.clone();
        let current = self.store.rollout(&group).await.map_err(store_status)?;
        let previous = match &current {
            Some(record) => Some(driver::decode(record).map_err(drive_status)?),
            None => None,
        };
        if let Some(known) = previous.as_ref().filter(|k| k.rollout.state.is_active()) {
            return Err(in_progress(known));
        }
        let head = self
            .store
            .get(&group, None)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "group {group:?} has no version yet: a rollout needs a stable version to \
                     compare against and fall back to; push the first version with vanectl push"
                ))
            })?;
        if let Some(expected) = start.expected_version
            && expected != head.version
        {
            return Err(crate::admin::convert::conflict(
                &group,
                expected,
                head.version,
            ));
        }
        if head.hash == start.hash {
            return Err(Status::failed_precondition(format!(
                "nothing to roll out: the candidate equals version {} of group {group:?} (hash {})",
                head.version, head.hash
            )));
        }
        let candidate_version = head.version + 1;
        let id = format!("{group}-v{candidate_version}");
        let now = now_unix_ms();
        let mut rollout = Rollout {
            id: id.clone(),
            group: group.clone(),
            spec: start.spec,
            state: State::Progressing,
            step: 0,
            stable: VersionRef {
                version: head.version,
                hash: head.hash.clone(),
            },
            candidate: VersionRef {
                version: candidate_version,
                hash: start.hash.clone(),
            },
            restored: None,
            members: Vec::new(),
            started_at_ms: now,
            updated_at_ms: now,
            step_started_at_ms: now,
            reason: String::new(),
            author: start.author.clone(),
            message: start.message.clone(),
            events: Vec::new(),
            driver: self.replica.clone(),
            driver_until_ms: now
                .saturating_add(i64::try_from(driver::LEASE.as_millis()).unwrap_or(6_000)),
        };
        let first = format!(
            "started: version {candidate_version} to {} in steps {:?} (stable: version {})",
            if rollout.spec.selector.is_empty() {
                "every agent".to_owned()
            } else {
                format!("the agents matching {}", rollout.spec.selector)
            },
            rollout.spec.steps,
            head.version
        );
        rollout.events.push(Event {
            at_ms: now,
            state: State::Progressing,
            step: 0,
            reason: first.clone(),
            identity: start.author.clone(),
        });
        rollout.reason = first;
        // The cohort (empty: everyone keeps the stable version) is known
        // before the candidate can be published.
        let stable = Arc::new(Published::from(&head));
        self.cohorts.set(
            &group,
            Some(Arc::new(Cohort {
                rollout_id: id.clone(),
                candidate_version,
                phase: Phase::Running {
                    members: Default::default(),
                    stable: Some(stable),
                },
            })),
        );
        let outcome = self
            .store
            .push(NewVersion {
                group: group.clone(),
                snapshot: start.snapshot,
                hash: start.hash,
                message: start.message,
                author: start.author,
                rollback_of: None,
                expected_version: Some(head.version),
                candidate: Some(vane_store::CandidateOf {
                    rollout_id: id.clone(),
                    stable_version: head.version,
                }),
                rollout: Some(driver::put(
                    &rollout,
                    current.as_ref().map_or(0, |r| r.revision),
                )),
            })
            .await;
        let record = match outcome {
            Ok(PushOutcome::Created(record)) => record,
            Ok(PushOutcome::Unchanged(_)) => {
                return Err(Status::failed_precondition(
                    "nothing to roll out: the candidate equals the head",
                ));
            }
            Err(e) => {
                // Put back what streams saw before.
                if let Some(previous) = previous {
                    self.remember(previous).await;
                } else {
                    self.cohorts.set(&group, None);
                }
                return Err(store_status(e));
            }
        };
        let revision = self
            .store
            .rollout(&group)
            .await
            .map_err(store_status)?
            .map_or(1, |r| r.revision);
        let known = Known { rollout, revision };
        self.remember(known.clone()).await;
        self.hub.publish_prepared(Published::from(&record)).await;
        tracing::info!(group, rollout = %id, candidate = candidate_version, stable = head.version, "rollout started");
        self.kick();
        Ok(known)
    }

    /// An operator's action on the group's running rollout.
    pub async fn act(
        &self,
        group: &str,
        action: Action,
        reason: &str,
        identity: &str,
    ) -> Result<Known, Status> {
        let record = self
            .store
            .rollout(group)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("group {group:?} has no rollout")))?;
        let known = driver::decode(&record).map_err(drive_status)?;
        let mut rollout = known.rollout.clone();
        let next = engine::act(&mut rollout, action, reason, identity, now_unix_ms())
            .map_err(Status::failed_precondition)?;
        match next {
            Next::Abort => {
                let saved = self
                    .save(known.revision, rollout, identity)
                    .await
                    .map_err(drive_status)?;
                self.abort(saved.revision, saved.rollout)
                    .await
                    .map_err(drive_status)?;
            }
            Next::Save | Next::Stay => {
                self.save(known.revision, rollout, identity)
                    .await
                    .map_err(drive_status)?;
            }
        }
        self.kick();
        self.known(group)
            .ok_or_else(|| Status::internal("the rollout vanished after the action"))
    }

    /// For a push with `supersede`: the write ending the group's running
    /// rollout, if there is one.
    pub async fn superseding(
        &self,
        group: &str,
        identity: &str,
    ) -> Result<Option<RolloutPut>, Status> {
        Ok(self
            .end_running(group, identity, "superseded by a push with --supersede")
            .await?
            .map(|(_, put)| put))
    }

    /// The record write that ends the group's running rollout because the
    /// group is deleted (`vanectl delete --force`); `None` when none runs.
    pub async fn ended_by_delete(
        &self,
        group: &str,
        identity: &str,
    ) -> Result<Option<(String, RolloutPut)>, Status> {
        self.end_running(
            group,
            identity,
            "ended by vanectl delete --force: the group was deleted",
        )
        .await
    }

    /// The record write that ends the group's running rollout (SUPERSEDED,
    /// for `reason`), with the rollout's id; `None` when none runs.
    async fn end_running(
        &self,
        group: &str,
        identity: &str,
        reason: &str,
    ) -> Result<Option<(String, RolloutPut)>, Status> {
        let Some(known) = self.running(group).await? else {
            return Ok(None);
        };
        let mut rollout = known.rollout;
        rollout.enter(State::Superseded, now_unix_ms(), reason, identity);
        Ok(Some((
            rollout.id.clone(),
            driver::put(&rollout, known.revision),
        )))
    }

    /// After a push: re-read the group's record (a superseding push ended
    /// its rollout) so the cohort is published at once.
    pub async fn reread(&self, group: &str) {
        match self.store.rollout(group).await {
            Ok(Some(record)) => match driver::decode(&record) {
                Ok(known) => self.remember(known).await,
                Err(e) => tracing::warn!(error = %e, "rereading a rollout"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "rereading a rollout"),
        }
    }

    /// The group's rollout as the Admin API shows it, with the cohort's
    /// counts now.
    pub async fn shown(&self, group: &str) -> Result<pb::Rollout, Status> {
        self.reread(group).await;
        let (known, ev) = self
            .with_evidence(group)
            .await
            .ok_or_else(|| Status::not_found(format!("group {group:?} has no rollout")))?;
        Ok(known.rollout.wire(Some(ev.wire())))
    }
}
