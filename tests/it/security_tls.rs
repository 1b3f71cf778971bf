//! mTLS end to end, over real processes: identities from client
//! certificates, roles per group from the policy, the author in the
//! history, the audit log, and the certificates that must be refused (from
//! another CA, expired, none), plus the TLS limits (handshake timeout,
//! connections per identity). Certificates come from `vane-pki`, the same
//! set `cargo xtask certs` writes.

#![allow(clippy::unwrap_used)]

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vane_pki::{Ca, DemoSet, LeafParams, Validity};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, Output, fixtures, run_vanectl};

/// A directory with the demo set (ca, server, operator, reader, agent,
/// policy.yaml) and a TLS server using it.
struct Tls {
    dir: tempfile::TempDir,
    server: ControlServer,
    /// Kept to issue more certificates from the trusted CA.
    demo: DemoSet,
}

impl Tls {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let demo = DemoSet::generate().unwrap();
        demo.write(dir.path(), false).unwrap();
        let p = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
        let (cert, key, ca, policy) = (
            p("server.pem"),
            p("server.key"),
            p("ca.pem"),
            p("policy.yaml"),
        );
        let mut args = vec![
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
            "--policy",
            &policy,
        ];
        args.extend_from_slice(extra);
        let server = ControlServer::start_with(&args);
        Self { dir, server, demo }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn url(&self) -> String {
        format!("https://{}", self.server.addr())
    }

