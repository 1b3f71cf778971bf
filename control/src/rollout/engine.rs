//! The rollout's decisions, as pure functions of the rollout, what its
//! agents report and the time: who joins the cohort ([`grow_cohort`]), what
//! the cohort shows ([`Evidence`]), and what happens next ([`step`]). The
//! driver (`driver.rs`) stores what these decide; nothing here does I/O, so
//! every transition is unit-tested with plain numbers for the clock.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use vane_proto as pb;
use vane_store::agents::AgentRecord;

use crate::rollout::model::{Member, Rollout, State};

/// gRPC INVALID_ARGUMENT: an agent NACKs with it when the content itself
/// is invalid (it fails validation or the embedder's check).
pub const INVALID_CONTENT: i32 = 3;

/// The cohort size step `percent` asks for among `matching` agents:
/// ceil(percent × matching / 100).
pub fn cohort_target(percent: u32, matching: usize) -> usize {
    (u64::from(percent) * matching as u64).div_ceil(100) as usize
}

/// Where `node` ranks for joining rollout `id`'s cohort: every replica
/// ranks the same, and each rollout shuffles differently.
fn rank(id: &str, node: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(b"/");
    h.update(node.as_bytes());
    h.finalize().into()
}

/// Adds agents from `matching` (the group's agents the selector matches)
/// to the cohort until it holds the current step's share, lowest rank
/// first. Members stay members whatever happens to the others. Returns
/// whether anyone joined.
pub fn grow_cohort(rollout: &mut Rollout, matching: &[&AgentRecord]) -> bool {
    let target = cohort_target(rollout.percent(), matching.len());
    if rollout.members.len() >= target {
        return false;
    }
    let mut candidates: Vec<(&AgentRecord, [u8; 32])> = matching
        .iter()
        .filter(|a| !rollout.has_member(&a.node_id))
        .map(|a| (*a, rank(&rollout.id, &a.node_id)))
        .collect();
    candidates.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.node_id.cmp(&b.0.node_id)));
    let missing = target - rollout.members.len();
    for (agent, _) in candidates.into_iter().take(missing) {
        rollout.members.push(Member {
            node_id: agent.node_id.clone(),
            sessions_base: agent.sessions,
        });
    }
    true
}

/// What the cohort shows about the candidate (or, after a rollback, the
/// restored version).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Agents of the group the selector matches.
    pub matching: usize,
    /// The size the current step asks for.
    pub target: usize,
    /// Members.
    pub total: usize,
    /// Members that ACKed the version they should run.
    pub synced: usize,
    /// Members that refused the candidate: (node, code, reason).
    pub nacked: Vec<(String, i32, String)>,
    /// Members that ACKed the candidate and report degraded: (node, reason).
    pub degraded: Vec<(String, String)>,
    /// Members without a stream now.
    pub disconnected: usize,
    /// Members that ACKed the candidate and disconnected more than allowed
    /// during the bake: (node, disconnects).
    pub crash_looping: Vec<(String, u64)>,
}

impl Evidence {
    /// The cohort's counts as the Admin API shows them.
    pub fn wire(&self) -> pb::RolloutCohort {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        pb::RolloutCohort {
            total: n(self.total),
            synced: n(self.synced),
            nacked: n(self.nacked.len()),
            degraded: n(self.degraded.len()),
            disconnected: n(self.disconnected),
            target: n(self.target),
            matching: n(self.matching),
        }
    }
}

/// The connected agents of the group the rollout's selector matches: the
/// fleet a step's share is taken of. (An agent gone for good would
/// otherwise hold every step below its share until the deadline; members
/// that disconnect stay members and count as disconnected.) Clients that
/// cannot acknowledge (flagd sync) are left out: they could never confirm
/// a step, and get the stable version until the rollout completes.
pub fn matching<'a>(rollout: &Rollout, agents: &'a [AgentRecord]) -> Vec<&'a AgentRecord> {
    agents
        .iter()
        .filter(|a| {
            a.connected
                && a.can_ack()
                && a.group == rollout.group
                && rollout.spec.selector.matches(&a.labels)
        })
        .collect()
}

