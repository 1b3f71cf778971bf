//! The sidecar's templates, local HTTP and probes over real processes:
//! `--template` files (short form and `SRC:DEST:MODE`) with their modes,
//! updated on each push, `--on-change` once per version that changed a file
//! (not for one that changed none), a render error NACKed with the template
//! named and the old files kept, a bad template refused at startup (exit 2,
//! file and line); `--output-mode`; `GET /config` (ETag, 304, long poll,
//! 400 on a bad wait, 503 before any config); `/healthz` saying what
//! `/status` says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vane_testkit::curl::curl;
use vane_testkit::net::http_get;
use vane_testkit::process::bin_path;
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures, wait_for_status};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn push_value(server: &ControlServer, dir: &Path, name: &str, key: &str, value: serde_json::Value) {
    let file = fixtures::write_json(dir, name, &fixtures::example_with_value(key, value));
    server
        .ctl(&["push", "edge", "-f", file.to_str().unwrap()])
        .ok();
}

/// Waits until `path` holds `want`; panics after 10 s.
#[track_caller]
fn wait_content(path: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(path).unwrap_or_default() != want {
        assert!(
            Instant::now() < deadline,
            "{} never held {want:?}; has {:?}",
            path.display(),
            std::fs::read_to_string(path)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn templates_follow_pushes_with_modes_reload_once_per_change_and_nack_render_errors() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    let app_tmpl = fixtures::write_text(&dir, "app.tmpl", "mode={{ values.mode | upper }}\n");
    let listeners_tmpl = fixtures::write_text(
        &dir,
        "listeners.tmpl",
        "{% for l in listeners %}{{ l.name }} {{ l.address }}\n{% endfor %}",
    );
    let app = dir.join("app.conf");
    let listeners = dir.join("listeners.txt");
    let changes = dir.join("changes.log");
    let short = app_tmpl.to_str().unwrap().to_owned();
    let long = format!("{}:{}:0600", listeners_tmpl.display(), listeners.display());
    let on_change = format!(
        "echo \"$VANE_VERSION $(cat {})\" >> {}",
        app.display(),
        changes.display()
    );
    push_value(&server, &dir, "v1.json", "mode", serde_json::json!("a"));
    let agent = Sidecar::follow(
        "tpl",
        "edge",
        std::slice::from_ref(&url),
        &dir,
        &[
            "--output",
            app.to_str().unwrap(),
            "--output-mode",
            "0640",
            "--template",
            &short,
            "--template",
            &long,
            "--on-change",
            &on_change,
        ],
    );
    agent.wait_status("version 1", |s| s["version"] == 1);
    assert_eq!(read(&app), "mode=A\n");
    assert_eq!(
        read(&listeners),
        "db 127.0.0.1:15432\nweb 127.0.0.1:18080\n"
    );
    assert_eq!(mode(&app), 0o640, "--output-mode");
    assert_eq!(mode(&listeners), 0o600, "the template's own MODE");
    // The first live version is a change: the reload ran, after the files were written.
    wait_content(&changes, "1 mode=A\n");

    push_value(&server, &dir, "v2.json", "mode", serde_json::json!("b"));
    wait_content(&app, "mode=B\n");
    wait_content(&changes, "1 mode=A\n2 mode=B\n");
    assert_eq!(mode(&app), 0o640, "the mode survives the rewrite");

    // Version 3 changes nothing any template renders: no reload.
    let mut v3 = fixtures::example_with_value("mode", serde_json::json!("b"));
    v3.values.insert("other".into(), serde_json::json!(1));
    let v3 = fixtures::write_json(&dir, "v3.json", &v3);
    server
        .ctl(&["push", "edge", "-f", v3.to_str().unwrap()])
        .ok();
    agent.wait_status("version 3", |s| s["version"] == 3);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        read(&changes),
        "1 mode=A\n2 mode=B\n",
        "no reload when every file is unchanged"
    );
    assert!(
        agent.logs().contains("every file is unchanged"),
        "{}",
        agent.logs()
    );

    // Version 4 has no `values.mode`: the template cannot render it.
    push_value(&server, &dir, "v4.json", "other", serde_json::json!(2));
    let entry = wait_for_status(&url, "edge", "tpl", "NACKED", |a| a["state"] == "NACKED");
    let reason = entry["nack_reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "template {}:1: undefined value",
            app_tmpl.display()
        )),
        "{reason}"
    );
    assert!(reason.contains("`values.mode` is undefined"), "{reason}");
    assert_eq!(entry["acked_version"], 3);
    assert_eq!(read(&app), "mode=B\n", "old files kept");
    assert_eq!(
        read(&listeners),
        "db 127.0.0.1:15432\nweb 127.0.0.1:18080\n"
    );
    let s = agent.status();
    assert_eq!(
        (s["version"].as_u64(), s["last_nack_version"].as_u64()),
        (Some(3), Some(4))
    );
    assert_eq!(read(&changes), "1 mode=A\n2 mode=B\n");
}

