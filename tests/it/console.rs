//! The web console (`vane-control --console-listen`) end to end, in a real
//! headless Chromium driven by Playwright (`tests/console-browser/`): with
//! no policy the page needs no login; a reader signs in with a token, sees
//! only its groups and no action button, and the API refuses the action
//! anyway; an operator sees a group `vanectl` pushes while the page is
//! open, opens a diff by its URL, rolls back from the page (the new version
//! in `vanectl history` has the operator as author), filters agents by
//! label, watches a rollout advance and aborts it; the audit log shows the
//! refusals. Over TLS the console takes the caller from its client
//! certificate (checked with curl), and off loopback it needs TLS and a
//! policy. Screenshots of every page go to `<target>/tmp/console/<test>/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vane_testkit::console_tools::ConsoleTools;
use vane_testkit::net::free_addr;
use vane_testkit::process::run_captured;
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, Output, fixtures, vanectl};

const TOKENS: &[(&str, &str)] = &[
    ("ops", "operator-console-token"),
    ("viewer", "reader-console-token"),
    ("fleet", "agent-console-token"),
];

const POLICY: &str = r#"
bindings:
  - {identity: ops, role: operator, groups: ["*"]}
  - {identity: viewer, role: reader, groups: [edge, fresh]}
  - {identity: fleet, role: agent, groups: ["*"]}
"#;

/// How long one browser scenario may take.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(150);

fn token(identity: &str) -> &'static str {
    TOKENS.iter().find(|(id, _)| *id == identity).unwrap().1
}

/// A control server with the policy and tokens above (or none) and its
/// console on a free loopback port.
struct Console {
    server: ControlServer,
    url: String,
    policy: Option<PathBuf>,
}

impl Console {
    fn start(with_policy: bool) -> Self {
        let addr = free_addr().to_string();
        let args = ["--console-listen", addr.as_str()];
        let (server, policy) = if with_policy {
            let (server, policy) = vane_testkit::policy::start_with_policy(TOKENS, POLICY, &args);
            (server, Some(policy))
        } else {
            (ControlServer::start_with(&args), None)
        };
        let console = Self {
            url: format!("http://{addr}"),
            server,
            policy,
        };
        assert!(
            vane_testkit::net::wait_accepting(addr.parse().unwrap(), Duration::from_secs(10)),
            "the console does not listen on {addr}"
        );
        console
    }

    /// `vanectl ARGS` as `identity` (a token file beside the policy).
    fn ctl(&self, identity: &str, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let file;
        if let Some(policy) = &self.policy {
            file = vane_testkit::policy::token_file(policy, identity, token(identity));
            all.extend(["--token-file", file.to_str().unwrap()]);
        }
        vanectl(&self.server.url(), &all)
    }

    /// Pushes the example snapshot with `rate` requests per second to `group`.
    fn push(&self, group: &str, rate: u32, message: &str) {
        let text = std::fs::read_to_string(fixtures::example_path()).unwrap();
        let text = text.replace(
            "requests_per_second: 100",
            &format!("requests_per_second: {rate}"),
        );
        let file = fixtures::write_text(
            &self.server.scratch(),
            &format!("{group}-{rate}.yaml"),
            &text,
        );
        self.ctl(
            "ops",
            &["push", group, "-f", file.to_str().unwrap(), "-m", message],
        )
        .ok();
    }
}

/// Where a test's screenshots go: `<target>/tmp/console/<name>/`.
fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("console")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The driver running `scenario` on `console` as the holder of `token`.
fn driver(console: &Console, out: &Path, scenario: &str, token: &str, extra: &[&str]) -> Command {
    let mut cmd = ConsoleTools::for_tests().driver();
    cmd.args(["--scenario", scenario, "--url", &console.url, "--out"])
        .arg(out)
        .args(["--token", token])
        .args(extra);
    cmd
}

/// Runs a scenario to its end; returns the JSON it printed.
fn scenario(console: &Console, out: &Path, name: &str, token: &str, extra: &[&str]) -> Value {
    let cmd = driver(console, out, name, token, extra);
    let run = run_captured(cmd, None, SCENARIO_TIMEOUT)
        .unwrap_or_else(|e| panic!("scenario {name}: {e}"));
    result(name, run.code, &run.stdout, &run.stderr)
}

