//! Test and demo certificates for Vane: a certificate authority, server
//! certificates (DNS and IP names), client certificates that carry an identity
//! (subject CN, optionally a SAN URI), with any validity window (including
//! already expired ones), as PEM in memory or written to files.
//!
//! Used by `cargo xtask certs` and the tests, never by a shipped binary:
//! every key lives in memory and is written unencrypted.
//!
//! ```
//! # fn demo() -> Result<(), vane_pki::PkiError> {
//! let ca = vane_pki::Ca::new("vane test CA")?;
//! let server = ca.issue(&vane_pki::LeafParams::server(["127.0.0.1", "localhost"]))?;
//! let operator = ca.issue(&vane_pki::LeafParams::client("operator"))?;
//! let expired = ca.issue(
//!     &vane_pki::LeafParams::client("reader").validity(vane_pki::Validity::expired()),
//! )?;
//! # drop((server, operator, expired));
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Validity`]: a certificate's window, from `std::time::SystemTime`s.
//! - [`Ca`]: a self-signed CA that issues [`LeafParams`] into a [`Pair`].
//! - [`Pair`]: a certificate and its key as PEM, and writing them (keys 0600).
//! - [`DemoSet`]: the set `cargo xtask certs` writes (CA, server, operator,
//!   reader, agent-edge, and the policy that binds them).

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// One day, the unit of every default validity.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters (a name that is not IA5, a bad date...).
    #[error("{what}: {source}")]
    Generate {
        /// What was being made, e.g. `client certificate "operator"`.
        what: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A validity window that ends before it starts, or starts before 1970.
    #[error("validity: {0}")]
    Validity(String),
    /// The file exists and overwriting was not asked for.
    #[error("{}: already exists (pass --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first instant it is valid.
    pub not_before: SystemTime,
    /// The last instant it is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + DAY * days,
        }
    }

    /// Expired yesterday, after being valid for a month.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - DAY * 31,
            not_after: now - DAY,
        }
    }

    /// Valid only from tomorrow on, for a year.
    pub fn not_yet_valid() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now + DAY,
            not_after: now + DAY * 366,
        }
    }

    /// Applies the window to rcgen's parameters.
    fn apply(&self, params: &mut CertificateParams) -> Result<(), PkiError> {
        if self.not_after <= self.not_before {
            return Err(PkiError::Validity(
                "not_after must be later than not_before".into(),
            ));
        }
        // rcgen takes `time::OffsetDateTime`; the Unix epoch plus a std
        // duration spares callers (and this crate) a dependency on `time`.
        let since_epoch = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_err(|_| PkiError::Validity("dates before 1970 are not supported".into()))
        };
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + since_epoch(self.not_before)?;
        params.not_after = epoch + since_epoch(self.not_after)?;
        Ok(())
    }
}

impl Default for Validity {
    /// A year.
    fn default() -> Self {
        Self::days(365)
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication (extended key usage serverAuth).
    Server,
    /// TLS client authentication (extended key usage clientAuth).
    Client,
    /// Both: a server that also connects to itself or its peers with the
    /// same certificate, as an etcd member does (its HTTP gateway presents
    /// the server certificate as a client to etcd's own gRPC port).
    ServerAndClient,
}

/// The parameters of a server or client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct LeafParams {
    /// The subject common name. For a client certificate this is the
    /// identity the control server sees when there is no SAN URI.
    pub common_name: String,
    /// Host names and IP addresses (each parsed as an IP first).
    pub names: Vec<String>,
    /// SAN URIs (a client's first one is its identity).
    pub uris: Vec<String>,
    /// What the certificate is for.
    pub usage: Usage,
    /// When it is valid. Default: a year from an hour ago.
    pub validity: Validity,
}

impl LeafParams {
    /// A server certificate valid for `names` (DNS names or IP addresses);
    /// its common name is the first name.
    pub fn server<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        Self {
            common_name: names.first().cloned().unwrap_or_else(|| "vane".into()),
            names,
            uris: Vec::new(),
            usage: Usage::Server,
            validity: Validity::default(),
        }
    }

    /// A client certificate whose subject CN is `identity`.
    pub fn client(identity: impl Into<String>) -> Self {
        Self {
            common_name: identity.into(),
            names: Vec::new(),
            uris: Vec::new(),
            usage: Usage::Client,
            validity: Validity::default(),
        }
    }

    /// Makes a server certificate usable as a client certificate too
    /// (extended key usages serverAuth and clientAuth): what an etcd member
    /// with `--client-cert-auth` needs.
    pub fn also_client(mut self) -> Self {
        self.usage = Usage::ServerAndClient;
        self
    }

    /// Adds a SAN URI (for a client: the identity, ahead of the CN).
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uris.push(uri.into());
        self
    }

    /// Sets the validity window.
    pub fn validity(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// Its PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl fmt::Debug for Pair {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Pair {
    /// Writes the certificate (mode 0644) and the key (mode 0600). Refuses
    /// to replace an existing file unless `overwrite`.
    pub fn write(&self, cert: &Path, key: &Path, overwrite: bool) -> Result<(), PkiError> {
        write_file(cert, self.cert_pem.as_bytes(), 0o644, overwrite)?;
        write_file(key, self.key_pem.as_bytes(), 0o600, overwrite)
    }
}

/// A self-signed certificate authority that issues leaf certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    name: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("name", &self.name).finish()
    }
}

impl Ca {
    /// A CA named `name` (its subject CN), valid for ten years.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        Self::with_validity(name, Validity::days(3650))
    }

    /// A CA named `name` with the given validity.
    pub fn with_validity(name: &str, validity: Validity) -> Result<Self, PkiError> {
        let what = || format!("CA {name:?}");
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut params)?;
        let key = KeyPair::generate().map_err(|source| PkiError::Generate {
            what: what(),
            source,
        })?;
        let issuer =
            CertifiedIssuer::self_signed(params, key).map_err(|source| PkiError::Generate {
                what: what(),
                source,
            })?;
        Ok(Self {
            issuer,
            name: name.to_owned(),
        })
    }

    /// The CA certificate as PEM (what `--ca` and `--client-ca` take).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a leaf certificate with a fresh ECDSA P-256 key.
    pub fn issue(&self, leaf: &LeafParams) -> Result<Pair, PkiError> {
        let what = || match leaf.usage {
            Usage::Server | Usage::ServerAndClient => {
                format!("server certificate {:?}", leaf.common_name)
            }
            Usage::Client => format!("client certificate {:?}", leaf.common_name),
        };
        let generate = |source| PkiError::Generate {
            what: what(),
            source,
        };
        let mut params = CertificateParams::new(leaf.names.clone()).map_err(generate)?;
        for uri in &leaf.uris {
            let uri = uri.clone().try_into().map_err(generate)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.distinguished_name = common_name(&leaf.common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match leaf.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        leaf.validity.apply(&mut params)?;
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// The files of a [`DemoSet`], in the order they are written.
pub const DEMO_FILES: &[&str] = &[
    "ca.pem",
    "server.pem",
    "server.key",
    "operator.pem",
    "operator.key",
    "reader.pem",
    "reader.key",
    "agent.pem",
    "agent.key",
    "policy.yaml",
];

/// The policy of a [`DemoSet`] (`vane-control --policy`): `operator` may
/// push and roll back every group, `reader` may read every group, and
/// `agent-edge` may watch group `edge` only.
pub const DEMO_POLICY: &str = "\
# Written by `cargo xtask certs`: who may do what (vane-control --policy).
# Identities are client-certificate SAN URIs or CNs, or token identities.
bindings:
  - identity: operator
    role: operator
    groups: [\"*\"]
  - identity: reader
    role: reader
    groups: [\"*\"]
  - identity: agent-edge
    role: agent
    groups: [\"edge\"]
";

/// Everything a TLS demo needs: a CA, a server certificate for 127.0.0.1
/// and localhost, the clients `operator`, `reader` and `agent-edge`, and
/// the policy that binds them.
#[derive(Debug)]
pub struct DemoSet {
    /// The CA that signed everything below.
    pub ca: Ca,
    /// The control server's certificate (127.0.0.1, localhost).
    pub server: Pair,
    /// Identity `operator`.
    pub operator: Pair,
    /// Identity `reader`.
    pub reader: Pair,
    /// Identity `agent-edge`.
    pub agent: Pair,
}

impl DemoSet {
    /// Generates a fresh set, valid for a year.
    pub fn generate() -> Result<Self, PkiError> {
        let ca = Ca::new("vane demo CA")?;
        Ok(Self {
            server: ca.issue(&LeafParams::server(["127.0.0.1", "localhost"]))?,
            operator: ca.issue(&LeafParams::client("operator"))?,
            reader: ca.issue(&LeafParams::client("reader"))?,
            agent: ca.issue(&LeafParams::client("agent-edge"))?,
            ca,
        })
    }

    /// Writes [`DEMO_FILES`] into `dir` (created if missing) and returns
    /// their paths. Unless `overwrite`, nothing is written when any of them
    /// already exists.
    pub fn write(&self, dir: &Path, overwrite: bool) -> Result<Vec<PathBuf>, PkiError> {
        let paths: Vec<PathBuf> = DEMO_FILES.iter().map(|f| dir.join(f)).collect();
        if !overwrite && let Some(existing) = paths.iter().find(|p| p.exists()) {
            return Err(PkiError::Exists(existing.clone()));
        }
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_owned(),
            source,
        })?;
        write_file(&paths[0], self.ca.cert_pem().as_bytes(), 0o644, overwrite)?;
        for (i, pair) in [&self.server, &self.operator, &self.reader, &self.agent]
            .into_iter()
            .enumerate()
        {
            pair.write(&paths[1 + 2 * i], &paths[2 + 2 * i], overwrite)?;
        }
        write_file(&paths[9], DEMO_POLICY.as_bytes(), 0o644, overwrite)?;
        Ok(paths)
    }
}

/// Writes `bytes` to `path` with `mode`. Without `overwrite` the file must
/// not exist (checked by the open itself, so there is no race); with it, an
/// existing file is truncated and its mode set, so a key never stays
/// readable by others.
fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_owned())
        } else {
            io(e)
        }
    })?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer as _;

    fn roots(ca: &Ca) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// What rustls says of `pair` as a server certificate for `name`.
    fn verify_server(ca: &Ca, pair: &Pair, name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(&der(&pair.cert_pem), &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    /// What rustls says of `pair` as a client certificate.
    fn verify_client(ca: &Ca, pair: &Pair) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&der(&pair.cert_pem), &[], UnixTime::now())
            .map(drop)
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        let mut certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 1);
        certs.remove(0)
    }

    fn cn(cert: &X509Certificate<'_>) -> String {
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let Some(ext) = cert.subject_alternative_name().unwrap() else {
            return Vec::new();
        };
        ext.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::URI(u) => format!("uri:{u}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn unix(t: SystemTime) -> i64 {
        i64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
    }

    #[test]
    fn server_certificate_has_the_names_and_is_signed_by_the_ca() {
        let ca = Ca::new("test CA").unwrap();
        let pair = ca
            .issue(&LeafParams::server(["127.0.0.1", "localhost"]))
            .unwrap();
        let bytes = der(&pair.cert_pem);
        let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
        assert_eq!(cn(&cert), "127.0.0.1");
        assert_eq!(
            sans(&cert),
            ["ip:[127, 0, 0, 1]".to_owned(), "dns:localhost".to_owned()]
        );
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);

        let ca_der = der_of(&ca);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca_cert.is_ca());
        assert_eq!(cn(&ca_cert), "test CA");
        assert_eq!(cert.issuer(), ca_cert.subject());
        verify_server(&ca, &pair, "127.0.0.1").unwrap();
        verify_server(&ca, &pair, "localhost").unwrap();
        assert!(verify_server(&ca, &pair, "example.com").is_err());
        // A server certificate is no client certificate.
        assert!(verify_client(&ca, &pair).is_err());
        // The key is PKCS#8 PEM, as rustls and tonic read it.
        PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
    }

    #[test]
    fn a_server_certificate_may_also_be_a_client_certificate() {
        let ca = Ca::new("test CA").unwrap();
        let pair = ca
            .issue(&LeafParams::server(["127.0.0.1"]).also_client())
            .unwrap();
        let bytes = der(&pair.cert_pem);
        let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        verify_server(&ca, &pair, "127.0.0.1").unwrap();
        verify_client(&ca, &pair).unwrap();
    }

    fn der_of(ca: &Ca) -> CertificateDer<'static> {
        der(&ca.cert_pem())
    }

    #[test]
    fn client_certificate_carries_the_identity_in_the_cn_and_uri() {
        let ca = Ca::new("test CA").unwrap();
        let pair = ca
            .issue(&LeafParams::client("operator").uri("spiffe://vane/operator"))
            .unwrap();
        let bytes = der(&pair.cert_pem);
        let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
        assert_eq!(cn(&cert), "operator");
        assert_eq!(sans(&cert), ["uri:spiffe://vane/operator".to_owned()]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        verify_client(&ca, &pair).unwrap();

        // Without a URI there is no SAN extension at all: the CN is the identity.
        let plain = ca.issue(&LeafParams::client("reader")).unwrap();
        let bytes = der(&plain.cert_pem);
        let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
        assert_eq!(cn(&cert), "reader");
        assert!(sans(&cert).is_empty());
    }

    #[test]
    fn validity_windows_are_written_as_asked() {
        let ca = Ca::new("test CA").unwrap();
        let window = Validity::expired();
        let pair = ca
            .issue(&LeafParams::client("late").validity(window))
            .unwrap();
        let bytes = der(&pair.cert_pem);
        let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
        let v = cert.validity();
        assert_eq!(v.not_before.timestamp(), unix(window.not_before));
        assert_eq!(v.not_after.timestamp(), unix(window.not_after));
        assert!(!v.is_valid());
        let e = verify_client(&ca, &pair).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");

        let fresh = ca.issue(&LeafParams::client("fresh")).unwrap();
        let bytes = der(&fresh.cert_pem);
        let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
        assert!(cert.validity().is_valid());
        let left = cert.validity().time_to_expiration().unwrap();
        assert!(left.whole_days() >= 364, "{left}");

        let future = Validity::not_yet_valid();
        let pair = ca
            .issue(&LeafParams::client("soon").validity(future))
            .unwrap();
        let bytes = der(&pair.cert_pem);
        let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
        assert!(!cert.validity().is_valid());

        let backwards = Validity {
            not_before: window.not_after,
            not_after: window.not_before,
        };
        let e = ca
            .issue(&LeafParams::client("x").validity(backwards))
            .unwrap_err();
        assert!(e.to_string().starts_with("validity: "), "{e}");
    }

    #[test]
    fn another_ca_is_another_issuer() {
        let a = Ca::new("CA a").unwrap();
        let b = Ca::new("CA b").unwrap();
        let pair = b.issue(&LeafParams::client("operator")).unwrap();
        let (a_der, leaf_der) = (der_of(&a), der(&pair.cert_pem));
        let (_, a_cert) = X509Certificate::from_der(&a_der).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        assert_ne!(leaf.issuer(), a_cert.subject());
        let e = verify_client(&a, &pair).unwrap_err();
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        verify_client(&b, &pair).unwrap();
    }

    #[test]
    fn names_that_are_not_ia5_are_refused_with_the_certificate_named() {
        let ca = Ca::new("test CA").unwrap();
        let e = ca
            .issue(&LeafParams::server(["héllo.example"]))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("server certificate \"héllo.example\": "),
            "{e}"
        );
    }

    #[test]
    fn demo_set_writes_every_file_keys_private_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let set = DemoSet::generate().unwrap();
        let written = set.write(&out, false).unwrap();
        assert_eq!(written.len(), DEMO_FILES.len());
        for (path, name) in written.iter().zip(DEMO_FILES) {
            assert_eq!(path, &out.join(name));
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            let want = if name.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode, want, "{name}");
        }
        for (file, identity) in [
            ("operator.pem", "operator"),
            ("reader.pem", "reader"),
            ("agent.pem", "agent-edge"),
        ] {
            let pem = std::fs::read_to_string(out.join(file)).unwrap();
            let bytes = der(&pem);
            let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
            assert_eq!(cn(&cert), identity);
        }
        let policy = std::fs::read_to_string(out.join("policy.yaml")).unwrap();
        assert_eq!(policy, DEMO_POLICY);

        let again = DemoSet::generate().unwrap();
        let e = again.write(&out, false).unwrap_err();
        assert!(matches!(e, PkiError::Exists(ref p) if p == &out.join("ca.pem")));
        assert!(
            e.to_string()
                .ends_with("already exists (pass --force to overwrite)")
        );
        // Nothing was replaced.
        let ca = std::fs::read_to_string(out.join("ca.pem")).unwrap();
        assert_eq!(ca, set.ca.cert_pem());

        // With overwrite, a key left world-readable is made private again.
        std::fs::set_permissions(
            out.join("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        again.write(&out, true).unwrap();
        let mode = std::fs::metadata(out.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(out.join("ca.pem")).unwrap(),
            again.ca.cert_pem()
        );
    }

    #[test]
    fn debug_never_shows_a_key() {
        let ca = Ca::new("test CA").unwrap();
        let pair = ca.issue(&LeafParams::client("x")).unwrap();
        let text = format!("{pair:?} {ca:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
}
