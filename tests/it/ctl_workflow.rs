//! vanectl's day-two workflow against a real `vane-control`: `get -o
//! json|yaml` pushed back, `diff -f`, `push --dry-run`'s diff, summary and
//! warnings, contexts from a config file, and failover across server URLs.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use vane_testkit::fixtures::{example_path, example_spec, write_json, write_text};
use vane_testkit::net::free_port;
use vane_testkit::{ControlServer, Output, history, run_vanectl, vanectl, vanectl_stdin};

/// A URL nobody listens on.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// The example with one endpoint weight changed (one line of the canonical YAML).
fn example_with_weight(weight: u32) -> vane_model::SnapshotSpec {
    let mut spec = example_spec();
    let api = spec.clusters.iter_mut().find(|c| c.name == "api").unwrap();
    api.endpoints[1].weight = Some(weight);
    spec
}

/// `vanectl <args>` with `env` and nothing from the test's HOME.
fn ctl_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = home.to_str().unwrap();
    let mut all = vec![("HOME", home)];
    all.extend_from_slice(env);
    run_vanectl(args, &all)
}

#[test]
fn get_output_pushes_back_as_json_and_yaml_and_only_to_its_group() {
    let server = ControlServer::start();
    let url = server.url();
    let example = example_path();
    server
        .ctl(&["push", "shop", "-f", example.to_str().unwrap()])
        .ok();

    for format in ["json", "yaml", "table"] {
        let got = server.ctl(&["get", "shop", "-o", format]).ok();
        let out = vanectl_stdin(
            &url,
            &["push", "shop", "-f", "-", "-o", "json"],
            got.stdout.as_bytes(),
        )
        .ok();
        let v = out.json();
        assert_eq!(v["unchanged"], true, "{format}: {out}");
        assert_eq!(v["version"], 1, "{format}: {out}");
    }

    // An edited get output is a new version.
    let got = server.ctl(&["get", "shop", "-o", "json"]).ok();
    let mut edited = got.json();
    edited["values"]["edited"] = serde_json::json!(true);
    let out = vanectl_stdin(
        &url,
        &["push", "shop", "-f", "-", "-o", "json"],
        edited.to_string().as_bytes(),
    )
    .ok();
    assert_eq!(out.json()["version"], 2, "{out}");

    // Another group's output is refused, naming the field (exit 2, nothing stored).
    let out = vanectl_stdin(&url, &["push", "edge", "-f", "-"], got.stdout.as_bytes());
    assert_eq!(out.code, 2, "{out}");
    assert_eq!(
        out.one_error_line(),
        "error: <stdin>: group: the file is \"shop\"'s (as `vanectl get` wrote it), not \"edge\"'s: push it to \"shop\", or remove the field"
    );
    let out = vanectl(&url, &["get", "edge"]);
    assert_eq!(out.code, 1, "{out}");

    // Any other unknown field is still refused.
    let yaml = server.ctl(&["get", "shop", "-o", "yaml"]).ok().stdout + "owner: me\n";
    let out = vanectl_stdin(&url, &["push", "shop", "-f", "-"], yaml.as_bytes());
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.one_error_line().contains("unknown field `owner`"),
        "{out}"
    );
    assert_eq!(history(&url, "shop").len(), 2);
}