    /// vanectl as `who` (operator, reader, agent) with the demo CA.
    fn ctl_as(&self, who: &str, args: &[&str]) -> Output {
        let (ca, cert, key) = (
            self.path("ca.pem"),
            self.path(&format!("{who}.pem")),
            self.path(&format!("{who}.key")),
        );
        let url = self.url();
        let mut all = vec![
            "--server",
            url.as_str(),
            "--ca",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run_vanectl(&all, &[])
    }

    /// vanectl with the demo CA and the given client pair (or none).
    fn ctl_with(&self, pair: Option<(&Path, &Path)>, args: &[&str]) -> Output {
        let ca = self.path("ca.pem");
        let url = self.url();
        let mut all = vec!["--server", url.as_str(), "--ca", ca.to_str().unwrap()];
        if let Some((cert, key)) = pair {
            all.extend_from_slice(&[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ]);
        }
        all.extend_from_slice(args);
        run_vanectl(&all, &[])
    }
}

fn example() -> String {
    fixtures::example_path().to_str().unwrap().to_owned()
}

#[test]
fn roles_come_from_the_client_certificate_and_pushes_are_audited() {
    let tls = Tls::start(&[]);
    let whoami = tls
        .ctl_as("operator", &["whoami", "-o", "json"])
        .ok()
        .json();
    assert_eq!(whoami["identity"], "operator");
    assert_eq!(whoami["source"], "certificate");
    assert_eq!(whoami["authorization"], "on");

    tls.ctl_as(
        "operator",
        &["push", "edge", "-f", &example(), "-m", "first"],
    )
    .ok();

    // A reader may read, not push; the refusal names the identity.
    let refused = tls.ctl_as(
        "reader",
        &["push", "edge", "-f", &example(), "-m", "sneaky"],
    );
    assert_eq!(refused.code, 1, "{refused}");
    assert!(
        refused
            .one_error_line()
            .contains("identity \"reader\" may not push to group \"edge\""),
        "{refused}"
    );
    tls.ctl_as("reader", &["get", "edge"]).ok();
    // The agent identity may not read at all.
    let refused = tls.ctl_as("agent", &["history", "edge"]);
    assert_eq!(refused.code, 1, "{refused}");

    let history = tls
        .ctl_as("reader", &["history", "edge", "-o", "json"])
        .ok()
        .json();
    let entries = history.as_array().expect("history -o json is an array");
    assert_eq!(entries.len(), 1, "{history}");
    assert_eq!(entries[0]["author"], "operator");

    // Refusals are written to the audit log in the background: wait for
    // all three (the refused read of `agent`, the refused push, the push).
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = tls
            .ctl_as("operator", &["audit", "edge", "-o", "json"])
            .ok()
            .json();
        if audit.as_array().is_some_and(|a| a.len() >= 3) || Instant::now() > deadline {
            break audit;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let audit = audit.as_array().expect("audit -o json is an array");
    let seen: Vec<(String, String, String)> = audit
        .iter()
        .map(|e| {
            (
                e["identity"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let audit = &audit[1..];
    assert_eq!(
        seen,
        vec![
            ("agent-edge".into(), "read".into(), "refused".into()),
            ("reader".into(), "push".into(), "refused".into()),
            ("operator".into(), "push".into(), "created".into()),
        ],
        "{audit:#?}"
    );
    assert_eq!(audit[0]["code"], "PermissionDenied");
    assert_eq!(audit[0]["message"], "sneaky");
    assert_eq!(audit[1]["version"], 1);
    assert!(audit[1]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    // A rollback is audited with its author too.
    tls.ctl_as("operator", &["rollback", "edge", "--to", "1"])
        .ok();
}

#[test]
fn certificates_from_another_ca_expired_or_missing_are_refused() {
    let tls = Tls::start(&[]);
    let scratch = tls.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let write = |name: &str, pair: vane_pki::Pair| {
        let (cert, key) = (
            scratch.join(format!("{name}.pem")),
            scratch.join(format!("{name}.key")),
        );
        pair.write(&cert, &key, false).unwrap();
        (cert, key)
    };
    // Same identity, signed by a CA the server does not trust.
    let rogue = Ca::new("rogue CA").unwrap();
    let (rc, rk) = write(
        "rogue",
        rogue.issue(&LeafParams::client("operator")).unwrap(),
    );
    let out = tls.ctl_with(Some((&rc, &rk)), &["push", "edge", "-f", &example()]);
    // Under TLS 1.3 the client's side of the handshake ends first; the
    // server's refusal arrives as an alert or as the connection closing.
    assert_eq!(out.code, 3, "{out}");

    // Signed by the right CA, but expired.
    let (ec, ek) = write(
        "expired",
        tls.demo
            .ca
            .issue(&LeafParams::client("operator").validity(Validity::expired()))
            .unwrap(),
    );
    let out = tls.ctl_with(Some((&ec, &ek)), &["push", "edge", "-f", &example()]);
    assert_eq!(out.code, 3, "{out}");

    // No client certificate at all: the connection is made (tokens are
    // allowed), the call is not.
    let out = tls.ctl_with(None, &["push", "edge", "-f", &example()]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line()
            .contains("needs a client certificate or a bearer token"),
        "{out}"
    );

    // A client that does not trust the server's CA.
    let other_ca = scratch.join("other-ca.pem");
    std::fs::write(&other_ca, rogue.cert_pem()).unwrap();
    let url = tls.url();
    let out = run_vanectl(
        &[
            "--server",
            &url,
            "--ca",
            other_ca.to_str().unwrap(),
            "history",
            "edge",
        ],
        &[],
    );
    assert_eq!(out.code, 3, "{out}");
    assert!(out.one_error_line().contains("UnknownIssuer"), "{out}");

    // Plaintext against the TLS port.
    let out = run_vanectl(
        &[
            "--server",
            &format!("http://{}", tls.server.addr()),
            "history",
            "edge",
        ],
        &[],
    );
    assert_eq!(out.code, 3, "{out}");

    // Nothing of that reached the store.
    let out = tls.ctl_as("operator", &["history", "edge"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.one_error_line().contains("not found"), "{out}");
}

#[test]
fn an_agent_certificate_watches_its_own_group_only() {
    let tls = Tls::start(&[]);
    tls.ctl_as("operator", &["push", "edge", "-f", &example()])
        .ok();
    tls.ctl_as("operator", &["push", "core", "-f", &example()])
        .ok();
    let url = tls.url();
    let s = |f: &str| tls.path(f).to_str().unwrap().to_owned();
    let common = |group: &str, node: &str, cache: &str| -> Vec<String> {
        vec![
            "--node-id".into(),
            node.into(),
            "--group".into(),
            group.into(),
            "--control".into(),
            url.clone(),
            "--cache-dir".into(),
            s(cache),
            "--ca".into(),
            s("ca.pem"),
            "--cert".into(),
            s("agent.pem"),
            "--key".into(),
            s("agent.key"),
            "--backoff-base".into(),
            "50ms".into(),
            "--backoff-cap".into(),
            "500ms".into(),
        ]
    };
    let edge_args = common("edge", "e1", "cache-e1");
    let edge_refs: Vec<&str> = edge_args.iter().map(String::as_str).collect();
    let edge = Sidecar::start(&edge_refs, &tls.path("e1.log"));
    edge.wait_status("live on version 1", |s| {
        s["source"] == "live" && s["version"] == 1
    });
    let status = tls
        .ctl_as("reader", &["status", "edge", "-o", "json"])
        .ok()
        .json();
    assert_eq!(status[0]["node_id"], "e1", "{status}");

    let core_args = common("core", "c1", "cache-c1");
    let core_refs: Vec<&str> = core_args.iter().map(String::as_str).collect();
    let core = Sidecar::start(&core_refs, &tls.path("c1.log"));
    let refused = core.wait_status("PermissionDenied", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("PermissionDenied"))
    });
    assert_ne!(refused["source"], "live", "{refused}");
    let audit = tls
        .ctl_as("operator", &["audit", "core", "-o", "json"])
        .ok()
        .json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "watch"
                && e["identity"] == "agent-edge"
                && e["result"] == "refused"),
        "{audit:#}"
    );
}

#[test]
fn tls_handshakes_and_connections_per_identity_are_bounded() {
    let tls = Tls::start(&[
        "--handshake-timeout",
        "1s",
        "--max-connections-per-identity",
        "2",
    ]);
    // A client that connects and never starts its handshake is dropped.
    let mut idle = TcpStream::connect(tls.server.addr()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the connection");
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(900), "closed after {held:?}");

    // A client that finishes its TLS handshake, then says nothing, is
    // dropped after the same timeout.
    let config = client_config(&tls, "reader");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut silent = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut sock = TcpStream::connect(tls.server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    while silent.is_handshaking() {
        silent.complete_io(&mut sock).unwrap();
    }
    let started = Instant::now();
    let mut stream = rustls::StreamOwned::new(silent, sock);
    let closed = match stream.read(&mut buf) {
        Ok(0) => true,
        // TLS 1.3 tickets may arrive first; then the close.
        Ok(_) => matches!(stream.read(&mut buf), Ok(0) | Err(_)),
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    };
    let held = started.elapsed();
    assert!(closed, "a silent TLS client was kept open for {held:?}");
    assert!(held < Duration::from_secs(10), "closed only after {held:?}");

    // Two TLS connections of `reader` held open; a third is closed right
    // after its handshake.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tls_connect(&tls, config.clone()).expect("the first two connections are accepted"),
        );
    }
    let third = tls_connect(&tls, config.clone());
    assert!(
        third.is_err(),
        "a third connection of the same identity was kept"
    );
    drop(held);
    // Released: new connections are accepted again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tls_connect(&tls, config.clone()).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections of reader never accepted again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn client_config(tls: &Tls, who: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls.path(&format!("{who}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(tls.path(&format!("{who}.key"))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

/// A TLS connection that the server kept: handshake done, then the server
/// sends its HTTP/2 SETTINGS (a closed connection reads 0 bytes instead).
fn tls_connect(
    tls: &Tls,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(tls.server.addr()).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, sock);
    use std::io::Write as _;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match stream.read(&mut buf) {
        Ok(0) => Err("closed".into()),
        Ok(_) => Ok(stream),
        Err(e) => Err(e.to_string()),
    }
}
