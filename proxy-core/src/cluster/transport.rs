//! How a cluster's endpoints are reached: plaintext or TLS, HTTP/1.1 or
//! HTTP/2, compiled once per snapshot from the cluster's `protocol` and
//! `tls` and the snapshot's secrets.
//!
//! The rustls client configuration is built when the snapshot is compiled
//! (in the agent's validator), so a secret file that is missing or does not
//! parse is a NACK naming the cluster, never a failed request. Each
//! transport carries a pool key, a hash of everything that shapes a
//! connection (protocol, SNI, CA and client certificate bytes): the
//! upstream pool never hands a connection made under one TLS setting to a
//! request compiled under another, and a snapshot that keeps the setting
//! keeps its connections.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use vane_model::{Cluster, PemSource, SecretKind, Snapshot, UpstreamProtocol};

/// ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A cluster's way to its endpoints.
pub(crate) struct Transport {
    /// The HTTP version asked for.
    pub(crate) protocol: UpstreamProtocol,
    /// TLS, if the cluster has it.
    pub(crate) tls: Option<UpstreamTlsRt>,
    /// Pool key: connections are reused only under the same key (0 for
    /// plaintext HTTP/1.1, so those survive any change of the rest).
    pub(crate) key: u64,
    /// Metric handles.
    pub(crate) stats: TransportStats,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The metrics of a cluster's connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransportStats {
    /// TLS handshakes with an endpoint that failed.
    pub(crate) tls_failures: Counter,
    /// HTTP/2 connections opened.
    pub(crate) h2_opened: Counter,
    /// HTTP/2 connections open now.
    pub(crate) h2_active: Gauge,
}

/// A compiled `tls` block.
pub(crate) struct UpstreamTlsRt {
    /// rustls' client settings, ALPN as the protocol says.
    pub(crate) config: Arc<ClientConfig>,
    /// The same, offering `http/1.1` only: for HTTP/1.1 upgrades.
    pub(crate) config_http1: Arc<ClientConfig>,
    /// The configured SNI name; `None`: each endpoint's IP is checked
    /// (and no SNI is sent).
    sni: Option<ServerName<'static>>,
}

impl UpstreamTlsRt {
    /// The name the endpoint at `ip` must prove.
    pub(crate) fn server_name(&self, ip: IpAddr) -> ServerName<'static> {
        match &self.sni {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(ip.into()),
        }
    }
}

impl Transport {
    /// Plaintext HTTP/1.1 (tests, and clusters with neither field set).
    #[cfg(test)]
    pub(crate) fn plain_http1() -> Self {
        Self {
            protocol: UpstreamProtocol::Http1,
            tls: None,
            key: 0,
            stats: TransportStats::default(),
        }
    }

    /// Compiles `cluster`'s transport against `snapshot`'s secrets. The
    /// error names the cluster, the field and the reason.
    pub(crate) fn build(
        cluster: &Cluster,
        snapshot: &Snapshot,
        stats: TransportStats,
    ) -> Result<Self, String> {
        let fail = |field: &str, why: String| format!("clusters[{}].{field}: {why}", cluster.name);
        let Some(tls) = &cluster.tls else {
            let key = match cluster.protocol {
                UpstreamProtocol::Http1 => 0,
                p => hash_of(&(p.as_str(), "plain")),
            };
            return Ok(Self {
                protocol: cluster.protocol,
                tls: None,
                key,
                stats,
            });
        };
        let mut hasher = DefaultHasher::new();
        cluster.protocol.as_str().hash(&mut hasher);
        tls.sni.hash(&mut hasher);

        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(name) => {
                let pem = match snapshot.secret(name).map(|s| &s.kind) {
                    Some(SecretKind::TrustedCa(src)) => {
                        read(src).map_err(|e| fail("tls.ca", format!("secret {name:?}: {e}")))?
                    }
                    _ => {
                        return Err(fail(
                            "tls.ca",
                            format!("{name:?} is not a trusted_ca secret"),
                        ));
                    }
                };
                pem.hash(&mut hasher);
                let mut added = 0;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        fail("tls.ca", format!("secret {name:?}: bad certificate: {e}"))
                    })?;
                    roots.add(cert).map_err(|e| {
                        fail("tls.ca", format!("secret {name:?}: unusable CA: {e}"))
                    })?;
                    added += 1;
                }
                if added == 0 {
                    return Err(fail(
                        "tls.ca",
                        format!("secret {name:?}: no certificate in the bundle"),
                    ));
                }
            }
            None => {
                "webpki-roots".hash(&mut hasher);
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("tls", format!("TLS versions: {e}")))?
            .with_root_certificates(roots);
        let mut config = match &tls.client_cert {
            Some(name) => {
                let Some(SecretKind::Certificate { chain, key }) =
                    snapshot.secret(name).map(|s| &s.kind)
                else {
                    return Err(fail(
                        "tls.client_cert",
                        format!("{name:?} is not a certificate secret"),
                    ));
                };
                let field = "tls.client_cert";
                let chain_pem =
                    read(chain).map_err(|e| fail(field, format!("secret {name:?}: {e}")))?;
                let key_pem =
                    read(key).map_err(|e| fail(field, format!("secret {name:?}: {e}")))?;
                chain_pem.hash(&mut hasher);
                key_pem.hash(&mut hasher);
                let certs = CertificateDer::pem_slice_iter(&chain_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(field, format!("secret {name:?}: bad certificate: {e}")))?;
                if certs.is_empty() {
                    return Err(fail(field, format!("secret {name:?}: no certificate")));
                }
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| fail(field, format!("secret {name:?}: bad private key: {e}")))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| fail(field, format!("secret {name:?}: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        let mut config_http1 = config.clone();
        config_http1.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        config.alpn_protocols = match cluster.protocol {
            UpstreamProtocol::Http1 => vec![ALPN_HTTP1.to_vec()],
            UpstreamProtocol::Http2 => vec![ALPN_H2.to_vec()],
            UpstreamProtocol::Auto => vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()],
        };
        let sni = match &tls.sni {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| fail("tls.sni", format!("{name:?}: {e}")))?,
            ),
            None => None,
        };
        // Never 0, the plaintext HTTP/1.1 key.
        let key = hasher.finish().max(1);
        Ok(Self {
            protocol: cluster.protocol,
            tls: Some(UpstreamTlsRt {
                config: Arc::new(config),
                config_http1: Arc::new(config_http1),
                sni,
            }),
            key,
            stats,
        })
    }
}

