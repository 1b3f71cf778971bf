//! Tests of the whole translation: every mapping (each resource decoded
//! back), the hashes, the errors, what gRPC clients require, and the JSON
//! view over the committed descriptor set.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::ClusterDiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, address, config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    self as rv3, FilterConfig, HeaderMatcher, RouteConfiguration,
    header_matcher::HeaderMatchSpecifier, route_action::ClusterSpecifier,
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
    http_connection_manager::StripPortMode, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier as TcpCluster,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{self as pbuf, Any};
use prost::{Message, Name};
use sha2::{Digest, Sha256};

use crate::{Resource, ResourceType, Resources, TranslateError, json, translate};

/// Every field Vane has, at least once.
const FULL: &str = r#"
listeners:
  - { name: web, address: "127.0.0.1:18080", protocol: http, route_table: main }
  - { name: admin, address: "[::1]:18081", route_table: plain }
  - { name: db,  address: "127.0.0.1:15432", protocol: tcp,  cluster: postgres }
route_tables:
  - name: main
    routes:
      - name: api
        match: { path_prefix: /api, host: api.example.com, headers: [ { name: X-Env, exact: canary }, { name: x-id, regex: "[0-9]+" }, { name: x-debug, present: true } ] }
        cluster: api
        timeout_ms: 2000
        retries: 2
        rate_limit: api-limit
      - { match: { path_exact: /health, host: "*.example.com" }, cluster: web, rate_limit: slow }
      - { match: { path_regex: "/v[0-9]+/.*" }, cluster: web, timeout_ms: 100 }
      - { match: { path_prefix: / }, cluster: web }
  - name: plain
    routes:
      - { cluster: web }
clusters:
  - name: api
    lb: round_robin
    connect_timeout_ms: 500
    endpoints: [ { address: "127.0.0.1:9001", weight: 1 }, { address: "127.0.0.1:9002", weight: 3 } ]
    outlier_detection: { consecutive_failures: 7, base_ejection_ms: 1000, max_ejection_ms: 9000, max_ejection_percent: 30 }
  - { name: web, lb: least_request, endpoints: [ { address: "[::1]:9003" } ] }
  - { name: postgres, lb: random, endpoints: [ { address: "127.0.0.1:5432" } ] }
rate_limits:
  - { name: api-limit, requests_per_second: 100, burst: 200 }
  - { name: slow, requests_per_second: 0.5 }
values:
  feature.new_checkout: true
"#;

fn snapshot(yaml: &str) -> vane_model::Snapshot {
    let spec = vane_model::parse_file(yaml.as_bytes(), vane_model::Format::Yaml).expect("parses");
    vane_model::validate(spec).expect("valid")
}

fn full() -> Resources {
    translate(&snapshot(FULL)).expect("translates")
}

fn decode<M: Message + Name + Default>(any: &Any) -> M {
    assert_eq!(any.type_url, M::type_url());
    M::decode(any.value.as_slice()).expect("decodes")
}

fn get<M: Message + Name + Default>(
    map: &std::collections::BTreeMap<String, std::sync::Arc<Resource>>,
    name: &str,
) -> M {
    let r = map
        .get(name)
        .unwrap_or_else(|| panic!("no resource {name}"));
    assert_eq!(r.name, name);
    decode(&r.body)
}

fn dur(ms: u64) -> Option<pbuf::Duration> {
    Some(crate::parts::duration(Duration::from_millis(ms)))
}

fn hcm(listener: &Listener) -> HttpConnectionManager {
    let chain = &listener.filter_chains[0];
    assert_eq!(chain.filters.len(), 1);
    assert_eq!(
        chain.filters[0].name,
        "envoy.filters.network.http_connection_manager"
    );
    match &chain.filters[0].config_type {
        Some(filter::ConfigType::TypedConfig(any)) => decode(any),
        other => panic!("no typed config: {other:?}"),
    }
}

fn assert_rds_over_ads(hcm: &HttpConnectionManager, table: &str) {
    let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        panic!("not RDS: {:?}", hcm.route_specifier);
    };
    assert_eq!(rds.route_config_name, table);
    let source = rds.config_source.as_ref().expect("config source");
    assert!(matches!(
        source.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(source.resource_api_version, ApiVersion::V3 as i32);
}

fn filter_names(hcm: &HttpConnectionManager) -> Vec<(&str, bool, &str)> {
    hcm.http_filters
        .iter()
        .map(|f| {
            let url = match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(a)) => a.type_url.as_str(),
                _ => "",
            };
            (f.name.as_str(), f.is_optional, url)
        })
        .collect()
}

