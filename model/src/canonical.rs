//! The canonical form of a snapshot and everything derived from it: the
//! content hash, canonical YAML (what `vanectl get` prints and `diff` compares)
//! and unified diffs.
//!
//! Two forms, both with named collections sorted by name:
//! - the *effective* form ([`Snapshot::to_spec`]): every default filled in;
//!   what operators read (`vanectl get`, `diff`, the sidecar's output);
//! - the *canonical* form ([`Snapshot::canonical_spec`]): every value equal to
//!   its default left out. Its encoding, compact JSON with object keys sorted
//!   (serde_json's default map is ordered), is what the hash covers, so the
//!   same content hashes the same whatever the key order, formatting or
//!   spelled-out defaults of the file it came from, and a later release that
//!   adds a field with a default does not change the hash of snapshots that
//!   do not use it (agents of both releases agree).

use std::fmt;

use sha2::{Digest, Sha256};

use crate::snapshot::*;
use crate::spec::*;
use crate::validate::{
    DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, default_burst,
};

/// SHA-256 of a snapshot's canonical encoding, shown as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// The hash of arbitrary bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let digest = Sha256::digest(bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_slice());
        Self(out)
    }

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// The lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Snapshot {
    /// The canonical form: defaults filled in, named collections sorted.
    pub fn to_spec(&self) -> SnapshotSpec {
        SnapshotSpec {
            listeners: self.listeners.iter().map(listener_spec).collect(),
            route_tables: self
                .route_tables
                .iter()
                .map(|t| RouteTableSpec {
                    name: t.name.clone(),
                    routes: t.routes.iter().map(route_spec).collect(),
                })
                .collect(),
            clusters: self
                .clusters
                .iter()
                .map(|c| ClusterSpec {
                    name: c.name.clone(),
                    lb: Some(c.lb.as_str().to_owned()),
                    connect_timeout_ms: Some(millis(c.connect_timeout)),
                    endpoints: c
                        .endpoints
                        .iter()
                        .map(|e| EndpointSpec {
                            address: e.address.to_string(),
                            weight: Some(e.weight),
                        })
                        .collect(),
                    outlier_detection: Some(OutlierDetectionSpec {
                        consecutive_failures: Some(c.outlier.consecutive_failures),
                        base_ejection_ms: Some(millis(c.outlier.base_ejection)),
                        max_ejection_ms: Some(millis(c.outlier.max_ejection)),
                        max_ejection_percent: Some(c.outlier.max_ejection_percent),
                    }),
                    protocol: Some(c.protocol.as_str().to_owned()),
                    tls: c.tls.as_ref().map(|t| UpstreamTlsSpec {
                        sni: t.sni.clone(),
                        ca: t.ca.clone(),
                        client_cert: t.client_cert.clone(),
                    }),
                })
                .collect(),
            rate_limits: self
                .rate_limits
                .iter()
                .map(|r| RateLimitSpec {
                    name: r.name.clone(),
                    requests_per_second: Some(r.requests_per_second),
                    burst: Some(r.burst),
                })
                .collect(),
            values: self.values.clone(),
            flags: self
                .flags
                .iter()
                .map(|(k, f)| (k.clone(), flag_spec(f)))
                .collect(),
            secrets: self.secrets.iter().map(secret_spec).collect(),
        }
    }

    /// The canonical form: like [`Self::to_spec`] but with every value equal
    /// to its default left out.
    pub fn canonical_spec(&self) -> SnapshotSpec {
        let mut spec = self.to_spec();
        for l in &mut spec.listeners {
            elide(&mut l.protocol, &Protocol::Http.as_str().to_owned());
        }
        for t in &mut spec.route_tables {
            for (i, r) in t.routes.iter_mut().enumerate() {
                elide(&mut r.name, &format!("{}.{i}", t.name));
                elide(&mut r.timeout_ms, &DEFAULT_TIMEOUT_MS);
                elide(&mut r.idle_timeout_ms, &DEFAULT_IDLE_TIMEOUT_MS);
                elide(&mut r.retries, &0);
                elide(
                    &mut r.matcher,
                    &RouteMatchSpec {
                        path_prefix: Some("/".into()),
                        ..RouteMatchSpec::default()
                    },
                );
            }
        }
        let outlier = OutlierDetection::default();
        let default_outlier = OutlierDetectionSpec {
            consecutive_failures: Some(outlier.consecutive_failures),
            base_ejection_ms: Some(millis(outlier.base_ejection)),
            max_ejection_ms: Some(millis(outlier.max_ejection)),
            max_ejection_percent: Some(outlier.max_ejection_percent),
        };
        for c in &mut spec.clusters {
            elide(&mut c.lb, &LbPolicy::RoundRobin.as_str().to_owned());
            elide(&mut c.connect_timeout_ms, &DEFAULT_CONNECT_TIMEOUT_MS);
            for e in &mut c.endpoints {
                elide(&mut e.weight, &1);
            }
            elide(&mut c.outlier_detection, &default_outlier);
            elide(
                &mut c.protocol,
                &UpstreamProtocol::Http1.as_str().to_owned(),
            );
        }
        for r in &mut spec.rate_limits {
            if let Some(rps) = r.requests_per_second {
                elide(&mut r.burst, &default_burst(rps));
            }
        }
        spec
    }

    /// The canonical encoding: compact JSON of [`Self::canonical_spec`], keys sorted.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical_bytes_of(&self.canonical_spec())
    }

    /// SHA-256 over [`Self::canonical_bytes`].
    pub fn content_hash(&self) -> ContentHash {
        ContentHash::of_bytes(&self.canonical_bytes())
    }

    /// Canonical YAML: what `vanectl get` prints and `vanectl diff` compares.
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(&self.to_spec()).unwrap_or_default()
    }

    /// The canonical form as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_spec()).unwrap_or_default()
    }
}

