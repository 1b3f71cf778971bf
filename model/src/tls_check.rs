//! The rules of the TLS parts of a snapshot: secrets (PEM that parses, a key
//! that belongs to its certificate, absolute file paths), listener
//! certificates (valid, unique SNI names the certificate covers), upstream
//! TLS and protocol. Time-independent, so an agent applying a cached
//! snapshot judges it exactly as the push did; certificate dates are checked
//! at push only, by [`check_dates`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::FieldError;
use crate::names::check_name;
use crate::redact::is_redacted;
use crate::secrets::*;
use crate::spec::{ListenerCertificateSpec, SecretSpec, UpstreamTlsSpec};

/// Longest accepted SNI name (RFC 1035's limit for a DNS name).
pub const MAX_SERVER_NAME_LEN: usize = 253;
/// At push, a certificate that expires sooner than this is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What validation learnt of each secret, for the references to it.
#[derive(Default)]
pub(crate) struct SecretIndex {
    kinds: HashMap<String, Known>,
}

enum Known {
    /// A certificate; its DNS names when inline and readable.
    Certificate(Option<Vec<String>>),
    TrustedCa,
    /// Refused itself: references to it add no second error.
    Invalid,
}

fn err(errors: &mut Vec<FieldError>, path: impl Into<String>, reason: impl Into<String>) {
    errors.push(FieldError::new(path, reason));
}

/// Checks every secret; returns those that passed and what the references
/// need to know of them.
pub(crate) fn secrets(
    specs: Vec<SecretSpec>,
    errors: &mut Vec<FieldError>,
) -> (Vec<Secret>, SecretIndex) {
    let mut index = SecretIndex::default();
    let mut out = Vec::with_capacity(specs.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, s) in specs.into_iter().enumerate() {
        let path = format!("secrets[{i}]");
        if let Err(reason) = check_name(&s.name) {
            err(errors, format!("{path}.name"), reason);
            continue;
        }
        if let Some(first) = seen.get(&s.name) {
            err(
                errors,
                format!("{path}.name"),
                format!("duplicate name {:?} (also secrets[{first}])", s.name),
            );
            continue;
        }
        seen.insert(s.name.clone(), i);
        let name = s.name.clone();
        match secret(&path, s, errors) {
            Some((secret, known)) => {
                index.kinds.insert(name, known);
                out.push(secret);
            }
            None => {
                index.kinds.insert(name, Known::Invalid);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, index)
}

/// One of `inline` and `file`, checked; `None` when neither is given.
fn source(
    path: &str,
    (inline_field, inline): (&str, Option<String>),
    (file_field, file): (&str, Option<String>),
    errors: &mut Vec<FieldError>,
) -> Option<Result<PemSource, ()>> {
    match (inline, file) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            err(
                errors,
                format!("{path}.{file_field}"),
                format!("give {inline_field} or {file_field}, not both"),
            );
            Some(Err(()))
        }
        (Some(pem), None) => Some(Ok(PemSource::Inline(pem))),
        (None, Some(file)) => {
            let p = PathBuf::from(&file);
            if file.is_empty() || !p.is_absolute() || file.contains('\n') {
                err(
                    errors,
                    format!("{path}.{file_field}"),
                    not_a_path(&file, inline_field),
                );
                Some(Err(()))
            } else {
                Some(Ok(PemSource::File(p)))
            }
        }
    }
}

/// Why `file` is refused as a path, without echoing what may be a key
/// pasted into the wrong field (errors reach the audit log).
fn not_a_path(file: &str, inline_field: &str) -> String {
    let looks_like_pem = file.contains("-----BEGIN") || file.contains('\n');
    if looks_like_pem {
        format!(
            "is not an absolute path ({} bytes that look like PEM; the PEM itself goes in {inline_field})",
            file.len()
        )
    } else if file.chars().count() > 256 {
        format!("is not an absolute path ({} bytes)", file.len())
    } else {
        format!("{file:?} is not an absolute path")
    }
}

