//! `--health-cmd`: the sidecar's data-plane health. The command runs (via
//! `sh -c`, bounded by `--health-timeout`) at startup, after each apply and
//! every `--health-interval`; exit 0 reports the running version healthy,
//! anything else degraded with the command's stderr as the reason. The
//! agent sends the report to the control plane (docs/protocol.md).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use vane_agent::{AgentHandle, Current, DataPlaneHealth};

use crate::output::run_sh;

/// What the health loop runs, and how often.
#[derive(Debug, Clone)]
pub(crate) struct HealthCmd {
    /// The shell command.
    pub(crate) cmd: String,
    /// Between runs when nothing is applied.
    pub(crate) interval: Duration,
    /// Longest one run may take (then it is killed: degraded).
    pub(crate) timeout: Duration,
    /// `--output`, passed as `VANE_OUTPUT`.
    pub(crate) output: Option<PathBuf>,
}

impl HealthCmd {
    /// Runs the command once for `current`, on a blocking thread (it may
    /// take up to the timeout), and says what it found.
    async fn check(&self, current: &Current) -> DataPlaneHealth {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.cmd)
            .env("VANE_VERSION", current.version.to_string())
            .env("VANE_HASH", &current.hash)
            .env("VANE_SOURCE", current.source.as_str());
        if let Some(o) = &self.output {
            command.env("VANE_OUTPUT", o);
        }
        let (cmd, timeout) = (self.cmd.clone(), self.timeout);
        let run = tokio::task::spawn_blocking(move || run_sh(command, "health-cmd", &cmd, timeout));
        match run.await {
            Ok(Ok(())) => DataPlaneHealth::Healthy,
            Ok(Err(reason)) => DataPlaneHealth::Degraded { reason },
            Err(e) => DataPlaneHealth::Degraded {
                reason: format!("health-cmd: the check failed to run: {e}"),
            },
        }
    }
}

/// Runs the health command at startup, after each apply and every
/// interval until `stop`; one run at a time (applies during a run are
/// coalesced into the next, latest wins).
pub(crate) async fn run(health: HealthCmd, agent: AgentHandle, mut stop: watch::Receiver<bool>) {
    let mut changes = agent.subscribe();
    let mut ticks = tokio::time::interval(health.interval);
    // A run longer than the interval is followed by the next one, not by a
    // burst of the runs it missed.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // The first tick is at once: the startup configuration is checked.
        tokio::select! {
            _ = ticks.tick() => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // Counted from this run: the next periodic one is an
                // interval after it.
                ticks.reset();
            }
            _ = stop.changed() => return,
        }
        let current: Arc<Current> = changes.borrow_and_update().clone();
        let verdict = tokio::select! {
            verdict = health.check(&current) => verdict,
            // The blocking run ends by itself within its timeout.
            _ = stop.changed() => return,
        };
        match &verdict {
            DataPlaneHealth::Healthy => {
                tracing::debug!(version = current.version, "health-cmd passed");
            }
            DataPlaneHealth::Degraded { reason } => {
                tracing::warn!(version = current.version, %reason, "health-cmd failed: reporting degraded");
            }
        }
        // Pinned on the version it ran against, not on one applied since.
        agent.report_health_for(current.version, verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(cmd: &str, timeout: Duration) -> HealthCmd {
        HealthCmd {
            cmd: cmd.into(),
            interval: Duration::from_secs(10),
            timeout,
            output: None,
        }
    }

    fn current(version: u64) -> Current {
        Current {
            version,
            hash: "ab".into(),
            source: vane_agent::Source::Live,
            snapshot: Arc::default(),
            applied_at: std::time::SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn exit_zero_is_healthy_and_anything_else_degraded_with_its_stderr() {
        let second = Duration::from_secs(10);
        assert_eq!(
            health("test \"$VANE_VERSION\" = 7", second)
                .check(&current(7))
                .await,
            DataPlaneHealth::Healthy
        );
        assert_eq!(
            health(
                "echo '  upstream api: 9 of 10 probes failed ' >&2; exit 1",
                second
            )
            .check(&current(7))
            .await,
            DataPlaneHealth::Degraded {
                reason: "upstream api: 9 of 10 probes failed".into()
            }
        );
        let DataPlaneHealth::Degraded { reason } =
            health("exit 4", second).check(&current(7)).await
        else {
            panic!("exit 4 is degraded");
        };
        assert!(reason.starts_with("health-cmd failed with"), "{reason}");
        let DataPlaneHealth::Degraded { reason } = health("sleep 30", Duration::from_millis(200))
            .check(&current(7))
            .await
        else {
            panic!("a hung check is degraded");
        };
        assert!(reason.starts_with("health-cmd timed out"), "{reason}");
    }
}
