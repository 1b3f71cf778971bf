//! `vanectl get --as xds` against a real `vane-control`: the xDS resources
//! of the pushed versions, as Envoy and as gRPC clients would get them.

#![allow(clippy::unwrap_used)]

use vane_testkit::ControlServer;
use vane_testkit::fixtures::write_text;

const V1: &str = r#"
listeners:
  - { name: web, address: "127.0.0.1:18080", route_table: main }
  - { name: db, address: "127.0.0.1:15432", protocol: tcp, cluster: postgres }
route_tables:
  - name: main
    routes:
      - { match: { path_prefix: /api, host: "*.example.com" }, cluster: api, retries: 2, rate_limit: api-limit }
      - { match: { path_prefix: / }, cluster: web }
clusters:
  - { name: api, lb: least_request, connect_timeout_ms: 250, endpoints: [ { address: "127.0.0.1:9001", weight: 2 }, { address: "127.0.0.1:9002" } ] }
  - { name: web, endpoints: [ { address: "127.0.0.1:9003" } ] }
  - { name: postgres, lb: random, endpoints: [ { address: "127.0.0.1:5432" } ] }
rate_limits:
  - { name: api-limit, requests_per_second: 100, burst: 200 }
"#;

fn policies(cluster: &serde_json::Value) -> Vec<String> {
    cluster["load_balancing_policy"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["typed_extension_config"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn get_as_xds_shows_what_envoy_and_grpc_clients_get_for_a_version() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let v1 = write_text(&dir, "v1.yaml", V1);
    let pushed = server
        .ctl(&["push", "shop", "-f", v1.to_str().unwrap(), "-o", "json"])
        .ok()
        .json();
    // v2: /api goes to web instead.
    let v2 = write_text(
        &dir,
        "v2.yaml",
        &V1.replace("cluster: api, retries", "cluster: web, retries"),
    );
    server
        .ctl(&["push", "shop", "-f", v2.to_str().unwrap()])
        .ok();

    // The head, as Envoy gets it.
    let out = server
        .ctl(&["get", "shop", "--as", "xds", "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(
        (
            v["group"].as_str(),
            v["version"].as_u64(),
            v["client"].as_str()
        ),
        (Some("shop"), Some(2), Some("envoy")),
        "{out}"
    );
    let res = &v["resources"];
    assert_eq!(res["listeners"].as_array().unwrap().len(), 2, "{out}");
    let route = &res["routes"][0]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["route"]["cluster"], "web", "{out}");
    assert_eq!(route["match"]["headers"][0]["name"], ":authority");
    assert_eq!(
        route["match"]["headers"][0]["string_match"]["suffix"],
        ".example.com"
    );
    assert_eq!(
        route["route"]["retry_policy"]["retry_on"],
        "connect-failure,gateway-error"
    );
    let clusters = res["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "postgres", "web"]);
    assert_eq!(
        policies(&clusters[0]),
        [
            "envoy.load_balancing_policies.least_request",
            "envoy.load_balancing_policies.round_robin"
        ]
    );
    assert_eq!(clusters[0]["type"], "EDS");
    assert_eq!(clusters[0]["connect_timeout"], "0.250s");
    assert_eq!(
        policies(&clusters[2]),
        ["envoy.load_balancing_policies.round_robin"]
    );
    let endpoints = &res["endpoints"][0]["endpoints"][0];
    assert_eq!(endpoints["load_balancing_weight"], 1);
    assert_eq!(endpoints["lb_endpoints"][0]["load_balancing_weight"], 2);

    // Version 1, as a gRPC client gets it: the API listener only.
    let out = server
        .ctl(&[
            "get",
            "shop",
            "--version",
            "1",
            "--as",
            "xds",
            "--client",
            "grpc",
            "-o",
            "json",
        ])
        .ok();
    let v = out.json();
    assert_eq!(v["version"], 1, "{out}");
    assert_eq!(v["hash"], pushed["hash"], "{out}");
    let listeners = v["resources"]["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{out}");
    assert_eq!(listeners[0]["name"], "web");
    assert_eq!(
        listeners[0]["api_listener"]["api_listener"]["rds"]["route_config_name"],
        "main"
    );
    let route = &v["resources"]["routes"][0]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["route"]["cluster"], "api", "{out}");

    // The table names every resource once.
    let out = server.ctl(&["get", "shop", "--as", "xds"]).ok();
    let rows: Vec<&str> = out.stdout.lines().skip(2).collect();
    assert_eq!(rows.len(), 2 + 1 + 3 + 3, "{out}");
    assert!(rows.iter().any(|r| r.starts_with("RDS   main")), "{out}");

    // A client vanectl does not know: a usage error, exit 2.
    let out = server.ctl(&["get", "shop", "--as", "xds", "--client", "istio"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("'istio'"), "{out}");
    assert!(out.stderr.contains("envoy, grpc"), "{out}");
}
