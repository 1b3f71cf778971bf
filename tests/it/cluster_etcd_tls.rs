//! Replicas over etcd with TLS and etcd's authentication: two replicas with
//! client certificates share pushes and feed an agent over a mutual-TLS
//! etcd; a replica without the CA, with the wrong CA or with a certificate
//! etcd does not trust refuses to start and says which flag to check; when
//! etcd stops trusting a running replica its pushes fail in one clear line
//! and store nothing; etcd users log in, renew expired tokens, and a wrong
//! password is refused. The flag combinations that would talk plaintext to
//! etcd, or half-configure TLS, are usage errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use vane_pki::{Ca, LeafParams};
use vane_testkit::etcd::{EtcdCluster, EtcdTls, replica_refusing_to_start, start_replica};
use vane_testkit::net::free_port;
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{Output, fixtures, history, vanectl, wait_for_status};

const GROUP: &str = "edge";

/// Certificates in a directory: a CA, etcd's server certificate
/// (127.0.0.1, localhost; also a client certificate, for etcd's own
/// gateway), and client certificates issued on demand.
struct Pki {
    dir: PathBuf,
    ca: Ca,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new(&format!("{name} CA")).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        ca.issue(&LeafParams::server(["127.0.0.1", "localhost"]).also_client())
            .unwrap()
            .write(&dir.join("etcd.pem"), &dir.join("etcd.key"), false)
            .unwrap();
        Self { dir, ca }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// etcd's side: its certificate, and `client_ca` for client
    /// certificates (none: clients need none).
    fn etcd(&self, client_ca: Option<PathBuf>) -> EtcdTls {
        EtcdTls {
            cert: self.dir.join("etcd.pem"),
            key: self.dir.join("etcd.key"),
            client_ca,
        }
    }

    /// A client certificate for `name`: (cert, key).
    fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        self.ca
            .issue(&LeafParams::client(name))
            .unwrap()
            .write(&cert, &key, false)
            .unwrap();
        (cert, key)
    }
}

