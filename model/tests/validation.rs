//! Validation, hashing and file parsing of snapshots, from the outside.

use vane_model::{Format, Snapshot, parse_file, validate};

const EXAMPLE: &str = include_str!("../../examples/snapshot.yaml");

fn parse(yaml: &str) -> Result<Snapshot, String> {
    let spec = parse_file(yaml.as_bytes(), Format::Yaml).map_err(|e| e.to_string())?;
    validate(spec).map_err(|e| e.to_string())
}

#[test]
fn the_example_is_accepted() {
    let s = parse(EXAMPLE).unwrap();
    assert_eq!(s.listeners.len(), 2);
    assert_eq!(s.clusters.len(), 3);
    assert_eq!(s.route_tables[0].routes.len(), 2);
    assert_eq!(
        s.values["gateway.max_body_bytes"],
        serde_json::json!(1048576)
    );
}

#[test]
fn hash_ignores_order_formatting_and_defaults() {
    let a = parse(EXAMPLE).unwrap();
    let json = r#"{"values":{"gateway.max_body_bytes":1048576,"feature.new_checkout":true},
      "rate_limits":[{"burst":200,"name":"api-limit","requests_per_second":100}],
      "clusters":[{"name":"postgres","endpoints":[{"address":"127.0.0.1:5432","weight":1}]},
        {"name":"web","lb":"least_request","endpoints":[{"address":"127.0.0.1:9003"}]},
        {"name":"api","lb":"round_robin","connect_timeout_ms":500,"endpoints":[{"address":"127.0.0.1:9001"},{"address":"127.0.0.1:9002","weight":3}]}],
      "route_tables":[{"name":"main","routes":[
        {"match":{"path_prefix":"/api"},"cluster":"api","timeout_ms":2000,"retries":2,"rate_limit":"api-limit"},
        {"cluster":"web"}]}],
      "listeners":[{"name":"db","address":"127.0.0.1:15432","protocol":"tcp","cluster":"postgres"},
        {"name":"web","address":"127.0.0.1:18080","route_table":"main"}]}"#;
    let b = validate(parse_file(json.as_bytes(), Format::Json).unwrap()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.content_hash(), b.content_hash());
    assert_eq!(a.content_hash().to_hex().len(), 64);

    let mut c = a.clone();
    c.clusters[0].endpoints[0].weight = 2;
    assert_ne!(a.content_hash(), c.content_hash());
}

#[test]
fn canonical_yaml_round_trips_and_proto_round_trips() {
    let a = parse(EXAMPLE).unwrap();
    let again = parse(&a.to_yaml()).unwrap();
    assert_eq!(a, again);
    let decoded = Snapshot::decode(&a.encode()).unwrap();
    assert_eq!(a, decoded);
    assert_eq!(a.content_hash(), decoded.content_hash());
}

fn replace(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "{from}");
    EXAMPLE.replacen(from, to, 1)
}

