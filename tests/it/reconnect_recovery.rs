//! Recovery after a control-server outage long enough to open every
//! agent's circuit breaker: real `vane-agent` sidecars with the default
//! reconnect pacing, the server SIGKILLed, kept down until every agent
//! reports its breaker open, then restarted on the same port and data.
//! Every agent must be SYNCED again (in `vanectl status`) within 5 s of the
//! server answering again, whatever the outage's length (before the
//! breaker's period was bounded, an open breaker held an agent back for up
//! to 36 s).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures, wait_for_status};

const GROUP: &str = "edge";
const AGENTS: usize = 4;
/// Once the server answers again, every agent is back and synced within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

/// A sidecar with the default backoff and breaker (no pacing flags).
fn start_agent(node: &str, control: &str, dir: &Path) -> Sidecar {
    let cache = dir.join(format!("{node}-cache"));
    let output = dir.join(format!("{node}.json"));
    Sidecar::start(
        &[
            "--node-id",
            node,
            "--group",
            GROUP,
            "--control",
            control,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        &dir.join(format!("{node}.log")),
    )
}

/// The nodes `vanectl status` shows connected and SYNCED at `version`.
fn synced(server: &ControlServer, version: u64) -> Vec<String> {
    let status = server.ctl(&["status", GROUP, "-o", "json"]).ok().json();
    status
        .as_array()
        .expect("status -o json is an array")
        .iter()
        .filter(|a| a["connected"] == true && a["state"] == "SYNCED")
        .filter(|a| a["acked_version"] == version)
        .filter_map(|a| a["node_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn after_an_outage_that_opens_every_breaker_all_agents_are_synced_within_5s() {
    let mut server = ControlServer::start();
    let dir = server.scratch();
    let v1 = fixtures::write_json(&dir, "v1.json", &fixtures::example_spec());
    server
        .ctl(&["push", GROUP, "-f", v1.to_str().unwrap()])
        .ok();
    let url = server.url();
    let nodes: Vec<String> = (1..=AGENTS).map(|n| format!("node-{n}")).collect();
    let agents: Vec<Sidecar> = nodes
        .iter()
        .map(|node| start_agent(node, &url, &dir))
        .collect();
    for node in &nodes {
        wait_for_status(&url, GROUP, node, "SYNCED at 1", |e| {
            e["state"] == "SYNCED" && e["acked_version"] == 1
        });
    }

    // The outage: long enough that every agent's breaker opens (five
    // failed connects under the default backoff).
    server.kill();
    let killed = Instant::now();
    for agent in &agents {
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.status()["breaker"] != "open" {
            assert!(
                Instant::now() < deadline,
                "the breaker did not open within 30 s of the kill; /status: {}",
                agent.status()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("every breaker open {:?} after the kill", killed.elapsed());

    server.restart_same_port();
    let back = Instant::now();
    loop {
        let synced = synced(&server, 1);
        if synced.len() == AGENTS {
            break;
        }
        assert!(
            back.elapsed() <= RECOVERY_BOUND,
            "{RECOVERY_BOUND:?} after the server answered again only {synced:?} of {nodes:?} \
             are connected and SYNCED; agents' /status: {:?}",
            agents.iter().map(Sidecar::status).collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let took = back.elapsed();
    eprintln!("all {AGENTS} agents SYNCED {took:?} after the restart");
    for agent in &agents {
        let s = agent.status();
        assert_eq!(s["breaker"], "closed", "{s}");
        assert_eq!(s["version"], 1, "{s}");
    }
}
