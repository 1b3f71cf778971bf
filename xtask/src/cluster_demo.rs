//! `cargo xtask demo --cluster`: the clustered control plane, live. Starts
//! three etcd members and two vane-control replicas on them, a proxy (the
//! `vane-proxy` data plane when it builds, else the `vane-agent` sidecar)
//! given both replicas and, for the proxy, a backend and steady traffic;
//! then pushes through either replica, kills the replica the proxy follows
//! and an etcd member, and shows that no request failed.
//!
//! Everything runs on loopback ports in a temporary directory and is
//! stopped (and removed) at the end, or on any error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use vane_testkit::net::free_port;

use crate::etcd::Etcd;
use crate::harness::{
    AGENT_LISTENING, CONTROL_LISTENING, PROXY_LISTENING, Server, http_get, wait_until,
};
use crate::narrate::{millis, section, tail};
use crate::process::{cargo, display, ensure_built, run as run_cmd, seconds, target_dir};
use crate::traffic::{Backend, Traffic, snapshot};

/// The group the demo works on.
const GROUP: &str = "edge";

/// Everything the tour needs.
struct Cluster {
    bin: PathBuf,
    work: PathBuf,
    etcd: Vec<Etcd>,
    a: Option<Server>,
    b: Server,
    a_url: String,
    b_url: String,
    agent: Option<Server>,
    /// Whether `agent` is vane-proxy (else the sidecar).
    proxy: bool,
    traffic: Option<Traffic>,
    web: SocketAddr,
    backend: Backend,
}

impl Cluster {
    fn vanectl(&self, server: &str, args: &[&str], expect: i32) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("vanectl"));
        cmd.arg("--server")
            .arg(server)
            .args(args)
            .current_dir(&self.work);
        println!("$ {}", display(&cmd));
        let status = cmd.status().context("cannot run vanectl")?;
        ensure!(
            status.code() == Some(expect),
            "`{}` exited with {status}; the demo expected exit code {expect}",
            display(&cmd)
        );
        Ok(())
    }

    fn write_snapshot(&self, step: u32) -> Result<String> {
        let name = format!("step{step}.yaml");
        std::fs::write(
            self.work.join(&name),
            snapshot(self.web, self.backend.addr, step),
        )?;
        Ok(name)
    }

    fn agent_status(&self) -> Result<serde_json::Value> {
        let agent = self.agent.as_ref().context("no agent is running")?;
        let body = http_get(agent.addr, "/status")?;
        serde_json::from_str(&body).context("/status is not JSON")
    }

    fn show_agent_status(&self) -> Result<()> {
        let agent = self.agent.as_ref().context("no agent is running")?;
        let s = self.agent_status()?;
        println!("$ curl -s http://{}/status   # {}", agent.addr, agent.name);
        for key in [
            "version",
            "source",
            "state",
            "connected",
            "server",
            "reconnects",
        ] {
            println!("  {key}: {}", s[key]);
        }
        Ok(())
    }

    fn wait_agent_version(&self, version: u64) -> Result<Duration> {
        let started = Instant::now();
        wait_until(&format!("the agent to apply version {version}"), || {
            self.agent_status()
                .is_ok_and(|s| s["version"].as_u64() == Some(version))
        })?;
        Ok(started.elapsed())
    }

    fn show_traffic(&self) {
        if let Some(traffic) = &self.traffic {
            let (ok, failed) = traffic.counts();
            println!("(traffic through the proxy so far: {ok} requests answered, {failed} failed)");
        }
    }

    fn dump_logs(&self) {
        let servers = self.a.iter().chain([&self.b]).chain(self.agent.as_ref());
        for s in servers {
            eprintln!(
                "{} log ({}):\n{}",
                s.name,
                s.log.display(),
                tail(&s.log, 15)
            );
        }
    }
}

/// The packages whose binaries the cluster demo needs, and those binaries
/// (vane-proxy is built apart: the demo goes on without it).
pub(crate) const PACKAGES: &[&str] = &["vane-control", "vanectl", "vane-agent-sidecar"];
pub(crate) const BINARIES: &[&str] = &["vane-control", "vanectl", "vane-agent"];

