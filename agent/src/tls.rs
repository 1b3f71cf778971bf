//! How the agent proves who it is and checks whom it talks to: the CA and
//! client certificate of `https://` control servers (rustls through tonic),
//! and the bearer token sent on the watch. Everything is checked when the
//! agent starts, so a bad file is reported then and not at the first connect.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// TLS settings for `https://` control servers.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM of the CA certificate(s) that sign the servers' certificates.
    /// Default: none, and the public web PKI roots (webpki-roots) are trusted.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate presented to servers that ask for one (mTLS).
    /// Default: none.
    pub identity: Option<ClientIdentity>,
}

impl ClientTls {
    /// Whether any TLS setting was made (then plaintext servers are refused).
    pub fn is_configured(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }

    /// Checks the PEM contents; the error says which part is wrong and why.
    pub(crate) fn check(&self) -> Result<(), (TlsPart, String)> {
        if let Some(ca) = &self.ca_pem {
            check_ca(ca).map_err(|e| (TlsPart::Ca, e))?;
        }
        if let Some(id) = &self.identity {
            check_identity(&id.cert_pem, &id.key_pem)?;
        }
        Ok(())
    }

    /// tonic's TLS settings for these (call [`Self::check`] first: tonic
    /// silently skips CA certificates it cannot parse). `timeout` bounds
    /// the handshake.
    pub(crate) fn tonic_config(&self, timeout: std::time::Duration) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().timeout(timeout);
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_webpki_roots(),
        };
        if let Some(id) = &self.identity {
            config = config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        config
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("identity", &self.identity)
            .finish()
    }
}

/// A client certificate chain and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate (then any intermediates).
    pub cert_pem: Vec<u8>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// Which input a TLS problem is in, so that the library can name its field
/// and a binary its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPart {
    /// The CA certificates (`tls.ca_pem`, `--ca`).
    Ca,
    /// The client certificate (`tls.identity.cert_pem`, `--cert`).
    Cert,
    /// The client key (`tls.identity.key_pem`, `--key`).
    Key,
}

/// A bearer token, sent as `authorization: Bearer <token>`. Its `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// The token, with surrounding whitespace (a token file's final
    /// newline) removed. Refused when empty or when it holds characters a
    /// header cannot carry (spaces, control characters, non-ASCII).
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the token holds {c:?}; only visible ASCII characters are allowed"
            ));
        }
        Ok(Self(token.to_owned()))
    }

    /// The `authorization` metadata value.
    pub(crate) fn header(&self) -> MetadataValue<Ascii> {
        // Only visible ASCII (checked in `new`), which is always a valid value.
        MetadataValue::try_from(format!("Bearer {}", self.0))
            .expect("visible ASCII is a valid metadata value")
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Parses every `CERTIFICATE` block of `pem`; at least one is required.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    Ok(certs)
}

/// Checks that `pem` holds CA certificates rustls can trust.
pub fn check_ca(pem: &[u8]) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certificates(pem)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} is not usable as a CA: {e}", i + 1))?;
    }
    Ok(())
}

/// Checks that the certificate and key parse and belong together.
pub fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), (TlsPart, String)> {
    let chain = certificates(cert_pem).map_err(|e| (TlsPart::Cert, e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        (
            TlsPart::Key,
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no PEM private key (-----BEGIN PRIVATE KEY-----) in it".to_owned()
                }
                e => format!("not a valid PEM private key: {e}"),
            },
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => (
            TlsPart::Key,
            "does not belong to the certificate (its public key differs)".to_owned(),
        ),
        e => (TlsPart::Key, format!("not usable: {e}")),
    })?;
    Ok(())
}

