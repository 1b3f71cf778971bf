//! How a rollout proceeds ([`Spec`]): the steps, the bake, the cohort's
//! selector and the abort thresholds, checked once at the edge
//! (`TryFrom<pb::RolloutSpec>`, whose error text the operator reads).

use std::time::Duration;

use vane_proto as pb;

use crate::rollout::selector::Selector;

/// `--max-disconnects` when not given.
pub const DEFAULT_MAX_DISCONNECTS: u32 = 3;
/// `--min-agents` when not given.
pub const DEFAULT_MIN_AGENTS: u32 = 1;
/// `--progress-deadline` when not given.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Longest bake or deadline accepted (a typo like `60d` is refused).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most steps in a plan.
pub const MAX_STEPS: usize = 100;

/// A validated rollout plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Cohort percentages, strictly increasing, ending at 100.
    pub steps: Vec<u32>,
    /// How long each step bakes once its share of agents ACKed.
    pub bake: Duration,
    /// Which agents take part (empty: all of the group's).
    pub selector: Selector,
    /// NACKs of the candidate in the cohort tolerated (an invalid-content
    /// NACK aborts at once).
    pub max_nacks: u32,
    /// Disconnects per agent during a bake tolerated (crash loops).
    pub max_disconnects: u32,
    /// Fewer agents than this in the cohort pause the rollout.
    pub min_agents: u32,
    /// A step that has not reached its share in this long aborts.
    pub progress_deadline: Duration,
    /// Agents of the cohort reporting degraded tolerated.
    pub max_degraded: u32,
}

/// Why a spec is refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

fn duration(field: &str, ms: u64) -> Result<Duration, SpecError> {
    let d = Duration::from_millis(ms);
    if d > MAX_DURATION {
        return Err(SpecError(format!(
            "{field}: {} is longer than the limit of 7 days",
            humantime::format_duration(d)
        )));
    }
    Ok(d)
}

impl TryFrom<pb::RolloutSpec> for Spec {
    type Error = SpecError;

    fn try_from(p: pb::RolloutSpec) -> Result<Self, SpecError> {
        if p.steps.is_empty() {
            return Err(SpecError(
                "steps: required (cohort percentages, e.g. 10,50,100)".into(),
            ));
        }
        if p.steps.len() > MAX_STEPS {
            return Err(SpecError(format!(
                "steps: {} steps, at most {MAX_STEPS}",
                p.steps.len()
            )));
        }
        for (i, step) in p.steps.iter().enumerate() {
            if !(1..=100).contains(step) {
                return Err(SpecError(format!(
                    "steps[{i}]: {step} is not a percentage from 1 to 100"
                )));
            }
            if i > 0 && *step <= p.steps[i - 1] {
                return Err(SpecError(format!(
                    "steps[{i}]: {step} does not grow after {} (steps must increase)",
                    p.steps[i - 1]
                )));
            }
        }
        if p.steps.last() != Some(&100) {
            return Err(SpecError(format!(
                "steps: the last step must be 100 (every agent), not {}",
                p.steps.last().copied().unwrap_or(0)
            )));
        }
        let selector = Selector::parse(&p.selector).map_err(|e| SpecError(e.to_string()))?;
        let progress_deadline = match p.progress_deadline_ms {
            0 => DEFAULT_PROGRESS_DEADLINE,
            ms => duration("progress_deadline", ms)?,
        };
        Ok(Self {
            steps: p.steps,
            bake: duration("bake", p.bake_ms)?,
            selector,
            max_nacks: p.max_nacks,
            max_disconnects: match p.max_disconnects {
                0 => DEFAULT_MAX_DISCONNECTS,
                n => n,
            },
            min_agents: match p.min_agents {
                0 => DEFAULT_MIN_AGENTS,
                n => n,
            },
            progress_deadline,
            max_degraded: p.max_degraded,
        })
    }
}

impl From<&Spec> for pb::RolloutSpec {
    fn from(s: &Spec) -> Self {
        Self {
            steps: s.steps.clone(),
            bake_ms: u64::try_from(s.bake.as_millis()).unwrap_or(u64::MAX),
            selector: s.selector.to_string(),
            max_nacks: s.max_nacks,
            max_disconnects: s.max_disconnects,
            min_agents: s.min_agents,
            progress_deadline_ms: u64::try_from(s.progress_deadline.as_millis())
                .unwrap_or(u64::MAX),
            max_degraded: s.max_degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(steps: &[u32]) -> pb::RolloutSpec {
        pb::RolloutSpec {
            steps: steps.to_vec(),
            ..pb::RolloutSpec::default()
        }
    }

    #[test]
    fn defaults_fill_what_was_not_given() {
        let s = Spec::try_from(spec(&[10, 50, 100])).unwrap();
        assert_eq!(s.max_disconnects, DEFAULT_MAX_DISCONNECTS);
        assert_eq!(s.min_agents, 1);
        assert_eq!(s.progress_deadline, DEFAULT_PROGRESS_DEADLINE);
        assert_eq!(s.bake, Duration::ZERO);
        assert_eq!(s.max_nacks, 0);
        // Round trip through the wire keeps it.
        assert_eq!(Spec::try_from(pb::RolloutSpec::from(&s)).unwrap(), s);
    }

    #[test]
    fn bad_plans_name_the_field() {
        let cases: [(pb::RolloutSpec, &str); 6] = [
            (spec(&[]), "steps: required"),
            (spec(&[0, 100]), "steps[0]: 0 is not a percentage"),
            (spec(&[50, 50, 100]), "steps[1]: 50 does not grow"),
            (spec(&[10, 50]), "steps: the last step must be 100"),
            (
                pb::RolloutSpec {
                    bake_ms: 30 * 24 * 3600 * 1000,
                    ..spec(&[100])
                },
                "bake: 30days is longer",
            ),
            (
                pb::RolloutSpec {
                    selector: "zone in a".into(),
                    ..spec(&[100])
                },
                "selector: term 1",
            ),
        ];
        for (p, want) in cases {
            let e = Spec::try_from(p).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
