//! Private keys over real processes: `vanectl get` and `diff` show a key as
//! its fingerprint to readers and operators, in clear only to an admin who
//! asks; what `get` prints pushes back (placeholders resolve from the head);
//! certificate dates are checked at push; the agent's output file, status,
//! logs and disk cache keep keys to its user.
//!
//! The refusal to send keys in plaintext to a peer off loopback cannot be
//! driven here (only loopback is reachable, and every loopback peer is
//! allowed): its decision is unit-tested in `control/src/secrets.rs`; here
//! the loopback side of it runs (an agent on plaintext loopback gets them).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use vane_pki::{Ca, LeafParams, Validity};
use vane_testkit::fixtures::write_text;
use vane_testkit::policy::{start_with_policy, token_file};
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, Output};

const TOKENS: &[(&str, &str)] = &[
    ("reader", "reader-token"),
    ("operator", "operator-token"),
    ("admin", "admin-token"),
    ("agent", "agent-token"),
];

const POLICY: &str = r#"
bindings:
  - {identity: reader, role: reader, groups: [edge]}
  - {identity: operator, role: operator, groups: [edge]}
  - {identity: admin, role: admin, groups: [edge]}
  - {identity: agent, role: agent, groups: [edge]}
"#;

const KEY_MARK: &str = "PRIVATE KEY";

struct Setup {
    server: ControlServer,
    dir: PathBuf,
    tokens: Vec<(&'static str, PathBuf)>,
}

impl Setup {
    fn new() -> Self {
        let (server, policy) = start_with_policy(TOKENS, POLICY, &[]);
        let tokens = TOKENS
            .iter()
            .map(|(id, token)| (*id, token_file(&policy, &format!("{id}.token"), token)))
            .collect();
        Self {
            server,
            dir: tempfile::tempdir().unwrap().keep(),
            tokens,
        }
    }

    fn token(&self, identity: &str) -> &Path {
        &self
            .tokens
            .iter()
            .find(|(id, _)| *id == identity)
            .unwrap()
            .1
    }

    /// `vanectl --token-file <identity's> args`.
    fn ctl_as(&self, identity: &str, args: &[&str]) -> Output {
        let mut all = vec!["--token-file", self.token(identity).to_str().unwrap()];
        all.extend_from_slice(args);
        self.server.ctl(&all)
    }

    fn push(&self, name: &str, text: &str) -> Output {
        let file = write_text(&self.dir, name, text);
        self.ctl_as(
            "operator",
            &["push", "edge", "-f", file.to_str().unwrap(), "-o", "json"],
        )
    }
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("      {l}\n")).collect()
}

fn site(validity: Validity) -> vane_pki::Pair {
    let ca = Ca::new("Vane secrets test CA").unwrap();
    ca.issue(&LeafParams::server(["example.test"]).validity(validity))
        .unwrap()
}

/// A snapshot serving `pair` on an https listener, with value `n`.
fn snapshot(pair: &vane_pki::Pair, n: u32) -> String {
    format!(
        r#"secrets:
  - name: site
    certificate_chain: |
{}    private_key: |
{}listeners:
  - name: web-tls
    address: "127.0.0.1:18443"
    protocol: https
    route_table: main
    certificates: [ {{ secret: site, server_names: ["example.test"] }} ]
route_tables:
  - name: main
    routes: [ {{ cluster: app }} ]
clusters:
  - name: app
    endpoints: [ {{ address: "127.0.0.1:9000" }} ]
values:
  n: {n}
"#,
        indent(&pair.cert_pem),
        indent(&pair.key_pem)
    )
}

fn placeholder(pair: &vane_pki::Pair) -> String {
    vane_model::redact::redacted(&pair.key_pem)
}

