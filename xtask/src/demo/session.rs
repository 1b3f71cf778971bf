//! The demo's state while the tour runs ([`Demo`]): its processes and
//! scratch directory, and what steps do with them (run vanectl, start the
//! sidecar and the proxy, read their /status, check what the tour claims).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use vane_testkit::envoy_config::EnvoyTls;
use vane_testkit::openfeature_tools::OpenFeatureTools;

use super::envoy::EnvoyRun;
use super::openfeature::FlagdRun;
use super::setup::{Security, control_args};
use crate::harness::{
    AGENT_LISTENING, CONTROL_LISTENING, PROXY_LISTENING, Server, http_get, wait_until,
};
use crate::process::display;
use crate::traffic::{Backend, Traffic, snapshot};

/// The group the demo works on.
pub(crate) const GROUP: &str = "edge";
/// The group the demo's proxy follows.
pub(crate) const WEB: &str = "web";

/// Everything a step needs: the binaries, the scratch directory, the processes.
pub(crate) struct Demo {
    pub(crate) bin: PathBuf,
    pub(crate) vanectl: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) security: Security,
    pub(crate) server_url: String,
    pub(crate) server: Server,
    /// The web console's address (`--console-listen`).
    pub(crate) console: SocketAddr,
    pub(crate) agent: Option<Server>,
    pub(crate) proxy: Option<Server>,
    /// The proxy's HTTP listener, and the backend behind it.
    pub(crate) web: Option<(SocketAddr, Backend)>,
    pub(crate) traffic: Option<Traffic>,
    /// The rollout's sidecars, by node id.
    pub(crate) canaries: Vec<(String, Server)>,
    /// The Envoy binary (installed under the target directory).
    pub(crate) envoy_bin: PathBuf,
    /// The stock Envoy following the group `mesh`.
    pub(crate) envoy: Option<EnvoyRun>,
    /// Where the OpenFeature SDKs are installed (under the target directory).
    pub(crate) openfeature: OpenFeatureTools,
    /// The Python OpenFeature SDK following the group `shop`.
    pub(crate) flagd: Option<FlagdRun>,
    /// The proxy's https listener and the web CA of its certificates.
    pub(crate) tls: Option<super::tls::TlsRun>,
}

impl Demo {
    /// Runs `vanectl ARGS` in the scratch directory, showing the command line
    /// and its output, and fails unless it exits with `expect`.
    pub(crate) fn vanectl(&mut self, args: &[&str], expect: i32) -> Result<()> {
        let mut cmd = self.vanectl_cmd();
        cmd.args(args);
        println!("$ {}", display(&cmd));
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", self.vanectl.display()))?;
        let code = status.code();
        if code != Some(0) {
            println!(
                "(exit code {})",
                code.map_or("none".into(), |c| c.to_string())
            );
        }
        ensure!(
            code == Some(expect),
            "`{}` exited with {status}; the demo expected exit code {expect}",
            display(&cmd)
        );
        Ok(())
    }

