//! The tour's TLS steps: the proxy serves HTTPS with a certificate the
//! control plane pushed (curl checks it against the demo's web CA), vanectl
//! shows the key only as a fingerprint, and a push rotating the certificate
//! reaches new handshakes while a connection opened before keeps going.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, ensure};
use vane_pki::{Ca, LeafParams, Pair, Validity};

use crate::traffic::snapshot;

/// The name the demo's certificates are for.
pub(crate) const SITE: &str = "web.demo.test";

/// The HTTPS side of the demo's proxy.
pub(crate) struct TlsRun {
    ca: Ca,
    https: SocketAddr,
}

impl TlsRun {
    /// A web CA of its own (not the control plane's) and a free port.
    pub(crate) fn new() -> Result<Self> {
        let ca = Ca::new("Vane demo web CA").context("cannot make the web CA")?;
        let https = SocketAddr::from(([127, 0, 0, 1], vane_testkit::net::free_port()));
        Ok(Self { ca, https })
    }

    /// A certificate for [`SITE`] valid for `days`.
    fn issue(&self, days: u32) -> Result<Pair> {
        self.ca
            .issue(&LeafParams::server([SITE]).validity(Validity::days(days)))
            .context("cannot issue the site certificate")
    }

    /// Writes the web CA, then `web-tls-N.yaml` in `work`: the proxy's
    /// snapshot (its http `listen`er to `backend`) with an https listener
    /// serving a certificate valid for `days`; returns the file's name.
    pub(crate) fn write_snapshot(
        &self,
        work: &Path,
        (listen, backend): (SocketAddr, SocketAddr),
        n: u32,
        days: u32,
    ) -> Result<String> {
        std::fs::write(work.join("web-ca.pem"), self.ca.cert_pem())?;
        let file = format!("web-tls-{n}.yaml");
        let site = self.issue(days)?;
        let text = with_tls(&snapshot(listen, backend, 100 + n), self.https, &site)?;
        std::fs::write(work.join(&file), text)?;
        Ok(file)
    }

    /// curl's options reaching the listener as `https://web.demo.test:PORT`.
    fn curl_args(&self) -> Vec<String> {
        vec![
            "--cacert".into(),
            "web-ca.pem".into(),
            "--resolve".into(),
            format!("{SITE}:{}:127.0.0.1", self.https.port()),
        ]
    }

    fn url(&self) -> String {
        format!("https://{SITE}:{}/", self.https.port())
    }

    /// Runs curl once (verbosely) and shows the handshake's lines and the body.
    pub(crate) fn show_curl(&self, work: &Path) -> Result<()> {
        println!(
            "$ curl -v {} {}   (handshake lines only)",
            self.curl_args().join(" "),
            self.url()
        );
        let out = Command::new("curl")
            .current_dir(work)
            .args(["-sS", "-v", "--max-time", "10"])
            .args(self.curl_args())
            .arg(self.url())
            .output()
            .context("cannot run curl")?;
        show_handshake(&String::from_utf8_lossy(&out.stderr));
        print!("{}", String::from_utf8_lossy(&out.stdout));
        ensure!(out.status.success(), "curl failed: {}", out.status);
        Ok(())
    }

    /// Starts a curl that asks twice on one connection, four seconds apart
    /// (the caller pushes a new certificate in between).
    pub(crate) fn start_two_requests(&self, work: &Path) -> Result<Child> {
        println!(
            "$ curl -v --rate 15/m {} {url} {url} &   (two requests on one kept-alive connection)",
            self.curl_args().join(" "),
            url = self.url()
        );
        Command::new("curl")
            .current_dir(work)
            .args(["-sS", "-v", "--max-time", "20", "--rate", "15/m"])
            .args(self.curl_args())
            .args([self.url(), self.url()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run curl")
    }
}

/// Waits for the curl of [`TlsRun::start_two_requests`]; fails unless both
/// requests were answered over the one connection.
pub(crate) fn finish_two_requests(curl: Child) -> Result<()> {
    let out = curl.wait_with_output().context("curl did not finish")?;
    let log = String::from_utf8_lossy(&out.stderr);
    let reused = log
        .lines()
        .filter(|l| l.contains("Re-using existing connection"))
        .count();
    let bodies = String::from_utf8_lossy(&out.stdout);
    println!(
        "(the background curl: {} answers; its second request went over the same connection: {})",
        bodies.lines().count(),
        if reused > 0 { "yes" } else { "no" }
    );
    ensure!(out.status.success(), "the background curl failed: {log}");
    ensure!(
        reused > 0,
        "the second request did not reuse the connection:\n{log}"
    );
    Ok(())
}

/// Shows what `vanectl get` prints of the secret: the certificate, and the
/// key only as its fingerprint (an admin may ask for it with
/// `--show-secrets`).
pub(crate) fn show_redacted(mut vanectl: Command, group: &str) -> Result<()> {
    vanectl.args(["get", group]);
    println!("$ vanectl get {group} | grep -A1 -E 'name: site|private_key'");
    let cmd = vanectl;
    let mut cmd = cmd;
    let out = cmd.output().context("cannot run vanectl")?;
    ensure!(out.status.success(), "vanectl get failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !text.contains("PRIVATE KEY"),
        "vanectl get showed a private key"
    );
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("name: site") || line.contains("private_key") {
            println!("{line}");
            if let Some(next) = lines.get(i + 1).filter(|_| line.contains("name: site")) {
                println!("{next}");
            }
        }
    }
    Ok(())
}

/// `web` (the demo's plain snapshot) with an https listener added under
/// its `listeners:` and the secret it serves at the end.
fn with_tls(web: &str, https: SocketAddr, site: &Pair) -> Result<String> {
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("      {l}\n")).collect() };
    let listener = format!(
        "  - name: web-tls\n    address: \"{https}\"\n    protocol: https\n    route_table: main\n    \
         certificates: [ {{ secret: site, server_names: [\"{SITE}\"] }} ]\n"
    );
    let secrets = format!(
        "secrets:\n  - name: site\n    certificate_chain: |\n{}    private_key: |\n{}",
        indent(&site.cert_pem),
        indent(&site.key_pem)
    );
    let at = web
        .find("route_tables:")
        .context("the demo snapshot has no route_tables")?;
    Ok(format!("{}{listener}{}{secrets}", &web[..at], &web[at..]))
}

/// Prints the lines of curl's `-v` output that say what was negotiated.
fn show_handshake(log: &str) {
    for line in log.lines() {
        let l = line.trim_start_matches(['*', ' ']);
        if l.starts_with("SSL connection using")
            || l.starts_with("ALPN: server accepted")
            || l.starts_with("subject:")
            || l.starts_with("expire date:")
            || l.starts_with("issuer:")
            || l.starts_with("SSL certificate verify ok")
        {
            println!("  {l}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_tls_snapshot_validates_with_both_listeners() {
        let run = TlsRun::new().unwrap();
        let site = run.issue(90).unwrap();
        let web = snapshot(
            SocketAddr::from(([127, 0, 0, 1], 20001)),
            SocketAddr::from(([127, 0, 0, 1], 20002)),
            3,
        );
        let text = with_tls(&web, run.https, &site).unwrap();
        let spec = vane_model::parse_file(text.as_bytes(), vane_model::Format::Yaml).unwrap();
        let s = vane_model::validate(spec).unwrap();
        assert_eq!(s.listeners.len(), 2);
        let tls = s.listener("web-tls").unwrap();
        assert_eq!(tls.protocol(), vane_model::Protocol::Https);
        assert!(s.has_private_keys());
    }
}
