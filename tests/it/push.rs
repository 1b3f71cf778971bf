//! Push, get, history, diff and rollback round trip through `vanectl` against
//! a real `vane-control`, with hashes checked against ones computed here.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use vane_testkit::fixtures::{
    example_path, example_spec, example_with_value, expected_hash, write_json, write_text,
};
use vane_testkit::{ControlServer, history, run_vanectl, vanectl_stdin};

/// The example with a changed weight, so the canonical YAML differs in one place.
fn example_with_weight(weight: u32) -> vane_model::SnapshotSpec {
    let mut spec = example_spec();
    let api = spec
        .clusters
        .iter_mut()
        .find(|c| c.name == "api")
        .expect("the example has cluster api");
    api.endpoints[1].weight = Some(weight);
    spec
}

#[test]
fn push_get_history_diff_rollback_round_trip() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let example = example_path();
    let example = example.to_str().unwrap();
    let h1 = expected_hash(&example_path());

    // First push: version 1, the hash we compute ourselves.
    let out = server
        .ctl(&["push", "shop", "-f", example, "-m", "first", "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["version"], 1, "{out}");
    assert_eq!(v["hash"], h1.as_str(), "{out}");
    assert_eq!(v["unchanged"], false, "{out}");

    // Identical content: no-op returning the head.
    let out = server
        .ctl(&["push", "shop", "-f", example, "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["version"], 1, "{out}");
    assert_eq!(v["hash"], h1.as_str(), "{out}");
    assert_eq!(v["unchanged"], true, "{out}");
    assert_eq!(history(&server.url(), "shop"), vec![(1, h1.clone())]);

    // A dry run of a change validates and reports, and stores nothing.
    let changed = write_json(&dir, "weight5.json", &example_with_weight(5));
    let changed = changed.to_str().unwrap();
    let h2 = expected_hash(changed.as_ref());
    assert_ne!(h1, h2);
    let out = server
        .ctl(&["push", "shop", "-f", changed, "--dry-run", "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["hash"], h2.as_str(), "{out}");
    assert_eq!(
        v["version"], 2,
        "a dry run reports the version a push would get: {out}"
    );
    assert_eq!(history(&server.url(), "shop"), vec![(1, h1.clone())]);
    let out = server.ctl(&["get", "shop", "-o", "json"]).ok();
    assert_eq!(out.json()["version"], 1, "{out}");

    // The real push.
    let out = server
        .ctl(&["push", "shop", "-f", changed, "-m", "second", "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["version"], 2, "{out}");
    assert_eq!(v["hash"], h2.as_str(), "{out}");
    assert_eq!(v["unchanged"], false, "{out}");

    // get: head, and an older version.
    let out = server.ctl(&["get", "shop", "-o", "json"]).ok();
    let v = out.json();
    assert_eq!(v["version"], 2, "{out}");
    assert_eq!(v["hash"], h2.as_str(), "{out}");
    let out = server
        .ctl(&["get", "shop", "--version", "1", "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["version"], 1, "{out}");
    assert_eq!(v["hash"], h1.as_str(), "{out}");
    assert_eq!(
        v["clusters"].as_array().map(Vec::len),
        Some(3),
        "get -o json carries the snapshot: {out}"
    );
    let out = server
        .ctl(&["get", "shop", "--version", "1", "-o", "yaml"])
        .ok();
    assert!(out.stdout.contains("127.0.0.1:9001"), "{out}");

    // The plain output of get is a snapshot file: pushing it back is a no-op.
    let out = server.ctl(&["get", "shop"]).ok();
    let saved = write_text(&dir, "saved.yaml", &out.stdout);
    assert_eq!(
        expected_hash(&saved),
        h2,
        "get prints the head's content: {out}"
    );
    let out = server
        .ctl(&["push", "shop", "-f", saved.to_str().unwrap(), "-o", "json"])
        .ok();
    assert_eq!(out.json()["unchanged"], true, "{out}");

    // history: both entries, with messages and timestamps.
    let out = server.ctl(&["history", "shop", "-o", "json"]).ok();
    let entries = out.json();
    let entries = entries.as_array().expect("history is an array");
    assert_eq!(entries.len(), 2, "{out}");
    let entry = |n: u64| {
        entries
            .iter()
            .find(|e| e["version"] == n)
            .unwrap_or_else(|| panic!("no history entry {n}: {out}"))
    };
    assert_eq!(entry(1)["hash"], h1.as_str());
    assert_eq!(entry(1)["message"], "first");
    assert_eq!(entry(2)["hash"], h2.as_str());
    assert_eq!(entry(2)["message"], "second");
    for n in [1, 2] {
        assert!(
            !entry(n)["created_at"].is_null(),
            "history entry {n} has no created_at: {out}"
        );
    }
    let out = server.ctl(&["history", "shop"]).ok();
    assert!(out.stdout.contains("second"), "table history: {out}");

    // diff: the changed line on both sides, nothing else of the file.
    let out = server.ctl(&["diff", "shop", "1", "2"]).ok();
    let removed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    let added: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert_eq!(removed.len(), 1, "{out}");
    assert_eq!(added.len(), 1, "{out}");
    assert!(removed[0].contains("weight: 3"), "{out}");
    assert!(added[0].contains("weight: 5"), "{out}");

    // rollback to 1: a new version 3 whose hash is version 1's.
    server.ctl(&["rollback", "shop", "--to", "1"]).ok();
    let out = server.ctl(&["get", "shop", "-o", "json"]).ok();
    let v = out.json();
    assert_eq!(v["version"], 3, "{out}");
    assert_eq!(v["hash"], h1.as_str(), "{out}");
    assert_eq!(
        history(&server.url(), "shop"),
        vec![(1, h1.clone()), (2, h2.clone()), (3, h1.clone())]
    );
    let out = server.ctl(&["history", "shop", "-o", "json"]).ok();
    let entries = out.json();
    let v3 = entries
        .as_array()
        .and_then(|e| e.iter().find(|e| e["version"] == 3))
        .unwrap_or_else(|| panic!("no version 3: {out}"));
    assert_eq!(v3["rollback_of"], 1, "{out}");
    // Rolling back to content the head already has stores nothing.
    let out = server
        .ctl(&["rollback", "shop", "--to", "1", "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["version"], 3, "{out}");
    assert_eq!(v["hash"], h1.as_str(), "{out}");
    assert_eq!(v["unchanged"], true, "{out}");
    assert_eq!(history(&server.url(), "shop").len(), 3);

    // Versions 1 and 3 hold the same content: their diff is empty.
    let out = server.ctl(&["diff", "shop", "1", "3"]).ok();
    assert!(
        !out.stdout
            .lines()
            .any(|l| (l.starts_with('+') && !l.starts_with("+++"))
                || (l.starts_with('-') && !l.starts_with("---"))),
        "{out}"
    );

    // Pushing version 2's content again makes version 4: versions are never reused.
    let out = server
        .ctl(&["push", "shop", "-f", changed, "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["version"], 4, "{out}");
    assert_eq!(v["hash"], h2.as_str(), "{out}");
    assert_eq!(v["unchanged"], false, "{out}");
}

#[test]
fn same_content_in_yaml_json_and_any_order_has_one_hash() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let h = expected_hash(&example_path());

    let out = server
        .ctl(&[
            "push",
            "fmt",
            "-f",
            example_path().to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok();
    assert_eq!(out.json()["hash"], h.as_str(), "{out}");

    // The same content as JSON.
    let as_json = write_json(&dir, "example.json", &example_spec());
    let out = server
        .ctl(&["push", "fmt", "-f", as_json.to_str().unwrap(), "-o", "json"])
        .ok();
    let v = out.json();
    assert_eq!(v["hash"], h.as_str(), "{out}");
    assert_eq!(v["version"], 1, "{out}");
    assert_eq!(v["unchanged"], true, "{out}");

    // The same content as YAML with sections and keys reordered, block
    // style, comments, and some defaults spelled out.
    let reordered = write_text(
        &dir,
        "reordered.yml",
        r#"# Same as examples/snapshot.yaml, written differently.
values:
  gateway.max_body_bytes: 1048576
  feature.new_checkout: true
rate_limits:
  - burst: 200
    requests_per_second: 100
    name: api-limit
clusters:
  - name: postgres
    endpoints:
      - address: "127.0.0.1:5432"
        weight: 1
  - endpoints:
      - { weight: 1, address: "127.0.0.1:9001" }
      - { weight: 3, address: "127.0.0.1:9002" }
    connect_timeout_ms: 500
    lb: round_robin
    name: api
  - name: web
    lb: least_request
    endpoints: [ { address: "127.0.0.1:9003" } ]
route_tables:
  - name: main
    routes:
      - { cluster: api, match: { path_prefix: /api }, retries: 2, timeout_ms: 2000, rate_limit: api-limit }
      - { cluster: web, match: { path_prefix: / } }
listeners:
  - { name: db, protocol: tcp, cluster: postgres, address: "127.0.0.1:15432" }
  - { name: web, route_table: main, address: "127.0.0.1:18080" }
"#,
    );
    assert_eq!(
        expected_hash(&reordered),
        h,
        "the model itself hashes them alike"
    );
    let out = server
        .ctl(&[
            "push",
            "fmt",
            "-f",
            reordered.to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok();
    let v = out.json();
    assert_eq!(v["hash"], h.as_str(), "{out}");
    assert_eq!(v["unchanged"], true, "{out}");

    // One different value changes the hash.
    let other = write_json(
        &dir,
        "other.json",
        &example_with_value("feature.new_checkout", json!(false)),
    );
    let out = server
        .ctl(&["push", "fmt", "-f", other.to_str().unwrap(), "-o", "json"])
        .ok();
    let v = out.json();
    assert_ne!(v["hash"], h.as_str(), "{out}");
    assert_eq!(v["version"], 2, "{out}");
    assert_eq!(history(&server.url(), "fmt").len(), 2);
}

#[test]
fn groups_are_independent() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let example = example_path();
    let example = example.to_str().unwrap();
    server.ctl(&["push", "a", "-f", example]).ok();
    let b2 = write_json(&dir, "b.json", &example_with_value("b", json!(1)));
    server.ctl(&["push", "b", "-f", example]).ok();
    let out = server
        .ctl(&["push", "b", "-f", b2.to_str().unwrap(), "-o", "json"])
        .ok();
    assert_eq!(out.json()["version"], 2, "{out}");
    assert_eq!(history(&server.url(), "a").len(), 1);
    assert_eq!(history(&server.url(), "b").len(), 2);
}

#[test]
fn server_url_from_vane_server_env() {
    let server = ControlServer::start();
    let url = server.url();
    let example = example_path();
    let out = run_vanectl(
        &["push", "env", "-f", example.to_str().unwrap(), "-o", "json"],
        &[("VANE_SERVER", url.as_str())],
    )
    .ok();
    assert_eq!(out.json()["version"], 1, "{out}");
    assert_eq!(history(&url, "env").len(), 1);
}

#[test]
fn push_from_standard_input() {
    let server = ControlServer::start();
    let h = expected_hash(&example_path());
    let yaml = std::fs::read(example_path()).unwrap();
    let out = vanectl_stdin(
        &server.url(),
        &["push", "stdin", "-f", "-", "-o", "json"],
        &yaml,
    )
    .ok();
    assert_eq!(out.json()["hash"], h.as_str(), "{out}");
    // JSON on standard input is recognised by its content.
    let json = serde_json::to_vec(&example_spec()).unwrap();
    let out = vanectl_stdin(
        &server.url(),
        &["push", "stdin", "-f", "-", "-o", "json"],
        &json,
    )
    .ok();
    assert_eq!(out.json()["unchanged"], true, "{out}");
    // An empty standard input is refused like an empty file.
    let out = vanectl_stdin(&server.url(), &["push", "stdin", "-f", "-"], b"");
    assert_eq!(out.code, 2, "{out}");
    assert!(out.one_error_line().contains("empty"), "{out}");
}