#[test]
fn keys_are_shown_to_an_admin_who_asks_and_as_fingerprints_to_everyone_else() {
    let s = Setup::new();
    let a = site(Validity::days(90));
    let pushed = s.push("v1.yaml", &snapshot(&a, 1)).ok();
    assert_eq!(pushed.json()["version"], 1, "{pushed}");
    let hash1 = pushed.json()["hash"].as_str().unwrap().to_owned();

    // Readers and operators see the fingerprint, in every format.
    for who in ["reader", "operator"] {
        for format in [&[][..], &["-o", "yaml"], &["-o", "json"]] {
            let mut args = vec!["get", "edge"];
            args.extend_from_slice(format);
            let out = s.ctl_as(who, &args).ok();
            assert!(!out.stdout.contains(KEY_MARK), "{who}: {out}");
            assert!(out.stdout.contains(&placeholder(&a)), "{who}: {out}");
            // The version's own hash is still the one shown.
            assert!(out.stdout.contains(&hash1), "{who}: {out}");
        }
    }
    // An operator asking is refused, with the role it lacks named.
    let out = s.ctl_as("operator", &["get", "edge", "--show-secrets"]);
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(
        line.contains("may not read the private keys of group \"edge\"")
            && line.contains("needs role admin"),
        "{out}"
    );
    assert!(!out.stdout.contains(KEY_MARK), "{out}");
    // An admin asking sees the key; not asking, the fingerprint.
    let out = s.ctl_as("admin", &["get", "edge", "--show-secrets"]).ok();
    assert!(out.stdout.contains(KEY_MARK), "{out}");
    let out = s.ctl_as("admin", &["get", "edge"]).ok();
    assert!(!out.stdout.contains(KEY_MARK), "{out}");

    // What get prints pushes back: unchanged, no new version.
    let shown = s.ctl_as("operator", &["get", "edge"]).ok();
    let back = s.push("back.yaml", &shown.stdout).ok();
    assert_eq!(back.json()["unchanged"], true, "{back}");
    assert_eq!(back.json()["version"], 1, "{back}");
    // So do its json and yaml forms (metadata set aside, keys put back), and
    // `diff -f` finds them equal to the head, as it does the file with the key in clear.
    for format in ["json", "yaml"] {
        let shown = s.ctl_as("operator", &["get", "edge", "-o", format]).ok();
        let back = s.push(&format!("back.{format}"), &shown.stdout).ok();
        assert_eq!(back.json()["unchanged"], true, "{format}: {back}");
        let file = write_text(&s.dir, &format!("diff.{format}"), &shown.stdout);
        s.ctl_as("reader", &["diff", "edge", "-f", file.to_str().unwrap()])
            .ok();
    }
    let clear = write_text(&s.dir, "clear.yaml", &snapshot(&a, 1));
    let out = s
        .ctl_as("reader", &["diff", "edge", "-f", clear.to_str().unwrap()])
        .ok();
    assert!(!out.stdout.contains(KEY_MARK), "{out}");
    // Edited (another value), it makes a version that keeps the key.
    let edited = shown.stdout.replace("\n  n: 1\n", "\n  n: 2\n");
    assert_ne!(edited, shown.stdout);
    let v2 = s.push("edited.yaml", &edited).ok();
    assert_eq!(v2.json()["version"], 2, "{v2}");
    let out = s
        .ctl_as("admin", &["get", "edge", "--show-secrets", "-o", "json"])
        .ok();
    assert_eq!(
        out.json()["secrets"][0]["private_key"]
            .as_str()
            .unwrap()
            .trim(),
        a.key_pem.trim(),
        "{out}"
    );
    // A placeholder of a key the group never held is refused at its field,
    // in a dry run too.
    let stranger = site(Validity::days(90));
    let foreign = shown
        .stdout
        .replace(&placeholder(&a), &placeholder(&stranger));
    let file = write_text(&s.dir, "foreign.yaml", &foreign);
    for dry in [&[][..], &["--dry-run"]] {
        let mut args = vec!["push", "edge", "-f", file.to_str().unwrap()];
        args.extend_from_slice(dry);
        let out = s.ctl_as("operator", &args);
        assert_eq!(out.code, 1, "{out}");
        assert!(
            out.one_error_line()
                .contains("secrets[0].private_key: redacted key sha256:"),
            "{out}"
        );
    }

    // A renewed certificate with a new key: diff shows the fingerprint change.
    let b = site(Validity::days(90));
    s.push("v3.yaml", &snapshot(&b, 2)).ok();
    let out = s.ctl_as("reader", &["diff", "edge", "2", "3"]).ok();
    assert!(!out.stdout.contains(KEY_MARK), "{out}");
    let changed = |sign: char, pair: &vane_pki::Pair| {
        out.stdout.lines().any(|l| {
            l.starts_with(sign) && l.contains(&format!("private_key: {}", placeholder(pair)))
        })
    };
    assert!(changed('-', &a) && changed('+', &b), "{out}");
    let out = s.ctl_as("reader", &["diff", "edge", "2", "3", "--show-secrets"]);
    assert_eq!(out.code, 1, "{out}");
    let out = s
        .ctl_as("admin", &["diff", "edge", "2", "3", "--show-secrets"])
        .ok();
    assert!(out.stdout.contains(KEY_MARK), "{out}");
    // History carries no content at all.
    let out = s.ctl_as("reader", &["history", "edge", "-o", "json"]).ok();
    assert!(
        !out.stdout.contains(KEY_MARK) && !out.stdout.contains("redacted:"),
        "{out}"
    );
    // Nor does the server's log.
    assert!(!s.server.logs().contains(KEY_MARK));
}

