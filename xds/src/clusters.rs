//! Clusters and their endpoints: a `Cluster` fetching its endpoints over
//! ADS (EDS), with the connect timeout, outlier detection and a
//! load-balancing policy list (Vane's policy, then round robin for clients
//! that do not know it), TLS to the endpoints (a transport socket naming
//! the secrets over SDS) and the HTTP version spoken to them, and a
//! `ClusterLoadAssignment` with one locality.

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy, OutlierDetection,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
    load_balancing_policy::Policy,
};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::core::v3::{Locality, TypedExtensionConfig};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::{
    least_request::v3::LeastRequest, random::v3::Random, round_robin::v3::RoundRobin,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        AutoHttpConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
        explicit_http_config::ProtocolConfig,
    },
};
use envoy_types::pb::google::protobuf::Any;
use vane_model::{LbPolicy, Snapshot, UpstreamProtocol};

use crate::parts::{ads, duration, pack, socket_address, u32_value};
use crate::tls;

/// The key of a cluster's `typed_extension_protocol_options` entry saying
/// which HTTP version its endpoints speak.
pub(crate) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// vane-proxy's least request picks the better of two random endpoints.
const LEAST_REQUEST_CHOICES: u32 = 2;

/// One `Cluster` per Vane cluster.
pub(crate) fn clusters(snapshot: &Snapshot) -> Vec<(String, Cluster)> {
    snapshot
        .clusters
        .iter()
        .map(|c| {
            let mut policies = vec![lb_policy(c.lb)];
            if c.lb != LbPolicy::RoundRobin {
                policies.push(lb_policy(LbPolicy::RoundRobin));
            }
            let o = &c.outlier;
            let cluster = Cluster {
                name: c.name.clone(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
                eds_cluster_config: Some(EdsClusterConfig {
                    eds_config: Some(ads()),
                    service_name: c.name.clone(),
                }),
                connect_timeout: Some(duration(c.connect_timeout)),
                load_balancing_policy: Some(LoadBalancingPolicy { policies }),
                outlier_detection: Some(OutlierDetection {
                    // Connect failures count as 5xx while local-origin
                    // errors are not split out (the default), as in Vane.
                    consecutive_5xx: Some(u32_value(o.consecutive_failures)),
                    base_ejection_time: Some(duration(o.base_ejection)),
                    max_ejection_time: Some(duration(o.max_ejection)),
                    max_ejection_percent: Some(u32_value(o.max_ejection_percent)),
                    // Vane has no success-rate ejection; Envoy enforces it
                    // by default.
                    enforcing_success_rate: Some(u32_value(0)),
                    ..Default::default()
                }),
                transport_socket: c.tls.as_ref().map(|t| {
                    let ips: Vec<std::net::IpAddr> =
                        c.endpoints.iter().map(|e| e.address.ip()).collect();
                    tls::upstream(t, c.protocol, &ips)
                }),
                // One entry at most: the hash stays stable (see `resource`).
                typed_extension_protocol_options: protocol_options(c.protocol)
                    .map(|o| (HTTP_PROTOCOL_OPTIONS.to_owned(), o))
                    .into_iter()
                    .collect(),
                ..Default::default()
            };
            (c.name.clone(), cluster)
        })
        .collect()
}

/// The HTTP version of the endpoints: nothing for HTTP/1.1 (Envoy's
/// default), HTTP/2 explicitly (prior knowledge, or ALPN `h2` over TLS),
/// or by ALPN (`auto`, which validation allows only with TLS).
fn protocol_options(protocol: UpstreamProtocol) -> Option<Any> {
    let options = match protocol {
        UpstreamProtocol::Http1 => return None,
        UpstreamProtocol::Http2 => {
            UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            })
        }
        UpstreamProtocol::Auto => UpstreamProtocolOptions::AutoConfig(AutoHttpConfig {
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..Default::default()
        }),
    };
    Some(pack(&HttpProtocolOptions {
        upstream_protocol_options: Some(options),
        ..Default::default()
    }))
}

fn lb_policy(lb: LbPolicy) -> Policy {
    let (name, config) = match lb {
        LbPolicy::RoundRobin => (
            "envoy.load_balancing_policies.round_robin",
            pack(&RoundRobin::default()),
        ),
        LbPolicy::LeastRequest => (
            "envoy.load_balancing_policies.least_request",
            pack(&LeastRequest {
                choice_count: Some(u32_value(LEAST_REQUEST_CHOICES)),
                ..Default::default()
            }),
        ),
        LbPolicy::Random => (
            "envoy.load_balancing_policies.random",
            pack(&Random::default()),
        ),
    };
    Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.to_owned(),
            typed_config: Some(config),
        }),
    }
}

/// One `ClusterLoadAssignment` per cluster: one locality of weight 1 (gRPC
/// clients ignore a locality without a weight) holding the endpoints in
/// order, each with its weight.
pub(crate) fn load_assignments(snapshot: &Snapshot) -> Vec<(String, ClusterLoadAssignment)> {
    snapshot
        .clusters
        .iter()
        .map(|c| {
            let lb_endpoints = c
                .endpoints
                .iter()
                .map(|e| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(e.address)),
                        ..Default::default()
                    })),
                    load_balancing_weight: Some(u32_value(e.weight)),
                    ..Default::default()
                })
                .collect();
            let cla = ClusterLoadAssignment {
                cluster_name: c.name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    // gRPC clients refuse a locality left unset (Envoy
                    // does not mind): the one locality, named nothing.
                    locality: Some(Locality::default()),
                    lb_endpoints,
                    load_balancing_weight: Some(u32_value(1)),
                    ..Default::default()
                }],
                ..Default::default()
            };
            (c.name.clone(), cla)
        })
        .collect()
}