    /// vanectl in the scratch directory with the environment the tour
    /// exported: the server, and under mTLS the CA and `operator`'s
    /// certificate. Credentials and contexts from the caller's environment
    /// are dropped, so they cannot change who the demo is.
    pub(crate) fn vanectl_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.vanectl);
        cmd.current_dir(&self.work)
            .env("VANE_SERVER", &self.server_url);
        for var in [
            "VANE_CA",
            "VANE_CERT",
            "VANE_KEY",
            "VANE_TOKEN_FILE",
            "VANE_TOKEN",
            "VANE_CONTEXT",
        ] {
            cmd.env_remove(var);
        }
        // No context of the caller's vanectl config file either: a file
        // that does not exist is no config.
        cmd.env("VANE_CONFIG", self.work.join("no-vanectl-config.yaml"));
        if self.security == Security::Mtls {
            cmd.env("VANE_CA", "ca.pem")
                .env("VANE_CERT", "operator.pem")
                .env("VANE_KEY", "operator.key");
        }
        cmd
    }

    /// The TLS arguments of an agent or proxy (`--ca --cert --key`, as
    /// `agent-edge`): as run (absolute paths) and as shown (relative).
    pub(crate) fn agent_tls(&self) -> (Vec<OsString>, &'static str) {
        match self.security {
            Security::Plaintext => (Vec::new(), ""),
            Security::Mtls => (
                vec![
                    "--ca".into(),
                    self.work.join("ca.pem").into(),
                    "--cert".into(),
                    self.work.join("agent.pem").into(),
                    "--key".into(),
                    self.work.join("agent.key").into(),
                ],
                " --ca ca.pem --cert agent.pem --key agent.key",
            ),
        }
    }

    /// Envoy's TLS to the control server under mTLS: the CA, and the
    /// agent's certificate (identity `agent-edge`).
    pub(crate) fn envoy_tls(&self) -> Option<EnvoyTls> {
        (self.security == Security::Mtls).then(|| EnvoyTls {
            ca: self.work.join("ca.pem"),
            cert: self.work.join("agent.pem"),
            key: self.work.join("agent.key"),
        })
    }

    /// Polls `vanectl status GROUP -o json` until `node` is SYNCED at `version`.
    pub(crate) fn wait_synced(&self, group: &str, node: &str, version: u64) -> Result<()> {
        wait_until(&format!("{node} SYNCED at version {version}"), || {
            self.vanectl_cmd()
                .args(["status", group, "-o", "json"])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|all| {
                    all.as_array()?
                        .iter()
                        .find(|a| a["node_id"] == node)
                        .cloned()
                })
                .is_some_and(|a| a["state"] == "SYNCED" && a["acked_version"] == version)
        })
    }

    /// Polls `vanectl status GROUP -o json` until it lists a connected
    /// `flagd` client, UNACKED at `version` (flagd's sync protocol has no
    /// ACKs).
    pub(crate) fn wait_flagd_listed(&self, group: &str, version: u64) -> Result<()> {
        wait_until(
            &format!("a flagd client UNACKED at version {version}"),
            || {
                self.vanectl_cmd()
                    .args(["status", group, "-o", "json"])
                    .output()
                    .ok()
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                    .and_then(|all| all.as_array().cloned())
                    .is_some_and(|all| {
                        all.iter().any(|a| {
                            a["client"] == "flagd"
                                && a["state"] == "UNACKED"
                                && a["connected"] == true
                                && a["target_version"] == version
                        })
                    })
            },
        )
    }

    pub(crate) fn start_agent(&mut self) -> Result<()> {
        let cache = self.work.join("agent-cache");
        let output = self.work.join("edge.json");
        let (tls, tls_shown) = self.agent_tls();
        let mut args: Vec<OsString> = vec![
            "--node-id".into(),
            "demo-sidecar".into(),
            "--group".into(),
            GROUP.into(),
            "--control".into(),
            self.server_url.clone().into(),
            "--cache-dir".into(),
            cache.into(),
            "--output".into(),
            output.into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--backoff-cap".into(),
            "2s".into(),
        ];
        args.extend(tls);
        println!(
            "$ vane-agent --node-id demo-sidecar --group {GROUP} --control {}{tls_shown} \\\n    --cache-dir agent-cache --output edge.json --admin-listen 127.0.0.1:0 --backoff-cap 2s &",
            self.server_url
        );
        let agent = Server::start(
            "vane-agent",
            &self.bin.join("vane-agent"),
            &args,
            AGENT_LISTENING,
            &self.work,
        )?;
        println!("(its admin endpoint listens on {})", agent.addr);
        self.agent = Some(agent);
        Ok(())
    }

    fn agent_status(&self) -> Result<String> {
        let agent = self.agent.as_ref().context("no agent is running")?;
        http_get(agent.addr, "/status")
    }

    /// A top-level scalar of the agent's /status JSON, as text.
    pub(crate) fn agent_status_field(&self, field: &str) -> Option<String> {
        let body = self.agent_status().ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        match json.get(field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    pub(crate) fn show_agent_status(&self) -> Result<()> {
        let agent = self.agent.as_ref().context("no agent is running")?;
        println!("$ curl -s http://{}/status", agent.addr);
        let body = self.agent_status()?;
        let json: serde_json::Value =
            serde_json::from_str(&body).context("the agent's /status is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&json)?);
        Ok(())
    }

    /// The agent's `/readyz`: 200 while it serves a configuration (live or
    /// from its cache), whatever the control plane does.
    pub(crate) fn show_agent_ready(&self) -> Result<()> {
        let agent = self.agent.as_ref().context("no agent is running")?;
        println!("$ curl -s http://{}/readyz", agent.addr);
        print!("{}", http_get(agent.addr, "/readyz")?);
        Ok(())
    }

    pub(crate) fn show_output_head(&self) -> Result<()> {
        let path = self.work.join("edge.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        println!("$ head -n 6 edge.json");
        for line in text.lines().take(6) {
            println!("{line}");
        }
        Ok(())
    }

    pub(crate) fn wait_agent_version(&self, version: u64) -> Result<()> {
        let want = version.to_string();
        wait_until(&format!("the agent to apply version {version}"), || {
            self.agent_status_field("version").as_deref() == Some(want.as_str())
        })
    }

    pub(crate) fn wait_agent_connected(&self) -> Result<()> {
        wait_until("the agent to reconnect", || {
            self.agent_status_field("connected").as_deref() == Some("true")
                && self.agent_status_field("source").as_deref() == Some("live")
        })
    }

    /// Writes and pushes version `step` of the `web` group.
    pub(crate) fn push_web(&mut self, step: u32) -> Result<()> {
        let (listen, backend) = self.web.as_ref().context("no backend is running")?;
        let file = format!("web-{step}.yaml");
        std::fs::write(self.work.join(&file), snapshot(*listen, backend.addr, step))?;
        self.vanectl(
            &["push", WEB, "-f", &file, "-m", &format!("step {step}")],
            0,
        )
    }

    pub(crate) fn start_proxy_and_traffic(&mut self) -> Result<()> {
        let backend = Backend::start()?;
        let listen = SocketAddr::from(([127, 0, 0, 1], vane_testkit::net::free_port()));
        println!(
            "(a backend answers \"ok\" on {}; the proxy will listen on {listen})",
            backend.addr
        );
        self.web = Some((listen, backend));
        self.push_web(1)?;
        let (tls, tls_shown) = self.agent_tls();
        let mut args: Vec<OsString> = vec![
            "--node-id".into(),
            "demo-proxy".into(),
            "--group".into(),
            WEB.into(),
            "--control".into(),
            self.server_url.clone().into(),
            "--cache-dir".into(),
            self.work.join("proxy-cache").into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(tls);
        println!(
            "$ vane-proxy --node-id demo-proxy --group {WEB} --control {}{tls_shown} \\\n    --cache-dir proxy-cache --admin-listen 127.0.0.1:0 &",
            self.server_url
        );
        let proxy = Server::start(
            "vane-proxy",
            &self.bin.join("vane-proxy"),
            &args,
            PROXY_LISTENING,
            &self.work,
        )?;
        self.proxy = Some(proxy);
        wait_until("the proxy's listener to answer", || {
            http_get(listen, "/").is_ok_and(|b| b == "ok\n")
        })?;
        self.traffic = Some(Traffic::start(listen));
        std::thread::sleep(Duration::from_secs(1));
        self.show_traffic(0)
    }

    pub(crate) fn wait_proxy_version(&self, version: u64) -> Result<()> {
        let proxy = self.proxy.as_ref().context("no proxy is running")?;
        wait_until(&format!("the proxy to run version {version}"), || {
            http_get(proxy.addr, "/status")
                .ok()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .is_some_and(|s| s["version"] == version)
        })
    }

    /// Prints the traffic counters; fails if more than `allowed` failed.
    pub(crate) fn show_traffic(&self, allowed: u64) -> Result<()> {
        let traffic = self.traffic.as_ref().context("no traffic is running")?;
        let (ok, failed) = traffic.counts();
        println!("(traffic so far: {ok} requests answered, {failed} failed)");
        ensure!(
            failed <= allowed,
            "{failed} requests failed through the proxy"
        );
        Ok(())
    }

    pub(crate) fn restart_server(&mut self) -> Result<()> {
        let (mut args, shown) = control_args(
            &self.server.addr.to_string(),
            &self.work,
            &self.data,
            self.security,
        );
        args.extend(super::setup::console_args(self.console));
        println!("$ {shown}");
        self.server = Server::start(
            "vane-control",
            &self.bin.join("vane-control"),
            &args,
            CONTROL_LISTENING,
            &self.work,
        )?;
        Ok(())
    }

    /// Checks what the tour claims: the newest audit entry is the reader's
    /// push, refused with PermissionDenied.
    pub(crate) fn check_audit_refusal(&mut self) -> Result<()> {
        let out = self
            .vanectl_cmd()
            .args(["audit", GROUP, "--limit", "1", "-o", "json"])
            .output()
            .context("cannot run vanectl audit -o json")?;
        ensure!(out.status.success(), "vanectl audit -o json failed");
        let entries: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("vanectl audit -o json is not JSON")?;
        let newest = &entries[0];
        ensure!(
            newest["identity"] == "reader"
                && newest["action"] == "push"
                && newest["result"] == "refused"
                && newest["code"] == "PermissionDenied",
            "the newest audit entry should be reader's refused push, got {newest}"
        );
        println!("(checked: the newest entry is reader's push, refused with PermissionDenied)");
        Ok(())
    }

    /// Checks what the tour claims: version 3's hash is version 1's (and
    /// under mTLS, that `operator` is its author).
    pub(crate) fn check_rollback_hash(&mut self) -> Result<()> {
        let out = self
            .vanectl_cmd()
            .args(["history", GROUP, "-o", "json"])
            .output()
            .context("cannot run vanectl history -o json")?;
        ensure!(out.status.success(), "vanectl history -o json failed");
        let versions: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("vanectl history -o json is not JSON")?;
        let entry = |version: u64| {
            versions
                .as_array()
                .and_then(|all| all.iter().find(|v| v["version"] == version))
        };
        let hash_of = |version: u64| entry(version).and_then(|v| v["hash"].as_str());
        let (v1, v3) = (hash_of(1), hash_of(3));
        ensure!(
            v1.is_some() && v1 == v3,
            "version 3 should have version 1's hash, got {v3:?} and {v1:?}"
        );
        if self.security == Security::Mtls {
            let author = entry(3).map(|v| &v["author"]);
            ensure!(
                author.is_some_and(|a| a == "operator"),
                "version 3's author should be operator, got {author:?}"
            );
        }
        if self.security == Security::Mtls {
            println!("(checked: version 3 and version 1 have the same hash; operator pushed it)");
        } else {
            println!("(checked: version 3 and version 1 have the same hash)");
        }
        Ok(())
    }
}
