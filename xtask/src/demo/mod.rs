//! `cargo xtask demo`: a guided tour against real processes. Builds the
//! binaries, generates demo certificates, starts vane-control with mTLS and
//! a policy on a temporary data directory, runs real vanectl commands against
//! it while saying what each one shows, then stops the server with SIGTERM and
//! removes everything it made. `--plaintext` runs the same tour without TLS
//! (plaintext on loopback, no policy).
//!
//! # Layout
//! - [`steps`]: the tour, a list of steps (title, explanation, action);
//!   later features (agents, proxies) add steps to it.
//! - [`session`]: the state the steps act on ([`session::Demo`]) and what
//!   they do with it.
//! - [`setup`]: the files, certificates and command lines prepared first.
//! - [`rollout`]: the sidecars of the rollout that rolls itself back.
//! - [`envoy`]: the stock Envoy following the group `mesh` over xDS.
//! - [`longpoll`]: `examples/longpoll.sh` following the group over HTTP.
//! - [`openfeature`]: the Python OpenFeature SDK following the flags of the
//!   group `shop`, and OFREP with curl.
//! - [`tls`]: the proxy serving HTTPS with a pushed certificate, and its
//!   rotation under an open connection.
//! - This file: building, starting the control server, running the steps,
//!   stopping everything.
//!
//! The processes themselves are [`crate::harness`]'s, the traffic
//! [`crate::traffic`]'s, and the printing [`crate::narrate`]'s, all shared
//! with the cluster demo.

mod envoy;
mod longpoll;
mod openfeature;
mod rollout;
mod session;
mod setup;
mod steps;
mod tls;

use std::path::Path;

use anyhow::{Context as _, Result, ensure};

use self::session::Demo;
pub(crate) use self::setup::Security;
use self::setup::{console_args, control_args, write_certs, write_files};
use self::steps::steps;
use crate::harness::{CONTROL_LISTENING, Server};
use crate::narrate::{section, tail, wrap};
use crate::process::{cargo, ensure_built, run as run_cmd, seconds, target_dir};

/// The packages whose binaries the demo runs, and those binaries (their
/// names differ: `vanectl` and the sidecar have packages of their own).
pub(crate) const PACKAGES: &[&str] = &[
    "vane-control",
    "vanectl",
    "vane-agent-sidecar",
    "vane-proxy-core",
];
pub(crate) const BINARIES: &[&str] = &["vane-control", "vanectl", "vane-agent", "vane-proxy"];

