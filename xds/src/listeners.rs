//! Listeners: a socket listener per Vane listener (an HTTP connection
//! manager fetching the route table over ADS, or a TCP proxy to the
//! cluster), and for every HTTP listener an API listener of the same name,
//! which is what a gRPC proxyless client asks for (`xds:///web` → LDS
//! `web`). A TLS listener (`https`, `tls`) gets one filter chain per
//! certificate, chosen by SNI (`filter_chain_match.server_names`, read by
//! the TLS inspector), with the first certificate's chain also as the
//! default chain for any other name or none; each chain terminates TLS
//! with its certificate fetched over SDS.

use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter,
    listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
    http_connection_manager::{CodecType, RouteSpecifier, StripPortMode},
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use vane_model::{Listener as VaneListener, ListenerTarget, ListenerTls, Snapshot};

use crate::parts::{HCM_FILTER, ROUTER_FILTER, TCP_PROXY_FILTER, ads, pack, socket_address};
use crate::ratelimit;
use crate::tls;

/// The listener filter reading the SNI name of a TLS client hello.
const TLS_INSPECTOR_FILTER: &str = "envoy.filters.listener.tls_inspector";

/// Socket listeners and API listeners, each as (name, message).
pub(crate) struct Listeners {
    pub(crate) sockets: Vec<(String, Listener)>,
    pub(crate) apis: Vec<(String, Listener)>,
}

/// The listeners of `snapshot`.
pub(crate) fn listeners(snapshot: &Snapshot) -> Listeners {
    let mut out = Listeners {
        sockets: Vec::with_capacity(snapshot.listeners.len()),
        apis: Vec::new(),
    };
    for l in &snapshot.listeners {
        let network_filter = match &l.target {
            ListenerTarget::RouteTable(table) => {
                let limited = snapshot
                    .route_table(table)
                    .is_some_and(|t| t.routes.iter().any(|r| r.rate_limit.is_some()));
                let hcm = HttpConnectionManager {
                    // Vane matches hosts without their port.
                    strip_port_mode: Some(StripPortMode::StripAnyHostPort(true)),
                    ..connection_manager(&l.name, table, limited)
                };
                out.apis
                    .push((l.name.clone(), api_listener(&l.name, table)));
                Filter {
                    name: HCM_FILTER.to_owned(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
                }
            }
            ListenerTarget::Cluster(cluster) => {
                let proxy = TcpProxy {
                    stat_prefix: l.name.clone(),
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
                    ..Default::default()
                };
                Filter {
                    name: TCP_PROXY_FILTER.to_owned(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack(&proxy))),
                }
            }
        };
        let listener = match &l.tls {
            None => Listener {
                name: l.name.clone(),
                address: Some(socket_address(l.address)),
                filter_chains: vec![FilterChain {
                    filters: vec![network_filter],
                    ..Default::default()
                }],
                ..Default::default()
            },
            Some(t) => tls_listener(l, t, &network_filter),
        };
        out.sockets.push((l.name.clone(), listener));
    }
    out
}

/// A TLS listener: per certificate with server names, a filter chain
/// matching them; the first certificate's chain again as the default (for
/// clients sending no name or an unlisted one). A later certificate with no
/// names is never chosen (as in vane-proxy) and gets no chain.
fn tls_listener(l: &VaneListener, t: &ListenerTls, network_filter: &Filter) -> Listener {
    let http = matches!(l.target, ListenerTarget::RouteTable(_));
    let chain = |index: usize, secret: &str, server_names: Vec<String>| FilterChain {
        name: format!("{}.{index}.{secret}", l.name),
        filter_chain_match: (!server_names.is_empty()).then(|| FilterChainMatch {
            server_names,
            ..Default::default()
        }),
        filters: vec![network_filter.clone()],
        transport_socket: Some(tls::downstream(t, secret, http)),
        ..Default::default()
    };
    let filter_chains = t
        .certificates
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.server_names.is_empty())
        .map(|(i, c)| {
            let names = c.server_names.iter().map(|n| n.to_file_form()).collect();
            chain(i, &c.secret, names)
        })
        .collect();
    let default_filter_chain = t.certificates.first().map(|c| FilterChain {
        name: format!("{}.default.{}", l.name, c.secret),
        ..chain(0, &c.secret, Vec::new())
    });
    Listener {
        name: l.name.clone(),
        address: Some(socket_address(l.address)),
        listener_filters: vec![ListenerFilter {
            name: TLS_INSPECTOR_FILTER.to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        filter_chains,
        default_filter_chain,
        ..Default::default()
    }
}

/// The API listener a gRPC client gets for `name`: the same route table,
/// with the router filter only (the rate limit filter would be ignored).
fn api_listener(name: &str, table: &str) -> Listener {
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&connection_manager(name, table, false))),
        }),
        ..Default::default()
    }
}

/// HTTP/1.1 and h2c (Vane's HTTP listeners speak both), routes from `table`
/// over ADS, the rate limit filter when a route uses one, then the router.
fn connection_manager(name: &str, table: &str, rate_limited: bool) -> HttpConnectionManager {
    let mut http_filters: Vec<HttpFilter> = Vec::with_capacity(2);
    if rate_limited {
        http_filters.push(ratelimit::http_filter());
    }
    // gRPC clients require the router's typed config.
    http_filters.push(HttpFilter {
        name: ROUTER_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..Default::default()
    });
    HttpConnectionManager {
        stat_prefix: name.to_owned(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: table.to_owned(),
        })),
        http_filters,
        ..Default::default()
    }
}
