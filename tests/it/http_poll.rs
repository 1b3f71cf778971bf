//! The HTTP long-poll API with curl, as any script would use it, against a
//! real server: 200 with an ETag the body hashes to, holds that end on a
//! push or after `wait`, `If-None-Match`, ACK and NACK in `vanectl status`,
//! refusals (401, 403, 400, 404, 429), HTTP/1.1 and h2 on the gRPC port; and
//! 2,000 polls held at once on one server, all answered by one push (their
//! memory is measured by `cargo xtask bench longpoll`, not here).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use vane_testkit::curl::{Answer, curl};
use vane_testkit::fixtures::{example_path, example_with_value, write_json};
use vane_testkit::net::{admin_metric, free_addr};
use vane_testkit::policy::{start_with_policy, token_file};
use vane_testkit::{ControlServer, agent_status, wait_for_status};

/// What the long-poll tests read off an answer.
trait PollAnswer {
    fn version(&self) -> u64;
    fn etag_hash(&self) -> String;
    fn error(&self) -> (String, String);
}

impl PollAnswer for Answer {
    fn version(&self) -> u64 {
        self.header("vane-version")
            .unwrap_or_else(|| panic!("no Vane-Version: {self:?}"))
            .parse()
            .unwrap()
    }

    fn etag_hash(&self) -> String {
        self.header("etag")
            .unwrap_or_else(|| panic!("no ETag: {self:?}"))
            .trim_matches('"')
            .to_owned()
    }

    fn error(&self) -> (String, String) {
        let v = self.json();
        (
            v["code"].as_str().unwrap().to_owned(),
            v["message"].as_str().unwrap().to_owned(),
        )
    }
}

fn url(server: &ControlServer, path: &str) -> String {
    format!("http://{}{path}", server.addr())
}

fn push(server: &ControlServer, group: &str, file: &Path) -> (u64, String) {
    let v = server
        .ctl(&["push", group, "-f", file.to_str().unwrap(), "-o", "json"])
        .ok()
        .json();
    (
        v["version"].as_u64().unwrap(),
        v["hash"].as_str().unwrap().to_owned(),
    )
}

/// The hash of a body, recomputed through the model (as an agent would).
fn hash_of(body: &str, format: vane_model::Format) -> String {
    let spec = vane_model::parse_file(body.as_bytes(), format).unwrap();
    vane_model::validate(spec).unwrap().content_hash().to_hex()
}

