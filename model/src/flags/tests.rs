//! The `flags` section end to end through the model: files, checks with
//! their paths, hashing, the wire form, evaluation and the flagd document.

#![allow(clippy::unwrap_used)]

use serde_json::{Map, Value, json};

use crate::flags::eval::{EvalError, Reason};
use crate::{Format, Snapshot, parse_file, validate};

const FLAGS: &str = r##"
values:
  max_body: 1048576
  banner: "hello"
  list: [1, 2]
flags:
  new-checkout:
    state: ENABLED
    variants: {on: true, off: false}
    defaultVariant: off
    targeting:
      if:
        - in: ["@example.com", {var: email}]
        - on
        - null
  color:
    state: ENABLED
    variants: {red: "#f00", blue: "#00f", green: "#0f0"}
    defaultVariant: red
    targeting:
      fractional:
        - [red, 50]
        - [blue, 50]
    metadata: {owner: web, rev: 3}
  old:
    state: DISABLED
    variants: {a: 1}
    defaultVariant: a
"##;

fn snapshot(yaml: &str) -> Snapshot {
    validate(parse_file(yaml.as_bytes(), Format::Yaml).unwrap()).unwrap()
}

fn refused(yaml: &str) -> String {
    match parse_file(yaml.as_bytes(), Format::Yaml) {
        Err(e) => e.to_string(),
        Ok(spec) => validate(spec).unwrap_err().to_string(),
    }
}

