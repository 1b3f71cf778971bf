//! `cargo xtask demo`: a guided tour against real processes. Builds the
//! binaries, generates demo certificates, starts vane-control with mTLS and
//! a policy on a temporary data directory, runs real vanectl commands against
//! it while saying what each one shows, then stops the server with SIGTERM and
//! removes everything it made. `--plaintext` runs the same tour without TLS
//! (plaintext on loopback, no policy).
//!
//! The tour is a list of [`Step`]s; later features (agents, proxies) add
//! steps and processes to it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{cargo, display, run as run_cmd, seconds, target_dir};
use crate::traffic::{Backend, PROXY_LISTENING, Traffic, free_port, snapshot};

/// How long vane-control may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The line vane-control prints on stdout once it accepts connections.
pub(crate) const LISTENING: &str = "vane-control listening on ";
/// The line vane-agent prints on stdout once its admin endpoint listens.
pub(crate) const AGENT_LISTENING: &str = "vane-agent admin listening on ";

/// The group the demo works on.
const GROUP: &str = "edge";
/// The group the demo's proxy follows.
const WEB: &str = "web";

/// What the demo appends to vane-pki's `DEMO_POLICY`: the proxy runs with
/// the agent's certificate (identity `agent-edge`, an agent of `edge` only)
/// and follows `web`, so that identity may watch `web` as well.
const WEB_BINDING: &str =
    "  # Added by `cargo xtask demo`: its proxy (also agent-edge) follows group web.
  - identity: agent-edge
    role: agent
    groups: [\"web\"]
";

/// How the demo's processes talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Security {
    /// TLS with client certificates and a policy (the default): vanectl is
    /// `operator`, the sidecar and the proxy are `agent-edge`.
    Mtls,
    /// Plaintext on loopback, no identities, authorization off (`--plaintext`).
    Plaintext,
}

/// One step of the tour: a title, a plain explanation, and what it runs.
struct Step {
    title: &'static str,
    explain: &'static str,
    action: fn(&mut Demo) -> Result<()>,
}

