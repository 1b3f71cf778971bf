//! The `vane-agent` sidecar as a real process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::net::http_get;
use crate::process::{bin_path, spawn_announced, terminate_child};

const ADMIN_PREFIX: &str = "vane-agent admin listening on ";

/// A running `vane-agent` with an admin endpoint; killed on drop.
pub struct Sidecar {
    child: Option<Child>,
    /// Its admin address.
    pub admin: SocketAddr,
    log: PathBuf,
    /// When the admin endpoint answered first (the process was started just before).
    pub ready_after: Duration,
}

impl Sidecar {
    /// Starts `vane-agent ARGS --admin-listen 127.0.0.1:0`, logging stderr to
    /// `log`, and waits until the admin endpoint listens.
    pub fn start(args: &[&str], log: &Path) -> Self {
        let started = Instant::now();
        let mut cmd = Command::new(bin_path("vane-agent"));
        cmd.args(args).args(["--admin-listen", "127.0.0.1:0"]);
        let (child, line) = spawn_announced(cmd, ADMIN_PREFIX, log);
        Self {
            child: Some(child),
            admin: line.parse().expect("an admin address"),
            log: log.to_path_buf(),
            ready_after: started.elapsed(),
        }
    }

    /// A sidecar of `node` following `group` on `controls` (tried in
    /// order), its cache in `dir/cache-<node>` and its log in
    /// `dir/<node>.log`, reconnecting fast (backoff 50 ms to 500 ms, breaker
    /// open 500 ms) so tests of failover wait for the fault, not the pacing;
    /// `extra` flags after those.
    pub fn follow(
        node: &str,
        group: &str,
        controls: &[String],
        dir: &Path,
        extra: &[&str],
    ) -> Self {
        let cache = dir.join(format!("cache-{node}"));
        let control = controls.join(",");
        let mut args = vec![
            "--node-id",
            node,
            "--group",
            group,
            "--control",
            &control,
            "--cache-dir",
            cache.to_str().expect("a UTF-8 path"),
            "--backoff-base",
            "50ms",
            "--backoff-cap",
            "500ms",
            "--breaker-open",
            "500ms",
        ];
        args.extend_from_slice(extra);
        Self::start(&args, &dir.join(format!("{node}.log")))
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.admin, "/status").expect("GET /status");
        assert_eq!(code, 200, "GET /status: {body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// Polls `/status` until `pred` holds; panics with the last one after 20 s.
    #[track_caller]
    pub fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not reach {what}; last /status: {s}\nlog:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (killed after `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        terminate_child(self.child.take()?, within)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- vane-agent stderr ---\n{}", self.logs());
        }
    }
}