/// Reads a PEM source, saying where it came from on failure.
fn read(src: &PemSource) -> Result<Vec<u8>, String> {
    src.read()
        .map_err(|e| format!("reading {}: {e}", src.describe()))
}

fn hash_of<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vane_model::{LbPolicy, OutlierDetection, Secret, UpstreamTls};

    use super::*;

    fn cluster(protocol: UpstreamProtocol, tls: Option<UpstreamTls>) -> Cluster {
        Cluster {
            name: "api".into(),
            lb: LbPolicy::RoundRobin,
            connect_timeout: Duration::from_millis(100),
            endpoints: Vec::new(),
            outlier: OutlierDetection {
                consecutive_failures: 5,
                base_ejection: Duration::from_secs(1),
                max_ejection: Duration::from_secs(10),
                max_ejection_percent: 50,
            },
            protocol,
            tls,
        }
    }

    fn with_ca(pem: PemSource) -> Snapshot {
        Snapshot {
            secrets: vec![Secret {
                name: "ca".into(),
                kind: SecretKind::TrustedCa(pem),
            }],
            ..Snapshot::default()
        }
    }

    fn tls(sni: Option<&str>, ca: Option<&str>) -> Option<UpstreamTls> {
        Some(UpstreamTls {
            sni: sni.map(str::to_owned),
            ca: ca.map(str::to_owned),
            client_cert: None,
        })
    }

    fn build(c: &Cluster, s: &Snapshot) -> Result<Transport, String> {
        Transport::build(c, s, TransportStats::default())
    }

    #[test]
    fn plaintext_http1_keeps_the_shared_key_and_others_get_their_own() {
        let s = Snapshot::default();
        let h1 = build(&cluster(UpstreamProtocol::Http1, None), &s).unwrap();
        assert_eq!(h1.key, 0);
        assert!(h1.tls.is_none());
        let h2 = build(&cluster(UpstreamProtocol::Http2, None), &s).unwrap();
        assert_ne!(h2.key, 0);
    }

    #[test]
    fn the_webpki_roots_serve_when_no_ca_is_named_and_the_key_follows_the_setting() {
        let s = Snapshot::default();
        let a = build(
            &cluster(UpstreamProtocol::Auto, tls(Some("a.example"), None)),
            &s,
        )
        .unwrap();
        let again = build(
            &cluster(UpstreamProtocol::Auto, tls(Some("a.example"), None)),
            &s,
        )
        .unwrap();
        let b = build(
            &cluster(UpstreamProtocol::Auto, tls(Some("b.example"), None)),
            &s,
        )
        .unwrap();
        let h2 = build(
            &cluster(UpstreamProtocol::Http2, tls(Some("a.example"), None)),
            &s,
        )
        .unwrap();
        assert_eq!(a.key, again.key, "the same setting keeps its connections");
        assert_ne!(a.key, b.key);
        assert_ne!(a.key, h2.key);
        let config = &a.tls.as_ref().unwrap().config;
        assert_eq!(
            config.alpn_protocols,
            vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
        );
        let upgrade = &a.tls.as_ref().unwrap().config_http1;
        assert_eq!(upgrade.alpn_protocols, vec![ALPN_HTTP1.to_vec()]);
        // No SNI configured: the endpoint's IP is the name checked.
        let by_ip = build(&cluster(UpstreamProtocol::Http1, tls(None, None)), &s).unwrap();
        let name = by_ip.tls.unwrap().server_name("10.1.2.3".parse().unwrap());
        assert!(matches!(name, ServerName::IpAddress(_)), "{name:?}");
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_names_the_cluster_the_field_and_the_path() {
        let s = with_ca(PemSource::File("/nonexistent/vane/ca.pem".into()));
        let e = build(&cluster(UpstreamProtocol::Http1, tls(None, Some("ca"))), &s).unwrap_err();
        assert!(
            e.starts_with("clusters[api].tls.ca: secret \"ca\": reading /nonexistent/vane/ca.pem:"),
            "{e}"
        );
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let s = with_ca(PemSource::Inline("not a certificate".into()));
        let e = build(&cluster(UpstreamProtocol::Http1, tls(None, Some("ca"))), &s).unwrap_err();
        assert_eq!(
            e,
            "clusters[api].tls.ca: secret \"ca\": no certificate in the bundle"
        );
        let e = build(
            &cluster(UpstreamProtocol::Http1, tls(None, Some("missing"))),
            &s,
        )
        .unwrap_err();
        assert!(e.contains("\"missing\" is not a trusted_ca secret"), "{e}");
    }
}