fn ack(server: &ControlServer, body: &serde_json::Value, token: Option<&str>) -> Answer {
    let mut args = vec![
        "-X".to_owned(),
        "POST".to_owned(),
        "-H".to_owned(),
        "Content-Type: application/json".to_owned(),
        "--data-binary".to_owned(),
        body.to_string(),
    ];
    if let Some(token) = token {
        args.extend(["-H".to_owned(), format!("Authorization: Bearer {token}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&url(server, "/v1/groups/edge/ack"), &args)
}

#[test]
fn polls_hold_until_a_push_or_their_wait_and_acks_show_in_status() {
    let admin = free_addr();
    let admin_flag = admin.to_string();
    let server = ControlServer::start_with(&["--admin-listen", admin_flag.as_str()]);
    let (v1, h1) = push(&server, "edge", &example_path());

    // 200 at after_version=0, with the ETag the body hashes to.
    let first = curl(
        &url(
            &server,
            "/v1/groups/edge/snapshot?node=web-1&after_version=0&label.zone=a",
        ),
        &[],
    );
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.version(), v1);
    assert_eq!(first.etag_hash(), h1);
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(hash_of(&first.body, vane_model::Format::Json), h1);
    // The node is listed with the labels of its latest poll.
    let st = agent_status(&server.url(), "edge", "web-1").unwrap();
    assert_eq!(
        (st["labels"]["zone"].as_str(), st["sent_version"].as_u64()),
        (Some("a"), Some(v1))
    );
    // The body is what `vanectl get -o json` prints, without its metadata.
    let mut got = server.ctl(&["get", "edge", "-o", "json"]).ok().json();
    for key in ["group", "version", "hash", "created_at", "message"] {
        got.as_object_mut().unwrap().remove(key);
    }
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&first.body).unwrap(),
        got
    );
    // YAML, and the values alone, under the same versioning; and over h2.
    let yaml = curl(&url(&server, "/v1/groups/edge/snapshot?format=yaml"), &[]);
    assert_eq!(yaml.header("content-type"), Some("application/yaml"));
    assert_eq!(hash_of(&yaml.body, vane_model::Format::Yaml), h1);
    let values = curl(
        &url(&server, "/v1/groups/edge/values"),
        &["--http2-prior-knowledge"],
    );
    assert_eq!((values.status, values.version()), (200, v1), "{values:?}");
    assert!(values.headers.is_empty() || values.body.contains("feature.new_checkout"));
    assert_eq!(values.etag_hash(), h1);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&values.body).unwrap(),
        got["values"]
    );

    // Nothing new: held for `wait`, then 304 with the head's version.
    let held = curl(
        &url(
            &server,
            "/v1/groups/edge/snapshot?node=web-1&after_version=1&wait=2s",
        ),
        &[],
    );
    assert_eq!((held.status, held.version()), (304, v1), "{held:?}");
    assert!(held.took >= Duration::from_millis(1500), "{:?}", held.took);
    // If-None-Match of the head's hash holds too; another hash does not.
    let matching = format!("If-None-Match: \"{h1}\"");
    let held = curl(
        &url(&server, "/v1/groups/edge/snapshot?wait=2s"),
        &["-H", &matching],
    );
    assert_eq!(held.status, 304, "{held:?}");
    assert!(held.took >= Duration::from_millis(1500), "{:?}", held.took);
    let other = format!("If-None-Match: \"{}\"", "0".repeat(64));
    let at_once = curl(
        &url(&server, "/v1/groups/edge/snapshot?after_version=1&wait=30s"),
        &["-H", &other],
    );
    assert_eq!(at_once.status, 200);
    assert!(at_once.took < Duration::from_secs(20), "{:?}", at_once.took);

    // ACK: SYNCED, shown as an http client with its labels.
    let acked = ack(
        &server,
        &json!({"node": "web-1", "version": v1, "hash": h1, "error": null}),
        None,
    );
    assert_eq!(acked.status, 204, "{acked:?}");
    let st = wait_for_status(&server.url(), "edge", "web-1", "SYNCED", |a| {
        a["state"] == "SYNCED"
    });
    assert_eq!(
        (st["client"].as_str(), st["connected"].as_bool()),
        (Some("http"), Some(true))
    );
    let table = server.ctl(&["status", "edge"]).ok();
    assert!(
        table.stdout.contains("CLIENT") && table.stdout.contains("http"),
        "{table}"
    );

    // A held poll returns within a second of a push, with the new version.
    let v2_file = write_json(
        &server.scratch(),
        "v2.json",
        &example_with_value("marker", json!(2)),
    );
    let poll_url = url(
        &server,
        "/v1/groups/edge/snapshot?node=web-1&after_version=1&wait=30s",
    );
    let poller = std::thread::spawn(move || {
        let answer = curl(&poll_url, &[]);
        (answer, Instant::now())
    });
    wait_held(admin, 1);
    let (v2, h2) = push(&server, "edge", &v2_file);
    let pushed = Instant::now();
    let (answer, returned) = poller.join().unwrap();
    assert_eq!((answer.status, answer.version()), (200, v2), "{answer:?}");
    assert_eq!(answer.etag_hash(), h2);
    assert_eq!(hash_of(&answer.body, vane_model::Format::Json), h2);
    assert!(
        returned.saturating_duration_since(pushed) < Duration::from_secs(1),
        "returned {:?} after the push",
        returned.saturating_duration_since(pushed)
    );

    // NACK: NACKED with its message; the ACK of v1 stays.
    let nacked = ack(
        &server,
        &json!({"node": "web-1", "version": v2, "hash": h2, "error": {"message": "nginx -t: bad upstream"}}),
        None,
    );
    assert_eq!(nacked.status, 204, "{nacked:?}");
    let st = wait_for_status(&server.url(), "edge", "web-1", "NACKED", |a| {
        a["state"] == "NACKED"
    });
    assert_eq!(st["nack_reason"], "nginx -t: bad upstream");
    assert_eq!(st["acked_version"], v1);
    // Nonsense is refused, naming the field.
    let wrong = ack(
        &server,
        &json!({"node": "web-1", "version": 99, "hash": h2}),
        None,
    );
    assert_eq!(wrong.status, 400);
    assert!(
        wrong.error().1.starts_with("version: 99 was not sent"),
        "{wrong:?}"
    );
    let wrong = ack(
        &server,
        &json!({"node": "web-1", "version": v2, "hash": h1}),
        None,
    );
    assert!(wrong.error().1.starts_with("hash: "), "{wrong:?}");
    let wrong = ack(
        &server,
        &json!({"node": "nobody", "version": v2, "hash": h2}),
        None,
    );
    assert!(wrong.error().1.starts_with("node: "), "{wrong:?}");

    // Bad parameters: 400 naming them; an unknown group: 404.
    let bad = curl(&url(&server, "/v1/groups/edge/snapshot?wait=abc"), &[]);
    assert_eq!(bad.status, 400);
    let (code, message) = bad.error();
    assert_eq!(code, "invalid_argument");
    assert!(message.starts_with("wait: "), "{message}");
    let bad = curl(&url(&server, "/v1/groups/edge/snapshot?wait=2m"), &[]);
    assert!(bad.error().1.starts_with("wait: "), "{bad:?}");
    let bad = curl(
        &url(&server, "/v1/groups/edge/snapshot?after_version=x"),
        &[],
    );
    assert!(bad.error().1.starts_with("after_version: "), "{bad:?}");
    let unknown = curl(&url(&server, "/v1/groups/nope/snapshot?wait=1s"), &[]);
    assert_eq!(
        (unknown.status, unknown.error().0.as_str()),
        (404, "not_found")
    );

    // Every answer was counted by result.
    assert!(admin_metric(admin, "vane_control_http_polls_total", &["result=\"304\""]) >= 2.0);
    assert!(admin_metric(admin, "vane_control_http_polls_total", &["result=\"400\""]) >= 3.0);
    assert_eq!(
        admin_metric(admin, "vane_control_http_held_polls", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_a_client_waits_for_answers_304_with_version_0() {
    let server = ControlServer::start();
    // A vane-agent waits for the group's first version: the group is known.
    let _agent = vane_testkit::WatchClient::connect(&server.url(), "agent-1", "fresh", None).await;
    let poll_url = url(&server, "/v1/groups/fresh/snapshot?node=p1&wait=1s");
    let answer = tokio::task::spawn_blocking(move || curl(&poll_url, &[]))
        .await
        .unwrap();
    assert_eq!((answer.status, answer.version()), (304, 0), "{answer:?}");
    assert!(answer.header("etag").is_none());
    let st = agent_status(&server.url(), "fresh", "p1").unwrap();
    assert_eq!(st["state"], "NOT_SENT");
    assert_eq!(st["connected"], true);
}

const OPERATOR_TOKEN: &str = "edge-operator-token";

const TOKENS: &[(&str, &str)] = &[
    ("ci-edge", OPERATOR_TOKEN),
    ("agent-edge", "edge-poller-token"),
    ("agent-core", "core-poller-token"),
];

/// A server with a policy (agent-edge may follow edge, agent-core core)
/// and a token file; the policy's path, to rewrite.
fn server_with_policy(extra: &[&str]) -> (ControlServer, PathBuf) {
    let mut args = vec!["--push-rate", "0"];
    args.extend_from_slice(extra);
    start_with_policy(TOKENS, POLICY, &args)
}

const POLICY: &str = "bindings:\n  - {identity: ci-edge, role: operator, groups: [edge]}\n  - {identity: agent-edge, role: agent, groups: [edge]}\n  - {identity: agent-core, role: agent, groups: [core]}\n";

fn bearer(identity: &str) -> String {
    let token = TOKENS.iter().find(|(id, _)| *id == identity).unwrap().1;
    vane_testkit::policy::bearer(token)
}

/// [`server_with_policy`] with version 1 of edge pushed by the operator.
fn seeded_server_with_policy(extra: &[&str]) -> (ControlServer, PathBuf) {
    let (server, policy) = server_with_policy(extra);
    let token_file = token_file(&policy, "operator.token", OPERATOR_TOKEN);
    server
        .ctl(&[
            "--token-file",
            token_file.to_str().unwrap(),
            "push",
            "edge",
            "-f",
            example_path().to_str().unwrap(),
        ])
        .ok();
    (server, policy)
}

#[test]
fn tokens_policy_and_caps_refuse_with_json_errors() {
    let admin = free_addr();
    let admin_flag = admin.to_string();
    let (server, policy) = seeded_server_with_policy(&[
        "--max-streams-per-identity",
        "1",
        "--admin-listen",
        &admin_flag,
    ]);
    let snapshot = url(&server, "/v1/groups/edge/snapshot?after_version=0");

    let none = curl(&snapshot, &[]);
    assert_eq!(
        (none.status, none.error().0.as_str()),
        (401, "unauthenticated"),
        "{none:?}"
    );
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let forged = curl(&snapshot, &["-H", "Authorization: Bearer not-a-token"]);
    assert_eq!(forged.status, 401, "{forged:?}");
    let other_group = curl(&snapshot, &["-H", &bearer("agent-core")]);
    assert_eq!(
        (other_group.status, other_group.error().0.as_str()),
        (403, "permission_denied")
    );
    let ok = curl(&snapshot, &["-H", &bearer("agent-edge")]);
    assert_eq!((ok.status, ok.version()), (200, 1), "{ok:?}");
    let h1 = ok.etag_hash();
    let refused_ack = ack(
        &server,
        &json!({"node": "x", "version": 1, "hash": h1}),
        Some(TOKENS[2].1),
    );
    assert_eq!(refused_ack.status, 403, "{refused_ack:?}");

    // One held poll is this identity's cap: the next is 429 with Retry-After.
    let held_url = url(
        &server,
        "/v1/groups/edge/snapshot?node=held&after_version=1&wait=30s",
    );
    let edge = bearer("agent-edge");
    let held = {
        let edge = edge.clone();
        std::thread::spawn(move || curl(&held_url, &["-H", &edge]))
    };
    wait_held(admin, 1);
    let refused = curl(
        &url(&server, "/v1/groups/edge/snapshot?after_version=1&wait=1s"),
        &["-H", &edge],
    );
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(
        refused.error().1.contains("--max-streams-per-identity"),
        "{refused:?}"
    );

    // The policy withdraws edge from agent-edge: the held poll ends, 403.
    let started = Instant::now();
    std::fs::write(&policy, "bindings:\n  - {identity: ci-edge, role: operator, groups: [edge]}\n  - {identity: agent-core, role: agent, groups: [core]}\n")
        .unwrap();
    let ended = held.join().unwrap();
    assert_eq!(ended.status, 403, "{ended:?}");
    assert!(ended.error().1.contains("withdrawn"), "{ended:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_server_wide_cap_on_held_polls_answers_429() {
    let admin = free_addr();
    let admin_flag = admin.to_string();
    let server =
        ControlServer::start_with(&["--max-held-polls", "1", "--admin-listen", &admin_flag]);
    push(&server, "edge", &example_path());
    let held_url = url(&server, "/v1/groups/edge/snapshot?after_version=1&wait=5s");
    let held = std::thread::spawn(move || curl(&held_url, &[]));
    wait_held(admin, 1);
    let refused = curl(
        &url(&server, "/v1/groups/edge/snapshot?after_version=0"),
        &[],
    );
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(
        refused.error().1.contains("--max-held-polls"),
        "{refused:?}"
    );
    assert_eq!(held.join().unwrap().status, 304);
}

/// Waits until the server holds `n` polls.
fn wait_held(admin: SocketAddr, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = admin_metric(admin, "vane_control_http_held_polls", &[]);
        if held as usize == n {
            return;
        }
        assert!(Instant::now() < deadline, "{held} polls held, not {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls held at once in the concurrency test.
const HELD_POLLS: usize = 2_000;

/// 2,000 polls, each on its own HTTP/1.1 connection with its own node, are
/// all held at once; one push answers every one of them 200 with the new
/// version, and each node is listed. A count, not a measurement: the memory
/// and the fan-out time are `cargo xtask bench longpoll`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_held_polls_are_all_answered_by_one_push() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let admin = free_addr();
    let admin_flag = admin.to_string();
    let server = ControlServer::start_with(&["--admin-listen", admin_flag.as_str()]);
    let (v1, _) = push(&server, "edge", &example_path());
    let addr: SocketAddr = server.addr();

    let mut polls = Vec::with_capacity(HELD_POLLS);
    for i in 0..HELD_POLLS {
        let request = format!(
            "GET /v1/groups/edge/snapshot?node=n{i}&after_version={v1}&wait=60s HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        );
        polls.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("poll {i}: connect: {e}"))?;
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("poll {i}: send: {e}"))?;
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            // Reads until the head and the body announced are in.
            loop {
                let n = stream
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("poll {i}: read: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "poll {i}: connection closed after {:?}",
                        String::from_utf8_lossy(&answer)
                    ));
                }
                answer.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&answer);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse().ok())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        return Ok::<_, String>(head.to_owned());
                    }
                }
            }
        }));
    }
    // Every one is held (none answered early, none refused).
    tokio::task::spawn_blocking(move || wait_held(admin, HELD_POLLS))
        .await
        .unwrap();
    assert!(
        polls.iter().all(|p| !p.is_finished()),
        "a poll was answered before the push"
    );

    // One push answers every one of them with the new version.
    let v2_file = write_json(
        &server.scratch(),
        "v2.json",
        &example_with_value("marker", json!(2)),
    );
    let (v2, _) = tokio::task::spawn_blocking({
        let url = server.url();
        move || {
            let v = vane_testkit::vanectl(
                &url,
                &[
                    "push",
                    "edge",
                    "-f",
                    v2_file.to_str().unwrap(),
                    "-o",
                    "json",
                ],
            )
            .ok()
            .json();
            (
                v["version"].as_u64().unwrap(),
                v["hash"].as_str().unwrap().to_owned(),
            )
        }
    })
    .await
    .unwrap();
    let mut fresh = 0;
    let mut failures = Vec::new();
    for poll in polls {
        let head = match tokio::time::timeout(Duration::from_secs(30), poll).await {
            Ok(joined) => joined.unwrap(),
            Err(_) => Err("no answer within 30 s of the push".to_owned()),
        };
        match head {
            Ok(head)
                if head.starts_with("HTTP/1.1 200")
                    && head.lines().any(|l| l == format!("vane-version: {v2}")) =>
            {
                fresh += 1;
            }
            Ok(head) => failures.push(format!("not a 200 with version {v2}: {head}")),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {HELD_POLLS} polls failed; the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(fresh, HELD_POLLS);
    let listed = server.ctl(&["status", "edge", "-o", "json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), HELD_POLLS);
}
