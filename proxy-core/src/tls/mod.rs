//! TLS termination on `https` and `tls` listeners: the rustls server
//! configuration of each listener, built from the snapshot's secrets when a
//! candidate is validated, and the handshake of each accepted connection.
//!
//! # Rotation
//! A listener's configuration lives in the compiled snapshot, which every
//! accepted connection loads (one lock-free `ArcSwap` load) before its
//! handshake. A push that changes a certificate or a client CA therefore
//! reaches the next handshake, while connections already open keep the
//! session they negotiated; the listener's sockets stay open, since the
//! listener manager identifies a listener by name, address and protocol,
//! never by its certificates.
//!
//! # Errors
//! Secrets given as files are read here, at validation: a missing file, a
//! chain that does not parse or a key that does not belong to its
//! certificate refuses the whole candidate (a NACK naming the listener, the
//! secret and the field), and the running configuration keeps serving.
//!
//! Layout: `load` reads secrets, `sni` picks a certificate by SNI name.

mod load;
mod sni;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use vane_model::{Listener, ListenerTls, Protocol, Snapshot};

use crate::metrics::TlsStats;
use load::LoadedCert;
use sni::SniResolver;

/// ALPN protocols of an `https` listener, preferred first.
const HTTPS_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A listener's TLS, as validation builds it (no metric handles yet).
#[derive(Debug)]
pub(crate) struct TlsBuild {
    pub(crate) config: Arc<ServerConfig>,
    /// Each certificate served: its secret and its leaf's `notAfter`.
    pub(crate) expiry: Vec<(String, i64)>,
}

/// A listener's TLS in the running build.
#[derive(Debug)]
pub(crate) struct ServerTls {
    /// What each handshake is run with.
    pub(crate) config: Arc<ServerConfig>,
    /// `vane_proxy_certificate_expiry_timestamp_seconds` of each served
    /// certificate and its value, set when the build starts running (a
    /// build compiled and then dropped must not change what is shown).
    expiry: Vec<(Gauge, i64)>,
}

impl ServerTls {
    /// `build` with its expiry gauges.
    pub(crate) fn new(build: TlsBuild, gauge: impl Fn(&str) -> Gauge) -> Self {
        Self {
            expiry: build
                .expiry
                .iter()
                .map(|(secret, at)| (gauge(secret), *at))
                .collect(),
            config: build.config,
        }
    }

    /// Shows this build's expiry dates.
    pub(crate) fn publish(&self) {
        for (gauge, at) in &self.expiry {
            gauge.set(*at);
        }
    }
}

/// The TLS of every `https` and `tls` listener of `snapshot`, by listener
/// name, reading the secrets given as files. The error names every
/// listener that cannot be served, with its secret and field.
pub(crate) fn build(snapshot: &Snapshot) -> Result<HashMap<String, TlsBuild>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs: HashMap<&str, Result<LoadedCert, String>> = HashMap::new();
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for l in &snapshot.listeners {
        let Some(tls) = &l.tls else { continue };
        match listener(snapshot, l, tls, &provider, &mut certs) {
            Ok(b) => {
                out.insert(l.name.clone(), b);
            }
            Err(e) => errors.push(format!("listener {:?}: {e}", l.name)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

fn listener<'s>(
    snapshot: &'s Snapshot,
    l: &Listener,
    tls: &ListenerTls,
    provider: &Arc<CryptoProvider>,
    certs: &mut HashMap<&'s str, Result<LoadedCert, String>>,
) -> Result<TlsBuild, String> {
    let mut loaded = Vec::with_capacity(tls.certificates.len());
    for (i, c) in tls.certificates.iter().enumerate() {
        let Some(secret) = snapshot.secret(&c.secret) else {
            return Err(format!("certificates[{i}]: unknown secret {:?}", c.secret));
        };
        // Read once per snapshot, however many listeners serve it.
        let cert = certs
            .entry(secret.name.as_str())
            .or_insert_with(|| load::certificate(secret, provider))
            .clone()
            .map_err(|e| format!("secret {:?}: {e}", c.secret))?;
        loaded.push((c, cert));
    }
    let Some((_, default)) = loaded.first() else {
        return Err("certificates: none".to_owned());
    };
    let resolver = SniResolver::new(
        default.key.clone(),
        loaded
            .iter()
            .flat_map(|(c, cert)| c.server_names.iter().map(|n| (n.clone(), cert.key.clone()))),
    );
    let verifier: Arc<dyn ClientCertVerifier> = match &tls.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(name) => {
            let Some(secret) = snapshot.secret(name) else {
                return Err(format!("client_ca: unknown secret {name:?}"));
            };
            let roots = load::trusted_ca(secret).map_err(|e| format!("secret {name:?}: {e}"))?;
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("secret {name:?}: trusted_ca: not usable: {e}"))?
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    if l.protocol() == Protocol::Https {
        config.alpn_protocols = HTTPS_ALPN.iter().map(|p| p.to_vec()).collect();
    }
    Ok(TlsBuild {
        config: Arc::new(config),
        expiry: loaded
            .iter()
            .map(|(c, cert)| (c.secret.clone(), cert.not_after))
            .collect(),
    })
}

/// Runs the server side of a handshake on `stream` with `config`, within
/// `timeout` (a client that never finishes one must not hold a connection)
/// and until the listener's hard stop; counts the result. `None`: the
/// connection is closed.
pub(crate) async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: Option<Arc<ServerConfig>>,
    timeout: Duration,
    stats: &TlsStats,
    hard: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let Some(config) = config else {
        // Only a listener that is going away, racing its last accept.
        stats.error.inc();
        return None;
    };
    // The socket is closed only after the result is counted (a failed
    // handshake hands it back; a timed-out one is dropped at the end), so
    // a client that sees the close also sees the count.
    let accept = TlsAcceptor::from(config).accept(stream).into_fallible();
    tokio::pin!(accept);
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, &mut accept) => r,
        () = hard.cancelled() => return None,
    };
    match result {
        Ok(Ok(s)) => {
            stats.ok.inc();
            Some(s)
        }
        Ok(Err((e, socket))) => {
            if refused_client(&e) {
                stats.client_cert_refused.inc();
            } else {
                stats.error.inc();
            }
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            drop(socket);
            None
        }
        Err(_) => {
            stats.timeout.inc();
            tracing::debug!(%peer, "TLS handshake not complete within the header-read timeout; closing");
            None
        }
    }
}