fn steps(security: Security) -> Vec<Step> {
    let mtls = security == Security::Mtls;
    let mut steps = Vec::new();
    if mtls {
        steps.push(Step {
            title: "who the server thinks we are",
            explain: "Every vanectl command here presents ca.pem (to check the server's \
                      certificate) and the client certificate operator.pem with its key: the \
                      variables exported above stand for these three flags. The server takes \
                      the identity from the certificate (its CN, `operator`), and the policy \
                      makes it an operator of every group: it may read, push and roll back.",
            action: |d| {
                d.vanectl(
                    &[
                        "--ca",
                        "ca.pem",
                        "--cert",
                        "operator.pem",
                        "--key",
                        "operator.key",
                        "whoami",
                    ],
                    0,
                )
            },
        });
    }
    steps.extend([
        Step {
            title: "push the example as the first version",
            explain: "The server validates the file, hashes its canonical form with SHA-256 and \
                      stores it durably (fsynced before the command returns) as version 1 of the \
                      group `edge`.",
            action: |d| {
                d.vanectl(
                    &[
                        "push",
                        GROUP,
                        "-f",
                        "snapshot.yaml",
                        "-m",
                        "first version of the edge config",
                    ],
                    0,
                )
            },
        },
        Step {
            title: "read it back",
            explain: "The header says which version and hash this is; below it is the canonical \
                      YAML (sorted, defaults filled in), itself a valid file to push again.",
            action: |d| d.vanectl(&["get", GROUP], 0),
        },
        Step {
            title: "push a change",
            explain: "snapshot-v2.yaml shifts api traffic (endpoint weight 3 -> 5) and turns the \
                      feature flag new_checkout off. It becomes version 2.",
            action: |d| {
                d.vanectl(
                    &[
                        "push",
                        GROUP,
                        "-f",
                        "snapshot-v2.yaml",
                        "-m",
                        "more weight on 9002, new checkout off",
                    ],
                    0,
                )
            },
        },
        Step {
            title: "push the same content again",
            explain: "Identical content has the identical hash, so nothing is stored and no \
                      version is used up.",
            action: |d| d.vanectl(&["push", GROUP, "-f", "snapshot-v2.yaml"], 0),
        },
        Step {
            title: "the history",
            explain: if mtls {
                "Every version of the group, newest first, with its hash, its message and its \
                 author: the identity that pushed it, `operator`, from vanectl's client \
                 certificate."
            } else {
                "Every version of the group, newest first, with its hash and message. AUTHOR \
                 is `-`: without client certificates or tokens the server knows no \
                 identity (the default demo, with mTLS, shows one)."
            },
            action: |d| d.vanectl(&["history", GROUP], 0),
        },
        Step {
            title: "what changed between 1 and 2",
            explain: "A unified diff of the canonical YAML of the two versions, computed by the \
                      server.",
            action: |d| d.vanectl(&["diff", GROUP, "1", "2"], 0),
        },
        Step {
            title: "roll back to version 1",
            explain: "A rollback never rewrites history: it stores a new version, 3, with \
                      version 1's content. Agents receive it like any other push.",
            action: |d| {
                d.vanectl(
                    &[
                        "rollback",
                        GROUP,
                        "--to",
                        "1",
                        "-m",
                        "back out the traffic shift",
                    ],
                    0,
                )
            },
        },
        Step {
            title: "the history again",
            explain: "Version 3 carries version 1's hash (RESTORES says so): same content, same \
                      hash, a new version number.",
            action: |d| {
                d.vanectl(&["history", GROUP], 0)?;
                d.check_rollback_hash()
            },
        },
        Step {
            title: "a push the server refuses",
            explain: "dangling.yaml routes /api to a cluster that does not exist. The server \
                      refuses it with one line naming the field and the reason, stores nothing, \
                      and vanectl exits with code 1 (2 is for usage errors and unreadable files, \
                      3 for an unreachable server).",
            action: |d| d.vanectl(&["push", GROUP, "-f", "dangling.yaml"], 1),
        },
        Step {
            title: "a push that lost a race",
            explain: "--expect-version is compare-and-set: this push assumes the head is still \
                      version 2, but the rollback made it 3, so it is refused (exit 1) instead \
                      of silently overwriting someone else's change.",
            action: |d| {
                d.vanectl(
                    &[
                        "push",
                        GROUP,
                        "-f",
                        "snapshot-v2.yaml",
                        "--expect-version",
                        "2",
                    ],
                    1,
                )
            },
        },
        Step {
            title: "a dry run",
            explain: "--dry-run validates on the server and says which version the push would \
                      become, without storing anything.",
            action: |d| {
                d.vanectl(&["push", GROUP, "-f", "snapshot-v2.yaml", "--dry-run"], 0)?;
                d.vanectl(&["history", GROUP, "--limit", "1"], 0)
            },
        },
    ]);
    if mtls {
        steps.extend([
            Step {
                title: "a push by someone who may only read",
                explain: "reader.pem is a certificate from the same CA for the identity \
                          `reader`, which the policy makes a reader of every group. It may \
                          read the history, but its push is refused with PermissionDenied: one \
                          line naming the identity, the action and the group. vanectl prints \
                          it and exits with 1; nothing is stored.",
                action: |d| {
                    d.vanectl(
                        &[
                            "--cert",
                            "reader.pem",
                            "--key",
                            "reader.key",
                            "history",
                            GROUP,
                            "--limit",
                            "1",
                        ],
                        0,
                    )?;
                    d.vanectl(
                        &[
                            "--cert",
                            "reader.pem",
                            "--key",
                            "reader.key",
                            "push",
                            GROUP,
                            "-f",
                            "snapshot-v2.yaml",
                            "-m",
                            "a reader tries",
                        ],
                        1,
                    )
                },
            },
            Step {
                title: "the audit trail",
                explain: "The server records every push and rollback, and every refused \
                          attempt, with the identity, the time, the version and the outcome, in \
                          the store next to the history. The reader's refused push is on top; \
                          below it are the lost race, the invalid push and the operator's \
                          pushes and rollback (the unchanged push included).",
                action: |d| {
                    d.vanectl(&["audit", GROUP], 0)?;
                    d.check_audit_refusal()
                },
            },
        ]);
    }
    steps.extend([
        Step {
            title: "start a sidecar agent",
            explain: "vane-agent follows the group `edge` for programs that cannot link Rust: it \
                      verifies each version's hash, writes it atomically to edge.json, keeps a \
                      disk cache, and ACKs. Its /status says what it runs and from where.",
            action: |d| {
                d.start_agent()?;
                d.wait_agent_version(3)?;
                d.show_agent_status()?;
                d.show_output_head()
            },
        },
        Step {
            title: "who runs what",
            explain: "The control server records every agent's ACK or NACK: the sidecar is \
                      SYNCED on the head, version 3.",
            action: |d| d.vanectl(&["status"], 0),
        },
        Step {
            title: "a push reaches the agent",
            explain: "A new version goes to every agent of the group over its open watch \
                      stream; the agent applies it and rewrites its output file.",
            action: |d| {
                let pushed = Instant::now();
                d.vanectl(
                    &["push", GROUP, "-f", "snapshot-v2.yaml", "-m", "shift again"],
                    0,
                )?;
                d.wait_agent_version(4)?;
                println!(
                    "(the agent applied version 4 {} after the push returned)",
                    millis(pushed.elapsed())
                );
                Ok(())
            },
        },
        Step {
            title: "kill the control server (SIGKILL)",
            explain: "The control plane dies without warning. The agent keeps serving version \
                      4 from memory: its output file and /status are unchanged, it only notes \
                      that the stream is gone and retries behind backoff.",
            action: |d| {
                d.server.kill()?;
                std::thread::sleep(Duration::from_millis(500));
                d.show_agent_status()?;
                ensure!(
                    d.agent_status_field("version").as_deref() == Some("4"),
                    "the agent should still run version 4"
                );
                Ok(())
            },
        },
        Step {
            title: "restart the control server",
            explain: "Same data directory, same address: every version survived the kill, and \
                      the agent reconnects (within its backoff cap) and is confirmed current.",
            action: |d| {
                d.restart_server()?;
                d.vanectl(&["history", GROUP, "--limit", "2"], 0)?;
                d.wait_agent_connected()?;
                d.show_agent_status()?;
                d.vanectl(&["status", GROUP], 0)
            },
        },
        Step {
            title: "a proxy serving live traffic",
            explain: "vane-proxy embeds the agent library. It follows the group `web`, whose \
                      snapshot routes an HTTP listener to a small backend. A client now sends \
                      requests through it back to back, a new connection each, and counts \
                      every answer and every failure.",
            action: |d| d.start_proxy_and_traffic(),
        },
        Step {
            title: "change the config ten times under traffic",
            explain: "A new version every 100 ms: each is validated, compiled aside and swapped \
                      in at once by the proxy. Requests in flight finish on the version they \
                      started with; none fails.",
            action: |d| {
                for step in 2..=11 {
                    d.push_web(step)?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                d.wait_proxy_version(11)?;
                d.show_traffic(0)
            },
        },
        Step {
            title: "kill the control server under traffic",
            explain: "The control plane dies (SIGKILL), stays dead for two seconds, and comes \
                      back. The proxy never asks it anything on the request path, so traffic \
                      does not notice; afterwards a new version reaches the proxy again.",
            action: |d| {
                d.server.kill()?;
                std::thread::sleep(Duration::from_secs(2));
                d.show_traffic(0)?;
                d.restart_server()?;
                d.push_web(12)?;
                d.wait_proxy_version(12)?;
                d.show_traffic(0)
            },
        },
    ]);
    steps
}

/// Everything a step needs: the binaries, the scratch directory, the processes.
struct Demo {
    bin: PathBuf,
    vanectl: PathBuf,
    work: PathBuf,
    data: PathBuf,
    security: Security,
    server_url: String,
    server: Server,
    agent: Option<Server>,
    proxy: Option<Server>,
    /// The proxy's HTTP listener, and the backend behind it.
    web: Option<(SocketAddr, Backend)>,
    traffic: Option<Traffic>,
}

impl Demo {
    /// Runs `vanectl ARGS` in the scratch directory, showing the command line
    /// and its output, and fails unless it exits with `expect`.
    fn vanectl(&mut self, args: &[&str], expect: i32) -> Result<()> {
        let mut cmd = self.vanectl_cmd();
        cmd.args(args);
        println!("$ {}", display(&cmd));
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", self.vanectl.display()))?;
        let code = status.code();
        if code != Some(0) {
            println!(
                "(exit code {})",
                code.map_or("none".into(), |c| c.to_string())
            );
        }
        ensure!(
            code == Some(expect),
            "`{}` exited with {status}; the demo expected exit code {expect}",
            display(&cmd)
        );
        Ok(())
    }

    /// vanectl in the scratch directory with the environment the tour
    /// exported: the server, and under mTLS the CA and `operator`'s
    /// certificate. Credentials from the caller's environment are dropped,
    /// so they cannot change who the demo is.
    fn vanectl_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.vanectl);
        cmd.current_dir(&self.work)
            .env("VANE_SERVER", &self.server_url);
        for var in [
            "VANE_CA",
            "VANE_CERT",
            "VANE_KEY",
            "VANE_TOKEN_FILE",
            "VANE_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        if self.security == Security::Mtls {
            cmd.env("VANE_CA", "ca.pem")
                .env("VANE_CERT", "operator.pem")
                .env("VANE_KEY", "operator.key");
        }
        cmd
    }

    /// The TLS arguments of an agent or proxy (`--ca --cert --key`, as
    /// `agent-edge`): as run (absolute paths) and as shown (relative).
    fn agent_tls(&self) -> (Vec<OsString>, &'static str) {
        match self.security {
            Security::Plaintext => (Vec::new(), ""),
            Security::Mtls => (
                vec![
                    "--ca".into(),
                    self.work.join("ca.pem").into(),
                    "--cert".into(),
                    self.work.join("agent.pem").into(),
                    "--key".into(),
                    self.work.join("agent.key").into(),
                ],
                " --ca ca.pem --cert agent.pem --key agent.key",
            ),
        }
    }

    fn start_agent(&mut self) -> Result<()> {
        let cache = self.work.join("agent-cache");
        let output = self.work.join("edge.json");
        let (tls, tls_shown) = self.agent_tls();
        let mut args: Vec<OsString> = vec![
            "--node-id".into(),
            "demo-sidecar".into(),
            "--group".into(),
            GROUP.into(),
            "--control".into(),
            self.server_url.clone().into(),
            "--cache-dir".into(),
            cache.into(),
            "--output".into(),
            output.into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--backoff-cap".into(),
            "2s".into(),
        ];
        args.extend(tls);
        println!(
            "$ vane-agent --node-id demo-sidecar --group {GROUP} --control {}{tls_shown} \\\n    --cache-dir agent-cache --output edge.json --admin-listen 127.0.0.1:0 --backoff-cap 2s &",
            self.server_url
        );
        let agent = Server::start(
            "vane-agent",
            &self.bin.join("vane-agent"),
            &args,
            AGENT_LISTENING,
            &self.work,
        )?;
        println!("(its admin endpoint listens on {})", agent.addr);
        self.agent = Some(agent);
        Ok(())
    }

    fn agent_status(&self) -> Result<String> {
        let agent = self.agent.as_ref().context("no agent is running")?;
        http_get(agent.addr, "/status")
    }

    /// A top-level scalar of the agent's /status JSON, as text.
    fn agent_status_field(&self, field: &str) -> Option<String> {
        let body = self.agent_status().ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        match json.get(field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    fn show_agent_status(&self) -> Result<()> {
        let agent = self.agent.as_ref().context("no agent is running")?;
        println!("$ curl -s http://{}/status", agent.addr);
        let body = self.agent_status()?;
        let json: serde_json::Value =
            serde_json::from_str(&body).context("the agent's /status is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&json)?);
        Ok(())
    }

    fn show_output_head(&self) -> Result<()> {
        let path = self.work.join("edge.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        println!("$ head -n 6 edge.json");
        for line in text.lines().take(6) {
            println!("{line}");
        }
        Ok(())
    }

    fn wait_agent_version(&self, version: u64) -> Result<()> {
        let want = version.to_string();
        wait_until(&format!("the agent to apply version {version}"), || {
            self.agent_status_field("version").as_deref() == Some(want.as_str())
        })
    }

    fn wait_agent_connected(&self) -> Result<()> {
        wait_until("the agent to reconnect", || {
            self.agent_status_field("connected").as_deref() == Some("true")
                && self.agent_status_field("source").as_deref() == Some("live")
        })
    }

    /// Writes and pushes version `step` of the `web` group.
    fn push_web(&mut self, step: u32) -> Result<()> {
        let (listen, backend) = self.web.as_ref().context("no backend is running")?;
        let file = format!("web-{step}.yaml");
        std::fs::write(self.work.join(&file), snapshot(*listen, backend.addr, step))?;
        self.vanectl(
            &["push", WEB, "-f", &file, "-m", &format!("step {step}")],
            0,
        )
    }

    fn start_proxy_and_traffic(&mut self) -> Result<()> {
        let backend = Backend::start()?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        println!(
            "(a backend answers \"ok\" on {}; the proxy will listen on {listen})",
            backend.addr
        );
        self.web = Some((listen, backend));
        self.push_web(1)?;
        let (tls, tls_shown) = self.agent_tls();
        let mut args: Vec<OsString> = vec![
            "--node-id".into(),
            "demo-proxy".into(),
            "--group".into(),
            WEB.into(),
            "--control".into(),
            self.server_url.clone().into(),
            "--cache-dir".into(),
            self.work.join("proxy-cache").into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(tls);
        println!(
            "$ vane-proxy --node-id demo-proxy --group {WEB} --control {}{tls_shown} \\\n    --cache-dir proxy-cache --admin-listen 127.0.0.1:0 &",
            self.server_url
        );
        let proxy = Server::start(
            "vane-proxy",
            &self.bin.join("vane-proxy"),
            &args,
            PROXY_LISTENING,
            &self.work,
        )?;
        self.proxy = Some(proxy);
        wait_until("the proxy's listener to answer", || {
            http_get(listen, "/").is_ok_and(|b| b == "ok\n")
        })?;
        self.traffic = Some(Traffic::start(listen));
        std::thread::sleep(Duration::from_secs(1));
        self.show_traffic(0)
    }

    fn wait_proxy_version(&self, version: u64) -> Result<()> {
        let proxy = self.proxy.as_ref().context("no proxy is running")?;
        wait_until(&format!("the proxy to run version {version}"), || {
            http_get(proxy.addr, "/status")
                .ok()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .is_some_and(|s| s["version"] == version)
        })
    }

    /// Prints the traffic counters; fails if more than `allowed` failed.
    fn show_traffic(&self, allowed: u64) -> Result<()> {
        let traffic = self.traffic.as_ref().context("no traffic is running")?;
        let (ok, failed) = traffic.counts();
        println!("(traffic so far: {ok} requests answered, {failed} failed)");
        ensure!(
            failed <= allowed,
            "{failed} requests failed through the proxy"
        );
        Ok(())
    }

    fn restart_server(&mut self) -> Result<()> {
        let (args, shown) = control_args(
            &self.server.addr.to_string(),
            &self.work,
            &self.data,
            self.security,
        );
        println!("$ {shown}");
        self.server = Server::start(
            "vane-control",
            &self.bin.join("vane-control"),
            &args,
            LISTENING,
            &self.work,
        )?;
        Ok(())
    }

    /// Checks what the tour claims: the newest audit entry is the reader's
    /// push, refused with PermissionDenied.
    fn check_audit_refusal(&mut self) -> Result<()> {
        let out = self
            .vanectl_cmd()
            .args(["audit", GROUP, "--limit", "1", "-o", "json"])
            .output()
            .context("cannot run vanectl audit -o json")?;
        ensure!(out.status.success(), "vanectl audit -o json failed");
        let entries: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("vanectl audit -o json is not JSON")?;
        let newest = &entries[0];
        ensure!(
            newest["identity"] == "reader"
                && newest["action"] == "push"
                && newest["result"] == "refused"
                && newest["code"] == "PermissionDenied",
            "the newest audit entry should be reader's refused push, got {newest}"
        );
        println!("(checked: the newest entry is reader's push, refused with PermissionDenied)");
        Ok(())
    }

    /// Checks what the tour claims: version 3's hash is version 1's (and
    /// under mTLS, that `operator` is its author).
    fn check_rollback_hash(&mut self) -> Result<()> {
        let out = self
            .vanectl_cmd()
            .args(["history", GROUP, "-o", "json"])
            .output()
            .context("cannot run vanectl history -o json")?;
        ensure!(out.status.success(), "vanectl history -o json failed");
        let versions: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("vanectl history -o json is not JSON")?;
        let entry = |version: u64| {
            versions
                .as_array()
                .and_then(|all| all.iter().find(|v| v["version"] == version))
        };
        let hash_of = |version: u64| entry(version).and_then(|v| v["hash"].as_str());
        let (v1, v3) = (hash_of(1), hash_of(3));
        ensure!(
            v1.is_some() && v1 == v3,
            "version 3 should have version 1's hash, got {v3:?} and {v1:?}"
        );
        if self.security == Security::Mtls {
            let author = entry(3).map(|v| &v["author"]);
            ensure!(
                author.is_some_and(|a| a == "operator"),
                "version 3's author should be operator, got {author:?}"
            );
        }
        if self.security == Security::Mtls {
            println!("(checked: version 3 and version 1 have the same hash; operator pushed it)");
        } else {
            println!("(checked: version 3 and version 1 have the same hash)");
        }
        Ok(())
    }
}

pub(crate) fn run(root: &Path, security: Security) -> Result<()> {
    crate::test::ensure_protoc(&mut crate::test::Apt::default())?;
    println!("==> building vane-control, vanectl, vane-agent and vane-proxy (debug)");
    let mut build = cargo();
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "vane-control",
            "-p",
            "vane-agent",
            "-p",
            "vane-proxy-core",
            "--bins",
        ])
        .current_dir(root);
    let took = run_cmd(&mut build)?;
    println!("    built in {}", seconds(took));
    let bin = target_dir(root).join("debug");

    // Dropped last (declared first): the server guard below stops the
    // process before its data directory is removed.
    let work = tempfile::Builder::new()
        .prefix("vane-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let data = work.path().join("data");
    write_files(root, work.path())?;

    if security == Security::Mtls {
        println!();
        println!("==> certificates and a policy");
        write_certs(work.path())?;
    }

    println!();
    let (args, shown) = control_args("127.0.0.1:0", work.path(), &data, security);
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
        LISTENING,
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
        agent: None,
        proxy: None,
        web: None,
        traffic: None,
    };
    for (i, step) in steps(security).iter().enumerate() {
        println!();
        println!("==> {}. {}", i + 1, step.title);
        println!("    {}", wrap(step.explain, 76, "    "));
        (step.action)(&mut demo).inspect_err(|_| {
            for p in std::iter::once(&demo.server)
                .chain(demo.agent.as_ref())
                .chain(demo.proxy.as_ref())
            {
                eprintln!("{} log ({}):", p.name, p.log.display());
                eprintln!("{}", tail(&p.log, 20));
            }
        })?;
    }

    // Traffic stops before the proxy does, so no request is cut off by the
    // demo itself.
    drop(demo.traffic.take());
    if let Some(mut proxy) = demo.proxy.take() {
        println!();
        println!("==> stopping vane-proxy with SIGTERM");
        let (status, took) = proxy.stop()?;
        println!("    it drained and exited ({status}) in {}", seconds(took));
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
            "That was the control plane under mTLS, a sidecar agent and a proxy that outlived it. \
             `cargo xtask demo --plaintext` runs the same tour without TLS; `cargo xtask certs --out DIR` \
             writes a certificate set to keep."
        }
        Security::Plaintext => {
            "That was the control plane, a sidecar agent and a proxy that outlived it, in plaintext; \
             plain `cargo xtask demo` runs the same tour with mTLS and a policy."
        }
    };
    println!("{}", wrap(how, 80, ""));
    println!(
        "Run `cargo xtask test` for the full test suite, and see README.md for where to go next."
    );
    Ok(())
}

/// Writes vane-pki's demo set into `work` (what `cargo xtask certs` writes),
/// extends its policy for the demo's proxy, and shows both.
fn write_certs(work: &Path) -> Result<()> {
    let explain = "A CA signs the control server's certificate (for 127.0.0.1 and localhost) \
                   and client certificates whose CN is an identity: operator, reader and \
                   agent-edge. The policy says which identity may do what in which groups; \
                   the server refuses everything else. A certificate from another CA fails \
                   the TLS handshake, and a caller with no certificate (and no bearer token) \
                   is refused as unauthenticated. The files live in the scratch directory \
                   and are removed with it at the end.";
    println!("    {}", wrap(explain, 76, "    "));
    let set = vane_pki::DemoSet::generate().context("generating the demo certificates")?;
    let written = set.write(work, false)?;
    let names: Vec<String> = written
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let wrote = format!(
        "(wrote {}: the set `cargo xtask certs --out DIR` writes)",
        names.join(", ")
    );
    println!("{}", wrap(&wrote, 80, " "));
    let policy = work.join("policy.yaml");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&policy)
        .with_context(|| format!("cannot open {}", policy.display()))?;
    file.write_all(WEB_BINDING.as_bytes())
        .with_context(|| format!("cannot write {}", policy.display()))?;
    println!("$ cat policy.yaml   # with one binding added for this demo's proxy");
    let text = std::fs::read_to_string(&policy)
        .with_context(|| format!("cannot read {}", policy.display()))?;
    print!("{text}");
    Ok(())
}

