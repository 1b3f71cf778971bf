//! Reading and checking PEM: certificates, private keys, CA bundles and
//! certificate/key pairs, with one-line reasons. tonic would silently skip a
//! CA certificate it cannot parse and report a bad key only at the first
//! handshake; these checks run when a program starts.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Which input a TLS problem is in, so that a library can name its field
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

/// Every `CERTIFICATE` block of `pem`; at least one is required.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    Ok(certs)
}

/// The first private key of `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM private key (-----BEGIN PRIVATE KEY-----) in it".to_owned()
        }
        e => format!("not a valid PEM private key: {e}"),
    })
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

/// Checks that the certificate and key parse and belong together; the
/// error names the part at fault.
pub fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), (TlsPart, String)> {
    let chain = certificates(cert_pem).map_err(|e| (TlsPart::Cert, e))?;
    let key = private_key(key_pem).map_err(|e| (TlsPart::Key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        (
            TlsPart::Key,
            match e {
                rustls::Error::InconsistentKeys(_) => {
                    "does not belong to the certificate (its public key differs)".to_owned()
                }
                e => format!("not usable: {e}"),
            },
        )
    })?;
    Ok(())
}

/// Why `cert` is of no use now: not X.509, expired or not yet valid. A
/// server would refuse it anyway, later and less clearly.
pub fn out_of_date(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok(parsed) => parsed,
        Err(e) => return Some(format!("not an X.509 certificate: {e}")),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = parsed.validity();
    let subject = parsed.subject().to_string();
    if validity.not_after.timestamp() < now {
        Some(format!(
            "certificate {subject:?} expired on {}",
            validity.not_after
        ))
    } else if validity.not_before.timestamp() > now {
        Some(format!(
            "certificate {subject:?} is not valid before {}",
            validity.not_before
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn garbage_pem_is_refused_with_the_reason() {
        let why = check_ca(b"hello").unwrap_err();
        assert!(why.starts_with("no PEM certificate"), "{why}");
        let bogus = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let why = check_ca(bogus).unwrap_err();
        assert!(
            why.starts_with("certificate 1 is not usable as a CA"),
            "{why}"
        );
        let (part, why) = check_identity(b"", b"").unwrap_err();
        assert_eq!(part, TlsPart::Cert);
        assert!(why.starts_with("no PEM certificate"), "{why}");
        let why = private_key(b"nothing").unwrap_err();
        assert!(why.starts_with("no PEM private key"), "{why}");
    }
}