/// `--etcd-ca CA --etcd-cert CERT --etcd-key KEY`.
fn tls_flags(ca: &Path, client: &(PathBuf, PathBuf)) -> Vec<String> {
    [
        "--etcd-ca",
        ca.to_str().unwrap(),
        "--etcd-cert",
        client.0.to_str().unwrap(),
        "--etcd-key",
        client.1.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn snapshot_file(dir: &Path, marker: &str) -> PathBuf {
    fixtures::write_json(
        dir,
        &format!("{marker}.json"),
        &fixtures::example_with_value("test.marker", json!(marker)),
    )
}

fn push(server: &str, file: &Path) -> Output {
    vanectl(
        server,
        &["push", GROUP, "-f", file.to_str().unwrap(), "-o", "json"],
    )
}

/// Pushes until etcd takes it (after a restart of etcd the replica
/// reconnects first); returns the version.
#[track_caller]
fn push_until_ok(server: &str, file: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = push(server, file);
        if out.code == 0 {
            return out.json()["version"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "the push never succeeded: {out}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn start_sidecar(node: &str, control: &str, dir: &Path) -> Sidecar {
    Sidecar::follow(node, GROUP, &[control.to_owned()], dir, &[])
}

#[test]
fn replicas_over_mutual_tls_share_pushes_and_feed_an_agent() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path(), "etcd");
    let etcd = EtcdCluster::start_tls(1, pki.etcd(Some(pki.ca())));
    let endpoints = etcd.endpoints();
    assert!(
        endpoints[0].starts_with("https://127.0.0.1:"),
        "{endpoints:?}"
    );

    let a = start_replica(
        "replica-a",
        &endpoints,
        &strs(&tls_flags(&pki.ca(), &pki.client("replica-a"))),
    );
    let b = start_replica(
        "replica-b",
        &endpoints,
        &strs(&tls_flags(&pki.ca(), &pki.client("replica-b"))),
    );
    let dir = a.scratch();

    // A push through A is read back through B, byte for byte.
    let v1 = push(&a.url(), &snapshot_file(&dir, "v1")).ok();
    let hash = v1.json()["hash"].as_str().unwrap().to_owned();
    assert_eq!(v1.json()["version"], 1);
    assert_eq!(history(&b.url(), GROUP), [(1, hash.clone())]);
    let got = vanectl(&b.url(), &["get", GROUP, "-o", "json"]).ok();
    assert!(got.stdout.contains("\"v1\""), "{got}");

    // An agent on B follows pushes made through A (B's etcd watch, over TLS).
    let agent = start_sidecar("on-b", &b.url(), &dir);
    agent.wait_status("version 1 through B", |s| s["version"] == 1);
    let v2 = push(&a.url(), &snapshot_file(&dir, "v2")).ok();
    assert_eq!(v2.json()["version"], 2);
    agent.wait_status("version 2 through B", |s| s["version"] == 2);

    // Both replicas list the agent (agent records shared through etcd) and
    // report the store healthy, at the https:// endpoint.
    for server in [&a, &b] {
        let entry = wait_for_status(&server.url(), GROUP, "on-b", "SYNCED at 2", |e| {
            e["state"] == "SYNCED" && e["acked_version"] == 2
        });
        assert_eq!(entry["control_degraded"], false, "{entry}");
        let table = server.ctl(&["status"]).ok().stdout;
        assert!(table.contains("store: etcd https://127.0.0.1:"), "{table}");
        assert!(table.contains("): ok"), "{table}");
    }
}

#[test]
fn a_replica_refuses_to_start_when_etcd_and_its_tls_settings_do_not_fit() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path(), "etcd");
    let other = Pki::new(scratch.path(), "other");
    let etcd = EtcdCluster::start_tls(1, pki.etcd(Some(pki.ca())));
    let endpoints = etcd.endpoints();
    let good = pki.client("replica");
    let foreign = other.client("replica");

    // No CA for an https:// endpoint: a usage error before any connection.
    let out = replica_refusing_to_start("no-ca", &endpoints, &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("needs --etcd-ca"), "{out}");

    // A client certificate etcd does not trust: refused at once (not after
    // --etcd-timeout), in one line that says what to check.
    let started = Instant::now();
    let out = replica_refusing_to_start(
        "foreign-cert",
        &endpoints,
        &strs(&tls_flags(&pki.ca(), &foreign)),
    );
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(
        line.starts_with(&format!(
            "vane-control: store unavailable: etcd at {}: TLS: received fatal alert",
            endpoints[0]
        )),
        "{line}"
    );
    assert!(line.contains("--etcd-cert"), "{line}");
    assert!(line.contains("--trusted-ca-file"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // No client certificate at all, where etcd requires one.
    let out = replica_refusing_to_start(
        "no-cert",
        &endpoints,
        &["--etcd-ca", pki.ca().to_str().unwrap()],
    );
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(line.contains("TLS: received fatal alert"), "{line}");
    assert!(line.contains("give --etcd-cert and --etcd-key"), "{line}");

    // The wrong CA: etcd's certificate does not verify.
    let out = replica_refusing_to_start(
        "wrong-ca",
        &endpoints,
        &strs(&tls_flags(&other.ca(), &good)),
    );
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(line.contains("TLS: invalid peer certificate"), "{line}");
    assert!(line.contains("--etcd-ca"), "{line}");

    // The same settings with the right files start.
    let replica = start_replica("good", &endpoints, &strs(&tls_flags(&pki.ca(), &good)));
    push(&replica.url(), &snapshot_file(&replica.scratch(), "ok")).ok();
}

#[test]
fn when_etcd_stops_trusting_a_replica_its_pushes_fail_clearly_and_store_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path(), "etcd");
    let old = Pki::new(scratch.path(), "old-clients");
    // etcd first trusts both client CAs (as during a rotation) ...
    let both = scratch.path().join("both-cas.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(pki.ca()).unwrap() + &std::fs::read_to_string(old.ca()).unwrap(),
    )
    .unwrap();
    let mut etcd = EtcdCluster::start_tls(1, pki.etcd(Some(both)));
    let endpoints = etcd.endpoints();
    let a = start_replica(
        "replica-a",
        &endpoints,
        &strs(&tls_flags(&pki.ca(), &pki.client("replica-a"))),
    );
    let b = start_replica(
        "replica-b",
        &endpoints,
        &strs(&tls_flags(&pki.ca(), &old.client("replica-b"))),
    );
    let dir = a.scratch();
    push(&b.url(), &snapshot_file(&dir, "v1")).ok();

    // ... then only the new one: B's certificate is no longer accepted.
    etcd.restart_with_tls(Some(pki.etcd(Some(pki.ca()))));
    let v2 = push_until_ok(&a.url(), &snapshot_file(&dir, "v2"));
    assert_eq!(v2, 2);
    let before = history(&a.url(), GROUP);

    let started = Instant::now();
    let out = push(&b.url(), &snapshot_file(&dir, "refused"));
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(
        line.starts_with(&format!(
            "error: store unavailable: etcd at {}: TLS: received fatal alert",
            endpoints[0]
        )),
        "{line}"
    );
    assert!(line.contains("--etcd-cert"), "{line}");
    assert!(line.ends_with("; nothing was stored"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?} to fail",
        started.elapsed()
    );
    // Reads through B fail the same way; nothing changed in etcd.
    let out = vanectl(&b.url(), &["history", GROUP]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line().contains("TLS: received fatal alert"),
        "{out}"
    );
    assert_eq!(history(&a.url(), GROUP), before);

    // B says why it is read-only; A is fine.
    let table = b.ctl(&["status"]).ok().stdout;
    assert!(table.contains("DEGRADED"), "{table}");
    assert!(table.contains("TLS: received fatal alert"), "{table}");
    let table = a.ctl(&["status"]).ok().stdout;
    assert!(table.contains("): ok"), "{table}");
}