/// What the cohort shows now.
pub fn evidence(rollout: &Rollout, agents: &[AgentRecord]) -> Evidence {
    let by_node: HashMap<&str, &AgentRecord> = agents
        .iter()
        .filter(|a| a.group == rollout.group)
        .map(|a| (a.node_id.as_str(), a))
        .collect();
    let matching = matching(rollout, agents).len();
    let candidate = rollout.candidate.version;
    // After a rollback the members should run the restored version.
    let wanted = rollout.restored.as_ref().map_or(candidate, |r| r.version);
    let baking = matches!(rollout.state, State::Baking { .. });
    let mut ev = Evidence {
        matching,
        target: cohort_target(rollout.percent(), matching),
        total: rollout.members.len(),
        ..Evidence::default()
    };
    for member in &rollout.members {
        let Some(agent) = by_node.get(member.node_id.as_str()) else {
            ev.disconnected += 1;
            continue;
        };
        if !agent.connected {
            ev.disconnected += 1;
        }
        if agent.acked_version == wanted {
            ev.synced += 1;
        }
        if agent.last_nacked_version == candidate && agent.acked_version != candidate {
            ev.nacked.push((
                agent.node_id.clone(),
                agent.nack_code,
                agent.nack_reason.clone(),
            ));
        }
        let runs_candidate = agent.acked_version == candidate;
        if runs_candidate && agent.health_degraded && agent.health_version == candidate {
            ev.degraded
                .push((agent.node_id.clone(), agent.health_reason.clone()));
        }
        if runs_candidate && baking {
            let disconnects =
                agent.sessions.saturating_sub(member.sessions_base) + u64::from(!agent.connected);
            if disconnects > u64::from(rollout.spec.max_disconnects) {
                ev.crash_looping.push((agent.node_id.clone(), disconnects));
            }
        }
    }
    ev
}

/// What the driver must do after [`step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing changed.
    Stay,
    /// Store the changed rollout.
    Save,
    /// Store it as ABORTING, then restore the stable version.
    Abort,
}

fn list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    const SHOWN: usize = 5;
    let mut out: Vec<String> = items.iter().take(SHOWN).map(show).collect();
    if items.len() > SHOWN {
        out.push(format!("and {} more", items.len() - SHOWN));
    }
    out.join("; ")
}

/// Why the cohort's evidence aborts the rollout, if it does.
pub fn failure(rollout: &Rollout, ev: &Evidence) -> Option<String> {
    let spec = &rollout.spec;
    let candidate = rollout.candidate.version;
    let invalid: Vec<_> = ev
        .nacked
        .iter()
        .filter(|(_, code, _)| *code == INVALID_CONTENT)
        .collect();
    if !invalid.is_empty() {
        return Some(format!(
            "{} agent(s) refused version {candidate} as invalid: {}",
            invalid.len(),
            list(&invalid, |(n, _, r)| format!("{n}: {r}"))
        ));
    }
    if ev.nacked.len() > spec.max_nacks as usize {
        return Some(format!(
            "{} agent(s) refused version {candidate} (--max-nacks {}): {}",
            ev.nacked.len(),
            spec.max_nacks,
            list(&ev.nacked, |(n, _, r)| format!("{n}: {r}"))
        ));
    }
    if ev.degraded.len() > spec.max_degraded as usize {
        return Some(format!(
            "{} agent(s) report degraded on version {candidate} (--max-degraded {}): {}",
            ev.degraded.len(),
            spec.max_degraded,
            list(&ev.degraded, |(n, r)| format!("{n}: {r}"))
        ));
    }
    if !ev.crash_looping.is_empty() {
        return Some(format!(
            "agent(s) disconnected repeatedly after applying version {candidate} (--max-disconnects {}): {}",
            spec.max_disconnects,
            list(&ev.crash_looping, |(n, d)| format!("{n}: {d} times"))
        ));
    }
    None
}

