//! The sidecar's `/readyz` over real processes: 503 while it serves
//! nothing or only its embedded defaults, 200 once a pushed version
//! arrives, and 200 at once after a restart with the control server down
//! but a cache on disk. `/healthz` stays a liveness probe (200 throughout).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use vane_testkit::net::{free_addr, http_get};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures};

fn sidecar(
    node: &str,
    control: &str,
    cache: &Path,
    defaults: Option<&Path>,
    log: &Path,
) -> Sidecar {
    let mut args = vec![
        "--node-id",
        node,
        "--group",
        "edge",
        "--control",
        control,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--backoff-base",
        "50ms",
        "--backoff-cap",
        "500ms",
    ];
    if let Some(defaults) = defaults {
        args.extend(["--defaults", defaults.to_str().unwrap()]);
    }
    Sidecar::start(&args, log)
}

fn get(agent: &Sidecar, path: &str) -> (u16, String) {
    http_get(agent.admin, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Polls `/readyz` until it answers `code`; panics after 20 s.
#[track_caller]
fn wait_readyz(agent: &Sidecar, code: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = get(agent, "/readyz");
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {code}; last {got}: {body}\nlog:\n{}",
            agent.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn readyz_is_503_on_nothing_or_defaults_and_200_on_live_or_cached_config() {
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let url = server.url();

    // No server answers, no cache, no defaults: nothing to serve.
    let nowhere = format!("http://{}", free_addr());
    let empty = sidecar(
        "empty",
        &nowhere,
        &dir.join("cache-empty"),
        None,
        &dir.join("empty.log"),
    );
    let (code, body) = get(&empty, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: serving embedded defaults"),
        "{body}"
    );
    assert_eq!(get(&empty, "/healthz").0, 200, "liveness is not readiness");
    assert_eq!(empty.status()["source"], "defaults");
    drop(empty);

    // Defaults, and a control server with nothing for the group yet.
    let defaults = fixtures::write_json(
        &dir,
        "defaults.json",
        &fixtures::example_with_value("mode", serde_json::json!("defaults")),
    );
    let cache = dir.join("cache");
    let log = dir.join("agent-1.log");
    let mut agent = sidecar("side-1", &url, &cache, Some(&defaults), &log);
    agent.wait_status("connected", |s| s["connected"] == true);
    let (code, body) = get(&agent, "/readyz");
    assert_eq!(code, 503, "defaults are not a configuration: {body}");
    assert_eq!(agent.status()["source"], "defaults");
    assert_eq!(get(&agent, "/healthz").0, 200);

    // A push arrives: ready.
    let v1 = fixtures::write_json(&dir, "v1.json", &fixtures::example_spec());
    server
        .ctl(&["push", "edge", "-f", v1.to_str().unwrap()])
        .ok();
    let body = wait_readyz(&agent, 200);
    assert_eq!(body, "ready: serving version 1 (live)\n");
    assert_eq!(agent.status()["source"], "live");

    // Restarted with the control server down: ready at once, from the cache.
    server.kill();
    assert!(
        agent
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let agent = sidecar(
        "side-1",
        &url,
        &cache,
        Some(&defaults),
        &dir.join("agent-2.log"),
    );
    let (code, body) = get(&agent, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "ready: serving version 1 (cache)\n");
    let s = agent.status();
    assert_eq!(
        (s["source"].as_str(), s["connected"].as_bool()),
        (Some("cache"), Some(false))
    );
}
