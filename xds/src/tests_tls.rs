//! Tests of the TLS translation: secrets as SDS resources (inline bytes or
//! file names, which carry keys), TLS listeners (a chain per certificate by
//! SNI, the default chain, client certificates), TLS and HTTP/2 clusters,
//! and the JSON view of them.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, config_source::ConfigSourceSpecifier, data_source::Specifier,
    transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, Listener, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, SdsSecretConfig, Secret, UpstreamTlsContext,
    common_tls_context::ValidationContextType, secret,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{UpstreamProtocolOptions, explicit_http_config::ProtocolConfig},
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use vane_pki::{Ca, LeafParams};

use crate::{ResourceType, Resources, json, translate};

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("      {l}\n")).collect()
}

/// Two certificates (`site` for example.test and its subdomains, `other`
/// for other.test), a client CA, a key file secret; an https listener with
/// both certificates and client certificates required, a tls listener with
/// a nameless default; clusters in plaintext HTTP/2, TLS with a CA and a
/// client certificate (auto), TLS with the system's CAs (http1).
fn yaml() -> String {
    let ca = Ca::new("xds test CA").expect("ca");
    let site = ca
        .issue(&LeafParams::server(["example.test", "*.example.test"]))
        .expect("site");
    let other = ca
        .issue(&LeafParams::server(["other.test"]))
        .expect("other");
    format!(
        r#"
secrets:
  - name: site
    certificate_chain: |
{}    private_key: |
{}  - name: other
    certificate_chain: |
{}    private_key: |
{}  - name: clients
    trusted_ca: |
{}  - name: from-files
    certificate_chain_file: /etc/envoy/tls/from-files.crt
    private_key_file: /etc/envoy/tls/from-files.key
listeners:
  - name: web-tls
    address: "127.0.0.1:18443"
    protocol: https
    route_table: main
    client_ca: clients
    certificates:
      - {{ secret: site, server_names: ["example.test", "*.example.test"] }}
      - {{ secret: other, server_names: ["other.test"] }}
  - name: raw-tls
    address: "127.0.0.1:18444"
    protocol: tls
    cluster: h2c
    certificates: [ {{ secret: other }} ]
route_tables:
  - name: main
    routes: [ {{ cluster: upstream-tls }} ]
clusters:
  - name: h2c
    endpoints: [ {{ address: "127.0.0.1:9000" }} ]
    protocol: http2
  - name: upstream-tls
    endpoints: [ {{ address: "127.0.0.1:9001" }} ]
    protocol: auto
    tls: {{ sni: api.internal, ca: clients, client_cert: site }}
  - name: public
    endpoints: [ {{ address: "127.0.0.1:9002" }} ]
    tls: {{}}
"#,
        indent(&site.cert_pem),
        indent(&site.key_pem),
        indent(&other.cert_pem),
        indent(&other.key_pem),
        indent(&ca.cert_pem()),
    )
}

fn resources() -> Resources {
    let spec = vane_model::parse_file(yaml().as_bytes(), vane_model::Format::Yaml).expect("parses");
    let snapshot = vane_model::validate(spec).expect("valid");
    translate(&snapshot).expect("translates")
}

fn decode<M: Message + Name + Default>(any: &Any) -> M {
    assert_eq!(any.type_url, M::type_url());
    M::decode(any.value.as_slice()).expect("decodes")
}

fn socket<M: Message + Name + Default>(t: &TransportSocket) -> M {
    assert_eq!(t.name, "envoy.transport_sockets.tls");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &t.config_type else {
        panic!("no typed config");
    };
    decode(any)
}

fn assert_sds(config: &SdsSecretConfig, name: &str) {
    assert_eq!(config.name, name);
    let source = config.sds_config.as_ref().expect("sds_config");
    assert!(matches!(
        source.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
}

fn downstream(chain: &FilterChain) -> DownstreamTlsContext {
    socket(chain.transport_socket.as_ref().expect("transport socket"))
}

fn inline(d: Option<&DataSource>) -> String {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).expect("utf-8"),
        other => panic!("not inline bytes: {other:?}"),
    }
}

fn filename(d: Option<&DataSource>) -> String {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(f)) => f.clone(),
        other => panic!("not a file name: {other:?}"),
    }
}

