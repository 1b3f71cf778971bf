//! The unvalidated shape of a snapshot, as written in a file and carried on
//! the wire. Unknown fields are refused; everything else is checked by
//! [`crate::validate`]. The canonical form of a snapshot (every default
//! filled in, named collections sorted by name) is also a `SnapshotSpec`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole snapshot file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpec {
    /// See [`crate::Listener`].
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    /// See [`crate::RouteTable`].
    #[serde(default)]
    pub route_tables: Vec<RouteTableSpec>,
    /// See [`crate::Cluster`].
    #[serde(default)]
    pub clusters: Vec<ClusterSpec>,
    /// See [`crate::RateLimit`].
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Free-form JSON values.
    #[serde(default)]
    pub values: BTreeMap<String, serde_json::Value>,
    /// Feature flags, by key: see [`crate::Flag`]. Left out of the
    /// encoding when empty, so snapshots without flags hash as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flags: BTreeMap<String, FlagSpec>,
    /// See [`crate::Secret`]. Left out of the encoding when empty, so
    /// snapshots without secrets hash as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretSpec>,
}

/// A secret as written: a certificate chain and its private key (each
/// inline PEM or a file on the agent's host), or a CA bundle. Its `Debug`
/// shows a private key only as its fingerprint.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// Required.
    pub name: String,
    /// PEM certificates, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<String>,
    /// PEM private key; shown redacted (`redacted:sha256:<hex>`) unless an
    /// admin asks for secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Absolute path of a PEM chain on the agent's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain_file: Option<String>,
    /// Absolute path of a PEM key on the agent's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<String>,
    /// PEM CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<String>,
    /// Absolute path of PEM CA certificates on the agent's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_file: Option<String>,
}

impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSpec")
            .field("name", &self.name)
            .field("certificate_chain", &self.certificate_chain)
            .field(
                "private_key",
                &self.private_key.as_deref().map(crate::keyprint::redacted),
            )
            .field("certificate_chain_file", &self.certificate_chain_file)
            .field("private_key_file", &self.private_key_file)
            .field("trusted_ca", &self.trusted_ca)
            .field("trusted_ca_file", &self.trusted_ca_file)
            .finish()
    }
}

/// A feature flag as written: a flagd flag definition, field names and all
/// (`defaultVariant` in camel case), so a flagd flag file pastes in as is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSpec {
    /// Required: `ENABLED` or `DISABLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// At least one; every value of one type (boolean, string, number or object).
    #[serde(default)]
    pub variants: BTreeMap<String, serde_json::Value>,
    /// Required: the variant served without targeting, or when it returns null.
    #[serde(
        rename = "defaultVariant",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_variant: Option<String>,
    /// Optional JSON Logic rule returning a variant name; `{}` is no rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<serde_json::Value>,
    /// Optional string, number or boolean entries handed to clients as is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// A listener as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Required.
    pub name: String,
    /// Required, `ip:port`.
    pub address: String,
    /// `http` (default), `https`, `tcp` or `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Required for `http` and `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table: Option<String>,
    /// Required for `tcp` and `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Required for `https` and `tls`: certificates by SNI name, the first
    /// being the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<ListenerCertificateSpec>,
    /// Optional for `https` and `tls`: a `trusted_ca` secret that must have
    /// signed the client's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

/// One certificate of a TLS listener as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerCertificateSpec {
    /// Required: a secret with a certificate and key.
    pub secret: String,
    /// DNS names or `*.suffix` wildcards; may be empty for the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

/// A route table as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTableSpec {
    /// Required.
    pub name: String,
    /// At least one.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// A route as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Optional; defaults to `<table>.<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Optional; defaults to `path_prefix: /`.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matcher: Option<RouteMatchSpec>,
    /// Required.
    pub cluster: String,
    /// Default 15000; 0 is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Default 300000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
}

/// A route match as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchSpec {
    /// Path starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Path equals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// Whole path matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Exact host or `*.suffix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// All must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
}

/// A header match as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSpec {
    /// Header name.
    pub name: String,
    /// Value equals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Whole value matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Header present (must be `true` when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A cluster as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Required.
    pub name: String,
    /// `round_robin` (default), `least_request` or `random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    /// Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// At least one.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Passive outlier detection settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// `http1` (default), `http2` or `auto` (ALPN, needs `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
}

/// TLS to a cluster's endpoints as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// SNI and the name checked in the certificate; default the endpoint's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// A `trusted_ca` secret; default the Mozilla root set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A certificate secret presented to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
}

/// Outlier detection as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_ms: Option<u64>,
    /// Default 300000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_ms: Option<u64>,
    /// Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// An endpoint as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Required, `ip:port`.
    pub address: String,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A rate limit as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Required.
    pub name: String,
    /// Required, > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Default: `requests_per_second` rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}
