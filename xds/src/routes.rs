//! Route tables as `RouteConfiguration`s: one virtual host matching every
//! domain, holding the table's routes in order, so Vane's first-match rule
//! (host included) is Envoy's.
//!
//! - A host match is a `:authority` header match (exact, or suffix for
//!   `*.example.com`, ignoring case); the socket listeners' connection
//!   managers strip the port first, as Vane matches the host without it.
//! - Retries: `connect-failure,gateway-error`, `num_retries` from the route,
//!   and `retriable_request_headers` on `:method` so only idempotent
//!   methods are retried (vane-proxy's list: GET, HEAD, OPTIONS, TRACE,
//!   PUT, DELETE). One Envoy route per Vane route, so a route's rate limit
//!   stays one bucket.
//! - A rate limit is the route's `typed_per_filter_config` entry for the
//!   local rate limit filter ([`crate::ratelimit`]).

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{
    self as route, HeaderMatcher, RetryPolicy, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, header_matcher::HeaderMatchSpecifier, retry_policy::RetryBackOff,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use vane_model::{HeaderMatchKind, HostMatch, PathMatch, Pattern, Snapshot};

use crate::parts::{LOCAL_RATE_LIMIT_FILTER, duration, u32_value};
use crate::ratelimit;
use crate::types::TranslateError;

/// What Envoy retries: a failed connect, and a 502, 503 or 504 answer.
pub(crate) const RETRY_ON: &str = "connect-failure,gateway-error";
/// The methods vane-proxy retries (proxy-core's `is_idempotent`).
pub(crate) const IDEMPOTENT_METHODS: [&str; 6] =
    ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];
/// The name of the one virtual host of every route configuration.
const VIRTUAL_HOST: &str = "vane";
/// vane-proxy's pause before a retry starts at 10 ms and doubles up to
/// 100 ms, fully jittered; Envoy's back-off has the same shape.
const RETRY_BASE: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);

/// One `RouteConfiguration` per route table, named after it.
pub(crate) fn route_configurations(
    snapshot: &Snapshot,
) -> Result<Vec<(String, RouteConfiguration)>, TranslateError> {
    snapshot
        .route_tables
        .iter()
        .enumerate()
        .map(|(t, table)| {
            let routes = table
                .routes
                .iter()
                .enumerate()
                .map(|(r, vane)| route(snapshot, vane, &format!("route_tables[{t}].routes[{r}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let config = RouteConfiguration {
                name: table.name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: VIRTUAL_HOST.to_owned(),
                    domains: vec!["*".to_owned()],
                    routes,
                    ..Default::default()
                }],
                ..Default::default()
            };
            Ok((table.name.clone(), config))
        })
        .collect()
}

fn route(
    snapshot: &Snapshot,
    vane: &vane_model::Route,
    field: &str,
) -> Result<route::Route, TranslateError> {
    let mut headers = Vec::new();
    if let Some(host) = &vane.matcher.host {
        headers.push(host_matcher(host));
    }
    headers.extend(vane.matcher.headers.iter().map(|h| HeaderMatcher {
        name: h.name.clone(),
        header_match_specifier: Some(match &h.kind {
            HeaderMatchKind::Exact(v) => string_match(MatchPattern::Exact(v.clone()), false),
            HeaderMatchKind::Regex(p) => string_match(MatchPattern::SafeRegex(regex(p)), false),
            HeaderMatchKind::Present => HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }));
    let path = match &vane.matcher.path {
        PathMatch::Prefix(p) => PathSpecifier::Prefix(p.clone()),
        PathMatch::Exact(p) => PathSpecifier::Path(p.clone()),
        PathMatch::Regex(p) => PathSpecifier::SafeRegex(regex(p)),
    };
    let mut typed_per_filter_config = HashMap::new();
    if let Some(name) = &vane.rate_limit {
        let limit = snapshot
            .rate_limit(name)
            .ok_or_else(|| TranslateError::Unsupported {
                field: format!("{field}.rate_limit"),
                reason: format!("unknown rate limit {name:?}"),
            })?;
        // One entry at most: the hash of the encoding stays stable.
        typed_per_filter_config.insert(
            LOCAL_RATE_LIMIT_FILTER.to_owned(),
            ratelimit::per_route(limit, &format!("rate_limits[{name:?}]"))?,
        );
    }
    let action = RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(vane.cluster.clone())),
        // Envoy's route timeout also covers the whole response; 0 is none.
        timeout: Some(duration(vane.timeout.unwrap_or_default())),
        // Envoy's stream idle timeout is 5 minutes, Vane's default.
        idle_timeout: (vane.idle_timeout
            != std::time::Duration::from_millis(vane_model::validate::DEFAULT_IDLE_TIMEOUT_MS))
        .then(|| duration(vane.idle_timeout)),
        retry_policy: (vane.retries > 0).then(|| retry_policy(vane.retries)),
        ..Default::default()
    };
    Ok(route::Route {
        name: vane.name.clone(),
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            headers,
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(action)),
        typed_per_filter_config,
        ..Default::default()
    })
}

/// `:authority` matched as Vane matches the host: exactly or by suffix
/// (`.example.com`, stored with its dot), ignoring ASCII case.
fn host_matcher(host: &HostMatch) -> HeaderMatcher {
    let pattern = match host {
        HostMatch::Exact(h) => MatchPattern::Exact(h.clone()),
        HostMatch::Suffix(s) => MatchPattern::Suffix(s.clone()),
    };
    HeaderMatcher {
        name: ":authority".to_owned(),
        header_match_specifier: Some(string_match(pattern, true)),
        ..Default::default()
    }
}

fn string_match(pattern: MatchPattern, ignore_case: bool) -> HeaderMatchSpecifier {
    HeaderMatchSpecifier::StringMatch(StringMatcher {
        ignore_case,
        match_pattern: Some(pattern),
    })
}

/// A Vane pattern as a safe regex. Envoy and gRPC match safe regexes
/// against the whole value, as Vane does; the engine is RE2 (the default:
/// `google_re2` is deprecated), and an expression Rust's `regex` accepts
/// but RE2 does not is refused by the client, which NACKs.
fn regex(pattern: &Pattern) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.source().to_owned(),
        ..Default::default()
    }
}

fn retry_policy(retries: u32) -> RetryPolicy {
    RetryPolicy {
        retry_on: RETRY_ON.to_owned(),
        num_retries: Some(u32_value(retries)),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(duration(RETRY_BASE)),
            max_interval: Some(duration(RETRY_MAX)),
        }),
        // Any one of them: the request's method is idempotent.
        retriable_request_headers: IDEMPOTENT_METHODS
            .iter()
            .map(|m| HeaderMatcher {
                name: ":method".to_owned(),
                header_match_specifier: Some(string_match(
                    MatchPattern::Exact((*m).to_owned()),
                    false,
                )),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