const ROUTER: (&str, bool, &str) = (
    "envoy.filters.http.router",
    false,
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
);

#[test]
fn an_http_listener_is_a_connection_manager_fetching_its_route_table_over_ads() {
    let r = full();
    let web: Listener = get(&r.listeners, "web");
    let Some(address::Address::SocketAddress(sa)) = web.address.and_then(|a| a.address) else {
        panic!("no socket address");
    };
    assert_eq!(sa.address, "127.0.0.1");
    assert_eq!(sa.port_specifier, Some(PortSpecifier::PortValue(18080)));
    let web: Listener = get(&r.listeners, "web");
    assert!(web.api_listener.is_none());
    let h = hcm(&web);
    assert_eq!(h.stat_prefix, "web");
    assert_rds_over_ads(&h, "main");
    assert_eq!(
        h.strip_port_mode,
        Some(StripPortMode::StripAnyHostPort(true))
    );
    assert_eq!(
        filter_names(&h),
        [
            (
                "envoy.filters.http.local_ratelimit",
                true,
                "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
            ),
            ROUTER
        ]
    );
    // The listener-level filter has no bucket: it limits nothing alone.
    let Some(http_filter::ConfigType::TypedConfig(any)) = &h.http_filters[0].config_type else {
        panic!("untyped");
    };
    let lrl: LocalRateLimit = decode(any);
    assert!(lrl.token_bucket.is_none());
    assert!(lrl.filter_enabled.is_none());

    // A table without rate limits: the router alone; IPv6 address.
    let admin: Listener = get(&r.listeners, "admin");
    let Some(address::Address::SocketAddress(sa)) = admin.address.clone().and_then(|a| a.address)
    else {
        panic!("no socket address");
    };
    assert_eq!(sa.address, "::1");
    assert_eq!(filter_names(&hcm(&admin)), [ROUTER]);
}

#[test]
fn a_tcp_listener_proxies_to_its_cluster() {
    let r = full();
    let db: Listener = get(&r.listeners, "db");
    let f = &db.filter_chains[0].filters[0];
    assert_eq!(f.name, "envoy.filters.network.tcp_proxy");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("untyped");
    };
    let proxy: TcpProxy = decode(any);
    assert_eq!(proxy.stat_prefix, "db");
    assert_eq!(
        proxy.cluster_specifier,
        Some(TcpCluster::Cluster("postgres".into()))
    );
    assert!(
        !r.api_listeners.contains_key("db"),
        "no API listener for tcp"
    );
}

#[test]
fn every_http_listener_has_an_api_listener_of_its_name_kept_out_of_wildcards() {
    let r = full();
    assert_eq!(r.api_listeners.keys().collect::<Vec<_>>(), ["admin", "web"]);
    let api: Listener = get(&r.api_listeners, "web");
    assert!(api.address.is_none() && api.filter_chains.is_empty());
    let h: HttpConnectionManager = decode(
        api.api_listener
            .as_ref()
            .and_then(|a| a.api_listener.as_ref())
            .expect("hcm"),
    );
    assert_rds_over_ads(&h, "main");
    // Only the router, with its typed config (gRPC requires it).
    assert_eq!(filter_names(&h), [ROUTER]);
    // LDS by name gives the API listener; a wildcard gives the sockets.
    let by_name = r.by_name(ResourceType::Listener, "web").expect("by name");
    assert!(decode::<Listener>(&by_name.body).api_listener.is_some());
    assert!(
        r.wildcard(ResourceType::Listener)
            .values()
            .all(|l| decode::<Listener>(&l.body).api_listener.is_none())
    );
    assert_eq!(r.wildcard(ResourceType::Listener).len(), 3);
}

fn routes(r: &Resources, table: &str) -> Vec<rv3::Route> {
    let rc: RouteConfiguration = get(&r.routes, table);
    assert_eq!(rc.name, table);
    assert_eq!(rc.virtual_hosts.len(), 1);
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    rc.virtual_hosts[0].routes.clone()
}

fn action(route: &rv3::Route) -> envoy_types::pb::envoy::config::route::v3::RouteAction {
    match &route.action {
        Some(rv3::route::Action::Route(a)) => a.clone(),
        other => panic!("{}: not a route action: {other:?}", route.name),
    }
}