pub(crate) fn run(root: &Path, security: Security) -> Result<()> {
    let mut apt = crate::apt::Apt::default();
    crate::test::ensure_protoc(&mut apt)?;
    // The Envoy of the xDS steps, pinned, as the tests have it.
    let xds = crate::xds_deps::ensure(root, &mut apt)?;
    // The OpenFeature SDKs of the flags steps, pinned, as the tests have them.
    let openfeature = crate::openfeature_deps::ensure(root, &mut apt)?;
    println!("==> building vane-control, vanectl, vane-agent and vane-proxy (debug)");
    let mut build = cargo();
    build.args(["build", "--quiet", "--bins"]).current_dir(root);
    for package in PACKAGES {
        build.args(["-p", package]);
    }
    let took = run_cmd(&mut build)?;
    println!("    built in {}", seconds(took));
    let bin = target_dir(root).join("debug");
    ensure_built(&bin, BINARIES)?;

    // Dropped last (declared first): the server guard below stops the
    // process before its data directory is removed.
    let work = tempfile::Builder::new()
        .prefix("vane-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let data = work.path().join("data");
    write_files(root, work.path())?;
    rollout::write_candidate(work.path())?;

    if security == Security::Mtls {
        println!();
        println!("==> certificates and a policy");
        write_certs(work.path())?;
    }

    println!();
    let (mut args, shown) = control_args("127.0.0.1:0", work.path(), &data, security);
    // The web console (docs/console.md) on a port of its own, kept across
    // the tour's restart of the server.
    let console = vane_testkit::net::free_addr();
    args.extend(console_args(console));
    let shown = format!("{shown} \\\n    --console-listen {console}");
    match security {
        Security::Mtls => println!(
            "==> starting vane-control with mTLS (TLS, client certificates, the policy) on a temporary data directory"
        ),
        Security::Plaintext => println!(
            "==> starting vane-control (plaintext, loopback only) on a temporary data directory"
        ),
    }
    let server = Server::start(
        "vane-control",
        &bin.join("vane-control"),
        &args,
        CONTROL_LISTENING,
        work.path(),
    )?;
    let scheme = match security {
        Security::Mtls => "https",
        Security::Plaintext => "http",
    };
    let server_url = format!("{scheme}://{}", server.addr);
    println!("    $ {}", shown.replace('\n', "\n    "));
    println!("    listening on {server_url}; every vanectl command below runs with");
    match security {
        Security::Mtls => {
            println!("    $ export VANE_SERVER={server_url}");
            println!(
                "    $ export VANE_CA=ca.pem VANE_CERT=operator.pem VANE_KEY=operator.key   # = --ca --cert --key"
            );
        }
        Security::Plaintext => println!("    $ export VANE_SERVER={server_url}"),
    }
    match security {
        Security::Mtls => println!(
            "    the web console: {scheme}://{console}/ui/ (import operator.pem and operator.key into the browser as a client certificate; docs/console.md)"
        ),
        Security::Plaintext => println!(
            "    the web console: {scheme}://{console}/ui/ (no sign-in: no policy on loopback; docs/console.md)"
        ),
    }
    match security {
        Security::Mtls => println!(
            "    in {} (the certificates, a copy of examples/snapshot.yaml and two variants of it)",
            work.path().display()
        ),
        Security::Plaintext => println!(
            "    in {} (a copy of examples/snapshot.yaml and two variants of it)",
            work.path().display()
        ),
    }

    let mut demo = Demo {
        bin: bin.clone(),
        vanectl: bin.join("vanectl"),
        work: work.path().to_path_buf(),
        data,
        security,
        server_url,
        server,
        console,
        agent: None,
        proxy: None,
        web: None,
        traffic: None,
        canaries: Vec::new(),
        envoy_bin: xds.envoy,
        envoy: None,
        openfeature,
        flagd: None,
        tls: None,
    };
    for (i, step) in steps(security).iter().enumerate() {
        section(i + 1, step.title, step.explain);
        (step.action)(&mut demo).inspect_err(|_| {
            for p in std::iter::once(&demo.server)
                .chain(demo.agent.as_ref())
                .chain(demo.proxy.as_ref())
                .chain(demo.canaries.iter().map(|(_, a)| a))
            {
                eprintln!("{} log ({}):", p.name, p.log.display());
                eprintln!("{}", tail(&p.log, 20));
            }
            if demo.envoy.is_some() {
                let log = demo.work.join("envoy.log");
                eprintln!("envoy log ({}):", log.display());
                eprintln!("{}", tail(&log, 20));
            }
            if demo.flagd.is_some() {
                let log = demo.work.join(openfeature::LOG);
                eprintln!("OpenFeature client log ({}):", log.display());
                eprintln!("{}", tail(&log, 20));
            }
        })?;
    }

    // Traffic stops before the proxy does, so no request is cut off by the
    // demo itself.
    drop(demo.traffic.take());
    if let Some(mut flagd) = demo.flagd.take() {
        flagd.stop()?;
    }
    if let Some(mut envoy) = demo.envoy.take() {
        println!();
        println!("==> stopping Envoy with SIGTERM");
        envoy.stop()?;
    }
    if let Some(mut proxy) = demo.proxy.take() {
        println!();
        println!("==> stopping vane-proxy with SIGTERM");
        let (status, took) = proxy.stop()?;
        println!("    it drained and exited ({status}) in {}", seconds(took));
    }
    if !demo.canaries.is_empty() {
        println!();
        println!("==> stopping the rollout's four sidecars with SIGTERM");
        demo.stop_canaries()?;
    }
    if let Some(mut agent) = demo.agent.take() {
        println!();
        println!("==> stopping vane-agent with SIGTERM");
        let (status, took) = agent.stop()?;
        println!("    it exited ({status}) in {}", seconds(took));
    }
    println!();
    println!("==> stopping vane-control with SIGTERM");
    let (status, took) = demo.server.stop()?;
    println!("    it drained and exited ({status}) in {}", seconds(took));
    ensure!(
        status.success(),
        "vane-control exited with {status} after SIGTERM"
    );
    println!();
    let how = match security {
        Security::Mtls => {
            "That was the control plane under mTLS, a sidecar agent and a proxy that outlived it, \
             a stock Envoy following Vane and an OpenFeature SDK evaluating its flags. \
             `cargo xtask demo --plaintext` runs the same tour without TLS; `cargo xtask certs --out DIR` \
             writes a certificate set to keep."
        }
        Security::Plaintext => {
            "That was the control plane, a sidecar agent and a proxy that outlived it, a stock \
             Envoy following Vane and an OpenFeature SDK evaluating its flags, in plaintext; \
             plain `cargo xtask demo` runs the same tour with mTLS and a policy."
        }
    };
    println!("{}", wrap(how, 80, ""));
    println!(
        "Run `cargo xtask test` for the full test suite, and see README.md for where to go next."
    );
    Ok(())
}