/// Advances `rollout` at `now_ms` on what `agents` report: grows the
/// cohort, checks for failures, bakes, steps, pauses for too little
/// evidence and resumes. Says what the driver must store.
pub fn step(rollout: &mut Rollout, agents: &[AgentRecord], now_ms: i64) -> Next {
    match rollout.state {
        State::Aborting => return Next::Abort,
        State::Complete | State::RolledBack | State::Superseded => return Next::Stay,
        State::Progressing | State::Baking { .. } | State::Paused { .. } => {}
    }
    let mut changed = false;
    if !matches!(rollout.state, State::Paused { by_operator: true }) {
        let matching = matching(rollout, agents);
        changed |= grow_cohort(rollout, &matching);
    }
    let ev = evidence(rollout, agents);
    if let Some(reason) = failure(rollout, &ev) {
        rollout.enter(State::Aborting, now_ms, reason, "");
        return Next::Abort;
    }
    let min = rollout.spec.min_agents as usize;
    match rollout.state {
        State::Paused { by_operator: true } => {}
        State::Paused { by_operator: false } => {
            if ev.total >= min {
                rollout.step_started_at_ms = now_ms;
                rollout.enter(
                    State::Progressing,
                    now_ms,
                    format!("{} agent(s) in the cohort: resumed", ev.total),
                    "",
                );
                changed = true;
            }
        }
        State::Progressing | State::Baking { .. } if ev.total < min => {
            rollout.enter(
                State::Paused { by_operator: false },
                now_ms,
                format!(
                    "too little evidence: {} agent(s) in the cohort ({} of the group match the selector), --min-agents {min}",
                    ev.total, ev.matching
                ),
                "",
            );
            changed = true;
        }
        State::Progressing => {
            if ev.synced >= ev.target {
                let until_ms = now_ms.saturating_add(
                    i64::try_from(rollout.spec.bake.as_millis()).unwrap_or(i64::MAX),
                );
                rollout.step_started_at_ms = rollout.step_started_at_ms.min(now_ms);
                reset_sessions(rollout, agents);
                rollout.enter(
                    State::Baking { until_ms },
                    now_ms,
                    format!(
                        "{} of {} agent(s) run version {}; baking {}",
                        ev.synced,
                        ev.target,
                        rollout.candidate.version,
                        humantime::format_duration(rollout.spec.bake)
                    ),
                    "",
                );
                changed = true;
            } else if now_ms.saturating_sub(rollout.step_started_at_ms)
                > i64::try_from(rollout.spec.progress_deadline.as_millis()).unwrap_or(i64::MAX)
            {
                rollout.enter(
                    State::Aborting,
                    now_ms,
                    format!(
                        "step {} ({}%) missed its progress deadline of {}: {} of {} agent(s) ACKed version {}",
                        rollout.step + 1,
                        rollout.percent(),
                        humantime::format_duration(rollout.spec.progress_deadline),
                        ev.synced,
                        ev.target,
                        rollout.candidate.version
                    ),
                    "",
                );
                return Next::Abort;
            }
        }
        State::Baking { until_ms } => {
            if now_ms >= until_ms {
                if rollout.last_step() {
                    rollout.enter(
                        State::Complete,
                        now_ms,
                        format!(
                            "every step passed: version {} is the group's version",
                            rollout.candidate.version
                        ),
                        "",
                    );
                } else {
                    rollout.step += 1;
                    rollout.step_started_at_ms = now_ms;
                    rollout.enter(
                        State::Progressing,
                        now_ms,
                        format!("step {} baked without failure", rollout.step),
                        "",
                    );
                }
                changed = true;
            }
        }
        State::Aborting | State::Complete | State::RolledBack | State::Superseded => {}
    }
    if changed { Next::Save } else { Next::Stay }
}

/// Counts disconnects from now on: the bake watches for crash loops.
fn reset_sessions(rollout: &mut Rollout, agents: &[AgentRecord]) {
    for member in &mut rollout.members {
        if let Some(a) = agents
            .iter()
            .find(|a| a.group == rollout.group && a.node_id == member.node_id)
        {
            member.sessions_base = a.sessions;
        }
    }
}