#[test]
fn certificate_dates_are_checked_at_push() {
    let s = Setup::new();
    // Expired: refused, naming the field; nothing stored.
    let out = s.push("expired.yaml", &snapshot(&site(Validity::expired()), 1));
    assert_eq!(out.code, 1, "{out}");
    let line = out.one_error_line();
    assert!(
        line.contains("secrets[\"site\"].certificate_chain: certificate 1")
            && line.contains("expired on"),
        "{out}"
    );
    let out = s.push("early.yaml", &snapshot(&site(Validity::not_yet_valid()), 1));
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line().contains("is not valid before"),
        "{out}"
    );
    // Expiring within 30 days: stored, with a warning on stderr.
    let out = s.push("soon.yaml", &snapshot(&site(Validity::days(10)), 1));
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["version"], 1, "{out}");
    let warning = out.one_error_line();
    assert!(
        warning.starts_with("warning: secrets[\"site\"].certificate_chain: certificate 1")
            && warning.contains("expires on"),
        "{out}"
    );
    // Far from expiry: no warning.
    let out = s
        .push("fine.yaml", &snapshot(&site(Validity::days(90)), 2))
        .ok();
    assert!(out.stderr.trim().is_empty(), "{out}");
}

#[test]
fn the_agent_keeps_keys_to_its_user() {
    let s = Setup::new();
    let a = site(Validity::days(90));
    s.push("v1.yaml", &snapshot(&a, 1)).ok();
    let output = s.dir.join("out/edge.json");
    std::fs::create_dir_all(output.parent().unwrap()).unwrap();
    let url = s.server.url();
    let agent = Sidecar::follow(
        "side-1",
        "edge",
        &[url],
        &s.dir,
        &[
            "--token-file",
            s.token("agent").to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
    );
    // On plaintext loopback the keys are sent: the agent applies them.
    let status = agent.wait_status("version 1 live", |st| {
        st["version"] == 1 && st["source"] == "live"
    });
    assert!(!status.to_string().contains(KEY_MARK), "{status}");

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(!text.contains(KEY_MARK), "{text}");
    assert!(text.contains(&placeholder(&a)), "{text}");
    assert!(text.contains("BEGIN CERTIFICATE"), "{text}");
    assert_eq!(mode(&output), 0o600);

    let cache_dir = s.dir.join("cache-side-1");
    let cache = cache_dir.join("edge.snapshot.pb");
    // The cache holds the key itself (it serves from it when the control
    // plane is away), so only the agent's user may read it.
    let cached = std::fs::read(&cache).unwrap();
    assert!(
        cached
            .windows(KEY_MARK.len())
            .any(|w| w == KEY_MARK.as_bytes()),
        "the cache holds the key"
    );
    assert_eq!(mode(&cache), 0o600);
    assert_eq!(mode(&cache_dir), 0o700);

    assert!(!agent.logs().contains(KEY_MARK), "{}", agent.logs());
    assert!(!s.server.logs().contains(KEY_MARK));
    // The control server's view of the agent holds no key either.
    let out = s.ctl_as("reader", &["status", "edge", "-o", "json"]).ok();
    assert!(!out.stdout.contains(KEY_MARK), "{out}");
}
