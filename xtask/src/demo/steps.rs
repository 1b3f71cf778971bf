//! The tour itself: each step's title, its plain explanation, and what it
//! runs, in order. Under mTLS the tour adds identity steps (whoami, a
//! reader refused, the audit trail).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use anyhow::Context as _;

use super::envoy::{EnvoyRun, MESH, NODE};
use super::openfeature::{FlagdRun, SHOP, show_ofrep};
use super::session::WEB;
use super::session::{Demo, GROUP};
use super::setup::Security;
use super::tls::{TlsRun, finish_two_requests, show_redacted};
use crate::narrate::millis;

/// One step of the tour: a title, a plain explanation, and what it runs.
pub(crate) struct Step {
    pub(crate) title: &'static str,
    pub(crate) explain: &'static str,
    pub(crate) action: fn(&mut Demo) -> Result<()>,
}

/// The tour for `security`, in the order it runs.
pub(crate) fn steps(security: Security) -> Vec<Step> {
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
                      become, the diff against the head and a one-line summary of listeners, \
                      routes and clusters added, removed and changed (with a warning when a \
                      push would remove every listener or route), without storing anything.",
            action: |d| {
                d.vanectl(&["push", GROUP, "-f", "snapshot-v2.yaml", "--dry-run"], 0)?;
                d.vanectl(&["history", GROUP, "--limit", "1"], 0)
            },
        },
        Step {
            title: "a local file against the head, as kubectl diff does",
            explain: "`vanectl diff G -f FILE` compares the canonical forms of the file and the \
                      head (or --version N): exit 0 when they are equal, 1 when they differ, \
                      so scripts can gate on it. The head is version 3, version 1's content: \
                      snapshot.yaml is equal to it, snapshot-v2.yaml is not.",
            action: |d| {
                d.vanectl(&["diff", GROUP, "-f", "snapshot.yaml"], 0)?;
                d.vanectl(&["diff", GROUP, "-f", "snapshot-v2.yaml"], 1)
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
            title: "every group, and a gate for CI",
            explain: "`vanectl groups` lists every group the caller may read with its head and \
                      its agents by state. `status --fail-on` exits 1 when a (selected) agent is \
                      in one of the listed states, so a pipeline can stop on a NACK; here none \
                      is. `vanectl version` names the client's build and the server's.",
            action: |d| {
                d.vanectl(&["groups"], 0)?;
                d.vanectl(&["status", GROUP, "--fail-on", "nacked,stale"], 0)?;
                d.vanectl(&["version"], 0)
            },
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
            title: "a shell script follows the group over HTTP",
            explain: "Programs that speak neither gRPC nor Vane's protocol long-poll the \
                      control server's main port: GET /v1/groups/edge/snapshot answers at once \
                      with the head (ETag = its hash) or holds until a newer version. \
                      examples/longpoll.sh does it with curl, writes the file atomically and \
                      ACKs it; the status lists it as an `http` client (docs/http-api.md).",
            action: super::longpoll::run,
        },
        Step {
            title: "kill the control server (SIGKILL)",
            explain: "The control plane dies without warning. The agent keeps serving version \
                      4 from memory: its output file and /status are unchanged, it only notes \
                      that the stream is gone and retries behind backoff, and its /readyz still \
                      says ready (it serves a config; liveness and readiness never depend on \
                      the control plane).",
            action: |d| {
                d.server.kill()?;
                std::thread::sleep(Duration::from_millis(500));
                d.show_agent_status()?;
                d.show_agent_ready()?;
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
            title: "four more agents, labelled by zone",
            explain: "Four sidecars edge-1..edge-4 join the group with a label zone=a or zone=b. \
                      Each runs a --health-cmd after every apply: it stands for the data \
                      plane's own check (here: do uploads still work?), and a non-zero exit \
                      reports the running version degraded, with its stderr as the reason, on \
                      the agent's stream to the control server.",
            action: |d| {
                d.start_canaries(4)?;
                d.vanectl(&["status", GROUP], 0)
            },
        },
        Step {
            title: "a progressive rollout that rolls itself back",
            explain: "snapshot-small-bodies.yaml cuts the body limit to 1 KiB: valid, and wrong. \
                      Instead of pushing it to everyone, `rollout start` stores it as the \
                      candidate, version 5, and sends it only to a cohort: 25% of the agents \
                      the selector `zone` matches (1 of 4, chosen by hashing the rollout id \
                      with each node id); the others, and demo-sidecar which has no zone, \
                      keep the stable version 4. The member ACKs, its health check reports \
                      degraded, and the server aborts without waiting for the bake: it \
                      stores version 6 with version 4's content and sends it. `rollout status \
                      -w` follows each change and exits 1 for ROLLED_BACK (0 for COMPLETE, 4 \
                      when --timeout passes first).",
            action: |d| {
                d.vanectl(
                    &[
                        "rollout",
                        "start",
                        GROUP,
                        "-f",
                        "snapshot-small-bodies.yaml",
                        "--steps",
                        "25,100",
                        "--bake",
                        "30s",
                        "--select",
                        "zone",
                        "-m",
                        "smaller request bodies",
                    ],
                    0,
                )?;
                d.vanectl(&["rollout", "status", GROUP, "-w", "--timeout", "60s"], 1)
            },
        },
        Step {
            title: "what the rollout left",
            explain: "The rollout keeps its reason, its cohort counts and every transition. \
                      Versions never went backwards: the history shows the candidate, 5, and \
                      version 6 restoring 4's hash; the cohort member's own /status history \
                      lists what it ran, and every agent is SYNCED on 6.",
            action: |d| {
                d.vanectl(&["rollout", "status", GROUP], 0)?;
                d.show_rolled_back()?;
                d.vanectl(&["history", GROUP, "--limit", "3"], 0)?;
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
        Step {
            title: "HTTPS with a certificate from the control plane",
            explain: "web-tls-1.yaml adds an https listener to the proxy's snapshot and a \
                      secret: a certificate for web.demo.test (from a web CA of the demo's \
                      own, valid 90 days) with its private key. The control server checked at \
                      push that the key belongs to the certificate, that the listener's name \
                      is one of the certificate's, and its dates; the proxy serves it. \
                      vanectl shows the key only as a fingerprint.",
            action: |d| {
                let run = TlsRun::new()?;
                push_tls(d, &run, 1, 90)?;
                d.wait_proxy_version(13)?;
                run.show_curl(&d.work)?;
                show_redacted(d.vanectl_cmd(), WEB)?;
                d.tls = Some(run);
                d.show_traffic(0)
            },
        },
        Step {
            title: "rotate the certificate under an open connection",
            explain: "A curl asks twice, four seconds apart, on one kept-alive connection. \
                      Between its two requests web-tls-2.yaml pushes a new certificate (valid \
                      a year). The open connection keeps its session and answers; the next \
                      handshake gets the new certificate (see its expire date).",
            action: |d| {
                let run = d.tls.take().context("the https step did not run")?;
                let curl = run.start_two_requests(&d.work)?;
                std::thread::sleep(Duration::from_secs(1));
                let pushed = Instant::now();
                push_tls(d, &run, 2, 365)?;
                d.wait_proxy_version(14)?;
                println!(
                    "(the proxy runs version 14, {} after the push)",
                    millis(pushed.elapsed())
                );
                finish_two_requests(curl)?;
                run.show_curl(&d.work)?;
                d.tls = Some(run);
                d.show_traffic(0)
            },
        },
        Step {
            title: "a stock Envoy following Vane",
            explain: "Envoy speaks xDS, and vane-control serves it on the same port, with the \
                      same TLS and policy (Envoy presents the agent's certificate). Its \
                      bootstrap names only the control server and its group, mesh, in its \
                      node metadata (vane.group); the listener, the route and the cluster come \
                      from the group's snapshot, mesh-1.yaml, which sends everything to the \
                      backend blue. vanectl status lists Envoy like any agent, with CLIENT \
                      envoy.",
            action: |d| {
                let prepared = EnvoyRun::prepare(&d.work)?;
                d.vanectl(
                    &[
                        "push",
                        MESH,
                        "-f",
                        "mesh-1.yaml",
                        "-m",
                        "everything to blue",
                    ],
                    0,
                )?;
                let tls = d.envoy_tls();
                let envoy = EnvoyRun::start(&d.envoy_bin, &d.work, d.server.addr, tls, prepared)?;
                let took = envoy.wait_answer("blue")?;
                println!(
                    "(Envoy's listener answered {} after its start)",
                    millis(took)
                );
                envoy.show_curl()?;
                d.envoy = Some(envoy);
                d.wait_synced(MESH, NODE, 1)?;
                d.vanectl(&["status", MESH], 0)
            },
        },
        Step {
            title: "a push reaches Envoy",
            explain: "mesh-2.yaml sends everything to green instead. Envoy gets the new route \
                      and cluster over its open ADS stream and ACKs version 2; its own \
                      /config_dump shows Vane's version 2 for the clusters (the listener did not \
                      change, and keeps the version it came with). History, audit and rollback \
                      apply to it as to Vane's agents.",
            action: |d| {
                let pushed = Instant::now();
                d.vanectl(
                    &[
                        "push",
                        MESH,
                        "-f",
                        "mesh-2.yaml",
                        "-m",
                        "everything to green",
                    ],
                    0,
                )?;
                let envoy = d.envoy.as_ref().context("Envoy is not running")?;
                envoy.wait_answer("green")?;
                println!(
                    "(Envoy answered from green {} after the push returned)",
                    millis(pushed.elapsed())
                );
                envoy.show_curl()?;
                d.wait_synced(MESH, NODE, 2)?;
                envoy.show_version()?;
                d.vanectl(&["status", MESH], 0)
            },
        },
        Step {
            title: "feature flags for an OpenFeature SDK",
            explain: "flags.yaml (examples/flags.yaml) has a `flags` section: flagd flag \
                      definitions with variants, a default and JSON Logic targeting \
                      (new-checkout on for example.com addresses, checkout-banner for 20% \
                      of users by a fractional split); its values are served as static \
                      flags too. The Python OpenFeature SDK with flagd's provider in \
                      in-process mode syncs the group `shop` over flagd.sync.v1 from the \
                      main port (the selector is the group) and evaluates locally, here for \
                      two users. OFREP evaluates remotely: POST \
                      /ofrep/v1/evaluate/flags/KEY with the group in the Vane-Group header.",
            action: |d| {
                d.vanectl(
                    &[
                        "push",
                        SHOP,
                        "-f",
                        "flags.yaml",
                        "-m",
                        "new checkout for example.com",
                    ],
                    0,
                )?;
                let run = FlagdRun::start(&d.openfeature, &d.work, d.server.addr, d.security)?;
                let values = run.show_first();
                d.flagd = Some(run);
                show_ofrep(&d.work, &d.server_url, d.security, &values?)
            },
        },
        Step {
            title: "a flag change reaches the SDK",
            explain: "flags-v2.yaml makes the new checkout's default variant `on`: everyone \
                      gets it. The provider receives version 2 over its open sync stream and \
                      evaluates it at once. flagd's protocol has no ACKs, so vanectl status \
                      lists the SDK as client `flagd`, UNACKED at the version it was sent.",
            action: |d| {
                let run = d
                    .flagd
                    .as_ref()
                    .context("the OpenFeature SDK is not running")?;
                run.check_before_change()?;
                d.vanectl(
                    &[
                        "push",
                        SHOP,
                        "-f",
                        "flags-v2.yaml",
                        "-m",
                        "new checkout for everyone",
                    ],
                    0,
                )?;
                let pushed = Instant::now();
                let run = d
                    .flagd
                    .as_ref()
                    .context("the OpenFeature SDK is not running")?;
                run.show_change(pushed)?;
                d.wait_flagd_listed(SHOP, 2)?;
                d.vanectl(&["status", SHOP], 0)?;
                let mut run = d
                    .flagd
                    .take()
                    .context("the OpenFeature SDK is not running")?;
                println!("$ kill {}   # the SDK client", run.pid());
                run.stop()
            },
        },
    ]);
    steps
}

/// Writes and pushes `web-tls-N.yaml`: the web group with its https
/// listener and a certificate valid for `days`.
fn push_tls(d: &mut Demo, run: &TlsRun, n: u32, days: u32) -> Result<()> {
    let (listen, backend) = d.web.as_ref().context("no backend is running")?;
    let file = run.write_snapshot(&d.work, (*listen, backend.addr), n, days)?;
    d.vanectl(
        &[
            "push",
            WEB,
            "-f",
            &file,
            "-m",
            &format!(
                "https on {}, a certificate for {days} days",
                super::tls::SITE
            ),
        ],
        0,
    )
}
