//! A rollout as the control server keeps it ([`Rollout`]): its plan, where
//! it is ([`State`]), its sticky cohort and what happened, with the
//! conversions to the stored record (`vane.v1.StoredRollout`) and to what
//! the Admin API shows (`vane.v1.Rollout`).

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use vane_proto as pb;

use crate::rollout::spec::Spec;

/// Most events a rollout keeps (the oldest are dropped; the audit log has all).
pub const MAX_EVENTS: usize = 200;

/// Where a rollout is.
///
/// ```text
///  start ─▶ Progressing(k) ──share ACKed──▶ Baking(k) ──bake over──▶ Progressing(k+1) … ─▶ Complete
///              │   ▲                          │
///   too few ───┘   └── enough agents ── Paused ◀── pause (operator) / resume ──▶ Progressing(k)
///   agents                                   
///  any failure (NACKs, degraded, crash loops, deadline) or abort ─▶ Aborting ─▶ RolledBack
///  push --supersede ─▶ Superseded
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the step's share of agents to ACK the candidate.
    Progressing,
    /// The share ACKed; watching for failures until the bake ends.
    Baking {
        /// When the bake ends, Unix ms.
        until_ms: i64,
    },
    /// Not advancing: by an operator (until resumed) or for too little
    /// evidence (until enough agents are in the cohort).
    Paused {
        /// Whether an operator paused it.
        by_operator: bool,
    },
    /// Decided to roll back; the version restoring the stable content is
    /// being stored.
    Aborting,
    /// Every step done: the candidate is the group's version everywhere.
    Complete,
    /// Rolled back: a new version with the stable content went to everyone.
    RolledBack,
    /// Ended by a push with `--supersede`.
    Superseded,
}

impl State {
    /// Whether the rollout still runs (plain pushes are refused).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Progressing | Self::Baking { .. } | Self::Paused { .. } | Self::Aborting
        )
    }

    /// The wire enum.
    pub fn wire(self) -> pb::RolloutState {
        match self {
            Self::Progressing => pb::RolloutState::Progressing,
            Self::Baking { .. } => pb::RolloutState::Baking,
            Self::Paused { .. } => pb::RolloutState::Paused,
            Self::Aborting => pb::RolloutState::Aborting,
            Self::Complete => pb::RolloutState::Complete,
            Self::RolledBack => pb::RolloutState::RolledBack,
            Self::Superseded => pb::RolloutState::Superseded,
        }
    }

    /// The name operators read (`BAKING`).
    pub fn name(self) -> &'static str {
        self.wire()
            .as_str_name()
            .trim_start_matches("ROLLOUT_STATE_")
    }
}

/// A version and its hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionRef {
    /// The version.
    pub version: u64,
    /// Its content hash.
    pub hash: String,
}

/// An agent of the cohort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node id.
    pub node_id: String,
    /// Its stream count when the current bake (or its membership) started:
    /// disconnects since are the difference.
    pub sessions_base: u64,
}

/// One transition, as the rollout keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, Unix ms.
    pub at_ms: i64,
    /// The state entered.
    pub state: State,
    /// The step (from 0) at that moment.
    pub step: usize,
    /// Why.
    pub reason: String,
    /// Who ("" for the server itself).
    pub identity: String,
}

/// A group's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Its id (unique per group: it names the candidate version).
    pub id: String,
    /// The group.
    pub group: String,
    /// The plan.
    pub spec: Spec,
    /// Where it is.
    pub state: State,
    /// The current step, from 0.
    pub step: usize,
    /// The version agents outside the cohort keep.
    pub stable: VersionRef,
    /// The version the cohort receives.
    pub candidate: VersionRef,
    /// After a rollback: the version that restored the stable content.
    pub restored: Option<VersionRef>,
    /// The cohort, in the order agents joined (sticky).
    pub members: Vec<Member>,
    /// When it started, Unix ms.
    pub started_at_ms: i64,
    /// When it last changed, Unix ms.
    pub updated_at_ms: i64,
    /// When the current step started (or resumed), Unix ms.
    pub step_started_at_ms: i64,
    /// Why it is in its state (failures, pauses, the end).
    pub reason: String,
    /// Who started it.
    pub author: String,
    /// The operator's message.
    pub message: String,
    /// Transitions, oldest first, at most [`MAX_EVENTS`].
    pub events: Vec<Event>,
    /// The replica driving it and until when its lease holds, Unix ms.
    pub driver: String,
    /// See `driver`.
    pub driver_until_ms: i64,
}

impl Rollout {
    /// The current step's percentage.
    pub fn percent(&self) -> u32 {
        self.spec.steps.get(self.step).copied().unwrap_or(100)
    }

    /// Whether it is on its last step.
    pub fn last_step(&self) -> bool {
        self.step + 1 >= self.spec.steps.len()
    }

    /// Enters `state` at `now_ms` for `reason`, recording the event.
    pub fn enter(&mut self, state: State, now_ms: i64, reason: impl Into<String>, identity: &str) {
        let reason = reason.into();
        self.state = state;
        self.updated_at_ms = now_ms;
        self.events.push(Event {
            at_ms: now_ms,
            state,
            step: self.step,
            reason: reason.clone(),
            identity: identity.to_owned(),
        });
        if self.events.len() > MAX_EVENTS {
            let excess = self.events.len() - MAX_EVENTS;
            self.events.drain(..excess);
        }
        self.reason = reason;
    }