/// An operator's action on a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop advancing until resumed.
    Pause,
    /// Advance again.
    Resume,
    /// Jump to the last step (every agent).
    Promote,
    /// Roll back.
    Abort,
}

impl Action {
    /// The audit log's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pause => "rollout.pause",
            Self::Resume => "rollout.resume",
            Self::Promote => "rollout.promote",
            Self::Abort => "rollout.abort",
        }
    }
}

/// Applies an operator's action; the error says why it does not apply.
pub fn act(
    rollout: &mut Rollout,
    action: Action,
    reason: &str,
    identity: &str,
    now_ms: i64,
) -> Result<Next, String> {
    if !rollout.state.is_active() {
        return Err(format!(
            "rollout {} of group {:?} has ended ({})",
            rollout.id,
            rollout.group,
            rollout.state.name()
        ));
    }
    let said = |default: &str| {
        if reason.is_empty() {
            default.to_owned()
        } else {
            reason.to_owned()
        }
    };
    match (action, rollout.state) {
        (_, State::Aborting) => Err(format!("rollout {} is already rolling back", rollout.id)),
        (Action::Pause, State::Paused { by_operator: true }) => {
            Err(format!("rollout {} is already paused", rollout.id))
        }
        (Action::Pause, _) => {
            rollout.enter(
                State::Paused { by_operator: true },
                now_ms,
                said("paused by an operator"),
                identity,
            );
            Ok(Next::Save)
        }
        (Action::Resume, State::Paused { .. }) => {
            rollout.step_started_at_ms = now_ms;
            rollout.enter(State::Progressing, now_ms, said("resumed"), identity);
            Ok(Next::Save)
        }
        (Action::Resume, state) => Err(format!(
            "rollout {} is not paused ({})",
            rollout.id,
            state.name()
        )),
        (Action::Promote, _) => {
            rollout.step = rollout.spec.steps.len().saturating_sub(1);
            rollout.step_started_at_ms = now_ms;
            rollout.enter(
                State::Progressing,
                now_ms,
                said("promoted to 100% by an operator"),
                identity,
            );
            Ok(Next::Save)
        }
        (Action::Abort, _) => {
            rollout.enter(
                State::Aborting,
                now_ms,
                said("aborted by an operator"),
                identity,
            );
            Ok(Next::Abort)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::rollout::model::VersionRef;
    use crate::rollout::spec::Spec;

    const CANDIDATE: u64 = 8;
    const STABLE: u64 = 7;

    fn rollout(steps: &[u32], bake_s: u64) -> Rollout {
        let spec = Spec::try_from(pb::RolloutSpec {
            steps: steps.to_vec(),
            bake_ms: bake_s * 1000,
            progress_deadline_ms: 60_000,
            ..pb::RolloutSpec::default()
        })
        .unwrap();
        Rollout {
            id: "edge-v8".into(),
            group: "edge".into(),
            spec,
            state: State::Progressing,
            step: 0,
            stable: VersionRef {
                version: STABLE,
                hash: "s".into(),
            },
            candidate: VersionRef {
                version: CANDIDATE,
                hash: "c".into(),
            },
            restored: None,
            members: Vec::new(),
            started_at_ms: 0,
            updated_at_ms: 0,
            step_started_at_ms: 0,
            reason: String::new(),
            author: String::new(),
            message: String::new(),
            events: Vec::new(),
            driver: String::new(),
            driver_until_ms: 0,
        }
    }

    fn fleet(n: usize) -> Vec<AgentRecord> {
        (0..n)
            .map(|i| AgentRecord {
                node_id: format!("n{i:02}"),
                group: "edge".into(),
                labels: BTreeMap::from([(
                    "zone".to_owned(),
                    if i % 2 == 0 { "a" } else { "b" }.to_owned(),
                )]),
                connected: true,
                acked_version: STABLE,
                sessions: 1,
                ..AgentRecord::default()
            })
            .collect()
    }

    /// The members ACK the candidate (as their streams would report).
    fn members_ack(r: &Rollout, agents: &mut [AgentRecord]) {
        for a in agents.iter_mut().filter(|a| r.has_member(&a.node_id)) {
            a.acked_version = CANDIDATE;
        }
    }

    #[test]
    fn cohort_sizes_are_exact_even_in_small_fleets() {
        assert_eq!(cohort_target(10, 10), 1);
        assert_eq!(cohort_target(25, 10), 3);
        assert_eq!(cohort_target(1, 3), 1);
        assert_eq!(cohort_target(100, 7), 7);
        assert_eq!(cohort_target(50, 0), 0);
    }

    #[test]
    fn membership_is_sticky_and_the_same_on_every_replica() {
        let agents = fleet(20);
        let mut r = rollout(&[10, 50, 100], 0);
        let all: Vec<&AgentRecord> = agents.iter().collect();
        assert!(grow_cohort(&mut r, &all));
        assert_eq!(r.members.len(), 2);
        let first: Vec<String> = r.members.iter().map(|m| m.node_id.clone()).collect();
        // Another replica computes the same cohort.
        let mut other = rollout(&[10, 50, 100], 0);
        grow_cohort(&mut other, &all);
        assert_eq!(other.members, r.members);
        // Agents come and go: members stay, the cohort only grows.
        let mut changed: Vec<AgentRecord> = agents[5..].to_vec();
        changed.extend(fleet(40)[20..].iter().cloned());
        r.step = 1;
        let now: Vec<&AgentRecord> = changed.iter().collect();
        grow_cohort(&mut r, &now);
        assert_eq!(r.members.len(), cohort_target(50, changed.len()));
        for node in &first {
            assert!(r.has_member(node), "{node} left the cohort");
        }
        // A different rollout shuffles differently.
        let mut third = rollout(&[10, 50, 100], 0);
        third.id = "edge-v9".into();
        grow_cohort(&mut third, &all);
        let firsts: Vec<_> = third.members.iter().map(|m| &m.node_id).collect();
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn the_selector_limits_who_takes_part() {
        let agents = fleet(10);
        let mut r = rollout(&[100], 0);
        r.spec.selector = crate::rollout::selector::Selector::parse("zone=a").unwrap();
        step(&mut r, &agents, 0);
        assert_eq!(r.members.len(), 5);
        assert!(r.members.iter().all(|m| {
            let n: usize = m.node_id[1..].parse().unwrap();
            n.is_multiple_of(2)
        }));
    }

    #[test]
    fn steps_advance_on_acks_and_bake_then_complete() {
        let mut agents = fleet(10);
        let mut r = rollout(&[25, 100], 30);
        assert_eq!(step(&mut r, &agents, 1_000), Next::Save, "cohort picked");
        assert_eq!(r.members.len(), 3);
        assert_eq!(r.state, State::Progressing);
        // Not enough ACKs yet: nothing moves.
        assert_eq!(step(&mut r, &agents, 2_000), Next::Stay);
        members_ack(&r, &mut agents);
        assert_eq!(step(&mut r, &agents, 3_000), Next::Save);
        assert_eq!(r.state, State::Baking { until_ms: 33_000 });
        assert_eq!(step(&mut r, &agents, 32_999), Next::Stay);
        assert_eq!(step(&mut r, &agents, 33_000), Next::Save);
        assert_eq!((r.state, r.step), (State::Progressing, 1));
        assert_eq!(step(&mut r, &agents, 33_500), Next::Save, "the rest joins");
        assert_eq!(r.members.len(), 10);
        members_ack(&r, &mut agents);
        step(&mut r, &agents, 34_000);
        assert!(matches!(r.state, State::Baking { .. }));
        step(&mut r, &agents, 64_000);
        assert_eq!(r.state, State::Complete);
        assert_eq!(step(&mut r, &agents, 99_000), Next::Stay);
        let states: Vec<_> = r.events.iter().map(|e| e.state.name()).collect();
        assert_eq!(
            states,
            ["BAKING", "PROGRESSING", "BAKING", "COMPLETE"],
            "{:?}",
            r.events
        );
    }

    #[test]
    fn an_invalid_content_nack_aborts_at_once_whatever_max_nacks_says() {
        let mut agents = fleet(10);
        let mut r = rollout(&[50, 100], 0);
        r.spec.max_nacks = 5;
        step(&mut r, &agents, 0);
        let member = r.members[0].node_id.clone();
        let a = agents.iter_mut().find(|a| a.node_id == member).unwrap();
        a.last_nacked_version = CANDIDATE;
        a.nack_code = INVALID_CONTENT;
        a.nack_reason = "routes[0].cluster: unknown cluster".into();
        assert_eq!(step(&mut r, &agents, 1_000), Next::Abort);
        assert_eq!(r.state, State::Aborting);
        assert!(
            r.reason.contains("refused version 8 as invalid"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("unknown cluster"), "{}", r.reason);
    }

    #[test]
    fn other_nacks_count_against_max_nacks() {
        let mut agents = fleet(10);
        let mut r = rollout(&[50, 100], 0);
        r.spec.max_nacks = 1;
        step(&mut r, &agents, 0);
        let members: Vec<String> = r.members.iter().map(|m| m.node_id.clone()).collect();
        let nack = |agents: &mut Vec<AgentRecord>, node: &str| {
            let a = agents.iter_mut().find(|a| a.node_id == node).unwrap();
            a.last_nacked_version = CANDIDATE;
            a.nack_code = 13;
            a.nack_reason = "apply failed: disk".into();
        };
        nack(&mut agents, &members[0]);
        assert_ne!(
            step(&mut r, &agents, 1_000),
            Next::Abort,
            "one is tolerated"
        );
        nack(&mut agents, &members[1]);
        assert_eq!(step(&mut r, &agents, 2_000), Next::Abort);
        assert!(
            r.reason
                .contains("2 agent(s) refused version 8 (--max-nacks 1)")
        );
        // A NACK by an agent outside the cohort does not count.
        let mut r = rollout(&[10, 100], 0);
        let mut agents = fleet(10);
        step(&mut r, &agents, 0);
        let outsider = agents
            .iter_mut()
            .find(|a| !r.has_member(&a.node_id))
            .unwrap();
        outsider.last_nacked_version = CANDIDATE;
        outsider.nack_code = INVALID_CONTENT;
        assert_ne!(step(&mut r, &agents, 1_000), Next::Abort);
    }

    #[test]
    fn degraded_members_and_crash_loops_abort_during_the_bake() {
        let mut agents = fleet(4);
        let mut r = rollout(&[50, 100], 60);
        step(&mut r, &agents, 0);
        members_ack(&r, &mut agents);
        step(&mut r, &agents, 1_000);
        assert!(matches!(r.state, State::Baking { .. }));
        let member = r.members[0].node_id.clone();
        let a = agents.iter_mut().find(|a| a.node_id == member).unwrap();
        a.health_degraded = true;
        a.health_version = CANDIDATE;
        a.health_reason = "error ratio 0.93 over 120 requests".into();
        assert_eq!(step(&mut r, &agents, 2_000), Next::Abort);
        assert!(
            r.reason.contains("report degraded on version 8"),
            "{}",
            r.reason
        );

        let mut agents = fleet(4);
        let mut r = rollout(&[50, 100], 60);
        r.spec.max_disconnects = 2;
        step(&mut r, &agents, 0);
        members_ack(&r, &mut agents);
        step(&mut r, &agents, 1_000);
        let member = r.members[1].node_id.clone();
        let a = agents.iter_mut().find(|a| a.node_id == member).unwrap();
        a.sessions += 2;
        assert_ne!(
            step(&mut r, &agents, 2_000),
            Next::Abort,
            "two are tolerated"
        );
        let a = agents.iter_mut().find(|a| a.node_id == member).unwrap();
        a.connected = false;
        assert_eq!(step(&mut r, &agents, 3_000), Next::Abort);
        assert!(r.reason.contains("3 times"), "{}", r.reason);
    }

    #[test]
    fn a_step_that_misses_its_deadline_aborts() {
        let agents = fleet(4);
        let mut r = rollout(&[50, 100], 0);
        step(&mut r, &agents, 0);
        assert_eq!(step(&mut r, &agents, 60_000), Next::Stay);
        assert_eq!(step(&mut r, &agents, 60_001), Next::Abort);
        assert!(
            r.reason.contains("missed its progress deadline of 1m"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("0 of 2 agent(s)"), "{}", r.reason);
    }

    #[test]
    fn too_little_evidence_pauses_and_enough_resumes() {
        let mut agents = fleet(10);
        let mut r = rollout(&[10, 100], 0);
        r.spec.min_agents = 3;
        assert_eq!(step(&mut r, &agents, 0), Next::Save);
        assert_eq!(r.state, State::Paused { by_operator: false });
        assert!(
            r.reason.contains("too little evidence: 1 agent(s)"),
            "{}",
            r.reason
        );
        // Paused for evidence is no deadline's business.
        assert_eq!(step(&mut r, &agents, 10_000_000), Next::Stay);
        // The fleet grows to 30: the 10% cohort has 3.
        agents.extend(fleet(30)[10..].iter().cloned());
        assert_eq!(step(&mut r, &agents, 10_000_500), Next::Save);
        assert_eq!(r.state, State::Progressing);
        assert_eq!(r.members.len(), 3);
        assert_eq!(r.step_started_at_ms, 10_000_500);
    }

    #[test]
    fn operators_pause_resume_promote_and_abort() {
        let agents = fleet(10);
        let mut r = rollout(&[10, 50, 100], 0);
        step(&mut r, &agents, 0);
        assert_eq!(act(&mut r, Action::Pause, "", "ops", 1), Ok(Next::Save));
        assert_eq!(r.state, State::Paused { by_operator: true });
        assert!(act(&mut r, Action::Pause, "", "ops", 2).is_err());
        // A manual pause holds, whatever the evidence.
        assert_eq!(step(&mut r, &agents, 1_000_000), Next::Stay);
        assert_eq!(act(&mut r, Action::Resume, "", "ops", 3), Ok(Next::Save));
        assert!(act(&mut r, Action::Resume, "", "ops", 4).is_err());
        assert_eq!(
            act(&mut r, Action::Promote, "ship it", "ops", 5),
            Ok(Next::Save)
        );
        assert_eq!((r.step, r.percent()), (2, 100));
        assert_eq!(r.events.last().unwrap().identity, "ops");
        assert_eq!(r.reason, "ship it");
        assert_eq!(act(&mut r, Action::Abort, "", "ops", 6), Ok(Next::Abort));
        assert!(act(&mut r, Action::Abort, "", "ops", 7).is_err());
        r.state = State::RolledBack;
        let e = act(&mut r, Action::Resume, "", "ops", 8).unwrap_err();
        assert!(e.contains("has ended (ROLLED_BACK)"), "{e}");
    }

    #[test]
    fn the_stored_record_round_trips() {
        let mut agents = fleet(10);
        let mut r = rollout(&[25, 100], 30);
        step(&mut r, &agents, 0);
        members_ack(&r, &mut agents);
        step(&mut r, &agents, 10);
        r.driver = "replica-a".into();
        r.driver_until_ms = 99;
        let back = Rollout::decode(&r.encode()).unwrap();
        assert_eq!(back.state, r.state);
        assert_eq!(back.members, r.members);
        assert_eq!(back.spec, r.spec);
        assert_eq!((back.step, back.driver_until_ms), (r.step, 99));
        assert_eq!(back.events.len(), r.events.len());
        assert_eq!(back.bake_left(20), Duration::from_millis(29_990));
        assert!(Rollout::decode(b"\x01\x02").is_err());
    }
}