#[test]
fn errors_name_the_field_and_the_reason() {
    let cases = [
        (
            replace("cluster: api, timeout_ms", "cluster: paymnets, timeout_ms"),
            r#"route_tables[0].routes[0].cluster: unknown cluster "paymnets""#,
        ),
        (
            replace("127.0.0.1:18080", "127.0.0.1:70000"),
            "listeners[0].address: port 70000 out of range (1-65535)",
        ),
        (
            replace("timeout_ms: 2000", "timeout_ms: 700000"),
            "route_tables[0].routes[0].timeout_ms: 700000 is out of range (0 for none",
        ),
        (
            replace("path_prefix: /api", "path_regex: \"/api(\""),
            "route_tables[0].routes[0].match.path_regex: invalid regex",
        ),
        (
            replace("name: postgres", "name: api"),
            r#"clusters[2].name: duplicate name "api" (also clusters[0])"#,
        ),
        (
            replace("weight: 3", "weight: 0"),
            "clusters[0].endpoints[1].weight: 0 is out of range",
        ),
        (
            replace("route_table: main }", "route_table: mian }"),
            r#"listeners[0].route_table: unknown route table "mian""#,
        ),
        (
            replace("address: \"127.0.0.1:9003\"", "address: \"localhost\""),
            "clusters[1].endpoints[0].address:",
        ),
        (
            replace("protocol: http,", "protocol: http, colour: blue,"),
            "listeners[0]: unknown field `colour`",
        ),
        (
            replace("lb: least_request", "lb: fastest"),
            r#"clusters[1].lb: unknown policy "fastest""#,
        ),
    ];
    for (yaml, want) in cases {
        let err = parse(&yaml).unwrap_err();
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
}

#[test]
fn empty_and_malformed_files() {
    let empty = parse_file(b"  \n# nothing\n", Format::Yaml).unwrap_err();
    assert_eq!(empty.to_string(), "the file is empty");
    let bad = parse_file(b"listeners: [ {", Format::Yaml).unwrap_err();
    assert!(bad.to_string().contains("line"), "{bad}");
    let bad_json = parse_file(b"{\"listeners\": 3}", Format::Json).unwrap_err();
    assert!(bad_json.to_string().starts_with("listeners:"), "{bad_json}");
}

#[test]
fn size_limit() {
    assert!(vane_model::check_size(10, 10).is_ok());
    let e = vane_model::check_size(11, 10).unwrap_err();
    assert_eq!(
        e.to_string(),
        "snapshot: encoded size 11 bytes exceeds the limit of 10 bytes"
    );
}

#[test]
fn defaults_are_left_out_of_the_canonical_form() {
    let a = parse(EXAMPLE).unwrap();
    let canonical = String::from_utf8(a.canonical_bytes()).unwrap();
    assert!(!canonical.contains("\"weight\":1"), "{canonical}");
    assert!(!canonical.contains("outlier_detection"), "{canonical}");
    assert!(canonical.contains("\"weight\":3"), "{canonical}");
    // The effective form shows them.
    let effective = a.to_yaml();
    assert!(effective.contains("outlier_detection"), "{effective}");
    assert!(effective.contains("consecutive_failures: 5"), "{effective}");
    // Spelling a default out changes nothing.
    let explicit = parse(&EXAMPLE.replace(
        "{ name: postgres, endpoints",
        "{ name: postgres, lb: round_robin, outlier_detection: { consecutive_failures: 5 }, endpoints",
    ))
    .unwrap();
    assert_eq!(a.content_hash(), explicit.content_hash());
    let changed = parse(&EXAMPLE.replace(
        "{ name: postgres, endpoints",
        "{ name: postgres, outlier_detection: { consecutive_failures: 2 }, endpoints",
    ))
    .unwrap();
    assert_ne!(a.content_hash(), changed.content_hash());
    assert_eq!(
        changed
            .cluster("postgres")
            .unwrap()
            .outlier
            .consecutive_failures,
        2
    );
}

#[test]
fn yaml_errors_name_the_path_once() {
    let e = parse_file(
        b"listeners:\n  - { name: web, adress: \"127.0.0.1:1\", route_table: main }\n",
        Format::Yaml,
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("listeners[0]: unknown field `adress`"), "{e}");
    assert_eq!(e.matches("listeners[0]").count(), 1, "{e}");
    let e = parse_file(
        b"clusters:\n  - name: a\n    endpoints:\n      - { address: \"1.2.3.4:5\", weight: -1 }\n",
        Format::Yaml,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("clusters[0].endpoints[0].weight: invalid type"),
        "{e}"
    );
    assert_eq!(e.matches("weight").count(), 1, "{e}");
}

#[test]
fn a_flood_of_errors_stays_one_readable_line() {
    let endpoints: Vec<String> = (0..400)
        .map(|i| format!("{{ address: \"127.0.0.1:{}\", weight: 0 }}", 1000 + i))
        .collect();
    let yaml = format!(
        "clusters:\n  - {{ name: big, endpoints: [ {} ] }}\n",
        endpoints.join(", ")
    );
    let e = parse(&yaml).unwrap_err();
    assert!(
        e.starts_with("clusters[0].endpoints[0].weight: 0 is out of range"),
        "{e}"
    );
    assert!(e.ends_with("; … and 380 more errors"), "{e}");
    assert!(e.len() < 4096, "{}", e.len());
}