fn ctx(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn a_snapshot_without_flags_hashes_as_before() {
    // The hash of examples/snapshot.yaml from before flags existed: the
    // empty section is left out of the canonical encoding.
    let plain = snapshot("values: {a: 1}\n");
    assert!(
        !String::from_utf8(plain.canonical_bytes())
            .unwrap()
            .contains("flags")
    );
    let with = snapshot(FLAGS);
    assert!(
        String::from_utf8(with.canonical_bytes())
            .unwrap()
            .contains("\"flags\"")
    );
}

#[test]
fn flags_round_trip_through_every_rendering_and_the_wire() {
    let s = snapshot(FLAGS);
    assert_eq!(s.flags.len(), 3);
    for (text, format) in [
        (s.to_yaml().into_bytes(), Format::Yaml),
        (serde_json::to_vec(&s.to_json()).unwrap(), Format::Json),
        (s.canonical_bytes(), Format::Json),
    ] {
        let again = validate(parse_file(&text, format).unwrap()).unwrap();
        assert_eq!(again, s);
        assert_eq!(again.content_hash(), s.content_hash());
    }
    let decoded = Snapshot::decode(&s.encode()).unwrap();
    assert_eq!(decoded, s);
    // `{}` as targeting is no targeting, and hashes the same as none.
    let empty = FLAGS.replace(
        "    defaultVariant: a\n",
        "    defaultVariant: a\n    targeting: {}\n",
    );
    assert_eq!(snapshot(&empty).content_hash(), s.content_hash());
}

#[test]
fn each_broken_rule_is_named_by_its_path() {
    let cases = [
        (
            "flags:\n  f: {variants: {a: 1}, defaultVariant: a}\n",
            r#"flags["f"].state: is required (ENABLED or DISABLED)"#,
        ),
        (
            "flags:\n  f: {state: ON, variants: {a: 1}, defaultVariant: a}\n",
            r#"flags["f"].state: must be ENABLED or DISABLED, got "ON""#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {}, defaultVariant: a}\n",
            r#"flags["f"].variants: at least one variant is required"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: 1}}\n",
            r#"flags["f"].defaultVariant: is required (the variant served when no rule picks one)"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: 1, b: 2}, defaultVariant: c}\n",
            r#"flags["f"].defaultVariant: no variant "c" (variants: a, b)"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: 1, b: x}, defaultVariant: a}\n",
            r#"flags["f"].variants["b"]: is a string, but variants["a"] is a number; every variant of a flag has one type"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: [1]}, defaultVariant: a}\n",
            r#"flags["f"].variants["a"]: an array is not a flag value (boolean, string, number or object)"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: null}, defaultVariant: a}\n",
            r#"flags["f"].variants["a"]: null is not a flag value (boolean, string, number or object)"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: 1, b: 2}, defaultVariant: a, targeting: {if: [true, c, a]}}\n",
            r#"flags["f"].targeting.if[1]: returns "c", which is no variant (variants: a, b)"#,
        ),
        (
            "values: {f: 1}\nflags:\n  f: {state: ENABLED, variants: {a: 1}, defaultVariant: a}\n",
            r#"flags["f"]: is also a key of values (each value is served as a flag of its key)"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: 1}, defaultVariant: a, targeting: a}\n",
            r#"flags["f"].targeting: must be a JSON Logic operation (an object), or {} for none"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: 1}, defaultVariant: a, metadata: {'': 1}}\n",
            r#"flags["f"].metadata: keys must not be empty"#,
        ),
        (
            "flags:\n  f: {state: ENABLED, variants: {a: 1}, defaultVariant: a, metadata: {m: [1]}}\n",
            r#"flags["f"].metadata["m"]: must be a string, a number or a boolean"#,
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(refused(yaml), want, "{yaml}");
    }
    // Not JSON Logic: an unknown operator, named where it is.
    let unknown = refused(
        "flags:\n  f: {state: ENABLED, variants: {a: 1}, defaultVariant: a, targeting: {if: [{nope: [1]}, a, null]}}\n",
    );
    assert!(
        unknown.starts_with(r#"flags["f"].targeting.if[0]: not valid JSON Logic: "#)
            && unknown.contains("nope"),
        "{unknown}"
    );
    // Unknown fields of a definition are refused by the file reader.
    let field = refused(
        "flags:\n  f: {state: ENABLED, variants: {a: 1}, defaultVariant: a, defaultvariant: a}\n",
    );
    assert!(field.contains("defaultvariant"), "{field}");
}

#[test]
fn a_bad_flag_on_the_wire_is_named_by_key_and_field() {
    let msg = vane_proto::Snapshot {
        flags: [("f".to_owned(), r#"{"state": 1}"#.to_owned())].into(),
        ..vane_proto::Snapshot::default()
    };
    let err = Snapshot::try_from(msg).unwrap_err().to_string();
    assert!(
        err.starts_with(r#"flags["f"].state: invalid type"#),
        "{err}"
    );
    let msg = vane_proto::Snapshot {
        flags: [("f".to_owned(), "{".to_owned())].into(),
        ..vane_proto::Snapshot::default()
    };
    let err = Snapshot::try_from(msg).unwrap_err().to_string();
    assert!(err.starts_with(r#"flags["f"]"#), "{err}");
}

#[test]
fn evaluation_follows_flagd() {
    let s = snapshot(FLAGS);
    let e = s
        .evaluate_flag("new-checkout", &ctx(json!({"email": "a@example.com"})), 0)
        .unwrap();
    assert_eq!(
        (e.value, e.variant.as_str(), e.reason),
        (json!(true), "on", Reason::TargetingMatch)
    );
    let e = s
        .evaluate_flag("new-checkout", &ctx(json!({"email": "a@other.org"})), 0)
        .unwrap();
    assert_eq!(
        (e.value, e.variant.as_str(), e.reason),
        (json!(false), "off", Reason::Default)
    );
    // A number names the variant it prints as, as in the providers.
    let plans = snapshot(
        "flags:\n  plan:\n    state: ENABLED\n    variants: {'1': basic, '2': pro}\n    defaultVariant: '1'\n    targeting: {var: plan}\n",
    );
    let e = plans
        .evaluate_flag("plan", &ctx(json!({"plan": 2})), 0)
        .unwrap();
    assert_eq!((e.value, e.variant.as_str()), (json!("pro"), "2"));
    // A value is a static flag.
    let e = s.evaluate_flag("max_body", &Map::new(), 0).unwrap();
    assert_eq!((e.value, e.reason), (json!(1_048_576), Reason::Static));
    // Arrays are no flag value: not served as flags.
    assert_eq!(
        s.evaluate_flag("list", &Map::new(), 0),
        Err(EvalError::NotFound("list".into()))
    );
    assert_eq!(
        s.evaluate_flag("old", &Map::new(), 0),
        Err(EvalError::Disabled("old".into()))
    );
    assert_eq!(
        s.evaluate_flag("nope", &Map::new(), 0),
        Err(EvalError::NotFound("nope".into()))
    );
    // Fractional splits by targeting key, stably, and carries metadata.
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..200 {
        let c = ctx(json!({"targetingKey": format!("user-{user}")}));
        let a = s.evaluate_flag("color", &c, 0).unwrap();
        let b = s.evaluate_flag("color", &c, 99).unwrap();
        assert_eq!(a.variant, b.variant);
        assert_eq!(a.metadata["owner"], json!("web"));
        seen.insert(a.variant);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["blue", "red"]);
}

#[test]
fn the_flagd_document_holds_flags_and_servable_values() {
    let s = snapshot(FLAGS);
    let mut meta = Map::new();
    meta.insert("flagSetId".into(), json!("edge"));
    let doc = s.flagd_configuration(meta);
    let flags = doc["flags"].as_object().unwrap();
    let keys: Vec<&str> = flags.keys().map(String::as_str).collect();
    assert_eq!(keys, ["banner", "color", "max_body", "new-checkout", "old"]);
    assert_eq!(
        flags["max_body"],
        json!({"state": "ENABLED", "variants": {"value": 1_048_576}, "defaultVariant": "value"})
    );
    assert_eq!(flags["old"]["state"], json!("DISABLED"));
    assert_eq!(
        flags["color"]["metadata"],
        json!({"owner": "web", "rev": 3})
    );
    assert_eq!(doc["metadata"], json!({"flagSetId": "edge"}));
}
