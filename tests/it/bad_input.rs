//! Bad input is refused with the right exit code and one stderr line naming
//! the field, and never changes a group's history.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::json;
use vane_model::spec::RouteMatchSpec;
use vane_testkit::fixtures::{example_path, example_spec, write_json, write_text};
use vane_testkit::net::free_port;
use vane_testkit::{ControlServer, history, vanectl};

/// One bad snapshot file and what its error must mention.
struct Case {
    name: &'static str,
    file: PathBuf,
    /// Substrings the single stderr line must contain (field path first).
    mentions: Vec<&'static str>,
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).unwrap()
}

fn cases(dir: &std::path::Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut case = |name: &'static str, file: PathBuf, mentions: Vec<&'static str>| {
        cases.push(Case {
            name,
            file,
            mentions,
        });
    };

    case(
        "malformed YAML",
        write_text(
            dir,
            "malformed.yaml",
            "listeners:\n  - { name: web, address: \"127.0.0.1:18080\"\nclusters: []\n",
        ),
        vec!["line"],
    );

    let text = example_text();
    let misspelt = text.replacen(
        "address: \"127.0.0.1:18080\"",
        "adress: \"127.0.0.1:18080\"",
        1,
    );
    assert_ne!(misspelt, text);
    case(
        "unknown field",
        write_text(dir, "unknown-field.yaml", &misspelt),
        vec!["listeners[0]", "adress"],
    );

    let mut spec = example_spec();
    spec.route_tables[0].routes[0].cluster = "paymnets".into();
    case(
        "dangling reference",
        write_json(dir, "dangling.json", &spec),
        vec!["route_tables[0].routes[0].cluster", "paymnets"],
    );

    let mut spec = example_spec();
    let dup = spec.clusters[0].clone();
    spec.clusters.push(dup);
    case(
        "duplicate name",
        write_json(dir, "duplicate.json", &spec),
        vec!["clusters[3].name", "duplicate"],
    );

    let port = text.replacen("127.0.0.1:18080", "127.0.0.1:70000", 1);
    assert_ne!(port, text);
    case(
        "port 70000",
        write_text(dir, "port.yaml", &port),
        vec!["listeners[0].address", "70000"],
    );

    let mut spec = example_spec();
    // (0 is no timeout; over ten minutes is refused.)
    spec.route_tables[0].routes[0].timeout_ms = Some(600_001);
    case(
        "timeout too long",
        write_json(dir, "long-timeout.json", &spec),
        vec!["route_tables[0].routes[0].timeout_ms", "600001"],
    );

    let mut spec = example_spec();
    spec.clusters[0].connect_timeout_ms = Some(0);
    case(
        "zero connect timeout",
        write_json(dir, "zero-connect-timeout.json", &spec),
        vec!["clusters[0].connect_timeout_ms"],
    );

    let mut spec = example_spec();
    spec.clusters[0].endpoints[0].weight = Some(0);
    case(
        "zero weight",
        write_json(dir, "zero-weight.json", &spec),
        vec!["clusters[0].endpoints[0].weight"],
    );

    let mut spec = example_spec();
    spec.route_tables[0].routes[0].matcher = Some(RouteMatchSpec {
        path_regex: Some("/api/(unclosed".into()),
        ..RouteMatchSpec::default()
    });
    case(
        "bad regex",
        write_json(dir, "bad-regex.json", &spec),
        vec!["route_tables[0].routes[0].match.path_regex"],
    );

    // Over the default 4 MiB limit on the encoded snapshot, by 64 KiB.
    let mut spec = example_spec();
    spec.values
        .insert("big".into(), json!("x".repeat(4 * 1024 * 1024 + 64 * 1024)));
    case(
        "oversize file",
        write_json(dir, "oversize.json", &spec),
        vec!["snapshot"],
    );

    // So far over the limit that the request is larger than the server's
    // transport accepts: the error must still name the snapshot.
    let mut spec = example_spec();
    spec.values
        .insert("big".into(), json!("x".repeat(9 * 1024 * 1024)));
    case(
        "far oversize file",
        write_json(dir, "far-oversize.json", &spec),
        vec!["snapshot"],
    );

    case(
        "empty file",
        write_text(dir, "empty.yaml", ""),
        vec!["empty"],
    );
    case(
        "only comments",
        write_text(dir, "comments.yaml", "# nothing here\n\n"),
        vec!["empty"],
    );
    cases
}

#[test]
fn each_bad_file_is_refused_naming_the_field_and_history_is_unchanged() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    server
        .ctl(&["push", "bad", "-f", example_path().to_str().unwrap()])
        .ok();
    let before = history(&url, "bad");
    let head_before = server.ctl(&["get", "bad", "-o", "json"]).ok().json();

    let mut failures = Vec::new();
    for case in cases(&dir) {
        for dry_run in [false, true] {
            let file = case.file.to_str().unwrap();
            let mut args = vec!["push", "bad", "-f", file, "-o", "json"];
            if dry_run {
                args.push("--dry-run");
            }
            let out = vanectl(&url, &args);
            let label = format!("{}{}", case.name, if dry_run { " (dry run)" } else { "" });
            if !(out.code == 1 || out.code == 2) {
                failures.push(format!("{label}: expected exit 1 or 2: {out}"));
                continue;
            }
            let lines: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect();
            if lines.len() != 1 {
                failures.push(format!("{label}: expected one stderr line: {out}"));
                continue;
            }
            for m in &case.mentions {
                if !lines[0].contains(m) {
                    failures.push(format!("{label}: stderr does not mention {m:?}: {out}"));
                }
            }
            if !out.stdout.trim().is_empty() {
                failures.push(format!("{label}: a refused push printed a result: {out}"));
            }
        }
        let after = history(&url, "bad");
        if after != before {
            failures.push(format!(
                "{}: history changed from {before:?} to {after:?}",
                case.name
            ));
        }
    }
    let head_after = server.ctl(&["get", "bad", "-o", "json"]).ok().json();
    assert_eq!(head_before["version"], head_after["version"]);
    assert_eq!(head_before["hash"], head_after["hash"]);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_bad_file_never_creates_a_group() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let mut spec = example_spec();
    spec.route_tables[0].routes[0].cluster = "paymnets".into();
    let file = write_json(&dir, "dangling.json", &spec);
    let out = server.ctl(&["push", "fresh", "-f", file.to_str().unwrap()]);
    assert!(out.code == 1 || out.code == 2, "{out}");
    // The group has no version: getting its head is refused.
    let out = server.ctl(&["get", "fresh", "-o", "json"]);
    assert_eq!(out.code, 1, "{out}");
    out.one_error_line();
}

