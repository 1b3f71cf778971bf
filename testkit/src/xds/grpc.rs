//! gRPC's proxyless xDS clients and gRPC backends for the tests: the
//! scripts in `tests/xds-clients/` (grpcio in Python, grpc-js-xds in Node)
//! as child processes, each client printing one line per call ("ok NAME" or
//! "error CODE DETAILS") which the handle collects, and the bootstrap file
//! (`GRPC_XDS_BOOTSTRAP`) that points them at Vane.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;

use crate::lines::LineProcess;
use crate::process::spawn_announced;

use super::support::{client_script, tools, wait_for};

/// Which gRPC implementation a client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// grpcio (gRPC's C core), `tests/xds-clients/client.py`.
    Python,
    /// grpc-js with grpc-js-xds, `tests/xds-clients/client.js`.
    Node,
}

/// Writes a gRPC xDS bootstrap to `dir/name`: the control server at
/// `control` (plaintext, xDS v3), node `node_id` of `group` (in
/// `node.metadata["vane.group"]`). Returns its path.
pub fn grpc_bootstrap(
    dir: &Path,
    name: &str,
    control: SocketAddr,
    node_id: &str,
    group: &str,
) -> PathBuf {
    let json = serde_json::json!({
        "xds_servers": [{
            "server_uri": control.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        // grpc-js-xds refuses a node without a locality.
        "node": {
            "id": node_id,
            "cluster": "vane",
            "locality": {},
            "metadata": {"vane.group": group},
        },
    });
    let path = dir.join(name);
    std::fs::write(&path, json.to_string()).expect("write a gRPC xDS bootstrap");
    path
}

/// A client calling `/vane.test.Echo/Who` on its target every 50 ms until
/// dropped, its answers collected line by line.
pub struct GrpcClient {
    process: LineProcess,
    lang: Lang,
}

impl GrpcClient {
    /// Starts a `lang` client on `target` (e.g. `xds:///web`) with
    /// `GRPC_XDS_BOOTSTRAP=bootstrap`.
    pub fn start(lang: Lang, target: &str, bootstrap: &Path) -> Self {
        let tools = tools();
        let mut cmd = match lang {
            Lang::Python => {
                let mut cmd = Command::new("python3");
                cmd.arg(client_script("client.py"))
                    .env("PYTHONPATH", &tools.pythonpath);
                cmd
            }
            Lang::Node => {
                let mut cmd = Command::new("node");
                cmd.arg(client_script("client.js"))
                    .env("NODE_PATH", &tools.node_path);
                cmd
            }
        };
        cmd.args([target, "50"])
            .env("GRPC_XDS_BOOTSTRAP", bootstrap);
        Self {
            process: LineProcess::start(cmd, &format!("{lang:?} gRPC client")),
            lang,
        }
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.process.lines()
    }

    /// How many calls have ended so far (answered or failed).
    pub fn calls(&self) -> usize {
        self.lines().iter().filter(|l| is_call(l)).count()
    }

    /// The calls that ended after the first `from` ones: "ok NAME" or
    /// "error CODE DETAILS".
    pub fn calls_since(&self, from: usize) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| is_call(l))
            .skip(from)
            .collect()
    }

    /// Waits until `n` consecutive calls, all after the first `from`, were
    /// answered by `backend`; returns the number of calls ended by then.
    /// Panics after `within` with the last calls seen.
    #[track_caller]
    pub fn wait_answered_by(
        &self,
        backend: &str,
        n: usize,
        from: usize,
        within: Duration,
    ) -> usize {
        let want = format!("ok {backend}");
        wait_for(
            &format!(
                "{n} calls in a row answered by {backend} ({:?} client)",
                self.lang
            ),
            within,
            || {
                let calls = self.calls_since(from);
                let run = calls.iter().rev().take_while(|c| **c == want).count();
                (run >= n).then_some(from + calls.len())
            },
            || self.describe(),
        )
    }

    /// The last calls and the client's stderr, for failure messages.
    pub fn describe(&self) -> String {
        self.process.describe()
    }
}

fn is_call(line: &str) -> bool {
    line.starts_with("ok ") || line.starts_with("error ")
}

/// A gRPC backend (`tests/xds-clients/backend.py`) answering
/// `/vane.test.Echo/Who` with its name.
pub struct GrpcBackend {
    child: Option<Child>,
    /// Its name, which it answers with.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl GrpcBackend {
    /// Starts one on a free loopback port.
    pub fn start(name: &str) -> Self {
        let tools = tools();
        let dir = tempfile::Builder::new()
            .prefix("vane-grpc-backend-")
            .tempdir()
            .expect("create a temporary directory");
        let mut cmd = Command::new("python3");
        cmd.arg(client_script("backend.py"))
            .arg(name)
            .env("PYTHONPATH", &tools.pythonpath);
        let (child, line) = spawn_announced(
            cmd,
            "xds-backend listening on ",
            &dir.path().join("backend.log"),
        );
        let addr = line
            .parse()
            .unwrap_or_else(|e| panic!("backend.py printed an unparsable address {line:?}: {e}"));
        Self {
            child: Some(child),
            name: name.to_owned(),
            addr,
            _dir: dir,
        }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