fn string_match(h: &HeaderMatcher) -> (Option<MatchPattern>, bool) {
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => (m.match_pattern.clone(), m.ignore_case),
        other => panic!("{}: not a string match: {other:?}", h.name),
    }
}

#[test]
fn a_route_table_keeps_its_order_and_every_match() {
    let r = full();
    let routes = routes(&r, "main");
    let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["api", "main.1", "main.2", "main.3"]);

    // Host, then the headers in order; names lowercase.
    let m = routes[0].r#match.clone().expect("match");
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/api".into())));
    let headers: Vec<_> = m.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(headers, [":authority", "x-env", "x-id", "x-debug"]);
    assert_eq!(
        string_match(&m.headers[0]),
        (Some(MatchPattern::Exact("api.example.com".into())), true)
    );
    assert_eq!(
        string_match(&m.headers[1]),
        (Some(MatchPattern::Exact("canary".into())), false)
    );
    let (Some(MatchPattern::SafeRegex(re)), false) = string_match(&m.headers[2]) else {
        panic!("not a regex");
    };
    assert_eq!(re.regex, "[0-9]+");
    assert!(re.engine_type.is_none(), "RE2 is the default engine");
    assert_eq!(
        m.headers[3].header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );

    // Wildcard host: a suffix with its dot, ignoring case; exact path.
    let m = routes[1].r#match.clone().expect("match");
    assert_eq!(
        m.path_specifier,
        Some(PathSpecifier::Path("/health".into()))
    );
    assert_eq!(
        string_match(&m.headers[0]),
        (Some(MatchPattern::Suffix(".example.com".into())), true)
    );
    // Regex path, no headers.
    let m = routes[2].r#match.clone().expect("match");
    let Some(PathSpecifier::SafeRegex(re)) = m.path_specifier else {
        panic!("not a regex path");
    };
    assert_eq!(re.regex, "/v[0-9]+/.*");
    assert!(m.headers.is_empty());
    // The default match.
    let plain = super::tests::routes(&r, "plain");
    assert_eq!(
        plain[0].r#match.clone().and_then(|m| m.path_specifier),
        Some(PathSpecifier::Prefix("/".into()))
    );
}

