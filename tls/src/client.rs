//! [`ClientTls`]: the CA that signs the servers' certificates and the client
//! certificate presented to servers that ask for one, and tonic's settings
//! for them.

use std::fmt;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::pem::{TlsPart, check_ca, check_identity};

/// TLS settings for `https://` servers.
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
    pub fn check(&self) -> Result<(), (TlsPart, String)> {
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
    pub fn tonic_config(&self, timeout: Duration) -> ClientTlsConfig {
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

#[cfg(test)]
mod tests {
    use super::*;

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