#[test]
fn secrets_are_sds_resources_inline_or_by_file_name() {
    let r = resources();
    assert_eq!(
        r.secrets.keys().collect::<Vec<_>>(),
        ["clients", "from-files", "other", "site"]
    );
    let site: Secret = decode(&r.secrets["site"].body);
    assert_eq!(site.name, "site");
    let Some(secret::Type::TlsCertificate(cert)) = &site.r#type else {
        panic!("site is not a certificate: {site:?}");
    };
    assert!(inline(cert.certificate_chain.as_ref()).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(inline(cert.private_key.as_ref()).starts_with("-----BEGIN PRIVATE KEY-----"));

    let files: Secret = decode(&r.secrets["from-files"].body);
    let Some(secret::Type::TlsCertificate(cert)) = &files.r#type else {
        panic!("from-files is not a certificate");
    };
    assert_eq!(
        filename(cert.certificate_chain.as_ref()),
        "/etc/envoy/tls/from-files.crt"
    );
    assert_eq!(
        filename(cert.private_key.as_ref()),
        "/etc/envoy/tls/from-files.key"
    );

    let ca: Secret = decode(&r.secrets["clients"].body);
    let Some(secret::Type::ValidationContext(v)) = &ca.r#type else {
        panic!("clients is not a validation context");
    };
    assert!(inline(v.trusted_ca.as_ref()).starts_with("-----BEGIN CERTIFICATE-----"));

    // Only inline keys count as keys travelling with the resources.
    assert_eq!(
        r.secrets_with_keys.iter().collect::<Vec<_>>(),
        ["other", "site"]
    );
    assert_eq!(
        ResourceType::from_type_url(&r.secrets["site"].body.type_url),
        Some(ResourceType::Secret)
    );
    assert_eq!(
        r.by_name(ResourceType::Secret, "site"),
        Some(&r.secrets["site"])
    );
}

#[test]
fn without_inline_keys_drops_exactly_the_keyed_secrets() {
    let r = resources();
    let safe = r.without_inline_keys().expect("there are keyed secrets");
    assert_eq!(
        safe.secrets.keys().collect::<Vec<_>>(),
        ["clients", "from-files"]
    );
    assert!(safe.secrets_with_keys.is_empty());
    assert_eq!(safe.listeners, r.listeners);
    assert_eq!(safe.clusters, r.clusters);
    assert!(safe.without_inline_keys().is_none());
}

#[test]
fn an_https_listener_has_a_chain_per_certificate_by_sni_and_the_first_as_default() {
    let r = resources();
    let l: Listener = decode(&r.listeners["web-tls"].body);
    // The TLS inspector reads the SNI name the chains match on.
    assert_eq!(l.listener_filters.len(), 1);
    assert_eq!(
        l.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    assert!(matches!(
        &l.listener_filters[0].config_type,
        Some(listener_filter::ConfigType::TypedConfig(a)) if a.type_url.ends_with("tls_inspector.v3.TlsInspector")
    ));
    let names: Vec<Vec<String>> = l
        .filter_chains
        .iter()
        .map(|c| c.filter_chain_match.clone().expect("match").server_names)
        .collect();
    assert_eq!(
        names,
        [
            vec!["example.test".to_owned(), "*.example.test".to_owned()],
            vec!["other.test".to_owned()]
        ]
    );
    let chains: Vec<&FilterChain> = l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .collect();
    assert_eq!(chains.len(), 3);
    let default = chains[2];
    assert!(default.filter_chain_match.is_none());
    let mut chain_names: Vec<&str> = chains.iter().map(|c| c.name.as_str()).collect();
    chain_names.sort_unstable();
    chain_names.dedup();
    assert_eq!(chain_names.len(), 3, "chain names are unique");
    for (chain, secret) in chains.iter().zip(["site", "other", "site"]) {
        // Each chain routes as an http listener would.
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            panic!("no filter config");
        };
        let hcm: HttpConnectionManager = decode(any);
        assert_eq!(hcm.stat_prefix, "web-tls");
        let ctx = downstream(chain);
        let common = ctx.common_tls_context.expect("common");
        assert_eq!(common.tls_certificate_sds_secret_configs.len(), 1);
        assert_sds(&common.tls_certificate_sds_secret_configs[0], secret);
        assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
        // client_ca: client certificates required, checked against it.
        assert_eq!(ctx.require_client_certificate.map(|b| b.value), Some(true));
        let Some(ValidationContextType::ValidationContextSdsSecretConfig(ca)) =
            &common.validation_context_type
        else {
            panic!("no client CA: {:?}", common.validation_context_type);
        };
        assert_sds(ca, "clients");
    }
    // gRPC's API listener of an https listener routes as for http.
    assert!(r.api_listeners.contains_key("web-tls"));
}

#[test]
fn a_tls_listener_terminates_then_proxies_and_a_nameless_first_is_only_the_default() {
    let r = resources();
    let l: Listener = decode(&r.listeners["raw-tls"].body);
    assert!(l.filter_chains.is_empty(), "{:?}", l.filter_chains);
    let chain = l.default_filter_chain.as_ref().expect("default chain");
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!("no filter config");
    };
    let proxy: TcpProxy = decode(any);
    assert_eq!(proxy.stat_prefix, "raw-tls");
    let ctx = downstream(chain);
    assert_eq!(ctx.require_client_certificate, None);
    let common = ctx.common_tls_context.expect("common");
    assert_sds(&common.tls_certificate_sds_secret_configs[0], "other");
    assert!(common.alpn_protocols.is_empty());
    assert!(common.validation_context_type.is_none());
    assert!(!r.api_listeners.contains_key("raw-tls"));
}