#[test]
fn a_route_sends_to_its_cluster_with_its_timeout_and_idempotent_retries() {
    let r = full();
    let routes = routes(&r, "main");
    let a = action(&routes[0]);
    assert_eq!(
        a.cluster_specifier,
        Some(ClusterSpecifier::Cluster("api".into()))
    );
    assert_eq!(a.timeout, dur(2000));
    let retry = a.retry_policy.expect("retries");
    assert_eq!(retry.retry_on, "connect-failure,gateway-error");
    assert_eq!(retry.num_retries, Some(pbuf::UInt32Value { value: 2 }));
    let back_off = retry.retry_back_off.expect("back-off");
    assert_eq!(back_off.base_interval, dur(10));
    assert_eq!(back_off.max_interval, dur(100));
    let methods: Vec<_> = retry
        .retriable_request_headers
        .iter()
        .map(|h| {
            assert_eq!(h.name, ":method");
            match string_match(h) {
                (Some(MatchPattern::Exact(m)), false) => m,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(
        methods,
        ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
    );

    // No retries: no policy (gRPC refuses num_retries 0); default timeout.
    let a = action(&routes[3]);
    assert!(a.retry_policy.is_none());
    assert_eq!(a.timeout, dur(15_000));
    assert_eq!(action(&routes[2]).timeout, dur(100));
}

fn per_route_limit(route: &rv3::Route) -> Option<LocalRateLimit> {
    assert!(route.typed_per_filter_config.len() <= 1);
    let any = route
        .typed_per_filter_config
        .get("envoy.filters.http.local_ratelimit")?;
    let wrapper: FilterConfig = decode(any);
    assert!(wrapper.is_optional, "gRPC clients must be able to skip it");
    assert!(!wrapper.disabled);
    Some(decode(wrapper.config.as_ref().expect("config")))
}

#[test]
fn a_routes_rate_limit_is_its_own_enforced_bucket() {
    let r = full();
    let routes = routes(&r, "main");
    let l = per_route_limit(&routes[0]).expect("limited");
    assert_eq!(l.stat_prefix, "vane_rate_limit.api-limit");
    let tb = l.token_bucket.expect("bucket");
    assert_eq!(tb.max_tokens, 200);
    // 100 per second: 5 every 50 ms.
    assert_eq!(tb.tokens_per_fill, Some(pbuf::UInt32Value { value: 5 }));
    assert_eq!(tb.fill_interval, dur(50));
    for p in [l.filter_enabled, l.filter_enforced] {
        let p = p.expect("percent").default_value.expect("value");
        assert_eq!((p.numerator, p.denominator), (100, 0), "100 per hundred");
    }
    assert!(l.enable_retry_after_header);
    // Half a request per second, burst defaulted to 1.
    let l = per_route_limit(&routes[1]).expect("limited");
    let tb = l.token_bucket.expect("bucket");
    assert_eq!((tb.max_tokens, tb.fill_interval), (1, dur(2000)));
    assert!(per_route_limit(&routes[2]).is_none());
}

#[test]
fn a_cluster_fetches_its_endpoints_over_ads_with_its_settings() {
    let r = full();
    let api: Cluster = get(&r.clusters, "api");
    assert_eq!(
        api.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(3)),
        "EDS"
    );
    let eds = api.eds_cluster_config.expect("eds");
    assert_eq!(eds.service_name, "api");
    assert!(matches!(
        eds.eds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.clone()),
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(api.connect_timeout, dur(500));
    let o = api.outlier_detection.expect("outlier detection");
    let v = |x: u32| Some(pbuf::UInt32Value { value: x });
    assert_eq!(o.consecutive_5xx, v(7));
    assert_eq!(o.base_ejection_time, dur(1000));
    assert_eq!(o.max_ejection_time, dur(9000));
    assert_eq!(o.max_ejection_percent, v(30));
    assert_eq!(o.enforcing_success_rate, v(0));
    // Defaults.
    let web: Cluster = get(&r.clusters, "web");
    assert_eq!(web.connect_timeout, dur(1000));
    let o = web.outlier_detection.expect("outlier detection");
    assert_eq!((o.consecutive_5xx, o.max_ejection_percent), (v(5), v(50)));
    assert_eq!(
        (o.base_ejection_time, o.max_ejection_time),
        (dur(30_000), dur(300_000))
    );
}

fn policies(c: &Cluster) -> Vec<(String, String)> {
    assert_eq!(c.lb_policy, 0, "the legacy field stays unset");
    c.load_balancing_policy
        .as_ref()
        .expect("policy")
        .policies
        .iter()
        .map(|p| {
            let t = p.typed_extension_config.as_ref().expect("typed");
            let url = t.typed_config.as_ref().expect("config").type_url.clone();
            (t.name.clone(), url)
        })
        .collect()
}

#[test]
fn the_clusters_policy_comes_first_and_round_robin_second() {
    let r = full();
    let rr = (
        "envoy.load_balancing_policies.round_robin".to_owned(),
        "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"
            .to_owned(),
    );
    assert_eq!(
        policies(&get(&r.clusters, "api")),
        std::slice::from_ref(&rr)
    );
    let web: Cluster = get(&r.clusters, "web");
    let p = policies(&web);
    assert_eq!(p[0].0, "envoy.load_balancing_policies.least_request");
    assert_eq!(&p[1..], std::slice::from_ref(&rr));
    let any = web.load_balancing_policy.expect("policy").policies[0]
        .typed_extension_config
        .clone()
        .and_then(|t| t.typed_config)
        .expect("config");
    let lr: LeastRequest = decode(&any);
    assert_eq!(lr.choice_count, Some(pbuf::UInt32Value { value: 2 }));
    let p = policies(&get(&r.clusters, "postgres"));
    assert_eq!(
        p[0],
        (
            "envoy.load_balancing_policies.random".to_owned(),
            "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random"
                .to_owned()
        )
    );
    assert_eq!(p[1..], [rr]);
}

#[test]
fn endpoints_are_one_weighted_locality_in_order() {
    let r = full();
    let cla: ClusterLoadAssignment = get(&r.endpoints, "api");
    assert_eq!(cla.cluster_name, "api");
    assert_eq!(cla.endpoints.len(), 1);
    let locality = &cla.endpoints[0];
    assert_eq!(
        locality.load_balancing_weight,
        Some(pbuf::UInt32Value { value: 1 })
    );
    let eps: Vec<_> = locality
        .lb_endpoints
        .iter()
        .map(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("no endpoint");
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.clone().and_then(|a| a.address)
            else {
                panic!("no address");
            };
            let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                panic!("no port");
            };
            (sa.address, port, e.load_balancing_weight.map(|w| w.value))
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("127.0.0.1".to_owned(), 9001, Some(1)),
            ("127.0.0.1".to_owned(), 9002, Some(3))
        ]
    );
    assert_eq!(
        r.endpoints.keys().collect::<Vec<_>>(),
        ["api", "postgres", "web"]
    );
}

#[test]
fn grpc_clients_requirements_hold_for_every_resource() {
    let r = full();
    // API listeners: an HCM with RDS over ADS and the typed router last.
    for l in r.api_listeners.values() {
        let l: Listener = decode(&l.body);
        let h: HttpConnectionManager = decode(
            l.api_listener
                .and_then(|a| a.api_listener)
                .as_ref()
                .expect("hcm"),
        );
        assert!(matches!(h.route_specifier, Some(RouteSpecifier::Rds(_))));
        assert_eq!(filter_names(&h).last(), Some(&ROUTER));
    }
    // Routes: a cluster action, non-empty domains, no num_retries of 0,
    // every per-filter override optional.
    for rc in r.routes.values() {
        let rc: RouteConfiguration = decode(&rc.body);
        for vh in &rc.virtual_hosts {
            assert!(!vh.domains.is_empty());
            for route in &vh.routes {
                let a = action(route);
                assert!(matches!(
                    a.cluster_specifier,
                    Some(ClusterSpecifier::Cluster(_))
                ));
                if let Some(p) = a.retry_policy {
                    assert!(p.num_retries.is_some_and(|n| n.value > 0));
                }
                let _ = per_route_limit(route);
            }
        }
    }
    // Clusters: EDS over ADS; endpoints: every locality weighted.
    for c in r.clusters.values() {
        let c: Cluster = decode(&c.body);
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(3))
        );
        let eds = c.eds_cluster_config.expect("eds");
        assert!(matches!(
            eds.eds_config.and_then(|s| s.config_source_specifier),
            Some(ConfigSourceSpecifier::Ads(_))
        ));
    }
    for e in r.endpoints.values() {
        let cla: ClusterLoadAssignment = decode(&e.body);
        assert!(
            cla.endpoints
                .iter()
                .all(|l| l.load_balancing_weight.is_some_and(|w| w.value > 0))
        );
        // gRPC clients refuse a locality left unset.
        assert!(cla.endpoints.iter().all(|l| l.locality.is_some()));
    }
}

