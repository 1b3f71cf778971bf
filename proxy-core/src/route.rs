//! Route tables compiled for the request path: matchers ready to run
//! (header names parsed, regexes compiled by the model), each route holding
//! its cluster, rate limit and metric handles, so matching a request
//! allocates nothing and looks nothing up by name.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::header::{HOST, HeaderMap, HeaderName};
use prometheus_client::metrics::counter::Counter;
use vane_model::{HeaderMatchKind, HostMatch, PathMatch, Route};

use crate::cluster::ClusterRt;
use crate::metrics::RouteStats;
use crate::ratelimit::RateLimiter;

/// One route, compiled.
#[derive(Debug)]
pub(crate) struct RouteRt {
    /// The route's name (metric label).
    pub(crate) name: String,
    path: PathMatch,
    host: Option<HostMatch>,
    headers: Box<[(HeaderName, HeaderMatchKind)]>,
    /// Where matching requests go.
    pub(crate) cluster: Arc<ClusterRt>,
    /// Whole-request deadline, from the request to the last byte of the
    /// response, retries included; `None`: no limit.
    pub(crate) timeout: Option<Duration>,
    /// Longest pause between bytes of a response body, or of a tunnel.
    pub(crate) idle_timeout: Duration,
    /// Most retries of one request.
    pub(crate) retries: u32,
    /// The route's token bucket.
    pub(crate) limit: Option<Arc<RateLimiter>>,
    /// Metric handles.
    pub(crate) stats: RouteStats,
}

impl RouteRt {
    /// Compiles `route`. Header names were validated by the model; one that
    /// still does not parse as an HTTP header name can never be present, so
    /// it becomes a matcher that never matches (an invalid byte).
    pub(crate) fn new(
        route: &Route,
        cluster: Arc<ClusterRt>,
        limit: Option<Arc<RateLimiter>>,
        stats: RouteStats,
    ) -> Self {
        let headers = route
            .matcher
            .headers
            .iter()
            .map(|h| match HeaderName::from_bytes(h.name.as_bytes()) {
                Ok(name) => (name, h.kind.clone()),
                Err(_) => (
                    HeaderName::from_static("x-vane-unmatchable"),
                    HeaderMatchKind::Exact("\u{0}".to_owned()),
                ),
            })
            .collect();
        Self {
            name: route.name.clone(),
            path: route.matcher.path.clone(),
            host: route.matcher.host.clone(),
            headers,
            cluster,
            timeout: route.timeout,
            idle_timeout: route.idle_timeout,
            retries: route.retries,
            limit,
            stats,
        }
    }

    /// Whether the request (`host` without port, `path` without query,
    /// `headers`) is this route's.
    #[inline]
    pub(crate) fn matches(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && match &self.host {
                None => true,
                Some(m) => host.is_some_and(|h| host_matches(m, h)),
            }
            && self.headers.iter().all(|(name, kind)| match kind {
                HeaderMatchKind::Present => headers.contains_key(name),
                HeaderMatchKind::Exact(v) => headers
                    .get_all(name)
                    .iter()
                    .any(|x| x.as_bytes() == v.as_bytes()),
                HeaderMatchKind::Regex(r) => headers
                    .get_all(name)
                    .iter()
                    .any(|x| x.to_str().is_ok_and(|s| r.is_match(s))),
            })
    }
}

fn host_matches(m: &HostMatch, host: &str) -> bool {
    match m {
        HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
        HostMatch::Suffix(s) => {
            let (host, s) = (host.as_bytes(), s.as_bytes());
            host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    }
}

/// An HTTP listener's routes, in match order.
#[derive(Debug)]
pub(crate) struct RouteTableRt {
    /// Routes; the first that matches wins.
    pub(crate) routes: Box<[Arc<RouteRt>]>,
    /// Requests that matched none.
    pub(crate) no_route: Counter,
}

impl RouteTableRt {
    /// The first route matching `req`.
    #[inline]
    pub(crate) fn find<B>(&self, req: &Request<B>) -> Option<&Arc<RouteRt>> {
        let host = request_host(req);
        let path = req.uri().path();
        let headers = req.headers();
        self.routes.iter().find(|r| r.matches(host, path, headers))
    }
}

/// The request's host without port: the URI's authority (HTTP/2, absolute
/// form) or the `Host` header.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.host());
    }
    req.headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(strip_port)
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix_ignoring_case() {
        let exact = HostMatch::Exact("api.example.com".into());
        assert!(host_matches(&exact, "API.example.com"));
        assert!(!host_matches(&exact, "x.api.example.com"));
        let suffix = HostMatch::Suffix(".example.com".into());
        assert!(host_matches(&suffix, "a.Example.COM"));
        assert!(host_matches(&suffix, "a.b.example.com"));
        assert!(!host_matches(&suffix, "example.com"));
        assert!(!host_matches(&suffix, "badexample.com"));
    }

    #[test]
    fn host_comes_from_the_authority_or_the_header() {
        let r = Request::get("http://Foo.example:81/x").body(()).unwrap();
        assert_eq!(request_host(&r), Some("Foo.example"));
        let r = Request::get("/x")
            .header("host", "bar.example:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), Some("bar.example"));
        let r = Request::get("/x").body(()).unwrap();
        assert_eq!(request_host(&r), None);
    }
}