fn protocol(c: &Cluster) -> Option<UpstreamProtocolOptions> {
    assert!(c.typed_extension_protocol_options.len() <= 1);
    c.typed_extension_protocol_options
        .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        .map(|a| {
            decode::<HttpProtocolOptions>(a)
                .upstream_protocol_options
                .expect("options")
        })
}

#[test]
fn an_http2_cluster_speaks_http2_explicitly_in_plaintext() {
    let r = resources();
    let c: Cluster = decode(&r.clusters["h2c"].body);
    assert!(c.transport_socket.is_none());
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) = protocol(&c) else {
        panic!("not explicit");
    };
    assert!(matches!(
        e.protocol_config,
        Some(ProtocolConfig::Http2ProtocolOptions(_))
    ));
    let public: Cluster = decode(&r.clusters["public"].body);
    assert!(protocol(&public).is_none(), "http1 is Envoy's default");
}

#[test]
fn a_tls_cluster_checks_the_server_by_its_ca_or_the_system_roots() {
    let r = resources();
    let c: Cluster = decode(&r.clusters["upstream-tls"].body);
    assert!(matches!(
        protocol(&c),
        Some(UpstreamProtocolOptions::AutoConfig(a)) if a.http2_protocol_options.is_some()
    ));
    let ctx: UpstreamTlsContext = socket(c.transport_socket.as_ref().expect("tls"));
    assert_eq!(ctx.sni, "api.internal");
    let common = ctx.common_tls_context.expect("common");
    assert_sds(&common.tls_certificate_sds_secret_configs[0], "site");
    // auto: Envoy's own ALPN list (h2, http/1.1).
    assert!(common.alpn_protocols.is_empty());
    let Some(ValidationContextType::CombinedValidationContext(v)) = &common.validation_context_type
    else {
        panic!("not combined: {:?}", common.validation_context_type);
    };
    assert_sds(
        v.validation_context_sds_secret_config.as_ref().expect("ca"),
        "clients",
    );
    let names = &v
        .default_validation_context
        .as_ref()
        .expect("default")
        .match_typed_subject_alt_names;
    assert_eq!(names.len(), 1);
    assert!(matches!(
        names[0].matcher.as_ref().and_then(|m| m.match_pattern.clone()),
        Some(MatchPattern::Exact(n)) if n == "api.internal"
    ));

    let public: Cluster = decode(&r.clusters["public"].body);
    let ctx: UpstreamTlsContext = socket(public.transport_socket.as_ref().expect("tls"));
    assert_eq!(ctx.sni, "");
    let common = ctx.common_tls_context.expect("common");
    assert!(common.tls_certificate_sds_secret_configs.is_empty());
    let Some(ValidationContextType::ValidationContext(v)) = &common.validation_context_type else {
        panic!("no validation context");
    };
    assert!(v.system_root_certs.is_some());
    // No SNI: the certificate must name the endpoint's IP address, as
    // vane-proxy checks it (a chain alone would take any trusted CA's).
    let names = &v.match_typed_subject_alt_names;
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(
        names[0].san_type,
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType::IpAddress as i32
    );
    assert!(matches!(
        names[0].matcher.as_ref().and_then(|m| m.match_pattern.clone()),
        Some(MatchPattern::Exact(n)) if n == "127.0.0.1"
    ));
}

#[test]
fn tls_resources_render_as_json_and_hash_stably() {
    let r = resources();
    for res in r
        .listeners
        .values()
        .chain(r.clusters.values())
        .chain(r.secrets.values())
    {
        json::resource_to_json(res).unwrap_or_else(|e| panic!("{}: {e}", res.name));
    }
    let l = json::resource_to_json(&r.listeners["web-tls"]).expect("json");
    let ts = &l["filter_chains"][0]["transport_socket"]["typed_config"];
    assert_eq!(
        ts["@type"],
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    );
    assert_eq!(
        ts["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"],
        "site"
    );
    let s = json::resource_to_json(&r.secrets["clients"]).expect("json");
    assert!(s["validation_context"]["trusted_ca"]["inline_bytes"].is_string());
    // The same snapshot, translated again, has the same hashes.
    let again = resources();
    assert_ne!(
        again.secrets["site"].hash, r.secrets["site"].hash,
        "new keys"
    );
    assert_eq!(again.clusters["h2c"].hash, r.clusters["h2c"].hash);
    assert_eq!(again.listeners["web-tls"].hash, r.listeners["web-tls"].hash);
}
