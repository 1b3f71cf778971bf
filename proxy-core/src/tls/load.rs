//! Reading the secrets a TLS listener serves, from the snapshot or from
//! files on this host: a certificate chain with its key (and the leaf's
//! expiry date), or a CA bundle. Each error names the secret's field and,
//! for a file, its path.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use vane_model::{PemSource, Secret, SecretKind};

/// A certificate ready to serve.
#[derive(Debug, Clone)]
pub(super) struct LoadedCert {
    pub(super) key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, in seconds since the Unix epoch.
    pub(super) not_after: i64,
}

/// The field a source is in, as the file names it: `private_key` or
/// `private_key_file /etc/site.key`.
fn field(inline: &str, source: &PemSource) -> String {
    match source {
        PemSource::Inline(_) => inline.to_owned(),
        PemSource::File(p) => format!("{inline}_file {}", p.display()),
    }
}

fn read(inline: &str, source: &PemSource) -> Result<Vec<u8>, String> {
    source
        .read()
        .map_err(|e| format!("{}: cannot read: {e}", field(inline, source)))
}

fn certificates(inline: &str, source: &PemSource) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(inline, source)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not valid PEM: {e}", field(inline, source)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            field(inline, source)
        ));
    }
    Ok(certs)
}

/// The chain and key of a certificate secret, checked to belong together.
pub(super) fn certificate(
    secret: &Secret,
    provider: &Arc<CryptoProvider>,
) -> Result<LoadedCert, String> {
    let SecretKind::Certificate { chain, key } = &secret.kind else {
        return Err("is not a certificate (certificate_chain and private_key)".to_owned());
    };
    let certs = certificates("certificate_chain", chain)?;
    let not_after = match x509_parser::parse_x509_certificate(certs[0].as_ref()) {
        Ok((_, leaf)) => leaf.validity().not_after.timestamp(),
        Err(e) => {
            return Err(format!(
                "{}: certificate 1 is not X.509: {e}",
                field("certificate_chain", chain)
            ));
        }
    };
    let key_pem = read("private_key", key)?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (-----BEGIN PRIVATE KEY-----) in it".to_owned()
            }
            e => format!("not a valid PEM private key: {e}"),
        };
        format!("{}: {why}", field("private_key", key))
    })?;
    let certified = CertifiedKey::from_der(certs, der, provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                "does not belong to the certificate (its public key differs)".to_owned()
            }
            e => format!("not usable: {e}"),
        };
        format!("{}: {why}", field("private_key", key))
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_after,
    })
}

/// The CA certificates of a `trusted_ca` secret.
pub(super) fn trusted_ca(secret: &Secret) -> Result<Arc<RootCertStore>, String> {
    let SecretKind::TrustedCa(source) = &secret.kind else {
        return Err("is not a CA bundle (trusted_ca)".to_owned());
    };
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates("trusted_ca", source)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "{}: certificate {} is not usable as a CA: {e}",
                field("trusted_ca", source),
                i + 1
            )
        })?;
    }
    Ok(Arc::new(roots))
}
