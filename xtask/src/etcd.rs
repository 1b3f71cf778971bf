//! One etcd member as a child process for the cluster demo and `bench
//! longpoll`: free loopback ports, a data directory and a log of its own,
//! health and leadership asked through etcd's JSON gateway; killed when
//! dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, ensure};
use vane_testkit::net::{free_port, http_request};

use crate::harness::http_get;

/// One etcd member, killed on drop.
pub(crate) struct Etcd {
    pub(crate) name: String,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// A member called `name` on free ports, its data and log under `dir`;
    /// not started yet.
    pub(crate) fn new(name: String, dir: &Path) -> Self {
        Self {
            client_port: free_port(),
            peer_port: free_port(),
            data: dir.join(format!("{name}.data")),
            log: dir.join(format!("{name}.log")),
            name,
            child: None,
        }
    }

    pub(crate) fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub(crate) fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Its client port (the gRPC API and the JSON gateway).
    pub(crate) fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// Starts it as a member of `initial_cluster` (`name=peer-url,...`;
    /// for a cluster of one, `format!("{name}={}", peer_url())`).
    pub(crate) fn spawn(&mut self, initial_cluster: &str) -> Result<()> {
        let log = std::fs::File::create(&self.log)
            .with_context(|| format!("cannot create {}", self.log.display()))?;
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start etcd")?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether it was started and not killed.
    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id, while running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn healthy(&self) -> bool {
        http_get(self.client_addr(), "/health").is_ok_and(|body| body.contains("\"true\""))
    }

    /// Whether this member is the leader (asked through etcd's JSON gateway).
    pub(crate) fn is_leader(&self) -> bool {
        let Ok(body) = http_post(self.client_addr(), "/v3/maintenance/status", "{}") else {
            return false;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let me = json["header"]["member_id"].as_str().unwrap_or_default();
        !me.is_empty() && json["leader"].as_str() == Some(me)
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `POST path` with a JSON body on loopback; the body of a 200 answer.
fn http_post(addr: SocketAddr, path: &str, body: &str) -> Result<String> {
    let (code, answer) = http_request(addr, "POST", path, body)
        .with_context(|| format!("POST http://{addr}{path}"))?;
    ensure!(code == 200, "POST http://{addr}{path}: status {code}");
    Ok(answer)
}