fn result(name: &str, code: i32, stdout: &str, stderr: &str) -> Value {
    assert_eq!(
        code, 0,
        "scenario {name} failed (screenshot failure.png)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("scenario {name} printed no JSON ({e}): {stdout}"));
    assert_eq!(
        value["page_errors"],
        json!([]),
        "scenario {name}: errors in the page"
    );
    value
}

/// A scenario running in the background, which says when its page is open.
struct Running {
    name: &'static str,
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    stderr: PathBuf,
}

impl Running {
    fn spawn(
        console: &Console,
        out: &Path,
        name: &'static str,
        token: &str,
        extra: &[&str],
    ) -> Self {
        let stderr = out.join(format!("{name}.stderr"));
        let mut child = driver(console, out, name, token, extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            name,
            child,
            lines,
            stderr,
        }
    }

    /// Blocks until the page is open (the script's own waits bound this:
    /// it exits, closing its output, when the page never opens).
    fn ready(&mut self) {
        for line in self.lines.by_ref() {
            if line.unwrap().contains("\"ready\"") {
                return;
            }
        }
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        panic!(
            "scenario {} ended before its page was open:\n{stderr}",
            self.name
        );
    }

    fn finish(mut self) -> Value {
        let stdout: Vec<String> = self.lines.by_ref().map(Result::unwrap).collect();
        let status = self.child.wait().unwrap();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        result(
            self.name,
            status.code().unwrap_or(-1),
            &stdout.join("\n"),
            &stderr,
        )
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn screenshots(out: &Path, names: &[&str]) {
    for name in names {
        let path = out.join(format!("{name}.png"));
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len();
        assert!(size > 1000, "{} is {size} bytes", path.display());
    }
}

#[test]
fn console_without_a_policy_needs_no_sign_in() {
    let console = Console::start(false);
    console.push("edge", 100, "first");
    let out = out_dir("no_policy");
    let seen = scenario(&console, &out, "open", "", &[]);
    assert_eq!(seen["login_shown"], false, "{seen}");
    assert!(
        seen["identity"]
            .as_str()
            .unwrap()
            .contains("authorization off"),
        "{seen}"
    );
    assert_eq!(strings(&seen["groups"]), ["edge"]);
    screenshots(&out, &["groups-no-login"]);
}

#[test]
fn console_reader_and_operator_with_tokens() {
    let console = Console::start(true);
    console.push("edge", 100, "first");
    console.push("edge", 150, "more api rate");
    console.push("secret", 100, "not for readers");
    let out = out_dir("reader_and_operator");

    // A reader: its groups only, no button, and the API refuses anyway.
    let reader = scenario(
        &console,
        &out,
        "reader",
        token("viewer"),
        &["--group", "edge", "--other", "secret"],
    );
    assert_eq!(strings(&reader["groups"]), ["edge"], "{reader}");
    assert!(
        reader["identity"]
            .as_str()
            .unwrap()
            .starts_with("viewer (token)"),
        "{reader}"
    );
    assert_eq!(reader["history_buttons"], 0, "{reader}");
    assert_eq!(reader["rollout_buttons"], 0, "{reader}");
    assert_eq!(reader["forced_rollback"], json!([403, "permission_denied"]));
    assert!(
        reader["hidden_error"]
            .as_str()
            .unwrap()
            .contains("permission_denied"),
        "{reader}"
    );

    // An operator sees a group pushed with vanectl while the page is open.
    let mut page = Running::spawn(
        &console,
        &out,
        "groups",
        token("ops"),
        &["--other", "fresh"],
    );
    page.ready();
    console.push("fresh", 100, "pushed while the page is open");
    let groups = page.finish();
    assert_eq!(
        strings(&groups["groups"]),
        ["edge", "fresh", "secret"],
        "{groups}"
    );
    assert!(
        groups["fresh_row"].as_str().unwrap().contains("v1"),
        "{groups}"
    );
    assert_eq!(
        groups["narrow_fits"], true,
        "the groups page overflows a 390 px window"
    );

    // A diff between two versions, by its own URL, which a reload keeps.
    let diff = scenario(&console, &out, "diff", token("ops"), &["--group", "edge"]);
    assert_eq!(diff["hash"], "#/groups/edge/diff/1/2");
    assert_eq!(
        strings(&diff["added"]),
        ["+  requests_per_second: 150.0"],
        "{diff}"
    );
    assert_eq!(
        strings(&diff["removed"]),
        ["-  requests_per_second: 100.0"],
        "{diff}"
    );
    assert_eq!(diff["after_reload"], diff["added"]);

    // A rollback from the page, with the keyboard: a new version whose
    // author is the operator.
    let rollback = scenario(
        &console,
        &out,
        "rollback",
        token("ops"),
        &["--group", "edge", "--version", "1"],
    );
    assert_eq!(rollback["focus_in_dialog"], "TEXTAREA", "{rollback}");
    assert_eq!(rollback["confirm_focused"], "confirm", "{rollback}");
    assert_eq!(
        rollback["escape_returned_focus_to"], "rollback",
        "{rollback}"
    );
    assert!(
        rollback["empty_refused"]
            .as_str()
            .unwrap()
            .contains("required"),
        "{rollback}"
    );
    assert!(
        rollback["status"]
            .as_str()
            .unwrap()
            .contains("v3 created with the content of v1"),
        "{rollback}"
    );
    let history = console
        .ctl("ops", &["history", "edge", "-o", "json"])
        .ok()
        .json();
    let head = &history[0];
    assert_eq!(head["version"], 3, "{history}");
    assert_eq!(head["author"], "ops", "{history}");
    assert_eq!(head["message"], "restore the old rate from the console");
    assert_eq!(head["rollback_of"], 1);
    let text = console.ctl("ops", &["history", "edge"]).ok().stdout;
    assert!(text.contains("ops"), "{text}");

    // The audit log: the rollback by the operator, the reader's refusals.
    let audit = scenario(&console, &out, "audit", token("ops"), &[]);
    let rows = strings(&audit["rows"]);
    assert!(
        rows.iter()
            .any(|r| r.contains("ops") && r.contains("rollback") && r.contains("created")),
        "{rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("viewer") && r.contains("refused")),
        "{rows:#?}"
    );
    assert!(audit["refused"].as_u64().unwrap() >= 1, "{audit}");
    screenshots(
        &out,
        &[
            "sign-in",
            "groups-reader",
            "history-reader",
            "rollout-reader",
            "history-refused",
            "groups-operator",
            "groups-narrow",
            "history-operator",
            "diff",
            "rollback-dialog",
            "history-after-rollback",
            "audit",
        ],
    );
}

#[test]
fn console_watches_a_rollout_advance_and_aborts_it() {
    let console = Console::start(true);
    console.push("edge", 100, "stable");
    let dir = console.server.scratch();
    let token_file =
        vane_testkit::policy::token_file(console.policy.as_ref().unwrap(), "fleet", token("fleet"));
    let controls = [console.server.url()];
    let _fleet: Vec<Sidecar> = (0..4)
        .map(|i| {
            let label = format!("zone={}", if i % 2 == 0 { "a" } else { "b" });
            Sidecar::follow(
                &format!("n{i}"),
                "edge",
                &controls,
                &dir,
                &[
                    "--label",
                    &label,
                    "--token-file",
                    token_file.to_str().unwrap(),
                ],
            )
        })
        .collect();
    wait_synced(&console, 4, 1);
    let out = out_dir("rollout");

    let agents = scenario(&console, &out, "agents", token("ops"), &["--group", "edge"]);
    assert_eq!(
        strings(&agents["all"]),
        ["n0", "n1", "n2", "n3"],
        "{agents}"
    );
    assert_eq!(strings(&agents["zone_a"]), ["n0", "n2"], "{agents}");
    assert_eq!(agents["hash"], "#/groups/edge/agents?selector=zone%3Da");
    assert_eq!(strings(&agents["states"]), ["synced", "synced"]);

    let spec = fixtures::example_with_value("release", json!("candidate"));
    let candidate = fixtures::write_json(&dir, "candidate.json", &spec);
    let mut page = Running::spawn(
        &console,
        &out,
        "rollout",
        token("ops"),
        &["--group", "edge"],
    );
    page.ready();
    console
        .ctl(
            "ops",
            &[
                "rollout",
                "start",
                "edge",
                "-f",
                candidate.to_str().unwrap(),
                "--steps",
                "50,100",
                "--bake",
                "8s",
                "-m",
                "a candidate",
            ],
        )
        .ok();
    let rollout = page.finish();
    assert!(
        rollout["first"]
            .as_str()
            .unwrap()
            .starts_with("1 of 2 (50%)"),
        "{rollout}"
    );
    assert!(
        rollout["advanced"]
            .as_str()
            .unwrap()
            .starts_with("2 of 2 (100%)"),
        "{rollout}"
    );
    assert!(
        rollout["state"].as_str().unwrap().contains("rolled back"),
        "{rollout}"
    );
    assert_eq!(
        rollout["buttons_left"], 0,
        "an ended rollout offers no action"
    );
    let status = console
        .ctl("ops", &["rollout", "status", "edge", "-o", "json"])
        .ok()
        .json();
    assert_eq!(status["state"], "ROLLED_BACK", "{status}");
    let audit = console
        .ctl("ops", &["audit", "edge", "-o", "json"])
        .ok()
        .json();
    let aborted = audit.as_array().unwrap().iter().any(|e| {
        e["identity"] == "ops"
            && e["action"] == "rollout.abort"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("abort from the console")
    });
    assert!(aborted, "no audited abort by ops: {audit}");
    screenshots(
        &out,
        &[
            "agents",
            "agents-filtered",
            "rollout-none",
            "rollout-first-step",
            "rollout-advanced",
            "rollout-aborted",
        ],
    );
}

/// Waits until `n` agents of edge are SYNCED on `version`.
fn wait_synced(console: &Console, n: usize, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = console
            .ctl("ops", &["status", "edge", "-o", "json"])
            .ok()
            .json();
        let synced = status.as_array().map_or(0, |a| {
            a.iter()
                .filter(|a| a["state"] == "SYNCED" && a["acked_version"] == version)
                .count()
        });
        if synced == n {
            return;
        }
        assert!(Instant::now() < deadline, "agents never synced: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Over TLS, the console takes the caller from its client certificate,
/// as the Admin API does: no token, the operator's buttons and actions,
/// the reader's refusals, the author of a rollback.
#[test]
fn console_takes_the_identity_of_a_client_certificate() {
    use vane_testkit::curl::curl;

    let dir = tempfile::tempdir().unwrap();
    vane_pki::DemoSet::generate()
        .unwrap()
        .write(dir.path(), false)
        .unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    let console_addr = free_addr();
    let listen = console_addr.to_string();
    let server = ControlServer::start_with(&[
        "--tls-cert",
        &p("server.pem"),
        "--tls-key",
        &p("server.key"),
        "--client-ca",
        &p("ca.pem"),
        "--policy",
        &p("policy.yaml"),
        "--console-listen",
        &listen,
    ]);
    assert!(vane_testkit::net::wait_accepting(
        console_addr,
        Duration::from_secs(10)
    ));
    let ctl = |who: &str, args: &[&str]| {
        let mut all = vec![
            "--server".to_owned(),
            format!("https://{}", server.addr()),
            "--ca".to_owned(),
            p("ca.pem"),
            "--cert".to_owned(),
            p(&format!("{who}.pem")),
            "--key".to_owned(),
            p(&format!("{who}.key")),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        vane_testkit::run_vanectl(&all, &[]).ok()
    };
    let example = fixtures::example_path();
    ctl(
        "operator",
        &[
            "push",
            "edge",
            "-f",
            example.to_str().unwrap(),
            "-m",
            "first",
        ],
    );
    let v2 = fixtures::write_json(
        dir.path(),
        "v2.json",
        &fixtures::example_with_value("release", json!("2")),
    );
    ctl(
        "operator",
        &["push", "edge", "-f", v2.to_str().unwrap(), "-m", "second"],
    );

    let api = |path: &str| format!("https://{console_addr}/ui/api/{path}");
    let ca = p("ca.pem");
    let as_ = |who: &str| -> Vec<String> {
        let mut args = vec![
            "--cacert".to_owned(),
            ca.clone(),
            "-H".to_owned(),
            "x-vane-console: 1".to_owned(),
        ];
        if !who.is_empty() {
            args.extend([
                "--cert".to_owned(),
                p(&format!("{who}.pem")),
                "--key".to_owned(),
                p(&format!("{who}.key")),
            ]);
        }
        args
    };
    let call = |who: &str, path: &str, extra: &[&str]| {
        let mut args = as_(who);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&api(path), &args)
    };

    let session = call("operator", "session", &[]);
    assert_eq!(session.status, 200, "{}", session.body);
    assert_eq!(session.json()["identity"], "operator");
    assert_eq!(session.json()["source"], "certificate");
    let groups = call("operator", "groups", &[]).json();
    assert_eq!(groups["groups"][0]["may_operate"], true, "{groups}");
    let groups = call("reader", "groups", &[]).json();
    assert_eq!(groups["groups"][0]["may_operate"], false, "{groups}");

    let post = [
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"to_version": 1, "message": "back to the first"}"#,
    ];
    let refused = call("reader", "groups/edge/rollback", &post);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let anonymous = call("", "groups/edge/rollback", &post);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let done = call("operator", "groups/edge/rollback", &post);
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["version"], 3);
    let history = ctl("operator", &["history", "edge", "-o", "json"]).json();
    assert_eq!(history[0]["author"], "operator", "{history}");
    assert_eq!(history[0]["message"], "back to the first");
    assert_eq!(history[0]["rollback_of"], 1);
}

/// A console reachable from the network gets the main port's rules: no
/// plaintext and no open policy off loopback, unless `--insecure`.
#[test]
fn a_console_off_loopback_needs_tls_and_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(vane_testkit::process::bin_path("vane-control"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--console-listen", "0.0.0.0:0"]);
    let out = run_captured(cmd, None, Duration::from_secs(30)).unwrap();
    assert_ne!(out.code, 0, "vane-control served: {}", out.stdout);
    let stderr = out.stderr;
    assert!(
        stderr.contains("--console-listen 0.0.0.0:0: not a loopback address, and no --tls-cert"),
        "{stderr}"
    );
}