fn hashes(r: &Resources) -> Vec<(String, String)> {
    [
        &r.listeners,
        &r.api_listeners,
        &r.routes,
        &r.clusters,
        &r.endpoints,
    ]
    .into_iter()
    .flat_map(|m| m.values().map(|x| (x.name.clone(), x.hash.clone())))
    .collect()
}

#[test]
fn a_hash_is_the_sha256_of_the_type_url_and_the_encoding() {
    let r = full();
    for res in [
        &r.listeners,
        &r.api_listeners,
        &r.routes,
        &r.clusters,
        &r.endpoints,
    ]
    .into_iter()
    .flat_map(|m| m.values())
    {
        let mut h = Sha256::new();
        h.update(res.body.type_url.as_bytes());
        h.update(&res.body.value);
        assert_eq!(res.hash, hex::encode(h.finalize()), "{}", res.name);
        assert_eq!(res.hash.len(), 64);
    }
}

#[test]
fn the_same_content_always_has_the_same_hashes() {
    let first = full();
    for _ in 0..5 {
        assert_eq!(hashes(&full()), hashes(&first));
    }
    // Only the order of named collections and of keys differs.
    let reordered = r#"
rate_limits:
  - { burst: 1, requests_per_second: 0.5, name: slow }
  - { name: api-limit, burst: 200, requests_per_second: 100 }
clusters:
  - { name: postgres, lb: random, endpoints: [ { address: "127.0.0.1:5432" } ] }
  - { endpoints: [ { address: "[::1]:9003", weight: 1 } ], name: web, lb: least_request }
  - name: api
    outlier_detection: { max_ejection_percent: 30, consecutive_failures: 7, max_ejection_ms: 9000, base_ejection_ms: 1000 }
    endpoints: [ { address: "127.0.0.1:9001" }, { weight: 3, address: "127.0.0.1:9002" } ]
    connect_timeout_ms: 500
listeners:
  - { name: db, address: "127.0.0.1:15432", protocol: tcp, cluster: postgres }
  - { route_table: plain, name: admin, address: "[::1]:18081" }
  - { name: web, address: "127.0.0.1:18080", route_table: main }
route_tables:
  - name: plain
    routes: [ { cluster: web } ]
  - name: main
    routes:
      - cluster: api
        name: api
        rate_limit: api-limit
        retries: 2
        timeout_ms: 2000
        match: { headers: [ { name: x-env, exact: canary }, { name: x-id, regex: "[0-9]+" }, { name: x-debug, present: true } ], host: API.example.com, path_prefix: /api }
      - { match: { host: "*.example.com", path_exact: /health }, cluster: web, rate_limit: slow }
      - { match: { path_regex: "/v[0-9]+/.*" }, cluster: web, timeout_ms: 100 }
      - { cluster: web, timeout_ms: 15000 }
"#;
    let second = translate(&snapshot(reordered)).expect("translates");
    assert_eq!(hashes(&second), hashes(&first));
    assert_eq!(second, first);
}

