//! What vanectl shows of a rollout: the view (its serde names are the JSON
//! contract of `rollout status -o json` and of `rollout` in `status -o
//! json`), the header line and events table, and the one-line changes
//! `rollout status -w` prints.

use std::fmt::Write as _;

use serde::Serialize;
use vane_proto as pb;

use crate::args::OutputFormat;
use crate::output::format::*;

/// One rollout, as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RolloutView {
    pub(crate) id: String,
    pub(crate) group: String,
    /// PROGRESSING, BAKING, PAUSED, ABORTING, COMPLETE, ROLLED_BACK or SUPERSEDED.
    pub(crate) state: &'static str,
    /// The current step, from 1.
    pub(crate) step: u32,
    pub(crate) percent: u32,
    /// Every step's percentage (the last is 100).
    pub(crate) steps: Vec<u32>,
    pub(crate) stable_version: u64,
    pub(crate) stable_hash: String,
    pub(crate) candidate_version: u64,
    pub(crate) candidate_hash: String,
    /// After a rollback: the new version holding the stable content (0 otherwise).
    pub(crate) restored_version: u64,
    pub(crate) cohort: CohortView,
    /// Why the rollout is in its state (an abort's cause, a pause's reason).
    pub(crate) reason: String,
    /// Whether a PAUSED rollout was paused by an operator (needs `resume`)
    /// rather than for too few agents (resumes by itself).
    pub(crate) paused_by_operator: bool,
    pub(crate) spec: SpecView,
    pub(crate) started_at: Option<String>,
    pub(crate) updated_at: Option<String>,
    pub(crate) step_started_at: Option<String>,
    /// While BAKING: when the bake ends.
    pub(crate) bake_ends_at: Option<String>,
    pub(crate) author: String,
    pub(crate) message: String,
    /// Node ids of the cohort, in the order they joined.
    pub(crate) members: Vec<String>,
    /// Every transition, oldest first.
    pub(crate) events: Vec<EventView>,
    #[serde(skip)]
    pub(crate) bake_ends_ms: i64,
}

/// The cohort's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CohortView {
    /// Agents in the cohort (connected or not).
    pub(crate) total: u32,
    /// Members that ACKed the version they should run.
    pub(crate) synced: u32,
    pub(crate) nacked: u32,
    pub(crate) degraded: u32,
    pub(crate) disconnected: u32,
    /// The cohort size this step asks for: ceil(percent × matching / 100).
    pub(crate) target: u32,
    /// Agents of the group matching the selector.
    pub(crate) matching: u32,
}

/// How the rollout proceeds, as the server applied its defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct SpecView {
    pub(crate) steps: Vec<u32>,
    pub(crate) bake_ms: u64,
    pub(crate) selector: String,
    pub(crate) max_nacks: u32,
    pub(crate) max_disconnects: u32,
    pub(crate) min_agents: u32,
    pub(crate) progress_deadline_ms: u64,
    pub(crate) max_degraded: u32,
}

/// One transition of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct EventView {
    pub(crate) at: Option<String>,
    pub(crate) state: &'static str,
    pub(crate) step: u32,
    pub(crate) percent: u32,
    pub(crate) reason: String,
    pub(crate) identity: String,
}

impl From<&pb::Rollout> for RolloutView {
    fn from(r: &pb::Rollout) -> Self {
        let spec = r.spec.clone().unwrap_or_default();
        let cohort = r.cohort.unwrap_or_default();
        Self {
            id: r.id.clone(),
            group: r.group.clone(),
            state: rollout_state_name(r.state()),
            step: r.step,
            percent: r.percent,
            steps: spec.steps.clone(),
            stable_version: r.stable_version,
            stable_hash: r.stable_hash.clone(),
            candidate_version: r.candidate_version,
            candidate_hash: r.candidate_hash.clone(),
            restored_version: r.restored_version,
            cohort: CohortView {
                total: cohort.total,
                synced: cohort.synced,
                nacked: cohort.nacked,
                degraded: cohort.degraded,
                disconnected: cohort.disconnected,
                target: cohort.target,
                matching: cohort.matching,
            },
            reason: r.reason.clone(),
            paused_by_operator: r.paused_by_operator,
            spec: SpecView {
                steps: spec.steps,
                bake_ms: spec.bake_ms,
                selector: spec.selector,
                max_nacks: spec.max_nacks,
                max_disconnects: spec.max_disconnects,
                min_agents: spec.min_agents,
                progress_deadline_ms: spec.progress_deadline_ms,
                max_degraded: spec.max_degraded,
            },
            started_at: rfc3339(r.started_at_unix_ms),
            updated_at: rfc3339(r.updated_at_unix_ms),
            step_started_at: rfc3339(r.step_started_at_unix_ms),
            bake_ends_at: rfc3339(r.bake_ends_at_unix_ms),
            author: r.author.clone(),
            message: r.message.clone(),
            members: r.members.clone(),
            events: r
                .events
                .iter()
                .map(|e| EventView {
                    at: rfc3339(e.at_unix_ms),
                    state: rollout_state_name(e.state()),
                    step: e.step,
                    percent: e.percent,
                    reason: e.reason.clone(),
                    identity: e.identity.clone(),
                })
                .collect(),
            bake_ends_ms: r.bake_ends_at_unix_ms,
        }
    }
}

impl RolloutView {
    /// COMPLETE, ROLLED_BACK or SUPERSEDED: nothing will change any more.
    pub(crate) fn ended(&self) -> bool {
        matches!(self.state, "COMPLETE" | "ROLLED_BACK" | "SUPERSEDED")
    }

    /// "step 1/2 at 25%".
    fn step_text(&self) -> String {
        format!(
            "step {}/{} at {}%",
            self.step,
            self.steps.len().max(self.step as usize),
            self.percent
        )
    }

