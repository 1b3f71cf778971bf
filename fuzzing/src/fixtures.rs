//! The snapshots the targets start from: the example file, a snapshot using
//! every feature of the format, and a large one (for route and endpoint
//! patches). Built once per process.

use std::sync::LazyLock;

use vane_model::{Format, Snapshot, SnapshotSpec, parse_file, validate};

/// The group the emulated agent follows.
pub const GROUP: &str = "edge";

/// The version the emulated agent runs ([`example`]).
pub const RUNNING_VERSION: u64 = 5;

/// `examples/snapshot.yaml`.
pub const EXAMPLE_YAML: &str = include_str!("../../examples/snapshot.yaml");

/// A snapshot file using every field of the format.
pub const RICH_YAML: &str = r#"# Every field of the format at least once.
listeners:
  - { name: public, address: "0.0.0.0:8443", protocol: http, route_table: edge }
  - { name: v6, address: "[::1]:8080", route_table: internal }
  - { name: raw, address: "127.0.0.1:6000", protocol: tcp, cluster: cache }
route_tables:
  - name: edge
    routes:
      - name: login
        match:
          path_exact: /login
          host: "*.example.com"
          headers:
            - { name: X-Canary, exact: "yes" }
            - { name: user-agent, regex: "curl/.*" }
            - { name: authorization, present: true }
        cluster: api
        timeout_ms: 5000
        retries: 3
        rate_limit: strict
      - match: { path_regex: "/v[0-9]+/items/[a-z]+", host: api.example.com }
        cluster: api
      - { match: { path_prefix: /static/ }, cluster: web, timeout_ms: 15000, retries: 0 }
      - { cluster: web }
  - name: internal
    routes:
      - { name: internal.0, cluster: web }
clusters:
  - name: api
    lb: random
    connect_timeout_ms: 250
    endpoints:
      - { address: "10.0.0.1:9000", weight: 10 }
      - { address: "[2001:db8::1]:9000" }
    outlier_detection:
      consecutive_failures: 3
      base_ejection_ms: 1000
      max_ejection_ms: 60000
      max_ejection_percent: 100
  - { name: web, endpoints: [ { address: "10.0.0.2:80" } ], outlier_detection: { consecutive_failures: 7 } }
  - { name: cache, lb: least_request, endpoints: [ { address: "127.0.0.1:6379", weight: 1 } ] }
rate_limits:
  - { name: strict, requests_per_second: 0.5 }
  - { name: loose, requests_per_second: 12345.678, burst: 20000 }
values:
  flag: false
  ratio: 0.125
  big: 18446744073709551615
  negative: -42
  text: "yes: \"quoted\" \u00e9\n"
  nested: { list: [1, 2.5, null, "x", { deep: [] }], empty: {} }
"#;

fn parse(yaml: &str) -> Snapshot {
    match parse_file(yaml.as_bytes(), Format::Yaml).map(validate) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("fixture does not validate: {e}"),
        Err(e) => panic!("fixture does not parse: {e}"),
    }
}

/// `examples/snapshot.yaml`, validated: what the emulated agent runs.
pub fn example() -> &'static Snapshot {
    static S: LazyLock<Snapshot> = LazyLock::new(|| parse(EXAMPLE_YAML));
    &S
}

/// [`RICH_YAML`], validated.
pub fn rich() -> &'static Snapshot {
    static S: LazyLock<Snapshot> = LazyLock::new(|| parse(RICH_YAML));
    &S
}

/// The example with 60 routes in its table and 40 endpoints per cluster.
pub fn large() -> &'static Snapshot {
    static S: LazyLock<Snapshot> = LazyLock::new(|| {
        let mut spec: SnapshotSpec = example().to_spec();
        let template = spec.route_tables[0].routes[0].clone();
        for i in 0..60 {
            let mut route = template.clone();
            route.name = Some(format!("r{i}"));
            if let Some(m) = route.matcher.as_mut() {
                m.path_prefix = Some(format!("/svc{i}"));
            }
            route.timeout_ms = Some(1000 + i);
            spec.route_tables[0].routes.insert(0, route);
        }
        for (c, cluster) in spec.clusters.iter_mut().enumerate() {
            let template = cluster.endpoints[0].clone();
            for i in 0..40 {
                let mut e = template.clone();
                e.address = format!("10.1.{c}.{i}:8080");
                e.weight = Some(1 + (i % 5) as u32);
                cluster.endpoints.push(e);
            }
        }
        match validate(spec) {
            Ok(s) => s,
            Err(e) => panic!("large fixture does not validate: {e}"),
        }
    });
    &S
}

/// The bases a delta is applied to, chosen by the first byte of a
/// `delta_apply` input: nothing, the example, the rich one, the large one.
pub fn delta_bases() -> [&'static Snapshot; 4] {
    static EMPTY: LazyLock<Snapshot> = LazyLock::new(Snapshot::default);
    [&EMPTY, example(), rich(), large()]
}