/// Whether a handshake failed because the client's certificate was missing
/// or not trusted.
fn refused_client(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use vane_model::{Format, parse_file, validate};
    use vane_pki::{Ca, LeafParams, Pair};

    fn pair(ca: &Ca) -> Pair {
        ca.issue(&LeafParams::server(["example.test"])).unwrap()
    }

    /// An https listener `web` and a tls listener `db`, both serving
    /// secret `site` read from `cert` and `key`.
    fn snapshot(cert: &Path, key: &Path) -> Snapshot {
        let yaml = format!(
            r#"
secrets:
  - {{ name: site, certificate_chain_file: "{}", private_key_file: "{}" }}
listeners:
  - name: web
    address: "127.0.0.1:1"
    protocol: https
    route_table: main
    certificates: [ {{ secret: site, server_names: [example.test] }} ]
  - name: db
    address: "127.0.0.1:2"
    protocol: tls
    cluster: app
    certificates: [ {{ secret: site }} ]
route_tables:
  - {{ name: main, routes: [ {{ cluster: app }} ] }}
clusters:
  - {{ name: app, endpoints: [ {{ address: "127.0.0.1:9000" }} ] }}
"#,
            cert.display(),
            key.display()
        );
        validate(parse_file(yaml.as_bytes(), Format::Yaml).unwrap()).unwrap()
    }

    #[test]
    fn listeners_get_their_alpn_and_expiry_from_files_read_at_build() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let (cert, key) = (dir.path().join("site.pem"), dir.path().join("site.key"));
        pair(&ca).write(&cert, &key, false).unwrap();
        let built = build(&snapshot(&cert, &key)).unwrap();
        assert_eq!(
            built["web"].config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(built["db"].config.alpn_protocols.is_empty());
        let (secret, not_after) = &built["web"].expiry[0];
        assert_eq!(secret, "site");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(*not_after > now, "{not_after} <= {now}");
    }

    #[test]
    fn a_missing_file_or_a_foreign_key_names_listener_secret_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let (cert, key) = (dir.path().join("site.pem"), dir.path().join("site.key"));
        pair(&ca).write(&cert, &key, false).unwrap();
        let missing = dir.path().join("missing.pem");
        let err = build(&snapshot(&missing, &key)).unwrap_err();
        let file = format!("certificate_chain_file {}: cannot read", missing.display());
        // Every listener that serves it is named (in the snapshot's order).
        assert_eq!(
            err.split("; ").collect::<Vec<_>>(),
            [
                format!(
                    r#"listener "db": secret "site": {file}: No such file or directory (os error 2)"#
                ),
                format!(
                    r#"listener "web": secret "site": {file}: No such file or directory (os error 2)"#
                ),
            ],
        );

        let other = dir.path().join("other.key");
        std::fs::write(&other, pair(&ca).key_pem).unwrap();
        let err = build(&snapshot(&cert, &other)).unwrap_err();
        assert!(
            err.contains(&format!(
                "private_key_file {}: does not belong to the certificate",
                other.display()
            )),
            "{err}"
        );
        std::fs::write(&other, "not a key").unwrap();
        let err = build(&snapshot(&cert, &other)).unwrap_err();
        assert!(err.contains("no PEM private key"), "{err}");
    }
}
