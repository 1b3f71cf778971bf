//! TLS in the domain: secrets (certificates with their keys, CA bundles),
//! what a TLS listener serves by SNI name and how a cluster's endpoints are
//! reached. Built only by validation ([`crate::validate`]); the checks are in
//! [`crate::tls_check`], redaction in [`crate::redact`].

use std::path::PathBuf;

/// A named secret of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// Unique name.
    pub name: String,
    /// What it holds.
    pub kind: SecretKind,
}

impl Secret {
    /// Whether its private key travels in the snapshot (not a file path).
    pub fn has_inline_key(&self) -> bool {
        matches!(
            self.kind,
            SecretKind::Certificate {
                key: PemSource::Inline(_),
                ..
            }
        )
    }
}

/// What a secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretKind {
    /// A certificate chain (leaf first) and the leaf's private key.
    Certificate {
        /// PEM certificates.
        chain: PemSource,
        /// PEM private key.
        key: PemSource,
    },
    /// CA certificates to trust (client certificates, upstream servers).
    TrustedCa(PemSource),
}

/// Where PEM text comes from. Its `Debug` never shows inline PEM (it may
/// be a private key): a `{:?}` of a snapshot in a log line or a panic
/// message leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// In the snapshot; checked at validation.
    Inline(String),
    /// An absolute path on the data plane's host, read when the snapshot is
    /// applied (a file that is missing or bad fails the apply: a NACK).
    File(PathBuf),
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::Inline(pem) => write!(f, "Inline(<{} bytes of PEM>)", pem.len()),
            PemSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl PemSource {
    /// The PEM bytes: the inline text, or the file's content.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            PemSource::Inline(pem) => Ok(pem.as_bytes().to_vec()),
            PemSource::File(path) => std::fs::read(path),
        }
    }

    /// Where it comes from, for messages: `inline` or the path.
    pub fn describe(&self) -> String {
        match self {
            PemSource::Inline(_) => "inline".to_owned(),
            PemSource::File(p) => p.display().to_string(),
        }
    }
}

/// TLS termination of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Certificates by SNI name, never empty; the first is the default for
    /// clients that send no name or one no certificate lists.
    pub certificates: Vec<SniCertificate>,
    /// A `trusted_ca` secret: when set, clients must present a certificate
    /// it signed.
    pub client_ca: Option<String>,
}

/// One certificate of a TLS listener and the names it answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCertificate {
    /// A certificate secret.
    pub secret: String,
    /// Names it is chosen for; an exact name wins over a wildcard.
    pub server_names: Vec<ServerName>,
}

/// An SNI name a listener certificate answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerName {
    /// Exactly this name (stored lowercase).
    Exact(String),
    /// `*.example.com`: one more label in front of `.example.com` (stored
    /// lowercase, with the leading dot).
    Wildcard(String),
}

impl ServerName {
    /// The form used in files: `api.example.com` or `*.example.com`.
    pub fn to_file_form(&self) -> String {
        match self {
            ServerName::Exact(n) => n.clone(),
            ServerName::Wildcard(s) => format!("*{s}"),
        }
    }

    /// Whether `sni` (any case) is this name.
    pub fn matches(&self, sni: &str) -> bool {
        match self {
            ServerName::Exact(n) => n.eq_ignore_ascii_case(sni),
            ServerName::Wildcard(suffix) => {
                sni.len() > suffix.len()
                    && sni.is_char_boundary(sni.len() - suffix.len())
                    && sni[sni.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !sni[..sni.len() - suffix.len()].contains('.')
            }
        }
    }
}

/// The HTTP version a cluster's endpoints are spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2: prior knowledge in plaintext, ALPN `h2` over TLS.
    Http2,
    /// Whatever the endpoint picks by ALPN (`h2`, else HTTP/1.1); needs TLS.
    Auto,
}

impl UpstreamProtocol {
    /// The name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
            UpstreamProtocol::Auto => "auto",
        }
    }
}

/// TLS to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// Sent as SNI and checked in the server's certificate; `None`: the
    /// endpoint's IP address is checked (and no SNI is sent).
    pub sni: Option<String>,
    /// A `trusted_ca` secret; `None`: the Mozilla root set.
    pub ca: Option<String>,
    /// A certificate secret presented to the endpoints.
    pub client_cert: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_matches_one_label() {
        let w = ServerName::Wildcard(".example.test".into());
        assert!(w.matches("a.example.test"));
        assert!(w.matches("A.Example.Test"));
        assert!(!w.matches("example.test"));
        assert!(!w.matches("a.b.example.test"));
        assert!(!w.matches(".example.test"));
        let e = ServerName::Exact("example.test".into());
        assert!(e.matches("EXAMPLE.test"));
        assert!(!e.matches("a.example.test"));
        assert_eq!(w.to_file_form(), "*.example.test");
    }
}