fn secret(path: &str, s: SecretSpec, errors: &mut Vec<FieldError>) -> Option<(Secret, Known)> {
    let before = errors.len();
    let chain = source(
        path,
        ("certificate_chain", s.certificate_chain),
        ("certificate_chain_file", s.certificate_chain_file),
        errors,
    );
    let key = source(
        path,
        ("private_key", s.private_key),
        ("private_key_file", s.private_key_file),
        errors,
    );
    let ca = source(
        path,
        ("trusted_ca", s.trusted_ca),
        ("trusted_ca_file", s.trusted_ca_file),
        errors,
    );
    let (kind, known) = match (chain, key, ca) {
        (None, None, None) => {
            err(
                errors,
                path,
                "holds nothing: give certificate_chain and private_key (or their _file forms), or trusted_ca",
            );
            return None;
        }
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            err(
                errors,
                format!("{path}.trusted_ca"),
                "a secret is a certificate with its key or a CA bundle, not both",
            );
            return None;
        }
        (Some(_), None, None) => {
            err(
                errors,
                format!("{path}.private_key"),
                "required with certificate_chain (or give private_key_file)",
            );
            return None;
        }
        (None, Some(_), None) => {
            err(
                errors,
                format!("{path}.certificate_chain"),
                "required with private_key (or give certificate_chain_file)",
            );
            return None;
        }
        (Some(chain), Some(key), None) => {
            let (Ok(chain), Ok(key)) = (chain, key) else {
                return None;
            };
            let names = check_pair(path, &chain, &key, errors);
            (
                SecretKind::Certificate { chain, key },
                Known::Certificate(names),
            )
        }
        (None, None, Some(ca)) => {
            let Ok(ca) = ca else { return None };
            if let PemSource::Inline(pem) = &ca
                && let Err(reason) = vane_tls::pem::check_ca(pem.as_bytes())
            {
                err(errors, format!("{path}.trusted_ca"), reason);
            }
            (SecretKind::TrustedCa(ca), Known::TrustedCa)
        }
    };
    (errors.len() == before).then_some((Secret { name: s.name, kind }, known))
}

/// Checks what is inline of a certificate and its key; returns the leaf's
/// DNS names when the chain is inline.
fn check_pair(
    path: &str,
    chain: &PemSource,
    key: &PemSource,
    errors: &mut Vec<FieldError>,
) -> Option<Vec<String>> {
    let chain_pem = match chain {
        PemSource::Inline(pem) => Some(pem.as_bytes()),
        PemSource::File(_) => None,
    };
    let key_pem = match key {
        PemSource::Inline(pem) => {
            if is_redacted(pem) {
                err(
                    errors,
                    format!("{path}.private_key"),
                    "is a redacted placeholder whose key the control server does not hold for this group; give the PEM key",
                );
                return None;
            }
            Some(pem.as_bytes())
        }
        PemSource::File(_) => None,
    };
    let mut names = None;
    if let Some(pem) = chain_pem {
        match vane_tls::pem::certificates(pem) {
            Err(reason) => {
                err(errors, format!("{path}.certificate_chain"), reason);
                return None;
            }
            Ok(certs) => {
                for (i, cert) in certs.iter().enumerate() {
                    match x509_parser::parse_x509_certificate(cert.as_ref()) {
                        Err(e) => {
                            err(
                                errors,
                                format!("{path}.certificate_chain"),
                                format!("certificate {} is not X.509: {e}", i + 1),
                            );
                            return None;
                        }
                        Ok((_, parsed)) if i == 0 => names = Some(dns_names(&parsed)),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    match (chain_pem, key_pem) {
        (Some(chain), Some(key)) => {
            if let Err((_, reason)) = vane_tls::pem::check_identity(chain, key) {
                err(errors, format!("{path}.private_key"), reason);
            }
        }
        (_, Some(key)) => {
            if let Err(reason) = vane_tls::pem::private_key(key) {
                err(errors, format!("{path}.private_key"), reason);
            }
        }
        _ => {}
    }
    names
}

/// The DNS names of a certificate's subject alternative names (or, with
/// none, of its subject's common name), lowercase.
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_ascii_lowercase))
            .collect();
    }
    names
}

/// Parses an SNI name as written: a DNS name, or `*.` and a DNS name.
pub fn parse_server_name(name: &str) -> Result<ServerName, String> {
    let (wildcard, host) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if name.len() > MAX_SERVER_NAME_LEN {
        return Err(format!(
            "is {} characters long, over the limit of {MAX_SERVER_NAME_LEN}",
            name.len()
        ));
    }
    if host.is_empty() {
        return Err(format!("{name:?} is not a DNS name"));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a DNS name (labels of letters, digits and '-', a wildcard only as \"*.\" in front)"
            ));
        }
    }
    if host.parse::<std::net::IpAddr>().is_ok()
        || host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Err(format!(
            "{name:?} is an IP address; SNI carries DNS names only"
        ));
    }
    let host = host.to_ascii_lowercase();
    Ok(if wildcard {
        ServerName::Wildcard(format!(".{host}"))
    } else {
        ServerName::Exact(host)
    })
}

