//! The demo's rollout: four more sidecars of `edge` (labelled by zone,
//! each with a `--health-cmd` that finds the candidate's smaller body limit
//! breaks uploads), a rollout to one of them that the degraded report rolls
//! back by itself, and what it leaves in status, history and the cohort
//! member's own `/status` history.

use std::ffi::OsString;

use anyhow::{Context as _, Result, ensure};

use super::session::{Demo, GROUP};
use crate::harness::{AGENT_LISTENING, Server, http_get, wait_until};

/// The canaries' health check: healthy while the body limit is the
/// example's 1 MiB; otherwise it "measures" for two seconds (so the
/// cohort is seen running the candidate) and reports degraded.
const HEALTH_CMD: &str = "grep -q 1048576 \"$VANE_OUTPUT\" || { sleep 2; echo 'uploads over 1 KiB fail with 413: 38% of POSTs' >&2; exit 1; }";

/// How many sidecars the rollout runs over.
const CANARIES: usize = 4;

/// The candidate: version 2's content with a body limit of 1 KiB.
pub(crate) fn write_candidate(work: &std::path::Path) -> Result<()> {
    let v2 = std::fs::read_to_string(work.join("snapshot-v2.yaml"))
        .context("cannot read snapshot-v2.yaml")?;
    ensure!(
        v2.matches("gateway.max_body_bytes: 1048576").count() == 1,
        "examples/snapshot.yaml should set gateway.max_body_bytes: 1048576 once: update the demo"
    );
    let candidate = v2.replacen(
        "gateway.max_body_bytes: 1048576",
        "gateway.max_body_bytes: 1024",
        1,
    );
    std::fs::write(work.join("snapshot-small-bodies.yaml"), candidate)?;
    Ok(())
}

impl Demo {
    /// Starts `edge-1`..`edge-4` (zone a, b, a, b) and waits until the
    /// server has them SYNCED on `version`.
    pub(crate) fn start_canaries(&mut self, version: u64) -> Result<()> {
        let (tls, tls_shown) = self.agent_tls();
        for i in 1..=CANARIES {
            let node = format!("edge-{i}");
            let zone = if i % 2 == 1 { "a" } else { "b" };
            let mut args: Vec<OsString> = vec![
                "--node-id".into(),
                node.clone().into(),
                "--group".into(),
                GROUP.into(),
                "--control".into(),
                self.server_url.clone().into(),
                "--label".into(),
                format!("zone={zone}").into(),
                "--cache-dir".into(),
                self.work.join(format!("cache-{node}")).into(),
                "--output".into(),
                self.work.join(format!("{node}.json")).into(),
                "--health-cmd".into(),
                HEALTH_CMD.into(),
                "--admin-listen".into(),
                "127.0.0.1:0".into(),
                "--backoff-cap".into(),
                "2s".into(),
            ];
            args.extend(tls.clone());
            if i == 1 {
                println!(
                    "$ vane-agent --node-id {node} --group {GROUP} --control {}{tls_shown} --label zone={zone} \\\n    --cache-dir cache-{node} --output {node}.json --admin-listen 127.0.0.1:0 --backoff-cap 2s \\\n    --health-cmd '{HEALTH_CMD}' &",
                    self.server_url
                );
            } else {
                println!("$ vane-agent --node-id {node} ... --label zone={zone} ... &");
            }
            let agent = Server::start(
                "vane-agent",
                &self.bin.join("vane-agent"),
                &args,
                AGENT_LISTENING,
                &self.work,
            )?;
            self.canaries.push((node, agent));
        }
        for (node, agent) in &self.canaries {
            let want = version.to_string();
            wait_until(&format!("{node} to apply version {version}"), || {
                status_field(agent, "version").as_deref() == Some(want.as_str())
            })?;
        }
        Ok(())
    }

    /// The group's rollout as `vanectl rollout status -o json` prints it.
    pub(crate) fn rollout_json(&self) -> Result<serde_json::Value> {
        let out = self
            .vanectl_cmd()
            .args(["rollout", "status", GROUP, "-o", "json"])
            .output()
            .context("cannot run vanectl")?;
        ensure!(
            out.status.success(),
            "vanectl rollout status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("rollout status -o json is not JSON")
    }

    /// Checks the rollout ended ROLLED_BACK on a degraded report, and shows
    /// the cohort member's `/status` history.
    pub(crate) fn show_rolled_back(&self) -> Result<()> {
        let r = self.rollout_json()?;
        ensure!(
            r["state"] == "ROLLED_BACK",
            "the rollout should have rolled back: {r}"
        );
        let reason = r["reason"].as_str().unwrap_or_default();
        ensure!(
            reason.contains("report degraded"),
            "the rollout should name the degraded report: {reason}"
        );
        let member = r["members"][0].as_str().unwrap_or_default().to_owned();
        let (_, agent) = self
            .canaries
            .iter()
            .find(|(n, _)| *n == member)
            .with_context(|| format!("no sidecar named {member:?}"))?;
        let restored = r["restored_version"].to_string();
        wait_until(&format!("{member} to apply the restored version"), || {
            status_field(agent, "version").as_deref() == Some(restored.as_str())
        })?;
        println!(
            "$ curl -s http://{}/status | jq .history   # {member}, the cohort",
            agent.addr
        );
        let status: serde_json::Value = serde_json::from_str(&http_get(agent.addr, "/status")?)?;
        println!("{}", serde_json::to_string_pretty(&status["history"])?);
        Ok(())
    }

    /// Stops the rollout's sidecars (SIGTERM).
    pub(crate) fn stop_canaries(&mut self) -> Result<()> {
        for (_, mut agent) in self.canaries.drain(..) {
            agent.stop()?;
        }
        Ok(())
    }
}

/// A top-level scalar of a sidecar's /status JSON, as text.
fn status_field(agent: &Server, field: &str) -> Option<String> {
    let body = http_get(agent.addr, "/status").ok()?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    match json.get(field)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_candidate_is_version_two_with_small_bodies() {
        let root = crate::workspace_root();
        let work = tempfile::tempdir().unwrap();
        super::super::setup::write_files(&root, work.path()).unwrap();
        write_candidate(work.path()).unwrap();
        let c = std::fs::read_to_string(work.path().join("snapshot-small-bodies.yaml")).unwrap();
        assert!(c.contains("gateway.max_body_bytes: 1024\n") && c.contains("weight: 5"));
        assert!(
            !c.contains("1048576"),
            "the health check tells them apart by it"
        );
    }
}