/// The canonical encoding of a canonical spec: compact JSON, keys sorted.
pub(crate) fn canonical_bytes_of(spec: &SnapshotSpec) -> Vec<u8> {
    // Going through `Value` sorts every object's keys, including those
    // inside `values`. Neither step can fail for these types: every map
    // key is a string and floats are finite (validated).
    serde_json::to_value(spec)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_default()
}

/// Clears `slot` when it holds the default.
fn elide<T: PartialEq>(slot: &mut Option<T>, default: &T) {
    if slot.as_ref() == Some(default) {
        *slot = None;
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn flag_spec(f: &crate::flags::Flag) -> FlagSpec {
    FlagSpec {
        state: Some(f.state.as_str().to_owned()),
        variants: f.variants.clone(),
        default_variant: Some(f.default_variant.clone()),
        targeting: f.targeting.as_ref().map(|r| r.source().clone()),
        metadata: f.metadata.clone(),
    }
}

fn secret_spec(s: &Secret) -> SecretSpec {
    let mut spec = SecretSpec {
        name: s.name.clone(),
        ..SecretSpec::default()
    };
    let split = |p: &PemSource| match p {
        PemSource::Inline(pem) => (Some(pem.clone()), None),
        PemSource::File(path) => (None, Some(path.display().to_string())),
    };
    match &s.kind {
        SecretKind::Certificate { chain, key } => {
            (spec.certificate_chain, spec.certificate_chain_file) = split(chain);
            (spec.private_key, spec.private_key_file) = split(key);
        }
        SecretKind::TrustedCa(ca) => (spec.trusted_ca, spec.trusted_ca_file) = split(ca),
    }
    spec
}

fn listener_spec(l: &Listener) -> ListenerSpec {
    let (route_table, cluster) = match &l.target {
        ListenerTarget::RouteTable(t) => (Some(t.clone()), None),
        ListenerTarget::Cluster(c) => (None, Some(c.clone())),
    };
    ListenerSpec {
        name: l.name.clone(),
        address: l.address.to_string(),
        protocol: Some(l.protocol().as_str().to_owned()),
        route_table,
        cluster,
        certificates: l
            .tls
            .iter()
            .flat_map(|t| &t.certificates)
            .map(|c| ListenerCertificateSpec {
                secret: c.secret.clone(),
                server_names: c
                    .server_names
                    .iter()
                    .map(ServerName::to_file_form)
                    .collect(),
            })
            .collect(),
        client_ca: l.tls.as_ref().and_then(|t| t.client_ca.clone()),
    }
}

fn route_spec(r: &Route) -> RouteSpec {
    let m = &r.matcher;
    let (path_prefix, path_exact, path_regex) = match &m.path {
        PathMatch::Prefix(p) => (Some(p.clone()), None, None),
        PathMatch::Exact(p) => (None, Some(p.clone()), None),
        PathMatch::Regex(p) => (None, None, Some(p.source().to_owned())),
    };
    RouteSpec {
        name: Some(r.name.clone()),
        matcher: Some(RouteMatchSpec {
            path_prefix,
            path_exact,
            path_regex,
            host: m.host.as_ref().map(HostMatch::to_file_form),
            headers: m
                .headers
                .iter()
                .map(|h| {
                    let mut spec = HeaderMatchSpec {
                        name: h.name.clone(),
                        ..HeaderMatchSpec::default()
                    };
                    match &h.kind {
                        HeaderMatchKind::Exact(v) => spec.exact = Some(v.clone()),
                        HeaderMatchKind::Regex(p) => spec.regex = Some(p.source().to_owned()),
                        HeaderMatchKind::Present => spec.present = Some(true),
                    }
                    spec
                })
                .collect(),
        }),
        cluster: r.cluster.clone(),
        timeout_ms: Some(r.timeout.map_or(0, millis)),
        idle_timeout_ms: Some(millis(r.idle_timeout)),
        retries: Some(r.retries),
        rate_limit: r.rate_limit.clone(),
    }
}

/// A unified diff (3 lines of context) between two texts; empty when equal.
pub fn unified_diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string()
}