/// Runs `vane-agent ARGS` (which should exit at once) and returns its exit
/// code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin_path("vane-agent"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vane-agent {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_template_or_mode_is_a_usage_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = fixtures::write_text(dir.path(), "bad.tmpl", "line one\n{% if values %}\n");
    let cache = dir.path().join("cache");
    let base = [
        "--node-id",
        "n",
        "--group",
        "edge",
        "--control",
        "http://127.0.0.1:1",
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let spec = format!("{}:{}", bad.display(), dir.path().join("out").display());
    let mut args = base.to_vec();
    args.extend(["--template", &spec]);
    let (code, stderr) = run_to_exit(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--template {}:", bad.display()))
            && stderr.contains("syntax error"),
        "{stderr}"
    );
    // The line is named (the unclosed block is reported at the end).
    assert!(
        stderr.contains(&format!("{}:2", bad.display()))
            || stderr.contains(&format!("{}:3", bad.display())),
        "{stderr}"
    );

    let mut args = base.to_vec();
    args.extend(["--template", "a.tmpl:b.conf:0999"]);
    let (code, stderr) = run_to_exit(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not an octal file mode"), "{stderr}");

    // The short form needs --output.
    let ok = fixtures::write_text(dir.path(), "ok.tmpl", "x\n");
    let mut args = base.to_vec();
    args.extend(["--template", ok.to_str().unwrap()]);
    let (code, stderr) = run_to_exit(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no destination"), "{stderr}");
}

#[test]
fn config_endpoint_serves_etag_304_long_polls_and_probes_agree() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();
    let out = dir.join("out.json");
    let agent = Sidecar::follow(
        "http",
        "edge",
        std::slice::from_ref(&url),
        &dir,
        &["--output", out.to_str().unwrap(), "--output-mode", "0604"],
    );
    let config = format!("http://{}/config", agent.admin);

    // Nothing applied yet: /config 503, /readyz 503, /healthz alive and
    // saying the same state as /status.
    let a = curl(&config, &[]);
    assert_eq!(a.status, 503, "{a:?}");
    assert!(
        a.body
            .starts_with("no configuration from the control plane yet"),
        "{a:?}"
    );
    assert_eq!(http_get(agent.admin, "/readyz").unwrap().0, 503);
    let s = agent.status();
    let (code, health) = http_get(agent.admin, "/healthz").unwrap();
    assert_eq!(code, 200, "{health}");
    assert_eq!(s["state"], "degraded");
    assert!(
        health.starts_with("alive: degraded: ") && health.ends_with("; version 0 (defaults)\n"),
        "{health} vs {s}"
    );

    // A bad wait: 400 naming the parameter.
    let a = curl(&format!("{config}?wait=soon"), &[]);
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body.starts_with("wait: "), "{a:?}");
    let a = curl(&format!("{config}?wiat=1s"), &[]);
    assert_eq!(a.status, 400, "{a:?}");

    push_value(&server, &dir, "v1.json", "mode", serde_json::json!("a"));
    agent.wait_status("version 1", |s| s["version"] == 1);
    let a = curl(&config, &[]);
    assert_eq!(a.status, 200, "{a:?}");
    let hash1 = agent.status()["hash"].as_str().unwrap().to_owned();
    assert_eq!(a.header("etag"), Some(format!("\"{hash1}\"").as_str()));
    assert_eq!(a.header("vane-version"), Some("1"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.body, read(&out), "the same JSON as the output file");
    assert_eq!(a.json()["values"]["mode"], "a");
    assert_eq!(mode(&out), 0o604, "--output-mode");
    let (code, health) = http_get(agent.admin, "/healthz").unwrap();
    assert_eq!(
        (code, health.as_str()),
        (200, "alive: healthy; version 1 (live)\n")
    );
    assert_eq!(agent.status()["state"], "healthy");

    // Conditional GETs.
    let inm = format!("If-None-Match: \"{hash1}\"");
    let a = curl(&config, &["-H", &inm]);
    assert_eq!(a.status, 304, "{a:?}");
    assert_eq!(a.header("vane-version"), Some("1"));
    let a = curl(&config, &["-H", "If-None-Match: \"other\""]);
    assert_eq!(a.status, 200, "{a:?}");
    let a = curl(&format!("{config}?format=yaml"), &[]);
    assert_eq!(a.header("content-type"), Some("application/yaml"), "{a:?}");
    assert!(a.body.contains("version: 1"), "{a:?}");

    // A long poll with nothing new ends with 304 when the wait passes.
    let a = curl(&format!("{config}?wait=1s"), &["-H", &inm]);
    assert_eq!(a.status, 304, "{a:?}");
    assert!(
        a.took >= Duration::from_millis(950),
        "returned early: {:?}",
        a.took
    );
    // Longer than the admin port's 10 s per-connection deadline: the long
    // poll holds it off for its wait.
    let a = curl(&format!("{config}?wait=12s"), &["-H", &inm]);
    assert_eq!(a.status, 304, "{a:?}");
    assert!(a.took >= Duration::from_millis(11_900), "{:?}", a.took);
    let a = curl(&format!("{config}?after_version=1&wait=500ms"), &[]);
    assert_eq!(a.status, 304, "{a:?}");
    let a = curl(&format!("{config}?after_version=0&wait=30s"), &[]);
    assert_eq!(a.status, 200, "newer than 0 already: {a:?}");
    assert!(a.took < Duration::from_secs(5), "{:?}", a.took);

    // A long poll wakes when a new version is applied, and not before.
    let poll_url = format!("{config}?wait=30s");
    let poll_inm = inm.clone();
    let poller = thread::spawn(move || (Instant::now(), curl(&poll_url, &["-H", &poll_inm])));
    thread::sleep(Duration::from_millis(1500));
    let pushed_at = Instant::now();
    push_value(&server, &dir, "v2.json", "mode", serde_json::json!("b"));
    let (started, a) = poller.join().unwrap();
    let woke = started + a.took;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("vane-version"), Some("2"));
    assert_eq!(a.json()["values"]["mode"], "b");
    assert!(woke > pushed_at, "returned before the push");
    let after_push = woke - pushed_at;
    println!("long poll woke {after_push:?} after the push began");
    assert!(after_push < Duration::from_secs(5), "{after_push:?}");
}
