//! The validated domain types. Built only by [`crate::validate`]; every value
//! here has passed validation, so consumers (agent, proxy) never re-check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::secrets::{
    ListenerTls, PemSource, Secret, SecretKind, ServerName, SniCertificate, UpstreamProtocol,
    UpstreamTls,
};

/// One whole configuration of a group: applied together or not at all.
///
/// Named collections are sorted by name; routes and endpoints keep the order
/// they were given in (first route that matches wins).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Sockets the data plane listens on.
    pub listeners: Vec<Listener>,
    /// Ordered route lists, referenced by HTTP listeners.
    pub route_tables: Vec<RouteTable>,
    /// Upstream endpoint sets.
    pub clusters: Vec<Cluster>,
    /// Named token buckets, referenced by routes.
    pub rate_limits: Vec<RateLimit>,
    /// Free-form values (feature flags, thresholds).
    pub values: BTreeMap<String, serde_json::Value>,
    /// Feature flags by key (see [`crate::flags`]).
    pub flags: BTreeMap<String, crate::flags::Flag>,
    /// Certificates, keys and CA bundles, by name (see [`Secret`]).
    pub secrets: Vec<Secret>,
}

impl Snapshot {
    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The route table called `name`.
    pub fn route_table(&self, name: &str) -> Option<&RouteTable> {
        self.route_tables.iter().find(|t| t.name == name)
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The rate limit called `name`.
    pub fn rate_limit(&self, name: &str) -> Option<&RateLimit> {
        self.rate_limits.iter().find(|r| r.name == name)
    }

    /// The secret called `name`.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.name == name)
    }

    /// Whether any secret holds a private key inline (what the control
    /// server never sends over plaintext to a non-loopback peer).
    pub fn has_private_keys(&self) -> bool {
        self.secrets.iter().any(Secret::has_inline_key)
    }
}

/// A socket the data plane listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// Where to bind.
    pub address: SocketAddr,
    /// What is spoken on it, and where it sends traffic.
    pub target: ListenerTarget,
    /// TLS termination (`https` and `tls` listeners).
    pub tls: Option<ListenerTls>,
}

impl Listener {
    /// The listener's protocol.
    pub fn protocol(&self) -> Protocol {
        match (&self.target, self.tls.is_some()) {
            (ListenerTarget::RouteTable(_), false) => Protocol::Http,
            (ListenerTarget::RouteTable(_), true) => Protocol::Https,
            (ListenerTarget::Cluster(_), false) => Protocol::Tcp,
            (ListenerTarget::Cluster(_), true) => Protocol::Tls,
        }
    }
}

/// Protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 and h2c, routed by a route table.
    Http,
    /// HTTP/1.1 and h2 (ALPN) over TLS, routed by a route table.
    Https,
    /// Raw TCP, copied to a cluster.
    Tcp,
    /// TLS terminated, then the plaintext bytes copied to a cluster.
    Tls,
}

impl Protocol {
    /// The name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
        }
    }

    /// Whether the listener terminates TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

/// Where a listener sends traffic; the variant fixes the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTarget {
    /// An HTTP listener routed by this route table.
    RouteTable(String),
    /// A TCP listener forwarding to this cluster.
    Cluster(String),
}

/// An ordered list of routes; the first that matches a request wins.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    /// Unique name.
    pub name: String,
    /// Routes in match order. Never empty.
    pub routes: Vec<Route>,
}

/// One route: a match, and where and how to send what matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Unique within its table; defaults to `<table>.<index>`.
    pub name: String,
    /// What requests this route takes.
    pub matcher: RouteMatch,
    /// The cluster receiving the requests.
    pub cluster: String,
    /// Whole-request timeout, from the request to the last byte of the
    /// response, retries included; `None` is no limit. An upgraded
    /// connection (WebSocket) is bound by `idle_timeout` only.
    pub timeout: Option<Duration>,
    /// Longest pause between bytes of a response body or a tunnel.
    pub idle_timeout: Duration,
    /// Retries after a 502/503/504 answer, for idempotent methods without a
    /// body (the data plane retries a request that reached no upstream
    /// whatever this says).
    pub retries: u32,
    /// Name of the rate limit applied, if any.
    pub rate_limit: Option<String>,
}