/// vane-control's arguments for `addr`, and the command line as shown
/// (relative file names: the tour runs in the scratch directory).
fn control_args(
    addr: &str,
    work: &Path,
    data: &Path,
    security: Security,
) -> (Vec<OsString>, String) {
    let mut args: Vec<OsString> = vec![
        "--listen".into(),
        addr.into(),
        "--data-dir".into(),
        data.into(),
    ];
    let mut shown = format!("vane-control --listen {addr} --data-dir {}", data.display());
    if security == Security::Mtls {
        shown.push_str(" \\\n   ");
        for (flag, file) in [
            ("--tls-cert", "server.pem"),
            ("--tls-key", "server.key"),
            ("--client-ca", "ca.pem"),
            ("--policy", "policy.yaml"),
        ] {
            args.push(flag.into());
            args.push(work.join(file).into());
            shown.push_str(&format!(" {flag} {file}"));
        }
    }
    (args, shown)
}

/// The three files the tour pushes: the example, a changed copy, a broken copy.
fn write_files(root: &Path, work: &Path) -> Result<()> {
    let example_path = root.join("examples/snapshot.yaml");
    let example = std::fs::read_to_string(&example_path)
        .with_context(|| format!("cannot read {}", example_path.display()))?;
    std::fs::write(work.join("snapshot.yaml"), &example)?;
    let v2 = replace_once(&example, "weight: 3", "weight: 5")?;
    let v2 = replace_once(
        &v2,
        "feature.new_checkout: true",
        "feature.new_checkout: false",
    )?;
    std::fs::write(work.join("snapshot-v2.yaml"), v2)?;
    let dangling = replace_once(&example, "cluster: api,", "cluster: paymnets,")?;
    std::fs::write(work.join("dangling.yaml"), dangling)?;
    Ok(())
}

