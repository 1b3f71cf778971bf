//! vane-proxy terminating TLS end to end: an HTTPS listener whose
//! certificate was pushed with `vanectl push` serves curl (HTTP/1.1 and h2
//! by ALPN); SNI picks the certificate (exact name over wildcard, the first
//! as default); a push rotating the certificate reaches new handshakes
//! while a connection opened before keeps working on the same socket; a
//! key that is not the certificate's is refused at push, a certificate
//! file missing on the proxy's host is NACKed; client certificates are
//! required when a client CA is set; a `tls` listener terminates TLS in
//! front of a TCP backend, and closes a client that never completes a
//! handshake.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vane_model::SnapshotSpec;
use vane_model::spec::SecretSpec;
use vane_pki::{Ca, LeafParams, Pair};
use vane_testkit::ControlServer;
use vane_testkit::curl::curl;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{
    ca_secret, certificate_secret, cluster, https_listener, prefix, table, tls_listener,
};
use vane_testkit::proxy::{
    Backend, ProxyProcess, TcpBackend, TlsClient, TlsFiles, push, serial_of,
};
use vane_testkit::{agent_status, wait_for_status};

const GROUP: &str = "edge";
const NODE: &str = "tls-1";

fn start_proxy(server: &ControlServer) -> ProxyProcess {
    ProxyProcess::follow(server, NODE, GROUP, &[])
}

fn server_pair(ca: &Ca, names: &[&str]) -> Pair {
    ca.issue(&LeafParams::server(names.iter().copied()))
        .unwrap()
}

/// An HTTPS listener `web` on `addr` routing everything to `backend`.
fn https_spec(
    addr: SocketAddr,
    backend: &Backend,
    secrets: Vec<SecretSpec>,
    certificates: &[(&str, &[&str])],
) -> SnapshotSpec {
    SnapshotSpec {
        secrets,
        listeners: vec![https_listener("web", addr, "main", certificates)],
        route_tables: vec![table("main", vec![prefix("all", "/", "app")])],
        clusters: vec![cluster("app", "round_robin", &[(backend.addr, 1)])],
        ..SnapshotSpec::default()
    }
}

