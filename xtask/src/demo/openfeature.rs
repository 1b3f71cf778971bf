//! The tour's OpenFeature steps: `examples/flags.yaml` pushed to the group
//! `shop`, the Python OpenFeature SDK with flagd's provider in in-process
//! mode following it over `flagd.sync.v1` (the committed client script of
//! the end-to-end tests, installed pinned under the target directory), the
//! same flag evaluated with OFREP by curl, a change reaching the SDK, and
//! `vanectl status` listing the SDK as a `flagd` client.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use vane_testkit::openfeature_tools::OpenFeatureTools;

use super::setup::Security;
use crate::harness::Proc;
use crate::narrate::millis;
use crate::process::display;

/// The group holding the flags (the flagd selector).
pub(crate) const SHOP: &str = "shop";
/// The flag the steps follow.
const FLAG: &str = "new-checkout";
/// How long the SDK may take to start and sync (it starts a Python runtime)
/// or to see a change.
const WITHIN: Duration = Duration::from_secs(60);
/// The client's stdout (one JSON object a line) in the scratch directory.
const OUT: &str = "flagd-client.out";
/// Its stderr.
pub(crate) const LOG: &str = "flagd-client.log";

/// The two users the SDK evaluates for: (label, evaluation context).
fn users() -> [(&'static str, Value); 2] {
    [
        (
            "ann@example.com",
            json!({"targetingKey": "user-1", "email": "ann@example.com"}),
        ),
        (
            "bob@other.org",
            json!({"targetingKey": "user-2", "email": "bob@other.org"}),
        ),
    ]
}

/// What the client evaluates every 100 ms: both flags for both users, and
/// the plain value.
fn evals() -> Vec<Value> {
    let mut evals = Vec::new();
    for (flag, kind, default) in [
        (FLAG, "boolean", json!(false)),
        ("checkout-banner", "string", json!("")),
    ] {
        for (_, context) in users() {
            evals.push(json!({"flag": flag, "type": kind, "default": default, "context": context}));
        }
    }
    evals
        .push(json!({"flag": "checkout.max_items", "type": "number", "default": 0, "context": {}}));
    evals
}

/// The running SDK client and where its lines go.
pub(crate) struct FlagdRun {
    proc: Proc,
    out: PathBuf,
}

impl FlagdRun {
    /// The `values` of the client's latest `values` line.
    fn latest(&self) -> Option<Vec<Value>> {
        let text = std::fs::read_to_string(&self.out).ok()?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "values")
            .and_then(|e| e["values"].as_array().cloned())
    }

    /// Waits (polling every 20 ms) until the latest values satisfy `check`.
    fn wait_values(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        let start = Instant::now();
        loop {
            if let Some(values) = self.latest().filter(|v| check(v)) {
                return Ok(values);
            }
            if start.elapsed() > WITHIN {
                let out = std::fs::read_to_string(&self.out).unwrap_or_default();
                bail!(
                    "the OpenFeature client did not show {what} within {WITHIN:?}; its output:\n{out}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id, as shown.
    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        self.proc.pid()
    }

    /// SIGTERM; says how it went.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let (status, took) = self.proc.stop()?;
        println!("(the SDK client exited ({status}) in {})", millis(took));
        Ok(())
    }

    /// Starts `flagd_client.py` (with the SDK in `tools`) following `shop`
    /// on the control server at `control`, from the scratch directory
    /// `work`; shows the command line.
    pub(crate) fn start(
        tools: &OpenFeatureTools,
        work: &Path,
        control: SocketAddr,
        security: Security,
    ) -> Result<Self> {
        let mut cmd = tools.python_client();
        let host = control.ip().to_string();
        let port = control.port().to_string();
        let evals = Value::Array(evals()).to_string();
        cmd.current_dir(work)
            .args(["--host", &host, "--port", &port, "--selector", SHOP]);
        if security == Security::Mtls {
            cmd.args([
                "--tls-ca",
                "ca.pem",
                "--tls-cert",
                "agent.pem",
                "--tls-key",
                "agent.key",
            ]);
        }
        cmd.args(["--eval", &evals]);
        println!(
            "$ PYTHONPATH=target/openfeature-deps/python {} > {OUT} &",
            shorten(&display(&cmd), &evals)
        );
        let out = work.join(OUT);
        let stdout =
            File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
        let log = work.join(LOG);
        let stderr =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        // Stdin stays a pipe held by the child handle: the client exits when
        // it closes, so it cannot outlive the demo.
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", display(&cmd)))?;
        Ok(Self {
            proc: Proc::new("the OpenFeature client", child),
            out,
        })
    }

    /// Waits for the first values (the provider synced and is READY) and
    /// shows them, with how long that took; returns them.
    pub(crate) fn show_first(&self) -> Result<Vec<Value>> {
        let started = Instant::now();
        let values = self.wait_values("its first values", |_| true)?;
        println!(
            "(READY with the group's flags {} after the start; it evaluates every 100 ms, \
             locally)",
            millis(started.elapsed())
        );
        show_values(&values);
        Ok(values)
    }

    /// Fails unless bob@other.org is still off: what the change turns on.
    pub(crate) fn check_before_change(&self) -> Result<()> {
        let before = self
            .latest()
            .context("the OpenFeature client showed no values")?;
        ensure!(
            before.get(1).is_some_and(|r| r["value"] == false),
            "bob@other.org should be off before the change: {before:?}"
        );
        Ok(())
    }

    /// Waits until bob@other.org gets the new checkout; shows how long after
    /// `pushed` (the push returning) and the new values.
    pub(crate) fn show_change(&self, pushed: Instant) -> Result<()> {
        let after = self.wait_values("bob@other.org on the new checkout", |v| {
            v.get(1).is_some_and(|r| r["value"] == true)
        })?;
        println!(
            "(the SDK evaluated the new version {} after the push returned)",
            millis(pushed.elapsed())
        );
        show_values(&after);
        Ok(())
    }
}

/// `curl` OFREP for each user, shown with the answers; fails unless each
/// agrees with the SDK's `values` (as [`FlagdRun::show_first`] returned).
pub(crate) fn show_ofrep(
    work: &Path,
    server_url: &str,
    security: Security,
    values: &[Value],
) -> Result<()> {
    for (i, (_, context)) in users().iter().enumerate() {
        let answer = ofrep(work, server_url, security, context)?;
        let sdk = values.get(i).context("the SDK printed too few values")?;
        ensure!(
            answer["value"] == sdk["value"] && answer["variant"] == sdk["variant"],
            "OFREP answered {answer} for {context}, the SDK evaluated {sdk}"
        );
    }
    println!("(the same values and variants as the SDK's)");
    Ok(())
}

/// The command line as shown: the script by its path from the workspace
/// root and the evaluations summarized.
fn shorten(shown: &str, evals: &str) -> String {
    let root = vane_testkit::process::workspace_root();
    let root = format!("{}/", root.display());
    shown
        .replace(&root, "")
        .replace(&format!("'{evals}'"), "'[...]'")
}

/// One line a result: flag, user, value, variant and reason.
fn show_values(values: &[Value]) {
    let users = users();
    for (eval, result) in evals().iter().zip(values) {
        let who = users
            .iter()
            .find(|(_, c)| *c == eval["context"])
            .map_or("(no context)", |(label, _)| label);
        println!(
            "  {:<18} {:<16} = {:<24} (variant {}, {})",
            eval["flag"].as_str().unwrap_or_default(),
            who,
            result["value"].to_string(),
            result["variant"],
            result["reason"].as_str().unwrap_or_default()
        );
    }
}

/// `curl` OFREP for `context`, shown with its answer; returns the answer.
fn ofrep(work: &Path, server_url: &str, security: Security, context: &Value) -> Result<Value> {
    let url = format!("{server_url}/ofrep/v1/evaluate/flags/{FLAG}");
    let body = json!({ "context": context }).to_string();
    let mut cmd = Command::new("curl");
    cmd.current_dir(work).arg("-s");
    if security == Security::Mtls {
        cmd.args([
            "--cacert",
            "ca.pem",
            "--cert",
            "agent.pem",
            "--key",
            "agent.key",
        ]);
    }
    cmd.args([
        "-X",
        "POST",
        "-H",
        &format!("Vane-Group: {SHOP}"),
        "-H",
        "Content-Type: application/json",
        "--data",
        &body,
        &url,
    ]);
    println!("$ {}", display(&cmd));
    let out = cmd.output().context("cannot run curl (is it installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    ensure!(out.status.success(), "curl exited with {}", out.status);
    serde_json::from_str(&text).with_context(|| format!("OFREP answered {text:?}, not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_evaluates_both_users_and_the_value() {
        let evals = evals();
        assert_eq!(evals.len(), 5);
        assert_eq!(evals[1]["context"]["email"], "bob@other.org");
        assert_eq!(evals[4]["flag"], "checkout.max_items");
    }

    #[test]
    fn the_shown_command_line_is_short() {
        let root = vane_testkit::process::workspace_root();
        let shown = format!(
            "python3 -u {}/tests/openfeature-clients/flagd_client.py --eval '[1]'",
            root.display()
        );
        assert_eq!(
            shorten(&shown, "[1]"),
            "python3 -u tests/openfeature-clients/flagd_client.py --eval '[...]'"
        );
    }
}
