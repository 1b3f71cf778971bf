//! How a replica proves itself to etcd and checks it talks to the real one:
//! the TLS material (`--etcd-ca`, `--etcd-cert`, `--etcd-key`) and the etcd
//! user (`--etcd-user`, `--etcd-password-file`), read and checked once at
//! startup so a bad file is one line naming its flag, not a timeout later;
//! and the recognition of etcd refusing them, which retrying cannot fix.
//!
//! The files are read once: replacing a certificate or the password needs a
//! restart of the replica.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use futures::StreamExt as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vane_tls::pem::out_of_date;

/// Longest a [`EtcdTls::probe`] may take.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the etcd TLS or user settings cannot be used. Its `Display` is the
/// one line `vane-control` prints before it exits.
#[derive(Debug, thiserror::Error)]
pub enum EtcdCredentialError {
    /// A file cannot be read or holds nothing usable.
    #[error("{flag} {path}: {reason}")]
    File {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The client certificate and its key do not belong together.
    #[error("--etcd-cert {cert} and --etcd-key {key}: {reason}")]
    Pair {
        /// `--etcd-cert`.
        cert: PathBuf,
        /// `--etcd-key`.
        key: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting that is not a file.
    #[error("{flag}: {reason}")]
    Setting {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn file_error(flag: &'static str, path: &Path, reason: impl ToString) -> EtcdCredentialError {
    EtcdCredentialError::File {
        flag,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, EtcdCredentialError> {
    std::fs::read(path).map_err(|e| file_error(flag, path, format!("cannot read: {e}")))
}

/// Every certificate of a PEM file (`vane-tls`'s reading, with the flag
/// and the file named).
fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, EtcdCredentialError> {
    vane_tls::pem::certificates(pem).map_err(|e| file_error(flag, path, e))
}

/// TLS to etcd: the CA bundle etcd's server certificate must chain to, and
/// this replica's client certificate when etcd runs with
/// `--client-cert-auth`. Checked when built; the PEM is what tonic's rustls
/// (with ring) then uses.
#[derive(Clone)]
pub struct EtcdTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The same settings for [`Self::probe`].
    probe: Arc<rustls::ClientConfig>,
}

impl PartialEq for EtcdTls {
    fn eq(&self, other: &Self) -> bool {
        // `probe` is made from these.
        self.ca == other.ca && self.identity == other.identity
    }
}

impl Eq for EtcdTls {}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("EtcdTls")
            .field("ca_bytes", &self.ca.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl EtcdTls {
    /// Reads and checks `--etcd-ca` and, when given, `--etcd-cert` with
    /// `--etcd-key`: readable, PEM, certificates valid now, a CA rustls
    /// accepts as a trust anchor, and a key that matches the certificate.
    pub fn from_files(
        ca: &Path,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, EtcdCredentialError> {
        let ca_pem = read("--etcd-ca", ca)?;
        let mut roots = rustls::RootCertStore::empty();
        // A bundle may hold a CA that expired (the old one of a rotation):
        // only a bundle with no CA valid now is of no use.
        let mut stale = None;
        for cert in certificates("--etcd-ca", ca, &ca_pem)? {
            if let Some(why) = out_of_date(&cert) {
                stale = Some(why);
                continue;
            }
            roots
                .add(cert)
                .map_err(|e| file_error("--etcd-ca", ca, format!("not a usable CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(file_error(
                "--etcd-ca",
                ca,
                stale.unwrap_or_else(|| "no usable CA certificate".into()),
            ));
        }
        // The same checks tonic's connector makes, here so that a bad file
        // fails now and names its flag.
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error("--etcd-ca", ca, e))?
        .with_root_certificates(roots);
        let (identity, mut probe) = match client {
            None => (None, builder.with_no_client_auth()),
            Some((cert, key)) => {
                let cert_pem = read("--etcd-cert", cert)?;
                let chain = certificates("--etcd-cert", cert, &cert_pem)?;
                if let Some(why) = chain.first().and_then(out_of_date) {
                    return Err(file_error("--etcd-cert", cert, why));
                }
                let key_pem = read("--etcd-key", key)?;
                let private = vane_tls::pem::private_key(&key_pem)
                    .map_err(|e| file_error("--etcd-key", key, e))?;
                let config = builder.with_client_auth_cert(chain, private).map_err(|e| {
                    EtcdCredentialError::Pair {
                        cert: cert.to_path_buf(),
                        key: key.to_path_buf(),
                        reason: match e {
                            rustls::Error::InconsistentKeys(_) => {
                                "the key is not the certificate's key".to_owned()
                            }
                            other => other.to_string(),
                        },
                    }
                })?;
                (Some((cert_pem, key_pem)), config)
            }
        };
        probe.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            ca: ca_pem,
            identity,
            probe: Arc::new(probe),
        })
    }

    /// Whether a client certificate is presented to etcd.
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// tonic's client TLS settings: only this CA is trusted (no system
    /// roots), and the handshake is bounded like every call.
    pub(super) fn options(&self, handshake_timeout: Duration) -> TlsOptions {
        let options = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .timeout(handshake_timeout);
        match &self.identity {
            Some((cert, key)) => options.identity(Identity::from_pem(cert, key)),
            None => options,
        }
    }

    /// Opens a TLS connection of its own to every endpoint with these
    /// settings, starts HTTP/2 and reads etcd's first answer: the reason
    /// of the first one that refuses this replica's TLS settings, if any
    /// does within `within`. (Under TLS 1.3 a server refuses a client
    /// certificate after the handshake, with an alert that the request in
    /// flight does not always get to see.)
    pub(super) async fn probe(&self, endpoints: &[String], within: Duration) -> Option<String> {
        if within.is_zero() {
            return None;
        }
        let mut probes: futures::stream::FuturesUnordered<_> = endpoints
            .iter()
            .map(|endpoint| probe_one(Arc::clone(&self.probe), endpoint))
            .collect();
        let first = async {
            while let Some(outcome) = probes.next().await {
                if outcome.is_some() {
                    return outcome;
                }
            }
            None
        };
        let found = tokio::time::timeout(within, first).await.ok().flatten();
        if let Some(reason) = &found {
            tracing::debug!(reason, "a TLS probe of etcd was refused");
        }
        found
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame: what makes an
/// HTTP/2 server answer.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// One endpoint of [`EtcdTls::probe`]: `None` when it accepts us, or does
/// not answer, or is not reachable at all (that is no TLS matter).
async fn probe_one(config: Arc<rustls::ClientConfig>, endpoint: &str) -> Option<String> {
    let uri: http::Uri = endpoint.parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone()).ok()?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .ok()?;
    let client_certificate = config.client_auth_cert_resolver.has_certs();
    let refusal = |e: std::io::Error| tls_refusal(&e.to_string(), client_certificate);
    let mut tls = match tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    {
        Ok(tls) => tls,
        Err(e) => return refusal(e),
    };
    if let Err(e) = tls.write_all(H2_PREFACE).await {
        return refusal(e);
    }
    if let Err(e) = tls.flush().await {
        return refusal(e);
    }
    let mut answer = [0u8; 64];
    match tls.read(&mut answer).await {
        Ok(_) => None,
        Err(e) => refusal(e),
    }
}

/// An etcd user (etcd's RBAC, `etcdctl auth enable`): the name and the
/// password, which comes from a file so it never shows in a process list.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    user: String,
    password: String,
}

impl fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl EtcdAuth {
    /// `--etcd-user` with the password in `--etcd-password-file` (its
    /// trailing line break removed; anything else is part of the password).
    pub fn from_password_file(user: &str, path: &Path) -> Result<Self, EtcdCredentialError> {
        let bytes = read("--etcd-password-file", path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| file_error("--etcd-password-file", path, "not UTF-8 text"))?;
        let password = text
            .strip_suffix('\n')
            .map(|p| p.strip_suffix('\r').unwrap_or(p))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(file_error(
                "--etcd-password-file",
                path,
                "no password in the file",
            ));
        }
        Self::new(user, password)
    }

    /// A user and its password.
    pub fn new(user: &str, password: &str) -> Result<Self, EtcdCredentialError> {
        if user.is_empty() {
            return Err(EtcdCredentialError::Setting {
                flag: "--etcd-user",
                reason: "must not be empty".into(),
            });
        }
        Ok(Self {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub(super) fn password(&self) -> &str {
        &self.password
    }
}

/// The reason etcd turned this replica away for its TLS settings or its
/// credentials (`"TLS: ..."` or `"authentication: ..."`, with what to
/// check), when that is what `e` says. Such a refusal does not go away by
/// retrying: the configuration (this replica's or etcd's) must change.
/// `tls`: this replica's TLS settings, for the hint.
///
/// tonic keeps a failed connection's TLS error only as text (the message of
/// an `UNAVAILABLE` status, or the source of an `UNKNOWN` one), so the TLS
/// cases are recognised by rustls' messages.
pub(super) fn rejection(e: &etcd_client::Error, tls: Option<&EtcdTls>) -> Option<String> {
    use etcd_client::Error as E;
    let text = match e {
        E::GRpcStatus(status) => {
            let message = status.message();
            let auth = match status.code() {
                // A wrong user or password, or a user without the role it
                // needs. (An expired token is renewed by the client before
                // the error gets here.)
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => true,
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                    AUTH_MESSAGES.iter().any(|m| message.contains(m))
                }
                _ => false,
            };
            if auth {
                return Some(format!(
                    "authentication: {message} (check --etcd-user, --etcd-password-file and \
                     the user's roles in etcd)"
                ));
            }
            let mut text = message.to_owned();
            let mut source = std::error::Error::source(status);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
        E::TransportError(_) | E::IoError(_) => crate::failure::describe(e),
        _ => return None,
    };
    tls_refusal(&text, tls.is_some_and(EtcdTls::has_client_certificate))
}

/// `"TLS: <rustls' error> (<what to check>)"` when `text` holds a TLS error
/// that means the two sides' settings do not fit. `client_certificate`:
/// whether this replica presents one.
fn tls_refusal(text: &str, client_certificate: bool) -> Option<String> {
    let (at, hint) = TLS_MESSAGES.iter().find_map(|(needle, hint)| {
        let at = text.find(needle)?;
        let hint = match (*hint, client_certificate) {
            ("", true) => {
                "etcd does not accept --etcd-cert: it must be signed by a CA in etcd's --trusted-ca-file"
            }
            ("", false) => "etcd wants a client certificate: give --etcd-cert and --etcd-key",
            (hint, _) => hint,
        };
        Some((at, hint))
    })?;
    // From rustls' words on: the layers above only say "transport error".
    Some(format!("TLS: {} ({hint})", &text[at..]))
}

/// Whether `e` is this side's connection to etcd failing (closed, reset),
/// rather than an answer from etcd.
pub(super) fn broken_connection(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let mut source = std::error::Error::source(status);
            while let Some(cause) = source {
                if cause.is::<tonic::transport::Error>() {
                    return true;
                }
                source = cause.source();
            }
            false
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// etcd's refusals of an Authenticate call (etcd 3.4 and later).
const AUTH_MESSAGES: &[&str] = &[
    "authentication failed",
    "user name is empty",
    "authentication is not enabled",
    "user name not found",
];

/// rustls' (and tonic's) errors that mean the two sides' TLS settings do not
/// fit, with what to check ("": it depends on whether this replica
/// presents a client certificate).
const TLS_MESSAGES: &[(&str, &str)] = &[
    (
        "invalid peer certificate",
        "etcd's certificate must be signed by --etcd-ca and name the endpoint's host",
    ),
    // etcd refused the handshake, in practice for the client certificate.
    ("received fatal alert", ""),
    (
        "peer sent no certificates",
        "check --etcd-ca and etcd's --cert-file",
    ),
    (
        "peer is incompatible",
        "etcd and this replica share no TLS version or cipher",
    ),
    (
        "received corrupt message",
        "is etcd serving TLS on that port?",
    ),
    (
        "HTTP/2 was not negotiated",
        "is etcd serving TLS on that port?",
    ),
];

/// Whether `e` is etcd refusing this replica's TLS settings or
/// credentials: recognised in the error, or, for a connection broken
/// during or right after the handshake, found by a probe of our own
/// bounded by `deadline` (see [`EtcdTls::probe`]).
pub(crate) async fn refusal(
    tls: Option<&EtcdTls>,
    endpoints: &[String],
    e: &etcd_client::Error,
    deadline: tokio::time::Instant,
) -> Option<String> {
    if let Some(reason) = rejection(e, tls) {
        return Some(reason);
    }
    let tls = tls?;
    if !broken_connection(e) {
        return None;
    }
    let within = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .min(PROBE_TIMEOUT);
    tls.probe(endpoints, within).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    fn ca_and_client(files: &Files, validity: vane_pki::Validity) -> (PathBuf, PathBuf, PathBuf) {
        let ca = vane_pki::Ca::new("etcd test CA").unwrap();
        let client = ca
            .issue(&vane_pki::LeafParams::client("replica").validity(validity))
            .unwrap();
        (
            files.write("ca.pem", &ca.cert_pem()),
            files.write("client.pem", &client.cert_pem),
            files.write("client.key", &client.key_pem),
        )
    }

    #[test]
    fn good_files_load_and_the_key_never_shows() {
        let files = Files::new();
        let (ca, cert, key) = ca_and_client(&files, vane_pki::Validity::default());
        let tls = EtcdTls::from_files(&ca, Some((&cert, &key))).unwrap();
        assert!(tls.has_client_certificate());
        assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
        assert_eq!(tls, EtcdTls::from_files(&ca, Some((&cert, &key))).unwrap());
        let ca_only = EtcdTls::from_files(&ca, None).unwrap();
        assert!(!ca_only.has_client_certificate());
        assert_ne!(tls, ca_only);
    }

    #[test]
    fn unusable_files_name_their_flag_and_the_reason() {
        let files = Files::new();
        let (ca, cert, key) = ca_and_client(&files, vane_pki::Validity::default());
        let garbage = files.write("garbage.pem", "hello\n");
        let missing = files.dir.path().join("missing.pem");
        let message = |ca: &Path, client: Option<(&Path, &Path)>| {
            EtcdTls::from_files(ca, client).unwrap_err().to_string()
        };
        assert!(
            message(&missing, None)
                .starts_with(&format!("--etcd-ca {}: cannot read: ", missing.display()))
        );
        assert_eq!(
            message(&garbage, None),
            format!(
                "--etcd-ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                garbage.display()
            )
        );
        assert_eq!(
            message(&ca, Some((&garbage, &key))),
            format!(
                "--etcd-cert {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                garbage.display()
            )
        );
        assert_eq!(
            message(&ca, Some((&cert, &garbage))),
            format!(
                "--etcd-key {}: no PEM private key (-----BEGIN PRIVATE KEY-----) in it",
                garbage.display()
            )
        );
        // Another certificate's key.
        let (_, _, other_key) = {
            let other = Files::new();
            let (a, b, c) = ca_and_client(&other, vane_pki::Validity::default());
            let moved = files.write("other.key", &std::fs::read_to_string(&c).unwrap());
            (a, b, moved)
        };
        assert_eq!(
            message(&ca, Some((&cert, &other_key))),
            format!(
                "--etcd-cert {} and --etcd-key {}: the key is not the certificate's key",
                cert.display(),
                other_key.display()
            )
        );
        // An expired client certificate would be refused by etcd: say so now.
        let old = Files::new();
        let (ca, cert, key) = ca_and_client(&old, vane_pki::Validity::expired());
        let text = message(&ca, Some((&cert, &key)));
        assert!(
            text.starts_with(&format!("--etcd-cert {}: certificate ", cert.display())),
            "{text}"
        );
        assert!(text.contains("expired on"), "{text}");

        // A bundle with an expired CA next to a valid one is fine (a
        // rotation); one with expired CAs only is not.
        let expired_ca = vane_pki::Ca::with_validity("old CA", vane_pki::Validity::expired())
            .unwrap()
            .cert_pem();
        let valid_ca = vane_pki::Ca::new("new CA").unwrap().cert_pem();
        let bundle = files.write("bundle.pem", &(expired_ca.clone() + &valid_ca));
        EtcdTls::from_files(&bundle, None).unwrap();
        let stale = files.write("stale.pem", &expired_ca);
        let text = message(&stale, None);
        assert!(
            text.starts_with(&format!(
                "--etcd-ca {}: certificate \"CN=old CA\" expired on ",
                stale.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn the_password_file_loses_one_trailing_line_break_only() {
        let files = Files::new();
        let auth = |text: &str| {
            let path = files.write("password", text);
            EtcdAuth::from_password_file("vane", &path)
        };
        assert_eq!(auth("s3cret\n").unwrap().password(), "s3cret");
        assert_eq!(auth("s3cret\r\n").unwrap().password(), "s3cret");
        assert_eq!(auth("s3cret").unwrap().password(), "s3cret");
        assert_eq!(auth(" s3 cret \n\n").unwrap().password(), " s3 cret \n");
        let err = auth("\n").unwrap_err().to_string();
        assert!(err.ends_with(": no password in the file"), "{err}");
        let ok = auth("s3cret\n").unwrap();
        assert_eq!(ok.user(), "vane");
        assert!(!format!("{ok:?}").contains("s3cret"));
        assert_eq!(
            EtcdAuth::new("", "x").unwrap_err().to_string(),
            "--etcd-user: must not be empty"
        );
    }

    #[test]
    fn refusals_are_told_from_outages() {
        let status = |code, message: &str| {
            etcd_client::Error::GRpcStatus(tonic::Status::new(code, message.to_owned()))
        };
        let auth = rejection(
            &status(
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            None,
        )
        .unwrap();
        assert!(
            auth.starts_with("authentication: etcdserver: authentication failed"),
            "{auth}"
        );
        assert!(auth.contains("--etcd-password-file"), "{auth}");
        assert!(
            rejection(
                &status(
                    tonic::Code::PermissionDenied,
                    "etcdserver: permission denied"
                ),
                None
            )
            .is_some()
        );
        // Outages, and other refusals, are not about the credentials.
        for (code, message) in [
            (tonic::Code::Unavailable, "etcdserver: no leader"),
            (
                tonic::Code::Unavailable,
                "tcp connect error: Connection refused",
            ),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                tonic::Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
        ] {
            assert_eq!(rejection(&status(code, message), None), None, "{message}");
        }
        let bad_server = rejection(
            &status(
                tonic::Code::Unavailable,
                "invalid peer certificate: UnknownIssuer",
            ),
            None,
        )
        .unwrap();
        assert!(
            bad_server.starts_with("TLS: invalid peer certificate: UnknownIssuer ("),
            "{bad_server}"
        );
        assert!(bad_server.contains("--etcd-ca"), "{bad_server}");
    }

    #[test]
    fn a_refused_handshake_hints_at_the_client_certificate() {
        let text = "transport error: connection error: received fatal alert: BadCertificate";
        assert_eq!(
            tls_refusal(text, true).unwrap(),
            "TLS: received fatal alert: BadCertificate (etcd does not accept --etcd-cert: it \
             must be signed by a CA in etcd's --trusted-ca-file)"
        );
        assert_eq!(
            tls_refusal(text, false).unwrap(),
            "TLS: received fatal alert: BadCertificate (etcd wants a client certificate: give \
             --etcd-cert and --etcd-key)"
        );
        assert_eq!(tls_refusal("connection closed", true), None);
    }
}