/// The handshakes of `listener` with `result`, once they reach `want`
/// (the proxy counts a handshake as it closes it, so a client may see the
/// close a moment before the count).
fn handshakes(proxy: &ProxyProcess, listener: &str, result: &str, want: f64) -> f64 {
    let labels = [
        format!(r#"listener="{listener}""#),
        format!(r#"result="{result}""#),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = proxy.metric("vane_proxy_tls_handshakes_total", &labels);
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_pushed_certificate_serves_curl_over_http1_and_h2() {
    let server = ControlServer::start();
    let backend = Backend::start("app-1").await;
    let ca = Ca::new("proxy tls test CA").unwrap();
    let site = server_pair(&ca, &["example.test"]);
    let files = TlsFiles::write(&server.scratch().join("tls"), &ca.cert_pem(), &[]);
    let web = free_addr();
    let proxy = start_proxy(&server);
    let spec = https_spec(
        web,
        &backend,
        vec![certificate_secret("site", &site.cert_pem, &site.key_pem)],
        &[("site", &["example.test"])],
    );
    let v = push(&server, GROUP, &spec);
    proxy.wait_version(v);

    let url = format!("https://example.test:{}/hello", web.port());
    let resolve = format!("example.test:{}:127.0.0.1", web.port());
    let cacert = files.ca.to_str().unwrap();
    for version in ["--http1.1", "--http2"] {
        let a = curl(&url, &["--cacert", cacert, "--resolve", &resolve, version]);
        assert_eq!(a.status, 200, "{version}: {a:?}");
        assert_eq!(a.body, "app-1", "{version}: {a:?}");
        assert_eq!(a.header("x-seen-path"), Some("/hello"), "{a:?}");
    }
    // ALPN: h2 when the client offers it, HTTP/1.1 otherwise.
    let h2 = TlsClient::new(&ca.cert_pem(), &["h2", "http/1.1"], None);
    let conn = h2.connect(web, "example.test").await.unwrap();
    assert_eq!(conn.alpn().as_deref(), Some("h2"));
    assert_eq!(conn.peer_serial(), serial_of(&site.cert_pem));
    let h1 = TlsClient::new(&ca.cert_pem(), &["http/1.1"], None);
    let conn = h1.connect(web, "example.test").await.unwrap();
    assert_eq!(conn.alpn().as_deref(), Some("http/1.1"));

    // A client that does not trust the CA fails its handshake, and so does
    // one that speaks plaintext HTTP to the port.
    let other = Ca::new("someone else").unwrap();
    let stranger = TlsClient::new(&other.cert_pem(), &[], None);
    assert!(stranger.connect(web, "example.test").await.is_err());
    let mut plain = tokio::net::TcpStream::connect(web).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("app-1"));

    let ok = handshakes(&proxy, "web", "ok", 4.0);
    assert!(ok >= 4.0, "handshakes ok: {ok}\n{}", proxy.metrics());
    let failed = handshakes(&proxy, "web", "error", 2.0);
    assert!(
        failed >= 2.0,
        "handshakes failed: {failed}\n{}",
        proxy.metrics()
    );
    // The certificate's expiry: a year from now (vane-pki's default).
    let expiry = proxy.metric(
        "vane_proxy_certificate_expiry_timestamp_seconds",
        &[r#"listener="web""#, r#"secret="site""#],
    );
    let in_days = (expiry - now_secs()) / 86_400.0;
    assert!(
        (300.0..400.0).contains(&in_days),
        "expires in {in_days} days"
    );
    // The unauthenticated admin port shows the key only as its fingerprint.
    let dump = proxy.config_dump().to_string();
    assert!(!dump.contains("PRIVATE KEY"), "{dump}");
    assert!(dump.contains("redacted:sha256:"), "{dump}");
    assert!(dump.contains("BEGIN CERTIFICATE"), "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_exact_before_wildcard_first_as_default() {
    let server = ControlServer::start();
    let backend = Backend::start("app-1").await;
    let ca = Ca::new("proxy tls test CA").unwrap();
    // `a` also covers names the listener does not list for it (a fallback
    // name and the IP address), to see the default being served.
    let a = server_pair(
        &ca,
        &[
            "example.test",
            "*.example.test",
            "fallback.test",
            "127.0.0.1",
        ],
    );
    let b = server_pair(&ca, &["other.test", "api.example.test"]);
    let web = free_addr();
    let proxy = start_proxy(&server);
    let spec = https_spec(
        web,
        &backend,
        vec![
            certificate_secret("a", &a.cert_pem, &a.key_pem),
            certificate_secret("b", &b.cert_pem, &b.key_pem),
        ],
        &[
            ("a", &["example.test", "*.example.test"]),
            ("b", &["other.test", "api.example.test"]),
        ],
    );
    proxy.wait_version(push(&server, GROUP, &spec));
    let (sa, sb) = (serial_of(&a.cert_pem), serial_of(&b.cert_pem));
    assert_ne!(sa, sb);
    let client = TlsClient::new(&ca.cert_pem(), &["http/1.1"], None);
    for (sni, want) in [
        ("example.test", &sa),
        ("www.example.test", &sa),
        ("api.example.test", &sb),
        ("API.Example.Test", &sb),
        ("other.test", &sb),
        ("fallback.test", &sa),
        // No SNI at all (an IP address is never sent as SNI).
        ("127.0.0.1", &sa),
    ] {
        let conn = client
            .connect(web, sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(&conn.peer_serial(), want, "SNI {sni}");
        let mut http = conn.http1().await.unwrap();
        assert_eq!(http.get("/").await.unwrap(), (200, "app-1".to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_handshakes_and_open_connections_keep_working() {
    let server = ControlServer::start();
    let backend = Backend::start("app-1").await;
    let ca = Ca::new("proxy tls test CA").unwrap();
    let old = server_pair(&ca, &["example.test"]);
    let new = server_pair(&ca, &["example.test"]);
    let web = free_addr();
    let proxy = start_proxy(&server);
    let names: &[(&str, &[&str])] = &[("site", &["example.test"])];
    let v1 = push(
        &server,
        GROUP,
        &https_spec(
            web,
            &backend,
            vec![certificate_secret("site", &old.cert_pem, &old.key_pem)],
            names,
        ),
    );
    proxy.wait_version(v1);
    let client = TlsClient::new(&ca.cert_pem(), &["http/1.1"], None);
    let before = client.connect(web, "example.test").await.unwrap();
    assert_eq!(before.peer_serial(), serial_of(&old.cert_pem));
    let mut kept = before.http1().await.unwrap();
    assert_eq!(kept.get("/1").await.unwrap().0, 200);

    let v2 = push(
        &server,
        GROUP,
        &https_spec(
            web,
            &backend,
            vec![certificate_secret("site", &new.cert_pem, &new.key_pem)],
            names,
        ),
    );
    proxy.wait_version(v2);
    // A new handshake sees the new certificate...
    let after = client.connect(web, "example.test").await.unwrap();
    assert_eq!(after.peer_serial(), serial_of(&new.cert_pem));
    // ...while the connection opened before keeps serving requests.
    for path in ["/2", "/3"] {
        assert_eq!(
            kept.get(path).await.unwrap(),
            (200, "app-1".to_owned()),
            "{path}"
        );
    }
    assert!(kept.is_open());
    // The listener was not restarted: its socket stayed open throughout.
    let logs = proxy.logs();
    assert_eq!(logs.matches("listener started").count(), 1, "{logs}");
    assert!(!logs.contains("draining"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_the_certificates_is_refused_at_push() {
    let server = ControlServer::start();
    let backend = Backend::start("app-1").await;
    let ca = Ca::new("proxy tls test CA").unwrap();
    let one = server_pair(&ca, &["example.test"]);
    let two = server_pair(&ca, &["example.test"]);
    let spec = https_spec(
        free_addr(),
        &backend,
        vec![certificate_secret("site", &one.cert_pem, &two.key_pem)],
        &[("site", &["example.test"])],
    );
    let path = vane_testkit::fixtures::write_json(&server.scratch(), "bad-key.json", &spec);
    let out = server.ctl(&["push", GROUP, "-f", path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(
        line.contains("secrets[0].private_key: does not belong to the certificate"),
        "{out}"
    );
    // Nothing was stored.
    assert_eq!(server.ctl(&["get", GROUP]).code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_file_missing_on_the_proxy_host_is_nacked_naming_listener_and_secret() {
    let server = ControlServer::start();
    let backend = Backend::start("app-1").await;
    let ca = Ca::new("proxy tls test CA").unwrap();
    let site = server_pair(&ca, &["example.test"]);
    let dir = server.scratch().join("tls");
    let files = TlsFiles::write(&dir, &ca.cert_pem(), &[("site", &site)]);
    let (cert, key) = &files.pairs[0];
    let web = free_addr();
    let proxy = start_proxy(&server);
    let from_files = |cert: &std::path::Path| SecretSpec {
        name: "site".into(),
        certificate_chain_file: Some(cert.display().to_string()),
        private_key_file: Some(key.display().to_string()),
        ..SecretSpec::default()
    };
    let names: &[(&str, &[&str])] = &[("site", &["example.test"])];
    // From files the proxy reads: served.
    let v1 = push(
        &server,
        GROUP,
        &https_spec(web, &backend, vec![from_files(cert)], names),
    );
    proxy.wait_version(v1);
    let client = TlsClient::new(&ca.cert_pem(), &["http/1.1"], None);
    let conn = client.connect(web, "example.test").await.unwrap();
    assert_eq!(conn.peer_serial(), serial_of(&site.cert_pem));

    // A file that is not there: the proxy NACKs, naming listener, secret
    // and file, and keeps serving version 1.
    let missing = dir.join("missing.pem");
    let v2 = push(
        &server,
        GROUP,
        &https_spec(web, &backend, vec![from_files(&missing)], names),
    );
    let status = wait_for_status(&server.url(), GROUP, NODE, "a NACK", |s| {
        s["last_nacked_version"] == v2
    });
    let reason = status["nack_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains(r#"listener "web": secret "site": certificate_chain_file"#)
            && reason.contains("missing.pem")
            && reason.contains("cannot read"),
        "{status}"
    );
    assert_eq!(proxy.config_dump()["version"], v1);
    let conn = client.connect(web, "example.test").await.unwrap();
    let mut http = conn.http1().await.unwrap();
    assert_eq!(http.get("/").await.unwrap().0, 200);
    assert!(agent_status(&server.url(), GROUP, NODE).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_requires_a_client_certificate_it_signed() {
    let server = ControlServer::start();
    let backend = Backend::start("app-1").await;
    let ca = Ca::new("proxy tls test CA").unwrap();
    let site = server_pair(&ca, &["example.test"]);
    let clients = Ca::new("clients CA").unwrap();
    let alice = clients.issue(&LeafParams::client("alice")).unwrap();
    let mallory = Ca::new("not the clients CA")
        .unwrap()
        .issue(&LeafParams::client("mallory"))
        .unwrap();
    let web = free_addr();
    let proxy = start_proxy(&server);
    let mut spec = https_spec(
        web,
        &backend,
        vec![
            certificate_secret("site", &site.cert_pem, &site.key_pem),
            ca_secret("clients", &clients.cert_pem()),
        ],
        &[("site", &["example.test"])],
    );
    spec.listeners[0].client_ca = Some("clients".into());
    proxy.wait_version(push(&server, GROUP, &spec));

    // Refused: no certificate, or one another CA signed.
    let anonymous = TlsClient::new(&ca.cert_pem(), &["http/1.1"], None);
    let outsider = TlsClient::new(
        &ca.cert_pem(),
        &["http/1.1"],
        Some((&mallory.cert_pem, &mallory.key_pem)),
    );
    for (who, client) in [("anonymous", &anonymous), ("outsider", &outsider)] {
        let got = client.get(web, "example.test", "/").await;
        assert!(got.is_err(), "{who} was let in: {got:?}");
    }

    let member = TlsClient::new(
        &ca.cert_pem(),
        &["http/1.1"],
        Some((&alice.cert_pem, &alice.key_pem)),
    );
    let conn = member.connect(web, "example.test").await.unwrap();
    let mut http = conn.http1().await.unwrap();
    assert_eq!(http.get("/").await.unwrap(), (200, "app-1".to_owned()));

    let refused = handshakes(&proxy, "web", "client_cert_refused", 2.0);
    assert_eq!(refused, 2.0, "{}", proxy.metrics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_terminates_tls_in_front_of_a_tcp_backend() {
    let server = ControlServer::start();
    let echo = TcpBackend::start("echo-1").await;
    let ca = Ca::new("proxy tls test CA").unwrap();
    let site = server_pair(&ca, &["db.example.test"]);
    let db = free_addr();
    let proxy = ProxyProcess::follow(&server, NODE, GROUP, &["--header-read-timeout", "500ms"]);
    let spec = SnapshotSpec {
        secrets: vec![certificate_secret("db", &site.cert_pem, &site.key_pem)],
        listeners: vec![tls_listener(
            "db",
            db,
            "echo",
            &[("db", &["db.example.test"])],
        )],
        clusters: vec![cluster("echo", "round_robin", &[(echo.addr, 1)])],
        ..SnapshotSpec::default()
    };
    proxy.wait_version(push(&server, GROUP, &spec));
    let client = TlsClient::new(&ca.cert_pem(), &[], None);
    let conn = client.connect(db, "db.example.test").await.unwrap();
    assert_eq!(conn.alpn(), None, "a tls listener negotiates no ALPN");
    let mut stream = conn.into_stream();
    let mut hello = [0u8; 7];
    stream.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"echo-1\n");
    stream.write_all(b"ping over tls").await.unwrap();
    let mut back = [0u8; 13];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping over tls");

    // A client that connects and never starts a handshake is closed after
    // the header-read timeout, and counted.
    let mut silent = tokio::net::TcpStream::connect(db).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent client was not closed: {read:?}"
    );
    let timeouts = handshakes(&proxy, "db", "timeout", 1.0);
    assert_eq!(timeouts, 1.0, "{}", proxy.metrics());
}
