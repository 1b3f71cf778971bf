//! The `vane-agent` sidecar over real processes: it follows pushes into its
//! output file, outlives a SIGKILLed control server, restarts from its cache
//! with the control server dead, falls back to defaults (degraded) when the
//! cache is corrupt, returns to live when the server is back, and turns a
//! `--check-cmd` refusal into a NACK visible in `vanectl status`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use vane_testkit::net::http_get;
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures, wait_for_status};

fn output_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pushed_hash(server: &ControlServer, file: &Path) -> String {
    let out = server
        .ctl(&["push", "edge", "-f", file.to_str().unwrap(), "-o", "json"])
        .ok();
    out.json()["hash"].as_str().unwrap().to_owned()
}

#[test]
fn follows_pushes_and_outlives_the_control_plane() {
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let v1 = fixtures::write_json(&dir, "v1.json", &fixtures::example_spec());
    let v2 = fixtures::write_json(
        &dir,
        "v2.json",
        &fixtures::example_with_value("feature.new_checkout", serde_json::json!(false)),
    );
    let defaults = fixtures::write_json(
        &dir,
        "defaults.json",
        &fixtures::example_with_value("mode", serde_json::json!("defaults")),
    );
    let cache = dir.join("cache");
    let output = dir.join("edge.json");
    let h1 = pushed_hash(&server, &v1);

    let url = server.url();
    let args = [
        "--node-id",
        "side-1",
        "--group",
        "edge",
        "--control",
        url.as_str(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--defaults",
        defaults.to_str().unwrap(),
        "--backoff-base",
        "50ms",
        "--backoff-cap",
        "1s",
    ];
    let mut agent = Sidecar::start(&args, &dir.join("agent-1.log"));
    agent.wait_status("version 1 live", |s| {
        s["version"] == 1 && s["source"] == "live"
    });
    let out = output_json(&output);
    assert_eq!(out["version"], 1);
    assert_eq!(out["hash"], h1.as_str());
    assert_eq!(out["values"]["feature.new_checkout"], true);
    wait_for_status(&url, "edge", "side-1", "SYNCED on 1", |a| {
        a["state"] == "SYNCED" && a["acked_version"] == 1
    });

    // A push reaches the output file.
    let pushed = Instant::now();
    let h2 = pushed_hash(&server, &v2);
    agent.wait_status("version 2", |s| s["version"] == 2);
    println!("push -> applied on the sidecar: {:?}", pushed.elapsed());
    let out = output_json(&output);
    assert_eq!(
        (out["version"].clone(), out["hash"].clone()),
        (2.into(), h2.clone().into())
    );
    assert_eq!(out["values"]["feature.new_checkout"], false);
    let s = agent.status();
    assert_eq!(
        (s["state"].as_str(), s["breaker"].as_str()),
        (Some("healthy"), Some("closed"))
    );

    // SIGKILL the control server: the last version stays, in the file and in /status.
    server.kill();
    let s = agent.wait_status("disconnected", |s| s["connected"] == false);
    assert_eq!(s["version"], 2);
    assert_eq!(s["hash"], h2.as_str());
    assert_eq!(output_json(&output)["version"], 2);

    // Restart the sidecar with the control server still dead: it serves the
    // cached version at once.
    assert!(
        agent
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let agent = Sidecar::start(&args, &dir.join("agent-2.log"));
    let s = agent.status();
    println!(
        "sidecar restart -> serving from cache: {:?}",
        agent.ready_after
    );
    assert_eq!(s["version"], 2, "{s}");
    assert_eq!(s["source"], "cache");
    assert_eq!(s["state"], "healthy");
    assert_eq!(output_json(&output)["version"], 2);

    // The control server comes back with nothing newer: it sends nothing, and
    // the quiet open stream confirms the cached content as live.
    server.restart_same_port();
    let s = agent.wait_status("cache confirmed live", |s| s["source"] == "live");
    assert_eq!(
        (s["version"].clone(), s["state"].clone()),
        (2.into(), "healthy".into())
    );
    assert_eq!(s["staleness_ms"], 0);
    server.kill();
    drop(agent);

    // Corrupt the cache: the defaults are served, degraded, with the reason.
    let cache_file = cache.join("edge.snapshot.pb");
    let mut bytes = std::fs::read(&cache_file).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 7);
    std::fs::write(&cache_file, &bytes).unwrap();
    let agent = Sidecar::start(&args, &dir.join("agent-3.log"));
    let s = agent.status();
    assert_eq!(s["source"], "defaults", "{s}");
    assert_eq!(s["state"], "degraded");
    assert_eq!(s["version"], 0);
    let reason = s["reason"].as_str().unwrap();
    assert!(reason.contains("serving embedded defaults"), "{reason}");
    assert!(reason.contains("edge.snapshot.pb"), "{reason}");
    assert_eq!(output_json(&output)["values"]["mode"], "defaults");

    // The control server comes back (same address): live again within the
    // backoff cap, on the head.
    server.restart_same_port();
    let back = Instant::now();
    let s = agent.wait_status("live again", |s| s["source"] == "live" && s["version"] == 2);
    println!("control back -> sidecar live: {:?}", back.elapsed());
    assert_eq!(s["state"], "healthy");
    assert_eq!(output_json(&output)["hash"], h2.as_str());
}

#[test]
fn a_check_cmd_refusal_is_a_nack_and_the_old_output_stays() {
    let server = ControlServer::start();
    let dir = server.scratch();
    let v1 = fixtures::write_json(&dir, "v1.json", &fixtures::example_spec());
    let bad = fixtures::write_json(
        &dir,
        "bad.json",
        &fixtures::example_with_value("forbidden", serde_json::json!(true)),
    );
    let check = dir.join("check.sh");
    std::fs::write(
        &check,
        "if grep -q forbidden \"$1\"; then echo '  refusing: the value forbidden is set  ' >&2; exit 1; fi\n",
    )
    .unwrap();
    let changes = dir.join("changes.log");
    let output = dir.join("edge.yaml");
    let check_cmd = format!("sh {}", check.display());
    let on_change = format!(
        "echo \"$VANE_VERSION $VANE_SOURCE\" >> {}",
        changes.display()
    );
    pushed_hash(&server, &v1);
    let url = server.url();
    let agent = Sidecar::start(
        &[
            "--node-id",
            "side-2",
            "--group",
            "edge",
            "--control",
            url.as_str(),
            "--cache-dir",
            dir.join("cache").to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--format",
            "yaml",
            "--check-cmd",
            check_cmd.as_str(),
            "--on-change",
            on_change.as_str(),
        ],
        &dir.join("agent.log"),
    );
    agent.wait_status("version 1", |s| s["version"] == 1);
    let yaml = std::fs::read_to_string(&output).unwrap();
    assert!(yaml.contains("version: 1"), "{yaml}");

    server
        .ctl(&["push", "edge", "-f", bad.to_str().unwrap()])
        .ok();
    let entry = wait_for_status(&url, "edge", "side-2", "NACKED", |a| a["state"] == "NACKED");
    assert_eq!(entry["acked_version"], 1);
    assert_eq!(entry["nack_reason"], "refusing: the value forbidden is set");
    let s = agent.status();
    assert_eq!(s["version"], 1);
    assert_eq!(s["last_nack_version"], 2);
    assert_eq!(
        s["last_nack_reason"],
        "refusing: the value forbidden is set"
    );
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        yaml,
        "old output kept"
    );

    // A good push after that goes through, and --on-change ran for it.
    let v3 = fixtures::write_json(
        &dir,
        "v3.json",
        &fixtures::example_with_value("fine", serde_json::json!(1)),
    );
    server
        .ctl(&["push", "edge", "-f", v3.to_str().unwrap()])
        .ok();
    agent.wait_status("version 3", |s| s["version"] == 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&changes)
        .unwrap_or_default()
        .contains("3 live")
    {
        assert!(
            Instant::now() < deadline,
            "on-change did not run for version 3"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, metrics) = http_get(agent.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("vane_agent_nacks_total 1"), "{metrics}");
    assert!(metrics.contains("vane_agent_config_version 3"), "{metrics}");
}