/// Whether a certificate DNS name (`a.example.com` or `*.example.com`)
/// covers a listener's server name.
fn covers(cert_name: &str, name: &ServerName) -> bool {
    match (cert_name.strip_prefix('*'), name) {
        (Some(suffix), ServerName::Wildcard(s)) => suffix == s,
        (Some(suffix), ServerName::Exact(n)) => ServerName::Wildcard(suffix.to_owned()).matches(n),
        (None, ServerName::Exact(n)) => cert_name == n,
        (None, ServerName::Wildcard(_)) => false,
    }
}

impl SecretIndex {
    fn require(
        &self,
        path: String,
        name: &str,
        certificate: bool,
        errors: &mut Vec<FieldError>,
    ) -> Option<&Known> {
        let want = if certificate {
            "a certificate (certificate_chain and private_key)"
        } else {
            "a CA bundle (trusted_ca)"
        };
        match self.kinds.get(name) {
            None => {
                err(errors, path, format!("unknown secret {name:?}"));
                None
            }
            Some(Known::Invalid) => None,
            Some(k @ Known::Certificate(_)) if certificate => Some(k),
            Some(k @ Known::TrustedCa) if !certificate => Some(k),
            Some(_) => {
                err(errors, path, format!("secret {name:?} is not {want}"));
                None
            }
        }
    }
}

/// Checks the TLS fields of a listener of `protocol`; `Some(Ok(tls))` for
/// https and tls listeners.
pub(crate) fn listener_tls(
    path: &str,
    protocol_is_tls: bool,
    certificates: &[ListenerCertificateSpec],
    client_ca: Option<&str>,
    index: &SecretIndex,
    errors: &mut Vec<FieldError>,
) -> Option<ListenerTls> {
    if !protocol_is_tls {
        if !certificates.is_empty() {
            err(
                errors,
                format!("{path}.certificates"),
                "only https and tls listeners take certificates",
            );
        }
        if client_ca.is_some() {
            err(
                errors,
                format!("{path}.client_ca"),
                "only https and tls listeners check client certificates",
            );
        }
        return None;
    }
    let before = errors.len();
    if certificates.is_empty() {
        err(
            errors,
            format!("{path}.certificates"),
            "an https or tls listener needs at least one certificate",
        );
    }
    let mut out = Vec::with_capacity(certificates.len());
    let mut claimed: BTreeMap<ServerName, usize> = BTreeMap::new();
    for (j, c) in certificates.iter().enumerate() {
        let cpath = format!("{path}.certificates[{j}]");
        let known = index.require(format!("{cpath}.secret"), &c.secret, true, errors);
        let mut server_names = Vec::with_capacity(c.server_names.len());
        for (k, n) in c.server_names.iter().enumerate() {
            let npath = format!("{cpath}.server_names[{k}]");
            match parse_server_name(n) {
                Err(reason) => err(errors, npath, reason),
                Ok(name) => {
                    if let Some(first) = claimed.get(&name) {
                        err(
                            errors,
                            npath,
                            format!("{n:?} is already served by certificates[{first}]"),
                        );
                        continue;
                    }
                    if let Some(Known::Certificate(Some(cert_names))) = known
                        && !cert_names.iter().any(|c| covers(c, &name))
                    {
                        err(
                            errors,
                            npath,
                            format!(
                                "{n:?} is not a name of secret {:?}'s certificate (it has {})",
                                c.secret,
                                if cert_names.is_empty() {
                                    "no DNS names".to_owned()
                                } else {
                                    cert_names.join(", ")
                                }
                            ),
                        );
                        continue;
                    }
                    claimed.insert(name.clone(), j);
                    server_names.push(name);
                }
            }
        }
        out.push(SniCertificate {
            secret: c.secret.clone(),
            server_names,
        });
    }
    if let Some(ca) = client_ca {
        index.require(format!("{path}.client_ca"), ca, false, errors);
    }
    (errors.len() == before).then(|| ListenerTls {
        certificates: out,
        client_ca: client_ca.map(str::to_owned),
    })
}

