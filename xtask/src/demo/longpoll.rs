//! The tour's HTTP long-poll step: `examples/longpoll.sh`, a shell client
//! with curl, follows the group over the control server's HTTP API, writes
//! the snapshot to a file and ACKs it; `vanectl status` then lists it as an
//! `http` client next to the sidecar.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::session::{Demo, GROUP};
use super::setup::Security;

/// How long the script may take to fetch, write and ACK one version.
const WITHIN: Duration = Duration::from_secs(30);

/// Runs `longpoll.sh --once`, shows its file and the group's status.
pub(crate) fn run(d: &mut Demo) -> Result<()> {
    let (curl_opts, shown) = match d.security {
        Security::Mtls => (
            "--cacert ca.pem --cert agent.pem --key agent.key",
            "CURL_OPTS='--cacert ca.pem --cert agent.pem --key agent.key' ",
        ),
        Security::Plaintext => ("", ""),
    };
    println!(
        "$ {shown}sh longpoll.sh {} {GROUP} shell-poller edge-http.json --once",
        d.server_url
    );
    let mut child = Command::new("sh")
        .current_dir(&d.work)
        .env("CURL_OPTS", curl_opts)
        .env_remove("VANE_TOKEN")
        .env_remove("CHECK_CMD")
        .args([
            "longpoll.sh",
            &d.server_url,
            GROUP,
            "shell-poller",
            "edge-http.json",
            "--once",
        ])
        .spawn()
        .context("cannot run sh longpoll.sh (is curl installed?)")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > WITHIN {
            // Our own child: stopped by its handle.
            let _ = child.kill();
            let _ = child.wait();
            bail!("longpoll.sh did not write a version within {WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(status.success(), "longpoll.sh exited with {status}");
    let path = d.work.join("edge-http.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    println!("$ head -n 4 edge-http.json");
    for line in text.lines().take(4) {
        println!("{line}");
    }
    d.vanectl(&["status", GROUP], 0)
}
