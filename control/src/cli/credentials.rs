//! vanectl's credentials: the CA and client certificate for `https://`
//! servers (`--ca`, `--cert`, `--key`) and the bearer token (`--token-file`
//! or `VANE_TOKEN`), read and checked before connecting so that a bad file
//! is a usage error (exit 2); and telling a TLS failure apart from other
//! connection failures.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::args::Cli;
use super::error::CliError;

/// A secret from the environment (`VANE_TOKEN`); `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What vanectl presents to the server, checked.
#[derive(Default)]
pub(crate) struct Credentials {
    /// PEM of `--ca`; none: the public web PKI roots.
    ca_pem: Option<Vec<u8>>,
    /// PEM of `--cert` and `--key`.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// `authorization: Bearer <token>`.
    token: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    /// Reads and checks the files and the token the command line names.
    pub(crate) fn load(cli: &Cli) -> Result<Self, CliError> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                CliError::usage(format!("{flag} {}: cannot read: {e}", path.display()))
            })
        };
        let ca_pem = match &cli.ca {
            None => None,
            Some(path) => {
                let pem = read("--ca", path)?;
                check_ca(&pem)
                    .map_err(|e| CliError::usage(format!("--ca {}: {e}", path.display())))?;
                Some(pem)
            }
        };
        let identity = match (&cli.cert, &cli.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let (cert_pem, key_pem) = (read("--cert", cert)?, read("--key", key)?);
                check_identity(&cert_pem, &key_pem).map_err(|(is_key, why)| {
                    CliError::usage(if is_key {
                        format!(
                            "--key {} (for --cert {}): {why}",
                            key.display(),
                            cert.display()
                        )
                    } else {
                        format!("--cert {}: {why}", cert.display())
                    })
                })?;
                Some((cert_pem, key_pem))
            }
            // clap enforces the pair (`requires`), environment included.
            (Some(_), None) => return Err(CliError::usage("--cert: needs --key (or VANE_KEY)")),
            (None, Some(_)) => return Err(CliError::usage("--key: needs --cert (or VANE_CERT)")),
        };
        let token = match (&cli.token_file, &cli.token) {
            (Some(_), Some(_)) => {
                return Err(CliError::usage(
                    "--token-file (or VANE_TOKEN_FILE) and VANE_TOKEN are both set: give one",
                ));
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    CliError::usage(format!("--token-file {}: cannot read: {e}", path.display()))
                })?;
                Some(bearer(&text).map_err(|e| {
                    CliError::usage(format!("--token-file {}: {e}", path.display()))
                })?)
            }
            (None, Some(Secret(token))) => {
                Some(bearer(token).map_err(|e| CliError::usage(format!("VANE_TOKEN: {e}")))?)
            }
            (None, None) => None,
        };
        Ok(Self {
            ca_pem,
            identity,
            token,
        })
    }

    /// Whether a CA or a client certificate was given: then the server
    /// must be `https://`, and a URL without a scheme gets that one.
    pub(crate) fn wants_tls(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }

    /// tonic's TLS settings (for an `https://` URL); `timeout` bounds the handshake.
    pub(crate) fn tls_config(&self, timeout: Duration) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().timeout(timeout);
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }

    /// Adds the bearer token, if any, to every call.
    pub(crate) fn interceptor(&self) -> Auth {
        Auth(self.token.clone())
    }
}

/// Sends `authorization: Bearer <token>` with every call.
#[derive(Clone)]
pub(crate) struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The `authorization` value for a token, trimmed (a file's final newline)
/// and checked: not empty, visible ASCII only.
fn bearer(token: &str) -> Result<MetadataValue<Ascii>, String> {
    let token = token.trim();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the token holds {c:?}; only visible ASCII characters are allowed"
        ));
    }
    MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|e| format!("the token cannot be sent as a header: {e}"))
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

/// Checks that `pem` holds CA certificates rustls can trust (tonic would
/// silently skip the ones it cannot parse).
fn check_ca(pem: &[u8]) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certificates(pem)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} is not usable as a CA: {e}", i + 1))?;
    }
    Ok(())
}