#[test]
fn etcd_users_log_in_renew_their_token_and_a_wrong_password_is_refused() {
    // Short-lived tokens, so that the replica must log in again.
    let mut etcd = EtcdCluster::start_with(1, None, &["--auth-token-ttl", "2"]);
    etcd.enable_auth(0, "vane", "s3cret pass", "/vane");
    // Authentication over TLS: the same cluster, now serving https://.
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path(), "etcd");
    etcd.restart_with_tls(Some(pki.etcd(None)));
    let endpoints = etcd.endpoints();
    let password = scratch.path().join("password");
    // The trailing line break is not part of the password.
    std::fs::write(&password, "s3cret pass\n").unwrap();
    let wrong = scratch.path().join("wrong");
    std::fs::write(&wrong, "s3cret\n").unwrap();
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let password = password.to_str().unwrap();

    let a = start_replica(
        "replica-a",
        &endpoints,
        &[
            "--etcd-ca",
            ca,
            "--etcd-user",
            "vane",
            "--etcd-password-file",
            password,
            // Fewer lease renewals than token lifetimes: calls find their
            // token expired.
            "--etcd-lease-ttl",
            "30s",
        ],
    );
    let dir = a.scratch();
    assert_eq!(push_until_ok(&a.url(), &snapshot_file(&dir, "v1")), 1);
    // Time itself is the condition here: longer than the token's 2 s
    // lifetime, so the next push finds its token expired.
    thread::sleep(Duration::from_secs(3));
    let v2 = push(&a.url(), &snapshot_file(&dir, "v2")).ok();
    assert_eq!(v2.json()["version"], 2);
    assert_eq!(history(&a.url(), GROUP).len(), 2);

    let out = replica_refusing_to_start(
        "wrong-password",
        &endpoints,
        &[
            "--etcd-ca",
            ca,
            "--etcd-user",
            "vane",
            "--etcd-password-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(
        line.contains("authentication: etcdserver: authentication failed"),
        "{line}"
    );
    assert!(line.contains("--etcd-password-file"), "{line}");

    let out = replica_refusing_to_start("no-user", &endpoints, &["--etcd-ca", ca]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line()
            .contains("etcdserver: user name is empty"),
        "{out}"
    );

    // A user whose role does not cover the prefix.
    let out = replica_refusing_to_start(
        "other-prefix",
        &endpoints,
        &[
            "--etcd-ca",
            ca,
            "--etcd-user",
            "vane",
            "--etcd-password-file",
            password,
            "--etcd-prefix",
            "/elsewhere",
        ],
    );
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line()
            .contains("etcdserver: permission denied"),
        "{out}"
    );

    // With client certificates required, etcd takes the certificate's CN
    // as the user: no password needed.
    etcd.restart_with_tls(Some(pki.etcd(Some(pki.ca()))));
    let by_cert = start_replica(
        "by-cert",
        &endpoints,
        &strs(&tls_flags(&pki.ca(), &pki.client("vane"))),
    );
    assert_eq!(push_until_ok(&by_cert.url(), &snapshot_file(&dir, "v3")), 3);
    let out = replica_refusing_to_start(
        "cert-of-no-user",
        &endpoints,
        &strs(&tls_flags(&pki.ca(), &pki.client("stranger"))),
    );
    assert_eq!(out.code, 1, "{out}");
    assert!(out.one_error_line().contains("authentication: "), "{out}");

    // The right password does not make up for a certificate etcd refuses:
    // logging in fails on TLS, and says so.
    let other = Pki::new(scratch.path(), "other");
    let mut flags = tls_flags(&pki.ca(), &other.client("vane"));
    flags.extend(["--etcd-user", "vane", "--etcd-password-file", password].map(str::to_owned));
    let out = replica_refusing_to_start("foreign-cert-with-user", &endpoints, &strs(&flags));
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line().contains("TLS: received fatal alert"),
        "{out}"
    );
}

