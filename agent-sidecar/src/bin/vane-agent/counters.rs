//! Outcome counters of the sidecar's commands (`--check-cmd`,
//! `--on-change`, `--health-cmd`): process-wide, because the commands run
//! where the metrics registry is not (the agent's validator, a task), and
//! a process has one of each command.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A command's outcome label: `ok`, `failed` (non-zero exit, or it could
/// not run) or `timeout` (killed at its deadline). Three values: bounded.
type Outcome = [(&'static str, &'static str); 1];

static CHECK: LazyLock<Family<Outcome, Counter>> = LazyLock::new(Family::default);
static ON_CHANGE: LazyLock<Family<Outcome, Counter>> = LazyLock::new(Family::default);
static HEALTH: LazyLock<Family<Outcome, Counter>> = LazyLock::new(Family::default);

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Ok,
    Failed,
    Timeout,
}

/// Counts one run of the command `what` (`check-cmd`, `on-change`,
/// `health-cmd`; others are not counted).
pub(crate) fn ran(what: &str, ended: Ended) {
    let family = match what {
        "check-cmd" => &*CHECK,
        "on-change" => &*ON_CHANGE,
        "health-cmd" => &*HEALTH,
        _ => return,
    };
    let outcome = match ended {
        Ended::Ok => "ok",
        Ended::Failed => "failed",
        Ended::Timeout => "timeout",
    };
    family.get_or_create(&[("outcome", outcome)]).inc();
}

/// Adds the three counters to the admin endpoint's registry.
pub(crate) fn register(registry: &mut Registry) {
    registry.register(
        "vane_agent_check_cmd",
        "Runs of --check-cmd by outcome: ok (the candidate was accepted), failed (refused: non-zero exit, or it could not run), timeout (killed after --check-timeout)",
        CHECK.clone(),
    );
    registry.register(
        "vane_agent_on_change",
        "Runs of --on-change by outcome: ok, failed (non-zero exit, or it could not run), timeout (killed after 60s)",
        ON_CHANGE.clone(),
    );
    registry.register(
        "vane_agent_health_cmd",
        "Runs of --health-cmd by outcome: ok, failed (non-zero exit, or it could not run), timeout (killed after --health-timeout)",
        HEALTH.clone(),
    );
}