/// Checks a cluster's `protocol` and `tls`.
pub(crate) fn upstream(
    path: &str,
    protocol: Option<&str>,
    tls: Option<&UpstreamTlsSpec>,
    index: &SecretIndex,
    errors: &mut Vec<FieldError>,
) -> (UpstreamProtocol, Option<UpstreamTls>) {
    let protocol = match protocol.unwrap_or("http1") {
        "http1" => UpstreamProtocol::Http1,
        "http2" => UpstreamProtocol::Http2,
        "auto" => {
            if tls.is_none() {
                err(
                    errors,
                    format!("{path}.protocol"),
                    "\"auto\" picks the version by TLS ALPN; set tls, or choose \"http1\" or \"http2\"",
                );
            }
            UpstreamProtocol::Auto
        }
        other => {
            err(
                errors,
                format!("{path}.protocol"),
                format!("unknown protocol {other:?} (expected \"http1\", \"http2\" or \"auto\")"),
            );
            UpstreamProtocol::Http1
        }
    };
    let Some(tls) = tls else {
        return (protocol, None);
    };
    if let Some(sni) = &tls.sni
        && let Err(reason) = parse_server_name(sni).and_then(|n| match n {
            ServerName::Exact(_) => Ok(()),
            ServerName::Wildcard(_) => Err(format!("{sni:?} is a wildcard; SNI is one name")),
        })
    {
        err(errors, format!("{path}.tls.sni"), reason);
    }
    if let Some(ca) = &tls.ca {
        index.require(format!("{path}.tls.ca"), ca, false, errors);
    }
    if let Some(cert) = &tls.client_cert {
        index.require(format!("{path}.tls.client_cert"), cert, true, errors);
    }
    (
        protocol,
        Some(UpstreamTls {
            sni: tls.sni.as_ref().map(|s| s.to_ascii_lowercase()),
            ca: tls.ca.clone(),
            client_cert: tls.client_cert.clone(),
        }),
    )
}

/// What a push learns of its certificates' dates.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DateReport {
    /// Refusals: a certificate expired or not valid yet.
    pub errors: Vec<FieldError>,
    /// Certificates expiring within [`EXPIRY_WARNING`].
    pub warnings: Vec<FieldError>,
}

/// Checks the dates of every inline certificate and CA at `now` (the
/// control server does, at push; agents never refuse a snapshot for its
/// dates, so a cached snapshot keeps serving). Paths name the secret:
/// `secrets["site"].certificate_chain`.
pub fn check_dates(secrets: &[Secret], now: SystemTime) -> DateReport {
    let mut report = DateReport::default();
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let warn_s = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    for s in secrets {
        let (field, pem) = match &s.kind {
            SecretKind::Certificate {
                chain: PemSource::Inline(pem),
                ..
            } => ("certificate_chain", pem),
            SecretKind::TrustedCa(PemSource::Inline(pem)) => ("trusted_ca", pem),
            _ => continue,
        };
        let path = format!("secrets[{:?}].{field}", s.name);
        let Ok(certs) = vane_tls::pem::certificates(pem.as_bytes()) else {
            continue;
        };
        for (i, cert) in certs.iter().enumerate() {
            let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
                continue;
            };
            let v = parsed.validity();
            let which = format!("certificate {} ({})", i + 1, parsed.subject());
            if v.not_after.timestamp() <= now_s {
                report.errors.push(FieldError::new(
                    &path,
                    format!("{which} expired on {}", v.not_after),
                ));
            } else if v.not_before.timestamp() > now_s {
                report.errors.push(FieldError::new(
                    &path,
                    format!("{which} is not valid before {}", v.not_before),
                ));
            } else if v.not_after.timestamp() - now_s < warn_s {
                let days = (v.not_after.timestamp() - now_s) / 86_400;
                report.warnings.push(FieldError::new(
                    &path,
                    format!("{which} expires on {} (in {days} days)", v.not_after),
                ));
            }
        }
    }
    report
}
