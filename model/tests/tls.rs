//! The TLS parts of a snapshot as a user writes them: secrets, https and tls
//! listeners by SNI name, upstream TLS and HTTP/2, route timeouts; the
//! errors name their fields; dates are checked at push only; keys redact
//! and resolve back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use vane_model::redact::{REDACTED_PREFIX, redact_spec, resolve_redacted};
use vane_model::tls_check::check_dates;
use vane_model::{Protocol, ServerName, SnapshotSpec, UpstreamProtocol, parse_file, validate};
use vane_pki::{Ca, LeafParams, Validity};

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("      {l}\n")).collect()
}

fn site(names: &[&str], validity: Validity) -> (Ca, vane_pki::Pair) {
    let ca = Ca::new("Vane test CA").unwrap();
    let pair = ca
        .issue(&LeafParams::server(names.iter().copied()).validity(validity))
        .unwrap();
    (ca, pair)
}

fn file(cert: &str, key: &str, ca: &str, listener: &str) -> String {
    format!(
        r#"
secrets:
  - name: site
    certificate_chain: |
{}    private_key: |
{}  - name: clients
    trusted_ca: |
{}listeners:
{listener}
route_tables:
  - name: main
    routes: [ {{ cluster: app, timeout_ms: 0, idle_timeout_ms: 60000 }} ]
clusters:
  - name: app
    endpoints: [ {{ address: "127.0.0.1:9000" }} ]
    protocol: auto
    tls: {{ sni: api.internal, ca: clients, client_cert: site }}
"#,
        indent(cert),
        indent(key),
        indent(ca)
    )
}

const WEB_TLS: &str = r#"  - name: web-tls
    address: "127.0.0.1:18443"
    protocol: https
    route_table: main
    client_ca: clients
    certificates: [ { secret: site, server_names: ["example.test", "*.example.test"] } ]"#;

fn parse(text: &str) -> SnapshotSpec {
    parse_file(text.as_bytes(), vane_model::Format::Yaml).unwrap()
}

#[test]
fn the_issue_shape_validates_and_round_trips() {
    let (ca, pair) = site(&["example.test", "*.example.test"], Validity::days(90));
    let spec = parse(&file(
        &pair.cert_pem,
        &pair.key_pem,
        &ca.cert_pem(),
        WEB_TLS,
    ));
    let snapshot = validate(spec).unwrap();
    let l = snapshot.listener("web-tls").unwrap();
    assert_eq!(l.protocol(), Protocol::Https);
    let tls = l.tls.as_ref().unwrap();
    assert_eq!(tls.client_ca.as_deref(), Some("clients"));
    assert_eq!(
        tls.certificates[0].server_names,
        vec![
            ServerName::Exact("example.test".into()),
            ServerName::Wildcard(".example.test".into())
        ]
    );
    let c = snapshot.cluster("app").unwrap();
    assert_eq!(c.protocol, UpstreamProtocol::Auto);
    assert_eq!(c.tls.as_ref().unwrap().sni.as_deref(), Some("api.internal"));
    let r = &snapshot.route_table("main").unwrap().routes[0];
    assert_eq!(r.timeout, None);
    assert_eq!(r.idle_timeout, Duration::from_secs(60));
    assert!(snapshot.has_private_keys());
    // The canonical form validates back to the same snapshot, through the
    // wire too.
    assert_eq!(validate(snapshot.canonical_spec()).unwrap(), snapshot);
    let decoded = vane_model::Snapshot::decode(&snapshot.encode()).unwrap();
    assert_eq!(decoded, snapshot);
}

#[test]
fn a_key_of_another_certificate_is_refused_at_its_field() {
    let (ca, pair) = site(&["example.test"], Validity::days(90));
    let (_, other) = site(&["example.test"], Validity::days(90));
    let listener = WEB_TLS.replace(", \"*.example.test\"", "");
    let spec = parse(&file(
        &pair.cert_pem,
        &other.key_pem,
        &ca.cert_pem(),
        &listener,
    ));
    let e = validate(spec).unwrap_err().to_string();
    assert!(
        e.contains("secrets[0].private_key: does not belong to the certificate"),
        "{e}"
    );
}