#[test]
fn bad_group_name_is_refused() {
    let server = ControlServer::start();
    let example = example_path();
    for group in ["bad group", "_lead", "a/b", ".dot"] {
        let out = server.ctl(&["push", group, "-f", example.to_str().unwrap()]);
        assert!(out.code == 1 || out.code == 2, "{out}");
        assert!(out.one_error_line().contains("group"), "{out}");
    }
}

#[test]
fn unreachable_server_exits_3() {
    // A port that was free a moment ago and has nothing listening now.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let example = example_path();
    for args in [
        vec!["push", "g", "-f", example.to_str().unwrap()],
        vec!["get", "g"],
        vec!["history", "g"],
        vec!["status"],
    ] {
        let out = vanectl(&url, &args);
        assert_eq!(out.code, 3, "{out}");
        out.one_error_line();
    }

    // And a server that was killed.
    let mut server = ControlServer::start();
    let url = server.url();
    server.kill();
    let out = vanectl(&url, &["history", "g"]);
    assert_eq!(out.code, 3, "{out}");
    out.one_error_line();
}

#[test]
fn unknown_version_exits_1() {
    let server = ControlServer::start();
    server
        .ctl(&["push", "known", "-f", example_path().to_str().unwrap()])
        .ok();
    let before = history(&server.url(), "known");
    for args in [
        vec!["get", "known", "--version", "99"],
        vec!["diff", "known", "1", "99"],
        vec!["rollback", "known", "--to", "99"],
        vec!["get", "no-such-group"],
    ] {
        let out = server.ctl(&args);
        assert_eq!(out.code, 1, "{out}");
        out.one_error_line();
    }
    for args in [
        vec!["get", "known", "--version", "99"],
        vec!["rollback", "known", "--to", "99"],
    ] {
        let out = server.ctl(&args);
        assert!(out.one_error_line().contains("99"), "{out}");
    }
    assert_eq!(history(&server.url(), "known"), before);
}

#[test]
fn usage_errors_and_unreadable_files_exit_2() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let example = example_path();
    let example = example.to_str().unwrap();
    let missing = dir.join("does-not-exist.yaml");
    let dir_str = dir.to_str().unwrap().to_owned();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["push", "g"],
        vec!["push", "g", "-f", example, "--expect-version", "abc"],
        vec!["get", "g", "-o", "xml"],
        vec!["diff", "g", "1"],
        vec!["rollback", "g"],
    ] {
        let out = server.ctl(&args);
        assert_eq!(out.code, 2, "{out}");
        assert!(!out.stderr.trim().is_empty(), "{out}");
    }
    for file in [missing.to_str().unwrap(), dir_str.as_str()] {
        let out = server.ctl(&["push", "g", "-f", file]);
        assert_eq!(out.code, 2, "{out}");
        assert!(out.one_error_line().contains(file), "{out}");
    }
    // Nothing reached the store.
    let out = server.ctl(&["get", "g"]);
    assert_eq!(out.code, 1, "{out}");
}

#[test]
fn the_size_limit_is_the_servers_and_applies_to_rollbacks() {
    // The example encodes to a few hundred bytes; 2000 chars of value do not fit in 1000.
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let example = example_path();
    let example = example.to_str().unwrap();
    let big = write_json(
        &dir,
        "big.json",
        &vane_testkit::fixtures::example_with_value("pad", json!("x".repeat(2000))),
    );
    server.ctl(&["push", "lim", "-f", example]).ok();
    server
        .ctl(&["push", "lim", "-f", big.to_str().unwrap()])
        .ok();
    let small = write_json(
        &dir,
        "small.json",
        &vane_testkit::fixtures::example_with_value("n", json!(3)),
    );
    server
        .ctl(&["push", "lim", "-f", small.to_str().unwrap()])
        .ok();
    let before = history(&server.url(), "lim");
    assert_eq!(before.len(), 3);

    server.kill();
    server.restart_with(&["--max-snapshot-bytes", "1000"]);
    let out = server.ctl(&["push", "lim", "-f", big.to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(line.contains("snapshot") && line.contains("1000"), "{out}");

    // Version 2 was fine when stored, but does not fit today's limit.
    let out = server.ctl(&["rollback", "lim", "--to", "2"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.one_error_line().contains("to_version"), "{out}");
    assert_eq!(history(&server.url(), "lim"), before);
    // A version within the limit still rolls back, as version 4.
    server.ctl(&["rollback", "lim", "--to", "1"]).ok();
    let after = history(&server.url(), "lim");
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(after[3], (4, before[0].1.clone()));
}