/// Flags that would talk plaintext to etcd, half-configure TLS, or name
/// files that cannot be used: refused before anything connects.
#[test]
fn etcd_security_flags_are_checked_before_connecting() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path(), "etcd");
    let client = pki.client("replica");
    let (cert, key) = (client.0.to_str().unwrap(), client.1.to_str().unwrap());
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    // Nothing listens there: only the flags are checked.
    let port = free_port();
    let https = vec![format!("https://127.0.0.1:{port}")];
    let http = vec![format!("http://127.0.0.1:{port}")];

    let usage = |endpoints: &[String], extra: &[&str], expect: &[&str]| {
        let out = replica_refusing_to_start("flags", endpoints, extra);
        assert_eq!(out.code, 2, "{out}");
        for e in expect {
            assert!(out.stderr.contains(e), "expected {e:?}: {out}");
        }
    };
    usage(
        &[https[0].clone(), http[0].clone()],
        &["--etcd-ca", ca],
        &["all http:// or all https://"],
    );
    usage(&http, &["--etcd-ca", ca], &["need https://"]);
    usage(
        &http,
        &["--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key],
        &["need https://"],
    );
    usage(
        &https,
        &["--etcd-ca", ca, "--etcd-cert", cert],
        &["--etcd-key", "--etcd-cert"],
    );
    usage(
        &https,
        &["--etcd-ca", ca, "--etcd-key", key],
        &["--etcd-cert", "--etcd-key"],
    );
    usage(
        &https,
        &["--etcd-cert", cert, "--etcd-key", key],
        &["needs --etcd-ca"],
    );
    usage(&http, &["--etcd-user", "vane"], &["--etcd-password-file"]);

    // Files that cannot be used: one line naming the flag, exit 1.
    let missing = scratch.path().join("missing.pem");
    let garbage = scratch.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let empty = scratch.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let other_key = pki.client("other").1;
    let file_error = |endpoints: &[String], extra: &[&str], expect: &str| {
        let out = replica_refusing_to_start("files", endpoints, extra);
        assert_eq!(out.code, 1, "{out}");
        let line = out.one_error_line();
        assert!(line.starts_with(expect), "expected {expect:?}: {line}");
    };
    file_error(
        &https,
        &["--etcd-ca", missing.to_str().unwrap()],
        &format!(
            "vane-control: --etcd-ca {}: cannot read: ",
            missing.display()
        ),
    );
    file_error(
        &https,
        &["--etcd-ca", garbage.to_str().unwrap()],
        &format!(
            "vane-control: --etcd-ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            garbage.display()
        ),
    );
    file_error(
        &https,
        &[
            "--etcd-ca",
            ca,
            "--etcd-cert",
            cert,
            "--etcd-key",
            garbage.to_str().unwrap(),
        ],
        &format!(
            "vane-control: --etcd-key {}: no PEM private key (-----BEGIN PRIVATE KEY-----) in it",
            garbage.display()
        ),
    );
    file_error(
        &https,
        &[
            "--etcd-ca",
            ca,
            "--etcd-cert",
            cert,
            "--etcd-key",
            other_key.to_str().unwrap(),
        ],
        &format!(
            "vane-control: --etcd-cert {cert} and --etcd-key {}: the key is not the certificate's key",
            other_key.display()
        ),
    );
    file_error(
        &http,
        &[
            "--etcd-user",
            "vane",
            "--etcd-password-file",
            empty.to_str().unwrap(),
        ],
        &format!(
            "vane-control: --etcd-password-file {}: no password in the file",
            empty.display()
        ),
    );
}
