//! vane's side of the benchmark: a release vane-control, the snapshot that
//! configures vane-proxy like nginx (HTTP, HTTPS and TCP to the same
//! upstream) and its variants for the churn runs, pushed with vanectl, and
//! vane-proxy; the certificate both proxies serve over HTTPS ([`Site`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use vane_testkit::net::free_addr;

use super::report::Record;
use crate::harness::{
    CONTROL_LISTENING, PROXY_LISTENING, Proc, http_get, spawn_announced, wait_accepting,
};
use crate::process::display;

/// The group the benchmark's proxy follows.
pub(crate) const GROUP: &str = "bench";

/// The name the HTTPS listeners' certificate is for.
pub(crate) const SITE_NAME: &str = "bench.test";

/// The certificate (and key) both proxies serve over HTTPS, on disk: vane
/// reads it as a file secret, nginx as `ssl_certificate`.
pub(crate) struct Site {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl Site {
    /// A fresh CA's certificate for [`SITE_NAME`] and 127.0.0.1, written to
    /// `dir` (ECDSA P-256, what vane-pki issues).
    pub(crate) fn write(dir: &Path) -> Result<Self> {
        let ca = vane_pki::Ca::new("vane bench CA")?;
        let pair = ca.issue(&vane_pki::LeafParams::server([SITE_NAME, "127.0.0.1"]))?;
        let (cert, key) = (dir.join("site.pem"), dir.join("site.key"));
        pair.write(&cert, &key, true)?;
        Ok(Self { cert, key })
    }
}

/// What configures vane-proxy: the snapshot's variants, and pushing them.
pub(crate) struct Config {
    vanectl: PathBuf,
    control_url: String,
    dir: PathBuf,
    /// The proxy's HTTP listener.
    pub(crate) http: SocketAddr,
    /// The proxy's TCP listener.
    pub(crate) tcp: SocketAddr,
    /// The proxy's HTTPS listener.
    pub(crate) https: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    upstream: SocketAddr,
}

impl Config {
    /// Variant 0 is the measured config; odd variants add a route ahead of
    /// the measured one and change the endpoint's weight, which rebuilds
    /// the cluster (its runtime state is carried over; pooled upstream
    /// connections are kept by endpoint address).
    pub(crate) fn snapshot(&self, variant: u32) -> String {
        let (http, https, tcp, upstream) = (self.http, self.https, self.tcp, self.upstream);
        let extra_route = if variant % 2 == 1 {
            "      - { match: { path_prefix: /elsewhere }, cluster: up }\n"
        } else {
            ""
        };
        [
            "secrets:".to_owned(),
            format!(
                "  - {{ name: site, certificate_chain_file: \"{}\", private_key_file: \"{}\" }}",
                self.cert.display(),
                self.key.display()
            ),
            "listeners:".to_owned(),
            format!("  - {{ name: http, address: \"{http}\", protocol: http, route_table: main }}"),
            format!(
                "  - {{ name: https, address: \"{https}\", protocol: https, route_table: main, \
                 certificates: [ {{ secret: site, server_names: [{SITE_NAME}] }} ] }}"
            ),
            format!("  - {{ name: tcp, address: \"{tcp}\", protocol: tcp, cluster: up }}"),
            "route_tables:".to_owned(),
            "  - name: main".to_owned(),
            "    routes:".to_owned(),
            format!("{extra_route}      - {{ match: {{ path_prefix: / }}, cluster: up }}"),
            "clusters:".to_owned(),
            format!(
                "  - {{ name: up, lb: round_robin, connect_timeout_ms: 1000, endpoints: [ {{ address: \"{upstream}\", weight: {} }} ] }}",
                1 + variant % 2
            ),
            "values:".to_owned(),
            format!("  bench.variant: {variant}"),
        ]
        .join("\n")
            + "\n"
    }