/// `text` with `from` replaced by `to`, failing if `from` is not there
/// exactly once (so a change to the example cannot silently void a step).
fn replace_once(text: &str, from: &str, to: &str) -> Result<String> {
    let n = text.matches(from).count();
    ensure!(
        n == 1,
        "examples/snapshot.yaml should contain `{from}` exactly once, found {n}: update the demo"
    );
    Ok(text.replacen(from, to, 1))
}

/// A running process of ours that prints `<prefix>ADDR` on stdout once it is
/// ready (vane-control, vane-agent). Dropping it stops the process (SIGTERM,
/// then SIGKILL), so no error path leaves one behind.
pub(crate) struct Server {
    pub(crate) name: &'static str,
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Server {
    /// Starts `program ARGS` and waits for the address it prints after
    /// `prefix`. Its output goes to `WORK/<name>.log`.
    pub(crate) fn start(
        name: &'static str,
        program: &Path,
        args: &[std::ffi::OsString],
        prefix: &'static str,
        work: &Path,
    ) -> Result<Self> {
        let log = work.join(format!("{name}.log"));
        let open_log = || -> Result<File> {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("cannot open {}", log.display()))
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(open_log()?)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stdout = child.stdout.take();
        // Guard first: from here on any error stops the child.
        let mut server = Server {
            name,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.clone(),
        };
        let stdout = stdout.context("vane-control's stdout was not captured")?;
        let mut log_file = open_log()?;
        // One address at most is ever sent, so a channel of one never blocks.
        let (tx, rx) = mpsc::sync_channel::<SocketAddr>(1);
        // The reader keeps draining stdout into the log after the address is
        // found, so the server never blocks on a full pipe; it ends at EOF,
        // when the server exits.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                if let Some(addr) = parse_listening(&line, prefix)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => {
                server.addr = addr;
                Ok(server)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "{name} printed no `{prefix}ADDR` line within {}s; its log:\n{}",
                STARTUP_TIMEOUT.as_secs(),
                tail(&log, 20)
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = server.child.wait().ok();
                bail!(
                    "{name} exited ({}) before it was listening; its log:\n{}",
                    status.map_or("unknown status".into(), |s| s.to_string()),
                    tail(&log, 20)
                )
            }
        }
    }

    /// SIGTERM, then wait up to [`STOP_TIMEOUT`] (SIGKILL after that).
    pub(crate) fn stop(&mut self) -> Result<(ExitStatus, Duration)> {
        let start = Instant::now();
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM)
            .with_context(|| format!("cannot send SIGTERM to {}", self.name))?;
        while start.elapsed() < STOP_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!(
            "{} did not exit within {}s of SIGTERM; killed it",
            self.name,
            STOP_TIMEOUT.as_secs()
        )
    }

    /// SIGKILL: no warning, no drain.
    pub(crate) fn kill(&mut self) -> Result<()> {
        println!("$ kill -9 {}   # {}", self.child.id(), self.name);
        self.child
            .kill()
            .with_context(|| format!("cannot kill {}", self.name))?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && self.stop().is_err() {
            eprintln!("warning: {} had to be killed", self.name);
        }
    }
}

