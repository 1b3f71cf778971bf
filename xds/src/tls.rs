//! TLS in xDS: the snapshot's secrets as SDS `Secret` resources (a
//! certificate with its key, or a CA bundle; inline PEM as bytes, an
//! agent-host file as a file name), and the transport sockets of TLS
//! listeners (`DownstreamTlsContext`) and TLS clusters
//! (`UpstreamTlsContext`), which name those secrets over ADS.

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source::Specifier, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
    certificate_validation_context::SystemRootCerts,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    secret,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;
use vane_model::{ListenerTls, PemSource, SecretKind, Snapshot, UpstreamProtocol, UpstreamTls};

use crate::parts::{ads, pack};

/// The TLS transport socket (both directions).
pub(crate) const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// ALPN of an `https` listener: HTTP/2, then HTTP/1.1 (as vane-proxy).
const HTTPS_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// One SDS secret per snapshot secret, each with whether it carries a
/// private key inline (such a secret must not go over plaintext to another
/// host).
pub(crate) fn secrets(snapshot: &Snapshot) -> Vec<(String, Secret, bool)> {
    snapshot
        .secrets
        .iter()
        .map(|s| {
            let kind = match &s.kind {
                SecretKind::Certificate { chain, key } => {
                    secret::Type::TlsCertificate(TlsCertificate {
                        certificate_chain: Some(data_source(chain)),
                        private_key: Some(data_source(key)),
                        ..Default::default()
                    })
                }
                SecretKind::TrustedCa(ca) => {
                    secret::Type::ValidationContext(CertificateValidationContext {
                        trusted_ca: Some(data_source(ca)),
                        ..Default::default()
                    })
                }
            };
            let message = Secret {
                name: s.name.clone(),
                r#type: Some(kind),
            };
            (s.name.clone(), message, s.has_inline_key())
        })
        .collect()
}

/// Inline PEM as bytes; a file on the data plane's host by its path (Envoy
/// reads it, and watches it for changes).
fn data_source(pem: &PemSource) -> DataSource {
    let specifier = match pem {
        PemSource::Inline(text) => Specifier::InlineBytes(text.as_bytes().to_vec()),
        PemSource::File(path) => Specifier::Filename(path.display().to_string()),
    };
    DataSource {
        specifier: Some(specifier),
        ..Default::default()
    }
}

/// "Secret `name`, fetched over the ADS stream" (SDS).
fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

/// The transport socket of a listener's filter chain serving the
/// certificate secret `certificate`: client certificates required (and
/// checked against the `client_ca` secret) when the listener has one; ALPN
/// `h2,http/1.1` when `http` (an `https` listener), none for `tls`.
pub(crate) fn downstream(tls: &ListenerTls, certificate: &str, http: bool) -> TransportSocket {
    let common = CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(certificate)],
        alpn_protocols: if http {
            HTTPS_ALPN.iter().map(|p| (*p).to_owned()).collect()
        } else {
            Vec::new()
        },
        validation_context_type: tls
            .client_ca
            .as_deref()
            .map(|ca| ValidationContextType::ValidationContextSdsSecretConfig(sds(ca))),
        ..Default::default()
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: tls.client_ca.is_some().then_some(BoolValue { value: true }),
        ..Default::default()
    };
    transport_socket(pack(&context))
}

/// The transport socket of a TLS cluster: SNI as configured; the server's
/// certificate checked against the `ca` secret (SDS), or against the
/// system's trust store when the cluster names no CA, and its DNS names
/// against the SNI name when there is one, else its IP addresses against
/// the endpoints' (as vane-proxy checks them): never a chain alone, which
/// any certificate of a trusted CA would pass; the `client_cert` secret
/// presented (SDS); ALPN `h2` for `http2`, Envoy's default `h2,http/1.1`
/// for `auto`, none for `http1`.
pub(crate) fn upstream(
    tls: &UpstreamTls,
    protocol: UpstreamProtocol,
    endpoint_ips: &[std::net::IpAddr],
) -> TransportSocket {
    let exact = |san_type: SanType, value: String| SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let names: Vec<SubjectAltNameMatcher> = match &tls.sni {
        Some(sni) => vec![exact(SanType::Dns, sni.clone())],
        None => {
            let mut ips: Vec<String> = endpoint_ips.iter().map(|ip| ip.to_string()).collect();
            ips.sort();
            ips.dedup();
            ips.into_iter()
                .map(|ip| exact(SanType::IpAddress, ip))
                .collect()
        }
    };
    let validation = match &tls.ca {
        Some(ca) => {
            ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: names,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(ca)),
                ..Default::default()
            })
        }
        None => ValidationContextType::ValidationContext(CertificateValidationContext {
            system_root_certs: Some(SystemRootCerts {}),
            match_typed_subject_alt_names: names,
            ..Default::default()
        }),
    };
    let alpn: &[&str] = match protocol {
        UpstreamProtocol::Http2 => &["h2"],
        UpstreamProtocol::Http1 | UpstreamProtocol::Auto => &[],
    };
    let common = CommonTlsContext {
        tls_certificate_sds_secret_configs: tls
            .client_cert
            .as_deref()
            .map(sds)
            .into_iter()
            .collect(),
        alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
        validation_context_type: Some(validation),
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    transport_socket(pack(&context))
}

fn transport_socket(config: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}