#[test]
fn a_change_moves_only_the_hashes_of_what_it_touches() {
    let first = full();
    let changed = FULL.replace(
        r#"{ address: "127.0.0.1:9002", weight: 3 }"#,
        r#"{ address: "127.0.0.1:9002", weight: 4 }"#,
    );
    let second = translate(&snapshot(&changed)).expect("translates");
    let moved: Vec<_> = hashes(&first)
        .into_iter()
        .zip(hashes(&second))
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0)
        .collect();
    assert_eq!(moved, ["api"], "only the api cluster's endpoints");
    assert_ne!(first.endpoints["api"].hash, second.endpoints["api"].hash);
    assert_eq!(first.clusters["api"].hash, second.clusters["api"].hash);
}

#[test]
fn an_empty_snapshot_has_no_resources() {
    let r = translate(&vane_model::Snapshot::default()).expect("translates");
    assert_eq!(r, Resources::default());
}

#[test]
fn a_snapshot_that_bypassed_validation_gets_an_error_naming_the_field() {
    let mut s = snapshot(FULL);
    s.rate_limits.retain(|l| l.name != "slow");
    assert_eq!(
        translate(&s),
        Err(TranslateError::Unsupported {
            field: "route_tables[0].routes[1].rate_limit".into(),
            reason: "unknown rate limit \"slow\"".into(),
        })
    );
    let mut s = snapshot(FULL);
    s.rate_limits[0].burst = 1 << 40;
    let err = translate(&s).expect_err("burst out of range");
    assert_eq!(
        err.to_string(),
        "rate_limits[\"api-limit\"].burst: 1099511627776 is out of range (1 to 4294967295)"
    );
}

#[test]
fn the_descriptor_set_covers_every_emitted_type() {
    let r = full();
    for res in [
        &r.listeners,
        &r.api_listeners,
        &r.routes,
        &r.clusters,
        &r.endpoints,
    ]
    .into_iter()
    .flat_map(|m| m.values())
    {
        // Rendering resolves every nested Any through the set, so a type
        // it lacks fails here.
        let v = json::resource_to_json(res).unwrap_or_else(|e| panic!("{}: {e}", res.name));
        assert_eq!(v["@type"], res.body.type_url.as_str());
        assert!(json::knows(&res.body.type_url));
    }
    assert!(!json::knows(
        "type.googleapis.com/envoy.config.core.v3.NoSuchThing"
    ));
}

#[test]
fn the_json_view_is_envoys() {
    let r = full();
    let web = json::resource_to_json(&r.listeners["web"]).expect("json");
    assert_eq!(web["name"], "web");
    assert_eq!(web["address"]["socket_address"]["port_value"], 18080);
    let hcm = &web["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    assert_eq!(hcm["rds"]["route_config_name"], "main");
    assert_eq!(hcm["rds"]["config_source"]["resource_api_version"], "V3");
    assert!(hcm["rds"]["config_source"]["ads"].is_object());
    let cluster = json::resource_to_json(&r.clusters["api"]).expect("json");
    assert_eq!(cluster["type"], "EDS");
    assert_eq!(cluster["connect_timeout"], "0.500s");
    let routes = json::resource_to_json(&r.routes["main"]).expect("json");
    let limit = &routes["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"];
    assert_eq!(
        limit["@type"],
        "type.googleapis.com/envoy.config.route.v3.FilterConfig"
    );
    assert_eq!(limit["config"]["token_bucket"]["max_tokens"], 200);
    // A type the set lacks is an error, not a panic.
    let unknown = Any {
        type_url: "type.googleapis.com/envoy.config.core.v3.NoSuchThing".into(),
        value: vec![],
    };
    assert!(json::any_to_json(&unknown).is_err());
}