/// The address in a `<prefix>ADDR` line.
fn parse_listening(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix(prefix)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `GET path` over HTTP/1.1 on loopback; the body when the status is 200.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

/// Polls `done` every 50 ms for up to 30 s.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !done() {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// The last `n` lines of a file (for error messages).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Word-wraps `text` to `width` columns, continuing lines with `indent`.
pub(crate) fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > width {
            out.push('\n');
            out.push_str(indent);
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        assert_eq!(
            parse_listening("vane-control listening on 127.0.0.1:40123", LISTENING),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert_eq!(parse_listening("something else", LISTENING), None);
    }

    #[test]
    fn demo_files_follow_the_example() {
        let root = crate::workspace_root();
        let work = tempfile::tempdir().unwrap();
        write_files(&root, work.path()).unwrap();
        let v2 = std::fs::read_to_string(work.path().join("snapshot-v2.yaml")).unwrap();
        assert!(v2.contains("weight: 5") && v2.contains("new_checkout: false"));
        let bad = std::fs::read_to_string(work.path().join("dangling.yaml")).unwrap();
        assert!(bad.contains("cluster: paymnets,"));
    }

    #[test]
    fn replace_once_refuses_missing_text() {
        assert!(replace_once("a b", "c", "d").is_err());
        assert!(replace_once("a a", "a", "d").is_err());
        assert_eq!(replace_once("a b", "b", "c").unwrap(), "a c");
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("aa bb cc", 5, "  "), "aa bb\n  cc");
    }
}
