//! The protobuf edge: wire messages in, domain types out (and back).
//!
//! `pb::Snapshot -> SnapshotSpec` destructures every message exhaustively so a
//! new proto field breaks the build here until it is handled; validation then
//! runs exactly as for a file. The `Display` of the errors is what an agent
//! sends as its NACK reason.

use prost::Message;
use vane_proto as pb;

use crate::canonical::{ContentHash, canonical_bytes_of};
use crate::error::{FieldError, ValidationError};
use crate::snapshot::Snapshot;
use crate::spec::*;
use crate::validate::validate;

/// Why bytes received on the wire are not a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a protobuf `vane.v1.Snapshot`.
    #[error("snapshot: not a valid vane.v1.Snapshot message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The message decodes but does not validate.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl Snapshot {
    /// The wire form of the canonical snapshot (defaults left out).
    pub fn to_proto(&self) -> pb::Snapshot {
        spec_to_proto(&self.canonical_spec())
    }

    /// Encodes the wire form (what agents receive and the store keeps).
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// The wire encoding and the content hash together, from one canonical
    /// form: what a push needs, for half the work of [`Self::encode`] then
    /// [`Self::content_hash`] (building the canonical form is most of it).
    pub fn encode_and_hash(&self) -> (Vec<u8>, ContentHash) {
        let spec = self.canonical_spec();
        let hash = ContentHash::of_bytes(&canonical_bytes_of(&spec));
        (spec_to_proto(&spec).encode_to_vec(), hash)
    }

    /// Decodes and validates an encoded `vane.v1.Snapshot`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let msg = pb::Snapshot::decode(bytes)?;
        Ok(Snapshot::try_from(msg)?)
    }
}

impl TryFrom<pb::Snapshot> for Snapshot {
    type Error = ValidationError;

    fn try_from(msg: pb::Snapshot) -> Result<Self, Self::Error> {
        validate(SnapshotSpec::try_from(msg)?)
    }
}

fn opt(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

impl TryFrom<pb::Snapshot> for SnapshotSpec {
    type Error = ValidationError;

    fn try_from(msg: pb::Snapshot) -> Result<Self, Self::Error> {
        let pb::Snapshot {
            listeners,
            route_tables,
            clusters,
            rate_limits,
            values,
            flags,
            secrets,
        } = msg;
        let mut errors = Vec::new();
        let mut json_values = std::collections::BTreeMap::new();
        for (k, text) in values {
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => {
                    json_values.insert(k, v);
                }
                Err(e) => errors.push(FieldError::new(
                    format!("values[{k:?}]"),
                    format!("not valid JSON: {e}"),
                )),
            }
        }
        let mut flag_specs = std::collections::BTreeMap::new();
        for (k, text) in flags {
            let mut de = serde_json::Deserializer::from_str(&text);
            match serde_path_to_error::deserialize::<_, crate::spec::FlagSpec>(&mut de) {
                Ok(f) => {
                    flag_specs.insert(k, f);
                }
                Err(e) => {
                    let at = e.path().to_string();
                    let path = if at == "." {
                        format!("flags[{k:?}]")
                    } else {
                        format!("flags[{k:?}].{at}")
                    };
                    errors.push(FieldError::new(path, format!("{}", e.inner())));
                }
            }
        }
        if let Some(e) = ValidationError::from_errors(errors) {
            return Err(e);
        }
        Ok(SnapshotSpec {
            listeners: listeners.into_iter().map(listener_from_proto).collect(),
            route_tables: route_tables
                .into_iter()
                .map(|t| {
                    let pb::RouteTable { name, routes } = t;
                    RouteTableSpec {
                        name,
                        routes: routes.into_iter().map(route_from_proto).collect(),
                    }
                })
                .collect(),
            clusters: clusters.into_iter().map(cluster_from_proto).collect(),
            rate_limits: rate_limits
                .into_iter()
                .map(|r| {
                    let pb::RateLimit {
                        name,
                        requests_per_second,
                        burst,
                    } = r;
                    RateLimitSpec {
                        name,
                        requests_per_second,
                        burst,
                    }
                })
                .collect(),
            values: json_values,
            flags: flag_specs,
            secrets: secrets.into_iter().map(secret_from_proto).collect(),
        })
    }
}

fn secret_from_proto(s: pb::Secret) -> SecretSpec {
    let pb::Secret {
        name,
        certificate_chain,
        private_key,
        certificate_chain_file,
        private_key_file,
        trusted_ca,
        trusted_ca_file,
    } = s;
    SecretSpec {
        name,
        certificate_chain: opt(certificate_chain),
        private_key: opt(private_key),
        certificate_chain_file: opt(certificate_chain_file),
        private_key_file: opt(private_key_file),
        trusted_ca: opt(trusted_ca),
        trusted_ca_file: opt(trusted_ca_file),
    }
}

