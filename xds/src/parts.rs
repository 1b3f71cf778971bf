//! Small Envoy building blocks the translation shares: packing a message
//! into a resource (with its content hash), the ADS config source,
//! durations, socket addresses and the filter names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    self as core, AggregatedConfigSource, ApiVersion, ConfigSource,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::google::protobuf::{self as pbuf, Any};
use prost::{Message, Name};
use sha2::{Digest, Sha256};

use crate::types::Resource;

/// The HTTP connection manager network filter.
pub(crate) const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// The TCP proxy network filter.
pub(crate) const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// The router HTTP filter (always last).
pub(crate) const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// The local rate limit HTTP filter; also the key of a route's
/// `typed_per_filter_config` entry for it.
pub(crate) const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";

/// `message` packed into an `Any`.
pub(crate) fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A translated resource: `message` packed, with the hash of its type URL
/// and encoding.
///
/// prost encodes fields in tag order and repeated fields in order, so the
/// same message always has the same bytes; the one exception is a map field
/// with more than one entry (prost's maps are `HashMap`s), and the
/// translation never fills one with more than one entry.
pub(crate) fn resource<M: Message + Name>(name: &str, message: &M) -> Arc<Resource> {
    let body = pack(message);
    let hash = content_hash(&body);
    Arc::new(Resource {
        name: name.to_owned(),
        body,
        hash,
    })
}

/// Lowercase hex SHA-256 of the type URL followed by the encoded message.
pub(crate) fn content_hash(body: &Any) -> String {
    let mut h = Sha256::new();
    h.update(body.type_url.as_bytes());
    h.update(&body.value);
    hex::encode(h.finalize())
}

/// "Fetch this over the ADS stream the bootstrap names" (resources that
/// refer to other resources: RDS from a listener, EDS from a cluster).
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// A protobuf duration.
pub(crate) fn duration(d: Duration) -> pbuf::Duration {
    pbuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A TCP socket address.
pub(crate) fn socket_address(addr: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

/// A `google.protobuf.UInt32Value`.
pub(crate) fn u32_value(value: u32) -> pbuf::UInt32Value {
    pbuf::UInt32Value { value }
}