#[test]
fn names_the_certificate_does_not_cover_and_bad_references_are_refused() {
    let (ca, pair) = site(&["example.test"], Validity::days(90));
    let listener = r#"  - name: web-tls
    address: "127.0.0.1:18443"
    protocol: https
    route_table: main
    client_ca: site
    certificates:
      - { secret: site, server_names: ["example.test", "*.example.test", "bad_name", "10.0.0.1"] }
      - { secret: clients, server_names: ["example.test"] }
      - { secret: nope }"#;
    let spec = parse(&file(
        &pair.cert_pem,
        &pair.key_pem,
        &ca.cert_pem(),
        listener,
    ));
    let e = validate(spec).unwrap_err().to_string();
    for want in [
        "listeners[0].certificates[0].server_names[1]: \"*.example.test\" is not a name of secret \"site\"'s certificate (it has example.test)",
        "listeners[0].certificates[0].server_names[2]: \"bad_name\" is not a DNS name",
        "listeners[0].certificates[0].server_names[3]: \"10.0.0.1\" is an IP address",
        "listeners[0].certificates[1].secret: secret \"clients\" is not a certificate",
        "listeners[0].certificates[2].secret: unknown secret \"nope\"",
        "listeners[0].client_ca: secret \"site\" is not a CA bundle",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn upstream_and_listener_fields_name_their_problems() {
    let text = r#"
secrets:
  - { name: k, certificate_chain_file: relative.pem, private_key_file: /etc/k.pem }
  - { name: half, certificate_chain: "x" }
listeners:
  - { name: a, address: "127.0.0.1:1", protocol: https, route_table: main }
  - { name: b, address: "127.0.0.1:2", route_table: main, certificates: [ { secret: k } ] }
route_tables:
  - { name: main, routes: [ { cluster: app, idle_timeout_ms: 0 } ] }
clusters:
  - { name: app, endpoints: [ { address: "127.0.0.1:9" } ], protocol: auto }
  - { name: b, endpoints: [ { address: "127.0.0.1:9" } ], protocol: h3, tls: { sni: "*.x.test" } }
"#;
    let e = validate(parse(text)).unwrap_err().to_string();
    for want in [
        "secrets[0].certificate_chain_file: \"relative.pem\" is not an absolute path",
        "secrets[1].private_key: required with certificate_chain",
        "listeners[0].certificates: an https or tls listener needs at least one certificate",
        "listeners[1].certificates: only https and tls listeners take certificates",
        "route_tables[0].routes[0].idle_timeout_ms: 0 is out of range",
        "clusters[0].protocol: \"auto\" picks the version by TLS ALPN",
        "clusters[1].protocol: unknown protocol \"h3\"",
        "clusters[1].tls.sni: \"*.x.test\" is a wildcard",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn a_key_pasted_into_a_file_field_is_not_echoed() {
    let (_, pair) = site(&["example.test"], Validity::days(90));
    let spec = SnapshotSpec {
        secrets: vec![vane_model::spec::SecretSpec {
            name: "k".into(),
            certificate_chain: Some(pair.cert_pem.clone()),
            private_key_file: Some(pair.key_pem.clone()),
            ..Default::default()
        }],
        ..SnapshotSpec::default()
    };
    let e = validate(spec).unwrap_err().to_string();
    assert!(!e.contains("PRIVATE KEY"), "{e}");
    let body = pair.key_pem.lines().nth(1).unwrap();
    assert!(!e.contains(body), "{e}");
    assert!(
        e.contains("secrets[0].private_key_file: is not an absolute path (")
            && e.contains("the PEM itself goes in private_key"),
        "{e}"
    );
}

#[test]
fn dates_are_checked_at_push_only() {
    let (ca, expired) = site(&["example.test"], Validity::expired());
    let listener = WEB_TLS.replace(", \"*.example.test\"", "");
    // Validation (what an agent runs on its cache too) takes it ...
    let snapshot = validate(parse(&file(
        &expired.cert_pem,
        &expired.key_pem,
        &ca.cert_pem(),
        &listener,
    )))
    .unwrap();
    // ... the push refuses it, naming the secret.
    let report = check_dates(&snapshot.secrets, SystemTime::now());
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(report.errors[0].path, "secrets[\"site\"].certificate_chain");
    assert!(report.errors[0].reason.contains("expired on"), "{report:?}");

    let (ca, soon) = site(&["example.test"], Validity::days(10));
    let snapshot = validate(parse(&file(
        &soon.cert_pem,
        &soon.key_pem,
        &ca.cert_pem(),
        &listener,
    )))
    .unwrap();
    let report = check_dates(&snapshot.secrets, SystemTime::now());
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(
        report.warnings[0].reason.contains("(in 9 days)")
            || report.warnings[0].reason.contains("(in 10 days)"),
        "{report:?}"
    );
}

#[test]
fn redacted_keys_resolve_from_the_head_and_diffs_show_the_fingerprint() {
    let (ca, pair) = site(&["example.test", "*.example.test"], Validity::days(90));
    let head = validate(parse(&file(
        &pair.cert_pem,
        &pair.key_pem,
        &ca.cert_pem(),
        WEB_TLS,
    )))
    .unwrap()
    .canonical_spec();
    let mut shown = head.clone();
    redact_spec(&mut shown);
    let yaml = yaml_serde::to_string(&shown).unwrap();
    assert!(!yaml.contains("PRIVATE KEY"), "{yaml}");
    assert!(yaml.contains(REDACTED_PREFIX), "{yaml}");
    // What a placeholder cannot stand for is refused by validation itself.
    let e = validate(shown.clone()).unwrap_err().to_string();
    // (the canonical form sorts secrets by name: "clients", "site")
    assert_eq!(
        e,
        "secrets[1].private_key: is a redacted placeholder whose key the control server does not hold for this group; give the PEM key"
    );
    resolve_redacted(&mut shown, &[&head]).unwrap();
    assert_eq!(shown, head);
}

#[test]
fn a_redacted_snapshot_validates_for_showing_and_hashes_as_sent() {
    let (ca, pair) = site(&["example.test", "*.example.test"], Validity::days(90));
    let full = validate(parse(&file(
        &pair.cert_pem,
        &pair.key_pem,
        &ca.cert_pem(),
        WEB_TLS,
    )))
    .unwrap();
    let mut sent = full.clone();
    assert_eq!(vane_model::redact::redact_snapshot(&mut sent), 1);
    assert_eq!(vane_model::redact::redact_snapshot(&mut sent), 0);
    let yaml = sent.to_yaml();
    assert!(!yaml.contains("PRIVATE KEY"), "{yaml}");
    assert!(
        yaml.contains(&format!(
            "private_key: {}",
            vane_model::redact::redacted(&pair.key_pem)
        )),
        "{yaml}"
    );
    assert_ne!(sent.content_hash(), full.content_hash());
    // What a client receives (the wire form) validates for showing, and
    // hashes to what the server computed of what it sent.
    let received =
        vane_model::validate::validate_redacted(SnapshotSpec::try_from(sent.to_proto()).unwrap())
            .unwrap();
    assert_eq!(received, sent);
    assert_eq!(received.content_hash(), sent.content_hash());
    // The other rules still apply: a dangling reference is refused.
    let mut broken = sent.canonical_spec();
    broken.listeners[0].route_table = Some("nope".into());
    let e = vane_model::validate::validate_redacted(broken).unwrap_err();
    assert!(e.to_string().contains("listeners[0].route_table"), "{e}");
}

#[test]
fn secrets_travel_in_deltas() {
    let (ca, a) = site(&["example.test", "*.example.test"], Validity::days(90));
    let (_, b) = site(&["example.test", "*.example.test"], Validity::days(90));
    let base = validate(parse(&file(
        &a.cert_pem,
        &a.key_pem,
        &ca.cert_pem(),
        WEB_TLS,
    )))
    .unwrap();
    let target = validate(parse(&file(
        &b.cert_pem,
        &b.key_pem,
        &ca.cert_pem(),
        WEB_TLS,
    )))
    .unwrap();
    let delta = vane_model::delta::diff(&base.to_proto(), &target.to_proto());
    assert_eq!(delta.secrets.len(), 1);
    assert!(delta.listeners.is_empty() && delta.clusters.is_empty());
    let applied = vane_model::delta::apply(base.to_proto(), delta).unwrap();
    assert_eq!(applied, target.to_proto());
}