pub(crate) fn run(root: &Path) -> Result<()> {
    let mut apt = crate::apt::Apt::default();
    crate::test::ensure_protoc(&mut apt)?;
    apt.ensure_tool("etcd", "etcd-server")?;

    println!("==> building vane-control, vanectl and vane-agent (debug)");
    let mut build = cargo();
    build.args(["build", "--quiet", "--bins"]).current_dir(root);
    for package in PACKAGES {
        build.args(["-p", package]);
    }
    let took = run_cmd(&mut build)?;
    println!("    built in {}", seconds(took));
    let bin = target_dir(root).join("debug");
    ensure_built(&bin, BINARIES)?;
    println!("==> building vane-proxy (the data plane), if this checkout has it");
    let mut build = cargo();
    build
        .args(["build", "--quiet", "-p", "vane-proxy-core", "--bins"])
        .current_dir(root);
    let proxy = run_cmd(&mut build).is_ok() && bin.join("vane-proxy").exists();
    if !proxy {
        println!(
            "    vane-proxy is not available: the demo uses the vane-agent sidecar, without traffic"
        );
    }

    let work = tempfile::Builder::new()
        .prefix("vane-cluster-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let w = work.path().to_path_buf();

    section(
        1,
        "three etcd members",
        "etcd is the cluster's memory: a replicated, consistent key-value store. Vane keeps \
         every version there, and allocates version numbers with compare-and-set \
         transactions, so any replica can take a push and no number is ever used twice.",
    );
    let mut etcd = Vec::new();
    for i in 0..3 {
        etcd.push(Etcd::new(format!("etcd-{i}"), &w));
    }
    let initial = etcd
        .iter()
        .map(|e| format!("{}={}", e.name, e.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    for member in &mut etcd {
        println!(
            "$ etcd --name {} --listen-client-urls {} --listen-peer-urls {} --initial-cluster {initial} &",
            member.name,
            member.client_url(),
            member.peer_url()
        );
        member.spawn(&initial)?;
    }
    wait_until("the etcd members to be healthy", || {
        etcd.iter().all(Etcd::healthy)
    })?;
    let endpoints = etcd
        .iter()
        .map(Etcd::client_url)
        .collect::<Vec<_>>()
        .join(",");
    println!("(all three healthy; leader: {})", leader_name(&etcd));

    section(
        2,
        "two control-server replicas",
        "Each replica serves agents and the Admin API, and follows the other's pushes \
         through an etcd watch. They share nothing else.",
    );
    let start_replica = |name: &'static str| -> Result<Server> {
        let args: Vec<std::ffi::OsString> = [
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--listen",
            "127.0.0.1:0",
            "--replica-name",
            name,
        ]
        .iter()
        .map(Into::into)
        .collect();
        println!(
            "$ vane-control --store etcd --etcd-endpoints {endpoints} --listen 127.0.0.1:0 --replica-name {name} &"
        );
        Server::start(
            name,
            &bin.join("vane-control"),
            &args,
            CONTROL_LISTENING,
            &w,
        )
    };
    let a = start_replica("replica-a")?;
    let b = start_replica("replica-b")?;
    let (a_url, b_url) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    println!("(replica-a listens on {a_url}, replica-b on {b_url})");

    let mut demo = Cluster {
        bin: bin.clone(),
        work: w.clone(),
        etcd,
        a: Some(a),
        b,
        a_url,
        b_url,
        agent: None,
        proxy,
        traffic: None,
        web: SocketAddr::from(([127, 0, 0, 1], free_port())),
        backend: Backend::start()?,
    };
    let result = tour(&mut demo);
    if result.is_err() {
        demo.dump_logs();
    }
    result?;

    println!();
    println!("==> stopping everything");
    drop(demo.traffic.take());
    if let Some(mut agent) = demo.agent.take() {
        agent.stop()?;
    }
    demo.b.stop()?;
    for member in &mut demo.etcd {
        member.kill();
    }
    println!();
    println!(
        "That was a clustered control plane: pushes through any replica, agents that fail \
         over between replicas, etcd losing its leader, and the data plane unaffected \
         throughout. docs/operations.md says how to run it for real."
    );
    Ok(())
}

fn leader_name(etcd: &[Etcd]) -> String {
    etcd.iter()
        .find(|e| e.running() && e.is_leader())
        .map_or_else(|| "electing".to_owned(), |e| e.name.clone())
}

fn tour(d: &mut Cluster) -> Result<()> {
    section(
        3,
        "push through replica-a, read through replica-b",
        "The push is stored in etcd before vanectl returns; replica-b sees the same history.",
    );
    let step1 = d.write_snapshot(1)?;
    d.vanectl(
        &d.a_url,
        &["push", GROUP, "-f", &step1, "-m", "first version"],
        0,
    )?;
    d.vanectl(&d.b_url, &["history", GROUP], 0)?;

    let (what, explain) = if d.proxy {
        (
            "a proxy given both replicas, under traffic",
            "vane-proxy embeds the agent: it follows the group from the first replica that \
             answers (replica-a) and serves HTTP on the snapshot's listener. A client sends \
             requests through it for the rest of the demo, and counts failures.",
        )
    } else {
        (
            "a sidecar agent given both replicas",
            "vane-agent follows the group from the first replica that answers (replica-a).",
        )
    };
    section(4, what, explain);
    let control = format!("{},{}", d.a_url, d.b_url);
    let cache = d.work.join("agent-cache");
    let mut args: Vec<std::ffi::OsString> = vec![
        "--node-id".into(),
        "edge-1".into(),
        "--group".into(),
        GROUP.into(),
        "--control".into(),
        control.clone().into(),
        "--cache-dir".into(),
        cache.into(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--backoff-base".into(),
        "100ms".into(),
        "--backoff-cap".into(),
        "1s".into(),
    ];
    let agent = if d.proxy {
        println!(
            "$ vane-proxy --node-id edge-1 --group {GROUP} --control {control} --cache-dir agent-cache --admin-listen 127.0.0.1:0 &"
        );
        Server::start(
            "vane-proxy",
            &d.bin.join("vane-proxy"),
            &args,
            PROXY_LISTENING,
            &d.work,
        )?
    } else {
        args.extend(["--output".into(), d.work.join("edge.json").into()]);
        println!(
            "$ vane-agent --node-id edge-1 --group {GROUP} --control {control} --cache-dir agent-cache --output edge.json --admin-listen 127.0.0.1:0 &"
        );
        Server::start(
            "vane-agent",
            &d.bin.join("vane-agent"),
            &args,
            AGENT_LISTENING,
            &d.work,
        )?
    };
    d.agent = Some(agent);
    d.wait_agent_version(1)?;
    d.show_agent_status()?;
    if d.proxy {
        let web = d.web;
        wait_until("the proxy to answer on its listener", || {
            http_get(web, "/").is_ok()
        })?;
        d.traffic = Some(Traffic::start(web));
        println!("(traffic started: GET http://{web}/ in a loop)");
    }

    section(
        5,
        "a push through replica-b reaches the agent connected to replica-a",
        "replica-a learns of the new version from its etcd watch and streams it to its agent.",
    );
    let step2 = d.write_snapshot(2)?;
    let pushed = Instant::now();
    d.vanectl(
        &d.b_url,
        &["push", GROUP, "-f", &step2, "-m", "through replica-b"],
        0,
    )?;
    d.wait_agent_version(2)?;
    println!(
        "(the agent applied version 2 {} after the push started)",
        millis(pushed.elapsed())
    );

    section(
        6,
        "status on either replica",
        "Replicas share their agents' ACKs in etcd (under a lease, so a dead replica's agents \
         expire): replica-b lists the agent that replica-a serves.",
    );
    std::thread::sleep(Duration::from_millis(300));
    d.vanectl(&d.b_url, &["status"], 0)?;
    d.show_traffic();

    section(
        7,
        "kill replica-a (SIGKILL)",
        "The agent's stream breaks; it reconnects to the next URL it was given, replica-b, \
         which already has every version. The data plane never waited for any of this.",
    );
    let killed = Instant::now();
    if let Some(mut a) = d.a.take() {
        a.kill()?;
    }
    let b_url = d.b_url.clone();
    wait_until("the agent to stream from replica-b", || {
        d.agent_status()
            .is_ok_and(|s| s["server"] == b_url.as_str() && s["connected"] == true)
    })?;
    println!(
        "(the agent streamed from replica-b {} after the kill)",
        millis(killed.elapsed())
    );
    d.show_agent_status()?;
    d.show_traffic();

    section(
        8,
        "pushes go on through replica-b",
        "Nothing was lost with replica-a: the history lives in etcd.",
    );
    let step3 = d.write_snapshot(3)?;
    d.vanectl(
        &d.b_url,
        &["push", GROUP, "-f", &step3, "-m", "after the kill"],
        0,
    )?;
    d.wait_agent_version(3)?;
    d.vanectl(&d.b_url, &["history", GROUP], 0)?;

    section(
        9,
        "kill the etcd leader (SIGKILL)",
        "Two of three members are a majority: they elect a new leader within about a second. \
         A push during the election waits for it (up to --etcd-timeout, 3s) instead of failing.",
    );
    let leader = d
        .etcd
        .iter()
        .position(|e| e.running() && e.is_leader())
        .context("no etcd leader")?;
    println!("$ kill -9 <pid of {}>", d.etcd[leader].name);
    d.etcd[leader].kill();
    let step4 = d.write_snapshot(4)?;
    let pushed = Instant::now();
    d.vanectl(
        &d.b_url,
        &["push", GROUP, "-f", &step4, "-m", "during an election"],
        0,
    )?;
    println!(
        "(the push returned {} after the leader died; the new leader is {})",
        millis(pushed.elapsed()),
        leader_name(&d.etcd)
    );
    d.wait_agent_version(4)?;
    d.vanectl(&d.b_url, &["status", GROUP], 0)?;

    if let Some(traffic) = d.traffic.take() {
        let (ok, failed) = traffic.counts();
        drop(traffic);
        println!();
        println!(
            "==> traffic through the proxy during the whole demo: {ok} requests answered, {failed} failed"
        );
        if failed > 0 {
            bail!("{failed} requests failed through the proxy");
        }
    }
    Ok(())
}
