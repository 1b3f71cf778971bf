//! Envoy as a child process for the tests: started with a bootstrap that
//! follows a Vane control server over ADS (or any bootstrap the test
//! writes), its admin endpoint read (`/config_dump`, `/clusters`,
//! `/stats`), its log kept and printed when a test fails, and the process
//! killed when the handle is dropped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use crate::envoy_config::{AdsFlavour, EnvoyTls};
use crate::envoy_config::{EnvoyBootstrap, envoy_command};
use crate::net::http_get;
use crate::process::{STARTUP_TIMEOUT, read_lossy};

use super::support::{tail, tools, wait_for};

/// What an Envoy following Vane is started with (see
/// [`EnvoyBootstrap`]): node id, group, the control server, SotW or delta,
/// a bearer token.
#[derive(Debug, Clone)]
pub struct EnvoyOptions(EnvoyBootstrap);

impl EnvoyOptions {
    /// Node `node_id` of `group`, on the control server at `control`,
    /// state of the world, plaintext, no token.
    pub fn new(node_id: &str, group: &str, control: SocketAddr) -> Self {
        Self(EnvoyBootstrap::new(node_id, group, control))
    }

    /// On a delta stream (`DeltaAggregatedResources`) instead.
    #[must_use]
    pub fn delta(mut self) -> Self {
        self.0.flavour = AdsFlavour::Delta;
        self
    }

    /// With this bearer token.
    #[must_use]
    pub fn token(mut self, token: &str) -> Self {
        self.0.token = Some(token.to_owned());
        self
    }

    /// Over TLS with a client certificate.
    #[must_use]
    pub fn tls(mut self, tls: EnvoyTls) -> Self {
        self.0.tls = Some(tls);
        self
    }
}

/// A running Envoy with its own scratch directory (bootstrap, admin
/// address file, log).
pub struct Envoy {
    child: Option<Child>,
    dir: TempDir,
    admin: SocketAddr,
    /// The node id it was started with, for messages.
    pub node_id: String,
}

impl Envoy {
    /// Starts an Envoy following the control server as `options` say.
    pub fn start(options: &EnvoyOptions) -> Self {
        Self::start_bootstrap(&options.0.node_id, &options.0.to_json())
    }

    /// Starts an Envoy with the bootstrap `bootstrap` (JSON or YAML text),
    /// whose admin endpoint must listen on `127.0.0.1:0`.
    pub fn start_bootstrap(name: &str, bootstrap: &str) -> Self {
        let tools = tools();
        let dir = tempfile::Builder::new()
            .prefix("vane-envoy-")
            .tempdir()
            .expect("create a temporary directory");
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, bootstrap).expect("write Envoy's bootstrap");
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let out = std::fs::File::create(dir.path().join("envoy.out")).expect("create a file");
        let err = out.try_clone().expect("clone a file handle");
        let child = envoy_command(&tools.envoy, &config, &admin_path, &log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.envoy.display()));
        let mut envoy = Self {
            child: Some(child),
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_id: name.to_owned(),
        };
        envoy.admin = envoy.wait_admin(&admin_path);
        envoy
    }

    /// Waits for Envoy to write its admin address, and for the endpoint
    /// to answer.
    fn wait_admin(&mut self, path: &std::path::Path) -> SocketAddr {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "Envoy {} exited at start ({status}):\n{}",
                    self.node_id,
                    self.logs()
                );
            }
            let text = read_lossy(path);
            if let Ok(addr) = text.trim().parse::<SocketAddr>()
                && http_get(addr, "/ready").is_ok()
            {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy {} did not open its admin endpoint within {STARTUP_TIMEOUT:?}:\n{}",
                self.node_id,
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin endpoint.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// `GET path` on the admin endpoint: status and body.
    #[track_caller]
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
            .unwrap_or_else(|e| panic!("GET {path} on Envoy {}'s admin: {e}", self.node_id))
    }

    /// `/config_dump` as JSON.
    #[track_caller]
    pub fn config_dump(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/config_dump");
        assert_eq!(code, 200, "/config_dump: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/config_dump is not JSON: {e}"))
    }

    /// The `version_info` of every dynamic resource of the config dump's
    /// section `kind` (`listeners`, `clusters`, `routes`), with duplicates
    /// removed: what Envoy last accepted for that type.
    pub fn dump_versions(&self, kind: &str) -> BTreeSet<String> {
        let dump = self.config_dump();
        let mut versions = BTreeSet::new();
        let configs = dump["configs"].as_array().cloned().unwrap_or_default();
        for config in &configs {
            let field = match kind {
                "listeners" => "dynamic_listeners",
                "clusters" => "dynamic_active_clusters",
                "routes" => "dynamic_route_configs",
                other => other,
            };
            // Listeners keep theirs in active_state; clusters and routes
            // on the entry itself.
            for entry in config[field].as_array().cloned().unwrap_or_default() {
                let v = entry["active_state"]["version_info"]
                    .as_str()
                    .or_else(|| entry["version_info"].as_str());
                if let Some(v) = v {
                    versions.insert(v.to_owned());
                }
            }
            if let Some(v) = config["version_info"].as_str()
                && config.get(field).is_some()
            {
                versions.insert(v.to_owned());
            }
        }
        versions
    }

    /// The names of the clusters Envoy has (`/clusters?format=json`),
    /// the static one to the control server included.
    pub fn cluster_names(&self) -> BTreeSet<String> {
        let (code, body) = self.admin_get("/clusters?format=json");
        assert_eq!(code, 200, "/clusters: {body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("/clusters is not JSON: {e}"));
        json["cluster_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// A counter or gauge by its exact name; `None` when Envoy has none.
    pub fn stat(&self, name: &str) -> Option<u64> {
        // The filter is a regex in which each `.` matches itself too; the
        // exact name is picked from what it returns.
        let (code, body) = self.admin_get(&format!("/stats?filter={name}"));
        assert_eq!(code, 200, "/stats: {body}");
        body.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// [`Self::stat`], 0 when absent.
    pub fn stat_or_zero(&self, name: &str) -> u64 {
        self.stat(name).unwrap_or(0)
    }

    /// Polls until `pred` holds for this Envoy; panics after `within` with
    /// `what` and the end of Envoy's log.
    #[track_caller]
    pub fn wait_until(&self, what: &str, within: Duration, mut pred: impl FnMut(&Self) -> bool) {
        wait_for(
            &format!("Envoy {}: {what}", self.node_id),
            within,
            || pred(self).then_some(()),
            || tail(&self.logs(), 40),
        );
    }

    /// Everything Envoy logged (its log file, then stdout and stderr).
    pub fn logs(&self) -> String {
        format!(
            "{}{}",
            read_lossy(&self.dir.path().join("envoy.log")),
            read_lossy(&self.dir.path().join("envoy.out"))
        )
    }

    /// Its scratch directory (kept until the handle is dropped).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// SIGKILLs Envoy and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- Envoy {} log (last 80 lines) ---\n{}",
                self.node_id,
                tail(&self.logs(), 80)
            );
        }
    }
}
