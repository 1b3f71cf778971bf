//! The demo's stock Envoy following Vane over xDS: two backends (`blue`
//! and `green`), the two versions of the group `mesh` that route to one and
//! then the other, and Envoy itself (installed pinned under the target
//! directory), started with a bootstrap that names only the control server
//! and its group, and read through its listener and admin endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use vane_testkit::envoy_config::{EnvoyBootstrap, EnvoyTls, envoy_command};
use vane_testkit::net::{self, free_port};

use crate::harness::{Proc, http_get, wait_until};
use crate::narrate::millis;
use crate::traffic::Backend;

/// The group the demo's Envoy follows.
pub(crate) const MESH: &str = "mesh";
/// Its node id.
pub(crate) const NODE: &str = "demo-envoy";

/// A running Envoy, its listener (from the group's snapshot) and admin
/// endpoint, and the backends behind it.
pub(crate) struct EnvoyRun {
    proc: Proc,
    pub(crate) listen: SocketAddr,
    admin: SocketAddr,
    _backends: [Backend; 2],
}

/// `mesh-1.yaml` (everything to blue) and `mesh-2.yaml` (to green) for a
/// listener on `listen`.
fn mesh_snapshot(listen: SocketAddr, cluster: &str, backend: SocketAddr) -> String {
    format!(
        r#"listeners:
  - {{ name: web, address: "{listen}", protocol: http, route_table: main }}
route_tables:
  - name: main
    routes:
      - {{ match: {{ path_prefix: / }}, cluster: {cluster} }}
clusters:
  - {{ name: {cluster}, endpoints: [ {{ address: "{backend}" }} ] }}
"#
    )
}

impl EnvoyRun {
    /// Starts the backends, writes `mesh-1.yaml` and `mesh-2.yaml` into
    /// `work` (to push before [`Self::start`]), and returns what to start
    /// Envoy with.
    pub(crate) fn prepare(work: &Path) -> Result<(SocketAddr, [Backend; 2])> {
        let blue = Backend::answering("blue")?;
        let green = Backend::answering("green")?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        std::fs::write(
            work.join("mesh-1.yaml"),
            mesh_snapshot(listen, "blue", blue.addr),
        )?;
        std::fs::write(
            work.join("mesh-2.yaml"),
            mesh_snapshot(listen, "green", green.addr),
        )?;
        println!(
            "(backends answer \"blue\" on {} and \"green\" on {}; Envoy's listener will be {listen})",
            blue.addr, green.addr
        );
        Ok((listen, [blue, green]))
    }

    /// Writes `envoy.json` and starts Envoy with it; waits for its admin
    /// endpoint.
    pub(crate) fn start(
        envoy: &Path,
        work: &Path,
        control: SocketAddr,
        tls: Option<EnvoyTls>,
        (listen, backends): (SocketAddr, [Backend; 2]),
    ) -> Result<Self> {
        let mut bootstrap = EnvoyBootstrap::new(NODE, MESH, control);
        bootstrap.tls = tls;
        std::fs::write(work.join("envoy.json"), bootstrap.to_json())?;
        println!(
            "$ grep -E '\"node\"|api_type|port_value\": {}' envoy.json",
            control.port()
        );
        for line in bootstrap.to_json().lines().filter(|l| {
            l.contains("\"node\"")
                || l.contains("api_type")
                || l.contains(&format!("\"port_value\": {}", control.port()))
        }) {
            println!("{}", line.trim());
        }
        let admin_path = work.join("envoy-admin.txt");
        let log = work.join("envoy.log");
        let mut cmd = envoy_command(envoy, &work.join("envoy.json"), &admin_path, &log);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        println!(
            "$ envoy -c envoy.json --concurrency 1 --disable-hot-restart --admin-address-path envoy-admin.txt --log-path envoy.log &"
        );
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", envoy.display()))?;
        let proc = Proc::new("envoy", child);
        wait_until("Envoy's admin endpoint", || {
            std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                // Any answer: /ready says 503 until Envoy has its first
                // listeners, which come later.
                .is_some_and(|a| net::http_get(a, "/ready").is_ok())
        })?;
        let admin = std::fs::read_to_string(&admin_path)?
            .trim()
            .parse()
            .context("Envoy wrote no admin address")?;
        Ok(Self {
            proc,
            listen,
            admin,
            _backends: backends,
        })
    }

    /// Waits until Envoy's listener answers `word`; returns how long that took.
    pub(crate) fn wait_answer(&self, word: &str) -> Result<Duration> {
        let start = Instant::now();
        let want = format!("{word}\n");
        wait_until(&format!("Envoy to answer {word:?}"), || {
            http_get(self.listen, "/").is_ok_and(|b| b == want)
        })?;
        Ok(start.elapsed())
    }

    /// `curl` through Envoy, shown.
    pub(crate) fn show_curl(&self) -> Result<()> {
        println!("$ curl -s http://{}/", self.listen);
        print!("{}", http_get(self.listen, "/")?);
        Ok(())
    }

    /// The version Envoy runs, from its admin `/config_dump` (shown).
    pub(crate) fn show_version(&self) -> Result<()> {
        let body = http_get(self.admin, "/config_dump")?;
        let dump: serde_json::Value =
            serde_json::from_str(&body).context("Envoy's /config_dump is not JSON")?;
        let versions: Vec<String> = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let ty = c["@type"].as_str()?.rsplit('.').next()?.to_owned();
                let v = c["version_info"].as_str()?;
                Some(format!("{ty}: version_info {v:?}"))
            })
            .collect();
        println!(
            "$ curl -s http://{}/config_dump   # each section's version_info:",
            self.admin
        );
        for v in versions {
            println!("{v}");
        }
        Ok(())
    }

    /// SIGTERM; says how it went.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let (status, took) = self.proc.stop()?;
        println!("    Envoy exited ({status}) in {}", millis(took));
        Ok(())
    }
}
