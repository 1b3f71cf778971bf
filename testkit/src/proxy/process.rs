//! `vane-proxy` as a child process: started on the control servers given,
//! its admin endpoint read (`/readyz`, `/config_dump`, `/status`,
//! `/metrics`), waited on, killed, terminated and restarted on its cache.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::control::ControlServer;
use crate::net::http_get;
use crate::process::{bin_path, spawn_announced, terminate_child};

const ADMIN_PREFIX: &str = "vane-proxy admin listening on ";
/// How long a state that must come may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `vane-proxy`, killed on drop.
pub struct ProxyProcess {
    child: Option<Child>,
    /// Its admin address (changes on restart).
    pub admin: SocketAddr,
    args: Vec<String>,
    logs_dir: PathBuf,
    starts: u32,
}

impl ProxyProcess {
    /// Starts `vane-proxy --node-id NODE --group GROUP --control URLS
    /// --cache-dir CACHE --admin-listen 127.0.0.1:0 EXTRA...`; stderr goes
    /// to `logs_dir`. Returns once the admin endpoint listens.
    pub fn start(
        control: &[String],
        node: &str,
        group: &str,
        cache: &Path,
        logs_dir: &Path,
        extra: &[&str],
    ) -> Self {
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            node.into(),
            "--group".into(),
            group.into(),
            "--control".into(),
            control.join(","),
            "--cache-dir".into(),
            cache.display().to_string(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            // Tests restart control servers: reconnect quickly.
            "--backoff-base".into(),
            "100ms".into(),
            "--backoff-cap".into(),
            "1s".into(),
            "--breaker-open".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        std::fs::create_dir_all(logs_dir).expect("create the log directory");
        let mut p = Self {
            child: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            args,
            logs_dir: logs_dir.to_path_buf(),
            starts: 0,
        };
        p.spawn();
        p
    }

    /// Starts a proxy of `group` on `server` alone, its cache and logs in
    /// the server's scratch directory (`cache-NODE`, `logs`).
    pub fn follow(server: &ControlServer, node: &str, group: &str, extra: &[&str]) -> Self {
        let dir = server.scratch();
        Self::start(
            &[server.url()],
            node,
            group,
            &dir.join(format!("cache-{node}")),
            &dir.join("logs"),
            extra,
        )
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.logs_dir.join(format!("proxy-{n}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(bin_path("vane-proxy"));
        cmd.args(&self.args).env("RUST_LOG", "info");
        let (child, line) = spawn_announced(cmd, ADMIN_PREFIX, &self.log_path(self.starts));
        self.admin = line.parse().expect("an admin address");
        self.child = Some(child);
    }

    /// `GET path` on the admin endpoint.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The `/readyz` status code.
    pub fn readyz(&self) -> u16 {
        self.admin_get("/readyz").0
    }

    /// Polls `/readyz` until 200.
    #[track_caller]
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while self.readyz() != 200 {
            assert!(
                Instant::now() < deadline,
                "vane-proxy never became ready:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/config_dump");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/config_dump is JSON")
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").1
    }

    /// The sum of every sample of `name` whose labels contain all `labels`
    /// (`key="value"` fragments).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        crate::net::metric_in(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// Polls `/config_dump` until the data plane runs `version`.
    #[track_caller]
    pub fn wait_version(&self, version: u64) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let d = self.config_dump();
            if d["version"] == version {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy never ran version {version}; /config_dump: {d}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; waits up to `within` for the exit (then SIGKILLs and returns None).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        terminate_child(self.child.take()?, within)
    }

    /// Starts the process again with the same arguments (and cache).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the proxy first");
        self.spawn();
    }

    /// Everything the proxy wrote on stderr, over all its starts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            let logs = self.logs();
            let tail: String = logs
                .lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- vane-proxy stderr (last 80 lines) ---\n{tail}");
        }
    }
}