/// The TLS failure behind an error, if there is one, in words: a rustls
/// error anywhere in the chain of sources. tonic and hyper wrap it in
/// `io::Error`s, whose `source()` skips the error they hold, and an alert
/// the server sends after the handshake (a refused client certificate under
/// TLS 1.3) reaches us as the text of rustls's error only.
pub(crate) fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(&tls.to_string()));
        }
        let held = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref().map(|inner| (io.kind(), inner)));
        next = match held {
            Some((std::io::ErrorKind::InvalidData, inner))
                if is_rustls_text(&inner.to_string()) =>
            {
                return Some(describe(&inner.to_string()));
            }
            Some((_, inner)) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Whether `text` is how rustls words a handshake or alert failure.
fn is_rustls_text(text: &str) -> bool {
    [
        "received fatal alert: ",
        "invalid peer certificate",
        "peer sent no certificates",
        "peer is incompatible",
        "peer misbehaved",
        "received corrupt message",
        "certificate expired",
        "certificate not valid",
    ]
    .iter()
    .any(|p| text.starts_with(p))
}

/// rustls's words, with what they usually mean for a Vane client.
pub(crate) fn describe(rustls_text: &str) -> String {
    let t = rustls_text;
    let alert = t.strip_prefix("received fatal alert: ");
    let hint = if t.contains("UnknownIssuer") || t.contains("BadSignature") {
        Some("the server's certificate is not signed by the CA given (--ca)")
    } else if alert.is_none() && (t.contains("Expired") || t.starts_with("certificate expired")) {
        Some("the server's certificate has expired")
    } else if t.contains("NotValidForName") || t.starts_with("certificate not valid for name") {
        Some("the server's certificate does not name the host in the URL")
    } else {
        match alert {
            Some("CertificateRequired") => {
                Some("the server requires a client certificate (--cert, --key)")
            }
            Some("CertificateExpired") => {
                Some("the server refused the client certificate (--cert): it has expired")
            }
            Some("UnknownCA" | "BadCertificate" | "CertificateUnknown" | "DecryptError") => Some(
                "the server refused the client certificate (--cert): not signed by a CA it trusts",
            ),
            _ if t.starts_with("received corrupt message") => {
                Some("is the server speaking TLS? (https:// URL)")
            }
            _ => None,
        }
    };
    match hint {
        Some(h) => format!("TLS handshake failed: {t} ({h})"),
        None => format!("TLS handshake failed: {t}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tokens_are_trimmed_and_checked() {
        let t = BearerToken::new("  s3cr3t-token\n").unwrap();
        assert_eq!(t.header().to_str().unwrap(), "Bearer s3cr3t-token");
        assert_eq!(format!("{t:?}"), "BearerToken(<redacted>)");
        assert_eq!(BearerToken::new("\n").unwrap_err(), "the token is empty");
        assert!(BearerToken::new("a b").unwrap_err().contains("' '"));
        assert!(BearerToken::new("é").is_err());
    }

    #[test]
    fn garbage_pem_is_refused_with_the_reason() {
        assert!(
            check_ca(b"hello")
                .unwrap_err()
                .starts_with("no PEM certificate"),
            "{:?}",
            check_ca(b"hello")
        );
        let bogus = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            check_ca(bogus)
                .unwrap_err()
                .starts_with("certificate 1 is not usable as a CA"),
            "{:?}",
            check_ca(bogus)
        );
        let (part, why) = check_identity(b"", b"").unwrap_err();
        assert_eq!(part, TlsPart::Cert);
        assert!(why.starts_with("no PEM certificate"), "{why}");
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(io);
        let text = tls_failure(&outer).unwrap();
        assert!(text.starts_with("TLS handshake failed: invalid peer certificate: UnknownIssuer"));
        assert!(text.contains("--ca"), "{text}");
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&plain), None);
        // An alert after the handshake arrives as rustls's text only.
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateExpired",
        );
        assert_eq!(
            tls_failure(&alert).unwrap(),
            "TLS handshake failed: received fatal alert: CertificateExpired \
             (the server refused the client certificate (--cert): it has expired)"
        );
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too big");
        assert_eq!(tls_failure(&other), None);
    }

    #[test]
    fn debug_hides_keys() {
        let tls = ClientTls {
            ca_pem: Some(b"ca".to_vec()),
            identity: Some(ClientIdentity {
                cert_pem: b"cert".to_vec(),
                key_pem: b"-----BEGIN PRIVATE KEY-----secret".to_vec(),
            }),
        };
        let text = format!("{tls:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