#[test]
fn diff_of_a_file_against_the_head_or_a_version() {
    let server = ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let v1 = example_path();
    let v1 = v1.to_str().unwrap();
    let v2 = write_json(&dir, "v2.json", &example_with_weight(5));
    let v2 = v2.to_str().unwrap();

    // Nothing stored yet: everything is added (exit 1).
    let out = server.ctl(&["diff", "shop", "-f", v1]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stdout.contains("--- shop@0\n"), "{out}");
    assert!(out.stdout.contains("listeners: 2 added"), "{out}");

    server.ctl(&["push", "shop", "-f", v1]).ok();
    server.ctl(&["push", "shop", "-f", v2]).ok();

    // Equal: exit 0 and a sentence.
    let out = server.ctl(&["diff", "shop", "-f", v2]).ok();
    assert!(
        out.stdout
            .starts_with(&format!("no difference: {v2} and version 2 of shop")),
        "{out}"
    );
    // Different: exit 1, the unified diff on stdout and nothing on stderr.
    let out = server.ctl(&["diff", "shop", "-f", v1]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.is_empty(), "{out}");
    assert!(
        out.stdout.starts_with(&format!("--- shop@2\n+++ {v1}\n")),
        "{out}"
    );
    assert!(out.stdout.contains("-    weight: 5\n"), "{out}");
    assert!(out.stdout.contains("+    weight: 3\n"), "{out}");
    assert!(
        !out.stdout.contains('\x1b'),
        "no colour off a terminal: {out}"
    );
    assert!(
        out.stdout.ends_with(
            "listeners: 0 added, 0 removed, 0 changed; routes: 0 added, 0 removed, 0 changed; \
             clusters: 0 added, 0 removed, 1 changed\n"
        ),
        "{out}"
    );
    // --version N, and standard input.
    server
        .ctl(&["diff", "shop", "-f", v1, "--version", "1"])
        .ok();
    // A version the server does not have is an error, not a difference.
    let out = server.ctl(&["diff", "shop", "-f", v1, "--version", "99"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("99"), "{out}");
    let text = std::fs::read(v2).unwrap();
    let out = vanectl_stdin(
        &url,
        &["diff", "shop", "-f", "-", "--version", "1", "-o", "json"],
        &text,
    );
    assert_eq!(out.code, 1, "{out}");
    let v = out.json();
    assert_eq!(v["group"], "shop");
    assert_eq!(v["from"]["version"], 1);
    assert_eq!(v["to"]["file"], "<stdin>");
    assert_eq!(v["equal"], false);
    assert!(v["diff"].as_str().unwrap().contains("+++ <stdin>"), "{out}");
    assert_eq!(v["summary"]["clusters"]["changed"], 1);
    // The diff of two stored versions is as before.
    let out = server.ctl(&["diff", "shop", "1", "2"]).ok();
    assert!(out.stdout.contains("--- shop@1"), "{out}");

    // A file that is unreadable, unparsable or invalid: exit 2, before connecting.
    let missing = dir.join("missing.yaml");
    let out = server.ctl(&["diff", "shop", "-f", missing.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out}");
    let typo = write_text(
        &dir,
        "typo.yaml",
        "listeners:\n  - { name: web, adress: x }\n",
    );
    let out = vanectl(&dead_url(), &["diff", "shop", "-f", typo.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.one_error_line().contains("adress"), "{out}");
    let dangling = write_text(
        &dir,
        "dangling.yaml",
        "listeners:\n  - { name: web, address: \"127.0.0.1:1\", protocol: tcp, cluster: nope }\n",
    );
    let out = server.ctl(&["diff", "shop", "-f", dangling.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.one_error_line().contains("nope"), "{out}");
    // --version without -f is a usage error.
    let out = server.ctl(&["diff", "shop", "--version", "1"]);
    assert_eq!(out.code, 2, "{out}");
    // Unreachable: exit 3.
    let out = vanectl(&dead_url(), &["diff", "shop", "-f", v1]);
    assert_eq!(out.code, 3, "{out}");
}

#[test]
fn dry_run_shows_the_diff_a_summary_and_warns_when_everything_goes() {
    let server = ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let v1 = example_path();
    server
        .ctl(&["push", "shop", "-f", v1.to_str().unwrap()])
        .ok();
    let empty = write_text(&dir, "empty.json", "{}");
    let empty = empty.to_str().unwrap();

    let out = server.ctl(&["push", "shop", "-f", empty, "--dry-run"]).ok();
    assert!(
        out.stdout
            .starts_with("dry run: shop would become version 2 (sha256 "),
        "{out}"
    );
    assert!(out.stdout.contains("--- shop@1\n+++ "), "{out}");
    assert!(
        out.stdout.ends_with(
            "listeners: 0 added, 2 removed, 0 changed; routes: 0 added, 2 removed, 0 changed; \
             clusters: 0 added, 3 removed, 0 changed\n"
        ),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("warning: this removes every listener (2 now)"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("warning: this removes every route (2 now)"),
        "{out}"
    );

    let out = server
        .ctl(&["push", "shop", "-f", empty, "--dry-run", "-o", "json"])
        .ok();
    let v = out.json();
    // The fields a dry run always had, and the new ones.
    assert_eq!(v["dry_run"], true, "{out}");
    assert_eq!(v["version"], 2, "{out}");
    assert_eq!(v["unchanged"], false, "{out}");
    assert!(v["hash"].is_string(), "{out}");
    assert!(v["diff"].as_str().unwrap().contains("-listeners:"), "{out}");
    assert_eq!(v["summary"]["listeners"]["removed"], 2, "{out}");
    assert_eq!(v["summary"]["clusters"]["removed"], 3, "{out}");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 2, "{out}");

    // An unchanged dry run: empty diff, no warning.
    let out = server
        .ctl(&[
            "push",
            "shop",
            "-f",
            v1.to_str().unwrap(),
            "--dry-run",
            "-o",
            "json",
        ])
        .ok();
    let v = out.json();
    assert_eq!(v["unchanged"], true, "{out}");
    assert_eq!(v["diff"], "", "{out}");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0, "{out}");
    // A dry run of a new group: everything added, no warning.
    let out = server
        .ctl(&["push", "fresh", "-f", v1.to_str().unwrap(), "--dry-run"])
        .ok();
    assert!(out.stdout.contains("listeners: 2 added"), "{out}");
    assert!(!out.stderr.contains("warning"), "{out}");

    // Nothing was stored by any dry run.
    assert_eq!(history(&url, "shop").len(), 1);
    assert_eq!(vanectl(&url, &["get", "fresh"]).code, 1);
}

#[test]
fn contexts_pick_the_server_and_flags_win() {
    let server = ControlServer::start();
    let url = server.url();
    server
        .ctl(&["push", "shop", "-f", example_path().to_str().unwrap()])
        .ok();
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join(".config/vane");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("config.yaml");
    let dead = dead_url();
    std::fs::write(
        &config,
        format!(
            "# contexts for the test\ncurrent_context: down\ncontexts:\n  down:\n    server: {dead}\n  live:\n    server: [{dead}, {url}]\n"
        ),
    )
    .unwrap();
    let h = home.path();

    // The default file ($HOME/.config/vane/config.yaml), its current context: down.
    let out = ctl_env(h, &["history", "shop"], &[]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stderr.contains(&dead), "{out}");

    // --context, VANE_CONTEXT.
    ctl_env(h, &["--context", "live", "history", "shop"], &[]).ok();
    ctl_env(h, &["history", "shop"], &[("VANE_CONTEXT", "live")]).ok();
    let out = ctl_env(
        h,
        &["--context", "down", "history", "shop"],
        &[("VANE_CONTEXT", "live")],
    );
    assert_eq!(out.code, 3, "the flag wins over VANE_CONTEXT: {out}");
    // --server wins over the context.
    ctl_env(h, &["--server", &url, "history", "shop"], &[]).ok();

    // An unknown context: exit 2 naming it and the known ones.
    let out = ctl_env(h, &["--context", "prod", "history", "shop"], &[]);
    assert_eq!(out.code, 2, "{out}");
    assert_eq!(
        out.one_error_line(),
        format!(
            "error: --context (or VANE_CONTEXT) \"prod\": no such context in {}; known: down, live",
            config.display()
        )
    );

    // use-context rewrites the file (mode 0600, comments kept); later calls use it.
    let out = ctl_env(h, &["config", "use-context", "live"], &[]).ok();
    assert_eq!(out.stdout, "switched to context \"live\"\n");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("# contexts for the test\ncurrent_context: \"live\"\n"),
        "{text}"
    );
    let out = ctl_env(h, &["history", "shop", "-o", "json"], &[]).ok();
    assert_eq!(out.json().as_array().unwrap().len(), 1, "{out}");
    let out = ctl_env(h, &["config", "use-context", "nope"], &[]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.one_error_line().contains("known: down, live"), "{out}");

    // get-contexts and view.
    let out = ctl_env(h, &["config", "get-contexts"], &[]).ok();
    let live_row = out.stdout.lines().find(|l| l.contains("live")).unwrap();
    assert!(live_row.starts_with('*'), "{out}");
    let out = ctl_env(h, &["config", "get-contexts", "-o", "json"], &[]).ok();
    let v = out.json();
    assert_eq!(v[1]["name"], "live", "{out}");
    assert_eq!(v[1]["current"], true, "{out}");
    assert_eq!(v[1]["servers"][1], url.as_str(), "{out}");
    let out = ctl_env(h, &["config", "view"], &[]).ok();
    assert_eq!(out.stdout, text);

    // VANE_CONFIG names another file; a bad one is exit 2 naming file and field.
    let other = h.join("other.yaml");
    std::fs::write(
        &other,
        format!("contexts:\n  x:\n    server: {url}\n    sever: y\n"),
    )
    .unwrap();
    let out = ctl_env(
        h,
        &["history", "shop"],
        &[("VANE_CONFIG", other.to_str().unwrap())],
    );
    assert_eq!(out.code, 2, "{out}");
    let line = out.one_error_line();
    assert!(
        line.starts_with(&format!(
            "error: config file {}: contexts.x",
            other.display()
        )) && line.contains("unknown field `sever`"),
        "{out}"
    );
}

#[test]
fn several_servers_fail_over_when_unreachable_only() {
    let a = ControlServer::start();
    let b = ControlServer::start();
    let example = example_path();
    a.ctl(&["push", "shop", "-f", example.to_str().unwrap()])
        .ok();
    let (dead1, dead2) = (dead_url(), dead_url());

    // The first URL unreachable: the second answers.
    let servers = format!("{dead1},{}", a.url());
    let out = vanectl(&servers, &["get", "shop", "-o", "json"]).ok();
    assert_eq!(out.json()["version"], 1, "{out}");
    assert!(out.stderr.contains("trying the next server"), "{out}");
    // VANE_SERVER with commas, and a follower (push --wait) too.
    let out = run_vanectl(&["history", "shop"], &[("VANE_SERVER", &servers)]).ok();
    assert!(out.stdout.contains("VERSION"), "{out}");
    let out = vanectl(
        &servers,
        &["push", "shop", "-f", example.to_str().unwrap(), "--wait=5s"],
    )
    .ok();
    assert!(out.stdout.contains("unchanged"), "{out}");

    // A server that answers with a refusal is not failed over: b has no shop.
    let out = vanectl(&format!("{},{}", b.url(), a.url()), &["get", "shop"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.one_error_line().contains("not found"), "{out}");

    // None answers: exit 3, naming each.
    let out = vanectl(&format!("{dead1},{dead2}"), &["get", "shop"]);
    assert_eq!(out.code, 3, "{out}");
    let line = out.stderr.lines().last().unwrap();
    assert!(
        line.starts_with("error: none of the 2 control servers answered: ")
            && line.contains(&dead1)
            && line.contains(&dead2),
        "{out}"
    );
}