    fn state_text(&self) -> String {
        match self.state {
            "PAUSED" if self.paused_by_operator => "PAUSED (by an operator)".to_owned(),
            "PAUSED" => "PAUSED (too few agents, resumes by itself)".to_owned(),
            s => s.to_owned(),
        }
    }

    fn versions_text(&self) -> String {
        let mut out = format!(
            "stable v{} → candidate v{}",
            self.stable_version, self.candidate_version
        );
        if self.restored_version != 0 {
            let _ = write!(out, " (restored as v{})", self.restored_version);
        }
        out
    }

    fn cohort_text(&self) -> String {
        let c = &self.cohort;
        format!(
            "cohort {} of {} matching (target {}): {} synced, {} nacked, {} degraded, {} disconnected",
            c.total, c.matching, c.target, c.synced, c.nacked, c.degraded, c.disconnected
        )
    }

    /// The header: group, id, state, step, versions, cohort, bake timer, reason.
    pub(crate) fn header(&self, now_ms: i64) -> String {
        let mut out = format!(
            "{} rollout {}: {}, {}, {}; {}",
            self.group,
            self.id,
            self.state_text(),
            self.step_text(),
            self.versions_text(),
            self.cohort_text()
        );
        if self.state == "BAKING" && self.bake_ends_ms > 0 {
            let left_ms = self.bake_ends_ms.saturating_sub(now_ms).max(0);
            let _ = write!(
                out,
                "; bake ends in {}s",
                left_ms.saturating_add(999) / 1000
            );
        }
        if !self.reason.is_empty() {
            let _ = write!(out, "; {}", one_line(&self.reason));
        }
        out
    }

    /// What `rollout status -w` prints when something changed: the header
    /// without anything that moves by itself (the bake countdown shows as
    /// the instant it ends), so that equal lines mean nothing changed.
    pub(crate) fn change_line(&self) -> String {
        let mut out = format!(
            "{}, {}, {}; {}",
            self.state_text(),
            self.step_text(),
            self.versions_text(),
            self.cohort_text()
        );
        if self.state == "BAKING"
            && let Some(at) = rfc3339_seconds(self.bake_ends_ms)
        {
            let _ = write!(out, "; bake ends at {at}");
        }
        if !self.reason.is_empty() {
            let _ = write!(out, "; {}", one_line(&self.reason));
        }
        out
    }

    fn spec_text(&self) -> String {
        let s = &self.spec;
        let steps: Vec<String> = s.steps.iter().map(|p| format!("{p}%")).collect();
        let duration =
            |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
        format!(
            "steps {}; bake {}; selector {}; max nacks {}, max degraded {}, max disconnects {}, min agents {}, progress deadline {}",
            steps.join(" → "),
            if s.bake_ms == 0 {
                "none".to_owned()
            } else {
                duration(s.bake_ms)
            },
            if s.selector.is_empty() {
                "every agent"
            } else {
                &s.selector
            },
            s.max_nacks,
            s.max_degraded,
            s.max_disconnects,
            s.min_agents,
            duration(s.progress_deadline_ms),
        )
    }
}

/// `rollout status` (and the answer of `rollout pause|resume|promote|abort`):
/// the header, the plan and the events.
pub(crate) fn rollout(view: &RolloutView, format: OutputFormat, now_ms: i64) -> String {
    if format != OutputFormat::Table {
        return encode(view, format);
    }
    let mut out = view.header(now_ms);
    out.push('\n');
    let _ = writeln!(out, "plan: {}", view.spec_text());
    if let Some(started) = view.started_at.as_deref() {
        let _ = write!(out, "started {}", table_time(Some(started)));
        if !view.author.is_empty() {
            let _ = write!(out, " by {}", view.author);
        }
        if !view.message.is_empty() {
            let _ = write!(out, ": {}", one_line(&view.message));
        }
        out.push('\n');
    }
    if !view.events.is_empty() {
        out.push('\n');
        let rows = view
            .events
            .iter()
            .map(|e| {
                vec![
                    table_time(e.at.as_deref()),
                    e.state.to_owned(),
                    e.step.to_string(),
                    format!("{}%", e.percent),
                    dash(&e.identity),
                    dash(&one_line(&e.reason)),
                ]
            })
            .collect();
        out.push_str(&table(
            &["TIME", "STATE", "STEP", "PERCENT", "IDENTITY", "REASON"],
            rows,
        ));
    }
    out
}

/// `rollout start`: what was started.
pub(crate) fn rollout_started(view: &RolloutView, format: OutputFormat, now_ms: i64) -> String {
    if format != OutputFormat::Table {
        return encode(view, format);
    }
    let mut out = format!(
        "started rollout {} of {}: stable v{} (sha256 {}) → candidate v{} (sha256 {})\n",
        view.id,
        view.group,
        view.stable_version,
        short(&view.stable_hash),
        view.candidate_version,
        short(&view.candidate_hash)
    );
    let _ = writeln!(out, "plan: {}", view.spec_text());
    let _ = writeln!(out, "now: {}", view.header(now_ms));
    out
}

/// The contract's rollout state names.
pub(crate) fn rollout_state_name(state: pb::RolloutState) -> &'static str {
    match state {
        pb::RolloutState::Progressing => "PROGRESSING",
        pb::RolloutState::Baking => "BAKING",
        pb::RolloutState::Paused => "PAUSED",
        pb::RolloutState::Aborting => "ABORTING",
        pb::RolloutState::Complete => "COMPLETE",
        pb::RolloutState::RolledBack => "ROLLED_BACK",
        pb::RolloutState::Superseded => "SUPERSEDED",
        pb::RolloutState::Unspecified => "UNKNOWN",
    }
}