/// The wire form of a secret as written.
pub fn secret_to_proto(s: &SecretSpec) -> pb::Secret {
    pb::Secret {
        name: s.name.clone(),
        certificate_chain: s.certificate_chain.clone().unwrap_or_default(),
        private_key: s.private_key.clone().unwrap_or_default(),
        certificate_chain_file: s.certificate_chain_file.clone().unwrap_or_default(),
        private_key_file: s.private_key_file.clone().unwrap_or_default(),
        trusted_ca: s.trusted_ca.clone().unwrap_or_default(),
        trusted_ca_file: s.trusted_ca_file.clone().unwrap_or_default(),
    }
}

fn listener_from_proto(l: pb::Listener) -> ListenerSpec {
    let pb::Listener {
        name,
        address,
        protocol,
        route_table,
        cluster,
        certificates,
        client_ca,
    } = l;
    ListenerSpec {
        name,
        address,
        protocol: opt(protocol),
        route_table: opt(route_table),
        cluster: opt(cluster),
        certificates: certificates
            .into_iter()
            .map(|c| {
                let pb::ListenerCertificate {
                    secret,
                    server_names,
                } = c;
                ListenerCertificateSpec {
                    secret,
                    server_names,
                }
            })
            .collect(),
        client_ca: opt(client_ca),
    }
}

fn route_from_proto(r: pb::Route) -> RouteSpec {
    let pb::Route {
        name,
        r#match,
        cluster,
        timeout_ms,
        retries,
        rate_limit,
        idle_timeout_ms,
    } = r;
    RouteSpec {
        name: opt(name),
        matcher: r#match.map(|m| {
            let pb::RouteMatch {
                path_prefix,
                path_exact,
                path_regex,
                host,
                headers,
            } = m;
            RouteMatchSpec {
                path_prefix,
                path_exact,
                path_regex,
                host: opt(host),
                headers: headers
                    .into_iter()
                    .map(|h| {
                        let pb::HeaderMatch {
                            name,
                            exact,
                            regex,
                            present,
                        } = h;
                        HeaderMatchSpec {
                            name,
                            exact,
                            regex,
                            present,
                        }
                    })
                    .collect(),
            }
        }),
        cluster,
        timeout_ms,
        idle_timeout_ms,
        retries,
        rate_limit: opt(rate_limit),
    }
}

fn cluster_from_proto(c: pb::Cluster) -> ClusterSpec {
    let pb::Cluster {
        name,
        lb,
        connect_timeout_ms,
        endpoints,
        outlier_detection,
        protocol,
        tls,
    } = c;
    ClusterSpec {
        name,
        lb: opt(lb),
        connect_timeout_ms,
        endpoints: endpoints
            .into_iter()
            .map(|e| {
                let pb::Endpoint { address, weight } = e;
                EndpointSpec { address, weight }
            })
            .collect(),
        outlier_detection: outlier_detection.map(|o| {
            let pb::OutlierDetection {
                consecutive_failures,
                base_ejection_ms,
                max_ejection_ms,
                max_ejection_percent,
            } = o;
            OutlierDetectionSpec {
                consecutive_failures,
                base_ejection_ms,
                max_ejection_ms,
                max_ejection_percent,
            }
        }),
        protocol: opt(protocol),
        tls: tls.map(|t| {
            let pb::UpstreamTls {
                sni,
                ca,
                client_cert,
            } = t;
            UpstreamTlsSpec {
                sni: opt(sni),
                ca: opt(ca),
                client_cert: opt(client_cert),
            }
        }),
    }
}