/// Checks that the certificate and the key parse and belong together; the
/// error says whether the key (true) or the certificate (false) is at fault.
fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), (bool, String)> {
    let chain = certificates(cert_pem).map_err(|e| (false, e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        (
            true,
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
            true,
            "does not belong to the certificate (its public key differs)".to_owned(),
        ),
        e => (true, format!("not usable: {e}")),
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

/// rustls's words, with what they usually mean for vanectl's user.
fn describe(rustls_text: &str) -> String {
    let t = rustls_text;
    let alert = t.strip_prefix("received fatal alert: ");
    let hint = if t.contains("UnknownIssuer") || t.contains("BadSignature") {
        Some("the server's certificate is not signed by the CA given (--ca)")
    } else if alert.is_none() && (t.contains("Expired") || t.starts_with("certificate expired")) {
        Some("the server's certificate has expired")
    } else if t.contains("NotValidForName") || t.starts_with("certificate not valid for name") {
        Some("the server's certificate does not name the host in --server")
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
            _ if t.starts_with("received corrupt message") => Some("is the server speaking TLS?"),
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
    use super::*;
    use crate::cli::error::Failure;
    use clap::Parser as _;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(
            std::iter::once("vanectl")
                .chain(args.iter().copied())
                .chain(["status"]),
        )
        .unwrap()
    }

    /// ca.pem, operator.pem/.key of that CA, and a key of another pair.
    fn files() -> (tempfile::TempDir, [String; 4]) {
        let dir = tempfile::tempdir().unwrap();
        let ca = vane_pki::Ca::new("test CA").unwrap();
        let pair = ca.issue(&vane_pki::LeafParams::client("operator")).unwrap();
        let other = ca.issue(&vane_pki::LeafParams::client("reader")).unwrap();
        let path = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(path("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(path("operator.pem"), &pair.cert_pem).unwrap();
        std::fs::write(path("operator.key"), &pair.key_pem).unwrap();
        std::fs::write(path("reader.key"), &other.key_pem).unwrap();
        let paths = [
            path("ca.pem"),
            path("operator.pem"),
            path("operator.key"),
            path("reader.key"),
        ];
        (dir, paths)
    }

    fn usage(c: &Cli) -> String {
        let e = Credentials::load(c).err().unwrap();
        assert_eq!(e.kind, Failure::Usage, "{e}");
        e.message
    }

    #[test]
    fn good_files_load() {
        let (_dir, [ca, cert, key, _]) = files();
        let c = Credentials::load(&cli(&["--ca", &ca, "--cert", &cert, "--key", &key])).unwrap();
        assert!(c.wants_tls());
        assert!(c.token.is_none());
        let none = Credentials::load(&cli(&[])).unwrap();
        assert!(!none.wants_tls());
    }

    #[test]
    fn bad_files_are_usage_errors_naming_the_flag() {
        let (dir, [ca, cert, key, other_key]) = files();
        let missing = dir.path().join("nope.pem").display().to_string();
        let e = usage(&cli(&["--ca", &missing]));
        assert!(
            e.starts_with(&format!("--ca {missing}: cannot read: ")),
            "{e}"
        );
        let e = usage(&cli(&["--ca", &key]));
        assert_eq!(
            e,
            format!("--ca {key}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
        );
        let e = usage(&cli(&["--cert", &key, "--key", &key]));
        assert!(
            e.starts_with(&format!("--cert {key}: no PEM certificate")),
            "{e}"
        );
        let e = usage(&cli(&["--cert", &cert, "--key", &ca]));
        assert!(
            e.starts_with(&format!(
                "--key {ca} (for --cert {cert}): no PEM private key"
            )),
            "{e}"
        );
        let e = usage(&cli(&["--cert", &cert, "--key", &other_key]));
        assert_eq!(
            e,
            format!(
                "--key {other_key} (for --cert {cert}): does not belong to the certificate (its public key differs)"
            )
        );
    }

    #[test]
    fn tokens_come_from_one_place_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let file = file.display().to_string();
        let c = Credentials::load(&cli(&["--token-file", &file])).unwrap();
        assert_eq!(c.token.unwrap().to_str().unwrap(), "Bearer s3cret");

        let mut from_env = cli(&[]);
        from_env.token = Some(Secret("t0ken".into()));
        let c = Credentials::load(&from_env).unwrap();
        assert_eq!(c.token.unwrap().to_str().unwrap(), "Bearer t0ken");
        assert!(!format!("{from_env:?}").contains("t0ken"));

        let mut both = cli(&["--token-file", &file]);
        both.token = Some(Secret("t0ken".into()));
        assert!(usage(&both).contains("both set"));

        let mut empty = cli(&[]);
        empty.token = Some(Secret(" ".into()));
        assert_eq!(usage(&empty), "VANE_TOKEN: the token is empty");
        let mut spaced = cli(&[]);
        spaced.token = Some(Secret("a b".into()));
        assert!(usage(&spaced).starts_with("VANE_TOKEN: the token holds ' '"));
    }

    #[test]
    fn the_interceptor_adds_the_token() {
        let mut auth = Auth(Some(bearer("x").unwrap()));
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer x");
        let mut none = Auth(None);
        let request = none.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn tls_failures_are_recognised_and_explained() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert_eq!(
            tls_failure(&wrapped).unwrap(),
            "TLS handshake failed: invalid peer certificate: UnknownIssuer \
             (the server's certificate is not signed by the CA given (--ca))"
        );
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert!(tls_failure(&expired).unwrap().contains("has expired"));
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        assert!(
            tls_failure(&alert)
                .unwrap()
                .contains("requires a client certificate")
        );
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&refused), None);
    }
}