    /// Whether `node` is in the cohort.
    pub fn has_member(&self, node: &str) -> bool {
        self.members.iter().any(|m| m.node_id == node)
    }

    /// The stored record.
    pub fn encode(&self) -> Bytes {
        let stored = pb::StoredRollout {
            rollout: Some(self.wire(None)),
            member_sessions: self.members.iter().map(|m| m.sessions_base).collect(),
            driver: self.driver.clone(),
            driver_until_unix_ms: self.driver_until_ms,
        };
        Bytes::from(stored.encode_to_vec())
    }

    /// A stored record read back; the error names what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let stored =
            pb::StoredRollout::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
        let r = stored.rollout.ok_or("has no rollout")?;
        let spec =
            Spec::try_from(r.spec.clone().unwrap_or_default()).map_err(|e| format!("spec: {e}"))?;
        let state = match r.state() {
            pb::RolloutState::Progressing => State::Progressing,
            pb::RolloutState::Baking => State::Baking {
                until_ms: r.bake_ends_at_unix_ms,
            },
            pb::RolloutState::Paused => State::Paused {
                by_operator: r.paused_by_operator,
            },
            pb::RolloutState::Aborting => State::Aborting,
            pb::RolloutState::Complete => State::Complete,
            pb::RolloutState::RolledBack => State::RolledBack,
            pb::RolloutState::Superseded => State::Superseded,
            pb::RolloutState::Unspecified => return Err("has no state".into()),
        };
        let members = r
            .members
            .iter()
            .enumerate()
            .map(|(i, node)| Member {
                node_id: node.clone(),
                sessions_base: stored.member_sessions.get(i).copied().unwrap_or(0),
            })
            .collect();
        let events = r
            .events
            .iter()
            .map(|e| Event {
                at_ms: e.at_unix_ms,
                state: match e.state() {
                    pb::RolloutState::Baking => State::Baking { until_ms: 0 },
                    pb::RolloutState::Paused => State::Paused { by_operator: false },
                    pb::RolloutState::Aborting => State::Aborting,
                    pb::RolloutState::Complete => State::Complete,
                    pb::RolloutState::RolledBack => State::RolledBack,
                    pb::RolloutState::Superseded => State::Superseded,
                    _ => State::Progressing,
                },
                step: (e.step as usize).saturating_sub(1),
                reason: e.reason.clone(),
                identity: e.identity.clone(),
            })
            .collect();
        // A rollback restores the stable content: its hash is the stable one.
        let restored = (r.restored_version != 0).then(|| VersionRef {
            version: r.restored_version,
            hash: r.stable_hash.clone(),
        });
        Ok(Self {
            id: r.id,
            group: r.group,
            spec,
            state,
            step: (r.step as usize).saturating_sub(1),
            stable: VersionRef {
                version: r.stable_version,
                hash: r.stable_hash,
            },
            candidate: VersionRef {
                version: r.candidate_version,
                hash: r.candidate_hash,
            },
            restored,
            members,
            started_at_ms: r.started_at_unix_ms,
            updated_at_ms: r.updated_at_unix_ms,
            step_started_at_ms: r.step_started_at_unix_ms,
            reason: r.reason,
            author: r.author,
            message: r.message,
            events,
            driver: stored.driver,
            driver_until_ms: stored.driver_until_unix_ms,
        })
    }

    /// What the Admin API shows, with the cohort's counts when known.
    pub fn wire(&self, cohort: Option<pb::RolloutCohort>) -> pb::Rollout {
        let (bake_ends, by_operator) = match self.state {
            State::Baking { until_ms } => (until_ms, false),
            State::Paused { by_operator } => (0, by_operator),
            _ => (0, false),
        };
        pb::Rollout {
            id: self.id.clone(),
            group: self.group.clone(),
            state: self.state.wire() as i32,
            step: u32::try_from(self.step + 1).unwrap_or(u32::MAX),
            percent: self.percent(),
            stable_version: self.stable.version,
            candidate_version: self.candidate.version,
            cohort,
            reason: self.reason.clone(),
            spec: Some(pb::RolloutSpec::from(&self.spec)),
            stable_hash: self.stable.hash.clone(),
            candidate_hash: self.candidate.hash.clone(),
            restored_version: self.restored.as_ref().map_or(0, |r| r.version),
            started_at_unix_ms: self.started_at_ms,
            updated_at_unix_ms: self.updated_at_ms,
            step_started_at_unix_ms: self.step_started_at_ms,
            bake_ends_at_unix_ms: bake_ends,
            author: self.author.clone(),
            message: self.message.clone(),
            events: self
                .events
                .iter()
                .map(|e| pb::RolloutEvent {
                    at_unix_ms: e.at_ms,
                    state: e.state.wire() as i32,
                    step: u32::try_from(e.step + 1).unwrap_or(u32::MAX),
                    percent: self.spec.steps.get(e.step).copied().unwrap_or(100),
                    reason: e.reason.clone(),
                    identity: e.identity.clone(),
                })
                .collect(),
            members: self.members.iter().map(|m| m.node_id.clone()).collect(),
            paused_by_operator: by_operator,
        }
    }

    /// How long the current bake has left at `now_ms` (zero when not baking).
    pub fn bake_left(&self, now_ms: i64) -> Duration {
        match self.state {
            State::Baking { until_ms } => {
                Duration::from_millis(u64::try_from(until_ms - now_ms).unwrap_or(0))
            }
            _ => Duration::ZERO,
        }
    }
}