    /// Pushes `variant` to `group` with vanectl.
    pub(crate) fn push_to(&self, group: &str, variant: u32) -> Result<()> {
        let file = self
            .dir
            .join(format!("snapshot-{group}-{}.yaml", variant % 2));
        std::fs::write(&file, self.snapshot(variant))?;
        let out = Command::new(&self.vanectl)
            .args(["--server", &self.control_url, "push", group, "-f"])
            .arg(&file)
            .output()?;
        ensure!(
            out.status.success(),
            "vanectl push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Pushes `variant` to the group the proxy follows.
    pub(crate) fn push(&self, variant: u32) -> Result<()> {
        self.push_to(GROUP, variant)
    }
}

/// vane-control and vane-proxy, both stopped when dropped.
pub(crate) struct Vane {
    /// Only held, so that it runs as long as the proxy.
    _control: Proc,
    pub(crate) proxy: Proc,
    /// The proxy's admin endpoint.
    admin: SocketAddr,
    pub(crate) config: Config,
}

impl Vane {
    /// Starts vane-control (from `bin`, data under `dir`), pushes the
    /// measured snapshot (HTTPS serving `site`), starts vane-proxy with
    /// `workers` threads and waits until its listeners accept.
    pub(crate) fn start(
        bin: &Path,
        dir: &Path,
        upstream: SocketAddr,
        site: &Site,
        workers: usize,
        rec: &mut Record,
    ) -> Result<Self> {
        let mut cmd = Command::new(bin.join("vane-control"));
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("control-data"));
        let (control, control_addr) = spawn_announced(
            "vane-control",
            cmd,
            CONTROL_LISTENING,
            &dir.join("control.log"),
        )?;
        let control_url = format!("http://{control_addr}");
        let config = Config {
            vanectl: bin.join("vanectl"),
            control_url: control_url.clone(),
            dir: dir.to_path_buf(),
            http: free_addr(),
            tcp: free_addr(),
            https: free_addr(),
            cert: site.cert.clone(),
            key: site.key.clone(),
            upstream,
        };
        config.push(0)?;
        rec.configs.push((
            "vane snapshot (pushed with vanectl)".into(),
            config.snapshot(0),
        ));
        rec.commands.push(format!(
            "vanectl --server {control_url} push {GROUP} -f snapshot.yaml"
        ));
        let mut cmd = Command::new(bin.join("vane-proxy"));
        cmd.args([
            "--node-id",
            "bench-1",
            "--group",
            GROUP,
            "--control",
            &control_url,
            "--admin-listen",
            "127.0.0.1:0",
            "--workers",
            &workers.to_string(),
            "--cache-dir",
        ])
        .arg(dir.join("cache"))
        .env("RUST_LOG", "warn");
        rec.commands.push(display(&cmd));
        let (proxy, admin) =
            spawn_announced("vane-proxy", cmd, PROXY_LISTENING, &dir.join("vane.log"))?;
        let admin: SocketAddr = admin.parse().context("vane-proxy's admin address")?;
        wait_accepting(config.http, "vane-proxy")?;
        wait_accepting(config.tcp, "vane-proxy (tcp)")?;
        wait_accepting(config.https, "vane-proxy (https)")?;
        Ok(Self {
            _control: control,
            proxy,
            admin,
            config,
        })
    }

    /// The version vane-proxy runs, from its /config_dump.
    pub(crate) fn running_version(&self) -> Result<serde_json::Value> {
        let dump: serde_json::Value = serde_json::from_str(&http_get(self.admin, "/config_dump")?)
            .context("vane-proxy's /config_dump is not JSON")?;
        Ok(dump["version"].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_differ_in_route_and_weight() {
        let config = Config {
            vanectl: PathBuf::from("vanectl"),
            control_url: "http://127.0.0.1:1".into(),
            dir: PathBuf::from("/tmp"),
            http: SocketAddr::from(([127, 0, 0, 1], 20001)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 20002)),
            https: SocketAddr::from(([127, 0, 0, 1], 20004)),
            cert: PathBuf::from("/tmp/site.pem"),
            key: PathBuf::from("/tmp/site.key"),
            upstream: SocketAddr::from(([127, 0, 0, 1], 20003)),
        };
        let (v0, v1) = (config.snapshot(0), config.snapshot(1));
        assert!(v0.contains("address: \"127.0.0.1:20001\", protocol: http"));
        assert!(!v0.contains("/elsewhere") && v1.contains("/elsewhere"));
        assert!(v0.contains("weight: 1 }") && v1.contains("weight: 2 }"));
        assert!(v1.contains("bench.variant: 1"));
        assert!(v0.contains("certificate_chain_file: \"/tmp/site.pem\""));
        assert!(v0.contains("address: \"127.0.0.1:20004\", protocol: https"));
    }

    /// vane's side of the benchmark on the debug binaries that `cargo xtask
    /// test` builds first, with the demos' backend as the upstream (no nginx
    /// or wrk needed), so that it cannot rot between benchmark runs.
    #[test]
    fn smoke() {
        let bin = crate::process::target_dir(&crate::workspace_root()).join("debug");
        for name in crate::bench::proxy::BINARIES {
            assert!(
                bin.join(name).exists(),
                "{name} is not built: run `cargo build --workspace --bins` first"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let upstream = crate::traffic::Backend::start().unwrap();
        let mut rec = Record::default();
        let site = Site::write(dir.path()).unwrap();
        let vane = Vane::start(&bin, dir.path(), upstream.addr, &site, 1, &mut rec).unwrap();
        // Its listeners accept as the swap happens; /config_dump may answer
        // a moment before it shows the version on a loaded machine.
        crate::harness::wait_until("vane-proxy to run version 1", || {
            vane.running_version().is_ok_and(|v| v == 1)
        })
        .unwrap();
        assert_eq!(http_get(vane.config.http, "/").unwrap(), "ok\n");
        vane.config.push(1).unwrap();
        crate::harness::wait_until("vane-proxy to run version 2", || {
            vane.running_version().is_ok_and(|v| v == 2)
        })
        .unwrap();
        assert_eq!(rec.commands.len(), 2, "{:?}", rec.commands);
    }
}