/// The wire form of a spec (validated or not): what `vanectl push` sends.
pub fn spec_to_proto(spec: &SnapshotSpec) -> pb::Snapshot {
    pb::Snapshot {
        listeners: spec
            .listeners
            .iter()
            .map(|l| pb::Listener {
                name: l.name.clone(),
                address: l.address.clone(),
                protocol: l.protocol.clone().unwrap_or_default(),
                route_table: l.route_table.clone().unwrap_or_default(),
                cluster: l.cluster.clone().unwrap_or_default(),
                certificates: l
                    .certificates
                    .iter()
                    .map(|c| pb::ListenerCertificate {
                        secret: c.secret.clone(),
                        server_names: c.server_names.clone(),
                    })
                    .collect(),
                client_ca: l.client_ca.clone().unwrap_or_default(),
            })
            .collect(),
        route_tables: spec
            .route_tables
            .iter()
            .map(|t| pb::RouteTable {
                name: t.name.clone(),
                routes: t
                    .routes
                    .iter()
                    .map(|r| pb::Route {
                        name: r.name.clone().unwrap_or_default(),
                        r#match: r.matcher.as_ref().map(|m| pb::RouteMatch {
                            path_prefix: m.path_prefix.clone(),
                            path_exact: m.path_exact.clone(),
                            path_regex: m.path_regex.clone(),
                            host: m.host.clone().unwrap_or_default(),
                            headers: m
                                .headers
                                .iter()
                                .map(|h| pb::HeaderMatch {
                                    name: h.name.clone(),
                                    exact: h.exact.clone(),
                                    regex: h.regex.clone(),
                                    present: h.present,
                                })
                                .collect(),
                        }),
                        cluster: r.cluster.clone(),
                        timeout_ms: r.timeout_ms,
                        idle_timeout_ms: r.idle_timeout_ms,
                        retries: r.retries,
                        rate_limit: r.rate_limit.clone().unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
        clusters: spec
            .clusters
            .iter()
            .map(|c| pb::Cluster {
                name: c.name.clone(),
                lb: c.lb.clone().unwrap_or_default(),
                connect_timeout_ms: c.connect_timeout_ms,
                endpoints: c
                    .endpoints
                    .iter()
                    .map(|e| pb::Endpoint {
                        address: e.address.clone(),
                        weight: e.weight,
                    })
                    .collect(),
                outlier_detection: c.outlier_detection.as_ref().map(|o| pb::OutlierDetection {
                    consecutive_failures: o.consecutive_failures,
                    base_ejection_ms: o.base_ejection_ms,
                    max_ejection_ms: o.max_ejection_ms,
                    max_ejection_percent: o.max_ejection_percent,
                }),
                protocol: c.protocol.clone().unwrap_or_default(),
                tls: c.tls.as_ref().map(|t| pb::UpstreamTls {
                    sni: t.sni.clone().unwrap_or_default(),
                    ca: t.ca.clone().unwrap_or_default(),
                    client_cert: t.client_cert.clone().unwrap_or_default(),
                }),
            })
            .collect(),
        rate_limits: spec
            .rate_limits
            .iter()
            .map(|r| pb::RateLimit {
                name: r.name.clone(),
                requests_per_second: r.requests_per_second,
                burst: r.burst,
            })
            .collect(),
        values: spec
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        flags: spec
            .flags
            .iter()
            .map(|(k, f)| {
                // Through `Value` so the object keys come out sorted: the
                // wire form is canonical (deltas compare it byte for byte).
                let text = serde_json::to_value(f)
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                (k.clone(), text)
            })
            .collect(),
        secrets: spec.secrets.iter().map(secret_to_proto).collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn encode_and_hash_is_encode_then_content_hash() {
        let spec = crate::parse_file(
            include_bytes!("../../examples/snapshot.yaml"),
            crate::Format::Yaml,
        )
        .unwrap();
        let snapshot = crate::validate(spec).unwrap();
        let (bytes, hash) = snapshot.encode_and_hash();
        assert_eq!(bytes, snapshot.encode());
        assert_eq!(hash, snapshot.content_hash());
    }

    /// Floats re-render and re-parse to the very same number, so the hash
    /// the server computes is the hash the agent computes. Fuzzing found
    /// 17-digit numbers that serde_json's default (inexact) parser moved to
    /// a neighbour: the agent then refused the version as a hash mismatch.
    #[test]
    fn floats_survive_the_wire_and_the_json_form() {
        for text in [
            "1844674407370950.125",
            "100.00000009220093",
            "0.1",
            "5e-324",
            "1.7976931348623157e308",
        ] {
            let msg = pb::Snapshot {
                values: [("v".to_string(), text.to_string())].into(),
                ..Default::default()
            };
            let s = Snapshot::try_from(msg).unwrap();
            let back = Snapshot::decode(&s.encode()).unwrap();
            assert_eq!(back, s, "{text}");
            assert_eq!(back.content_hash(), s.content_hash(), "{text}");
        }
        let file =
            br#"{"rate_limits": [{"name": "r", "requests_per_second": 100.00000009220093}]}"#;
        let s = crate::validate(crate::parse_file(file, crate::Format::Json).unwrap()).unwrap();
        let json = serde_json::to_vec(&s.to_json()).unwrap();
        let again =
            crate::validate(crate::parse_file(&json, crate::Format::Json).unwrap()).unwrap();
        assert_eq!(again.content_hash(), s.content_hash());
    }
}