/// What a route matches: all of path, host and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// Path matcher.
    pub path: PathMatch,
    /// Host matcher, if any.
    pub host: Option<HostMatch>,
    /// Header matchers; all must match.
    pub headers: Vec<HeaderMatch>,
}

/// How a request path is matched.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    /// The path starts with this string.
    Prefix(String),
    /// The path equals this string.
    Exact(String),
    /// The whole path matches this regular expression.
    Regex(Pattern),
}

/// How the request's host (`:authority` or `Host`, without port) is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Equal, ignoring ASCII case (stored lowercase).
    Exact(String),
    /// `*.example.com`: ends with `.example.com` (stored lowercase, with the dot).
    Suffix(String),
}

impl HostMatch {
    /// The form used in files: `api.example.com` or `*.example.com`.
    pub fn to_file_form(&self) -> String {
        match self {
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Suffix(s) => format!("*{s}"),
        }
    }
}

/// A header match.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// Header name, lowercase.
    pub name: String,
    /// How its value is matched.
    pub kind: HeaderMatchKind,
}

/// How a header's value is matched.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatchKind {
    /// The value equals this string.
    Exact(String),
    /// The whole value matches this regular expression.
    Regex(Pattern),
    /// The header is present, whatever its value.
    Present,
}

/// A compiled regular expression, anchored to match the whole input, that
/// remembers its source. Compared by source.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        // `source` must be one expression on its own before it is wrapped:
        // `a)|(b` compiles only inside `^(?:…)$`, and there it escapes the
        // anchors (`^(?:a)|(b)$` matches anything starting with `a`). Found
        // by fuzzing; checking costs a second compile, at validation only.
        regex::RegexBuilder::new(source)
            .size_limit(1 << 20)
            .build()?;
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// The expression as written in the snapshot.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `input` matches.
    pub fn is_match(&self, input: &str) -> bool {
        self.regex.is_match(input)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// A set of upstream endpoints and how to balance between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Unique name.
    pub name: String,
    /// Load-balancing policy.
    pub lb: LbPolicy,
    /// Timeout of a TCP connect to one endpoint.
    pub connect_timeout: Duration,
    /// Endpoints, never empty, addresses unique.
    pub endpoints: Vec<Endpoint>,
    /// Passive outlier detection.
    pub outlier: OutlierDetection,
    /// The HTTP version spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints, if any.
    pub tls: Option<UpstreamTls>,
}

/// When the data plane ejects an endpoint on its own observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive connect failures or 5xx that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection; doubles on each repeated ejection.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most endpoints of the cluster ejected at once, in percent, rounded
    /// down. At 100 every endpoint may be ejected; the data plane then
    /// balances over all of them (panic mode).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Load-balancing policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Power of two choices on outstanding requests, weighted.
    LeastRequest,
    /// Weighted random.
    Random,
}

impl LbPolicy {
    /// The name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::LeastRequest => "least_request",
            LbPolicy::Random => "random",
        }
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// A named token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Unique name.
    pub name: String,
    /// Refill rate, tokens per second.
    pub requests_per_second: f64,
    /// Bucket size.
    pub burst: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_is_one_whole_expression() {
        let p = Pattern::new("/v[0-9]+/.*").expect("valid");
        assert!(p.is_match("/v2/items"));
        assert!(!p.is_match("x/v2/items"));
        // Compiles only inside the anchors, and would escape them there.
        for source in ["a)|(b", "/admin)|(.*", "x)|(?:y"] {
            assert!(Pattern::new(source).is_err(), "{source:?} was accepted");
        }
    }
}
