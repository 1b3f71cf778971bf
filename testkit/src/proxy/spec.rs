//! Snapshot builders for the proxy tests: listeners, route tables, routes,
//! clusters, outlier detection, rate limits, secrets and TLS listeners in
//! the file's shape
//! ([`vane_model::SnapshotSpec`]), with the defaults the tests share.

use std::net::SocketAddr;

use vane_model::spec::{
    ClusterSpec, EndpointSpec, ListenerCertificateSpec, ListenerSpec, OutlierDetectionSpec,
    RateLimitSpec, RouteMatchSpec, RouteSpec, RouteTableSpec, SecretSpec,
};

/// An HTTP listener.
pub fn http_listener(name: &str, addr: SocketAddr, table: &str) -> ListenerSpec {
    ListenerSpec {
        name: name.into(),
        address: addr.to_string(),
        protocol: Some("http".into()),
        route_table: Some(table.into()),
        ..ListenerSpec::default()
    }
}

/// A TCP listener.
pub fn tcp_listener(name: &str, addr: SocketAddr, cluster: &str) -> ListenerSpec {
    ListenerSpec {
        name: name.into(),
        address: addr.to_string(),
        protocol: Some("tcp".into()),
        cluster: Some(cluster.into()),
        ..ListenerSpec::default()
    }
}

/// An HTTPS listener serving `certificates`: (secret, server names), the
/// first being the default.
pub fn https_listener(
    name: &str,
    addr: SocketAddr,
    table: &str,
    certificates: &[(&str, &[&str])],
) -> ListenerSpec {
    ListenerSpec {
        protocol: Some("https".into()),
        certificates: listener_certificates(certificates),
        ..http_listener(name, addr, table)
    }
}

/// A TLS listener (TLS terminated, then TCP to `cluster`).
pub fn tls_listener(
    name: &str,
    addr: SocketAddr,
    cluster: &str,
    certificates: &[(&str, &[&str])],
) -> ListenerSpec {
    ListenerSpec {
        protocol: Some("tls".into()),
        certificates: listener_certificates(certificates),
        ..tcp_listener(name, addr, cluster)
    }
}

fn listener_certificates(certificates: &[(&str, &[&str])]) -> Vec<ListenerCertificateSpec> {
    certificates
        .iter()
        .map(|(secret, names)| ListenerCertificateSpec {
            secret: (*secret).into(),
            server_names: names.iter().map(|n| (*n).into()).collect(),
        })
        .collect()
}

/// A certificate secret with inline PEM.
pub fn certificate_secret(name: &str, cert_pem: &str, key_pem: &str) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        certificate_chain: Some(cert_pem.into()),
        private_key: Some(key_pem.into()),
        ..SecretSpec::default()
    }
}

/// A CA bundle secret with inline PEM.
pub fn ca_secret(name: &str, ca_pem: &str) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        trusted_ca: Some(ca_pem.into()),
        ..SecretSpec::default()
    }
}

/// A route table.
pub fn table(name: &str, routes: Vec<RouteSpec>) -> RouteTableSpec {
    RouteTableSpec {
        name: name.into(),
        routes,
    }
}

/// A route on a path prefix.
pub fn prefix(name: &str, prefix: &str, cluster: &str) -> RouteSpec {
    RouteSpec {
        name: Some(name.into()),
        matcher: Some(RouteMatchSpec {
            path_prefix: Some(prefix.into()),
            ..RouteMatchSpec::default()
        }),
        cluster: cluster.into(),
        ..RouteSpec::default()
    }
}

/// A cluster of `(address, weight)` endpoints with policy `lb`.
pub fn cluster(name: &str, lb: &str, endpoints: &[(SocketAddr, u32)]) -> ClusterSpec {
    ClusterSpec {
        name: name.into(),
        lb: Some(lb.into()),
        connect_timeout_ms: Some(500),
        endpoints: endpoints
            .iter()
            .map(|(a, w)| EndpointSpec {
                address: a.to_string(),
                weight: Some(*w),
            })
            .collect(),
        ..ClusterSpec::default()
    }
}

/// Outlier detection settings.
pub fn outlier(failures: u32, base_ms: u64, max_ms: u64, percent: u32) -> OutlierDetectionSpec {
    OutlierDetectionSpec {
        consecutive_failures: Some(failures),
        base_ejection_ms: Some(base_ms),
        max_ejection_ms: Some(max_ms),
        max_ejection_percent: Some(percent),
    }
}

/// A rate limit.
pub fn rate_limit(name: &str, rps: f64, burst: u64) -> RateLimitSpec {
    RateLimitSpec {
        name: name.into(),
        requests_per_second: Some(rps),
        burst: Some(burst),
    }
}
