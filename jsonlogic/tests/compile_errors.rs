//! What `Rule::compile` refuses, and the path and reason it names; and the
//! result literals it reports.

use serde_json::{Value, json};
use vane_jsonlogic::{CompileError, Rule};

fn refused(rule: Value) -> CompileError {
    match Rule::compile(&rule) {
        Ok(_) => panic!("{rule} compiled"),
        Err(e) => e,
    }
}

fn assert_refused(rule: Value, path: &str, reason_part: &str) {
    let e = refused(rule.clone());
    assert_eq!(e.path, path, "{rule}: {e}");
    assert!(e.reason.contains(reason_part), "{rule}: {e}");
}

#[test]
fn unknown_operators_and_multi_key_objects() {
    assert_refused(
        json!({"frobnicate": [1]}),
        "",
        "unknown operator `frobnicate`",
    );
    assert_refused(
        json!({"if": [true, {"nope": []}, "x"]}),
        "if[1]",
        "unknown operator `nope`",
    );
    assert_refused(
        json!({"if": [{"==": [1, 1], "!=": [1, 2]}, "a"]}),
        "if[0]",
        "exactly one key, the operator; this one has 2 keys (!=, ==)",
    );
}

#[test]
fn ref_to_shared_evaluators_is_refused_with_the_reason() {
    assert_refused(
        json!({"if": [{"$ref": "emailWithFaas"}, "a", "b"]}),
        "if[0]",
        "`$ref` to shared `$evaluators` is not supported",
    );
}

#[test]
fn arities() {
    assert_refused(
        json!({"if": []}),
        "if",
        "`if` takes at least 1 argument(s), got 0",
    );
    assert_refused(json!({"==": [1]}), "==", "takes 2 argument(s), got 1");
    assert_refused(
        json!({"<": [1, 2, 3, 4]}),
        "<",
        "takes 2 to 3 argument(s), got 4",
    );
    assert_refused(json!({"!": [1, 2]}), "!", "takes 1 argument(s)");
    assert_refused(
        json!({"sem_ver": ["1.0.0", "="]}),
        "sem_ver",
        "takes 3 argument(s)",
    );
    assert_refused(
        json!({"starts_with": ["a"]}),
        "starts_with",
        "takes 2 argument(s)",
    );
    assert_refused(json!({"*": []}), "*", "at least 1");
    assert_refused(json!({"fractional": []}), "fractional", "at least 1");
    assert_refused(
        json!({"and": [true, {"var": ["a", 1, 2]}]}),
        "and[1].var",
        "0 to 2",
    );
}

#[test]
fn var_paths() {
    assert_refused(
        json!({"var": true}),
        "var[0]",
        "the path of `var` must be a string",
    );
    assert_refused(
        json!({"var": [["a"]]}),
        "var[0]",
        "the path of `var` must be a string",
    );
    for ok in [
        json!({"var": "a.b"}),
        json!({"var": 1}),
        json!({"var": ""}),
        json!({"var": []}),
        json!({"var": [{"cat": ["a", "b"]}, 1]}),
    ] {
        Rule::compile(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn sem_ver_comparisons() {
    assert_refused(
        json!({"sem_ver": [{"var": "v"}, "=>", "1.0.0"]}),
        "sem_ver[1]",
        "unknown `sem_ver` comparison `=>`",
    );
    assert_refused(
        json!({"sem_ver": [{"var": "v"}, 1, "1.0.0"]}),
        "sem_ver[1]",
        "must be a string",
    );
}

#[test]
fn fractional_shapes() {
    let at = "if[1].fractional";
    let wrap = |f: Value| json!({"if": [true, {"fractional": f}, null]});
    assert_refused(wrap(json!(["key"])), at, "needs at least one bucket");
    assert_refused(
        wrap(json!([1, ["a", 1]])),
        &format!("{at}[0]"),
        "bucketing key",
    );
    assert_refused(
        wrap(json!(["key", "a"])),
        &format!("{at}[1]"),
        "a bucket is [variant, weight] or [variant]",
    );
    assert_refused(
        wrap(json!([["a", 1, 2]])),
        &format!("{at}[0]"),
        "not 3 items",
    );
    assert_refused(wrap(json!([[]])), &format!("{at}[0]"), "not 0 items");
    assert_refused(
        wrap(json!([[true, 1]])),
        &format!("{at}[0][0]"),
        "variant must be a string",
    );
    assert_refused(
        wrap(json!([["a", -5]])),
        &format!("{at}[0][1]"),
        "must not be negative",
    );
    assert_refused(
        wrap(json!([["a", 2.5]])),
        &format!("{at}[0][1]"),
        "whole number",
    );
    assert_refused(
        wrap(json!([["a", "50"]])),
        &format!("{at}[0][1]"),
        "a number or an operation",
    );
    assert_refused(
        wrap(json!([["a", 3_000_000_000u64]])),
        &format!("{at}[0][1]"),
        "at most 2147483647",
    );
    assert_refused(
        wrap(json!([["a", 2_000_000_000], ["b", 200_000_000]])),
        at,
        "add up to 2200000000",
    );
    for ok in [
        json!({"fractional": [["a", 50], ["b", 50]]}),
        json!({"fractional": [["a"], ["b", 0]]}),
        json!({"fractional": ["fixed-key", ["a", 2_147_483_646], ["b", 1]]}),
        json!({"fractional": [{"var": "email"}, [{"var": "v"}, {"var": "w"}], ["b", 1]]}),
    ] {
        Rule::compile(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn depth_is_limited() {
    let mut deep = json!(true);
    for _ in 0..70 {
        deep = json!({"!": [deep]});
    }
    let e = refused(deep);
    assert!(e.reason.contains("deeper than 64"), "{e}");
    assert!(e.path.starts_with("![0].![0]"), "{e}");
    let mut ok = json!(true);
    for _ in 0..30 {
        ok = json!({"!": [ok]});
    }
    Rule::compile(&ok).expect("30 levels compile");
}

#[test]
fn display_reads_well_at_the_root_and_below() {
    assert_eq!(
        refused(json!({"nope": 1})).to_string(),
        "unknown operator `nope`"
    );
    assert_eq!(
        refused(json!({"if": [{"nope": 1}]})).to_string(),
        "if[0]: unknown operator `nope`"
    );
}

#[test]
fn result_literals_name_where_each_variant_comes_from() {
    let rule = Rule::compile(&json!({"if": [
        {"starts_with": [{"var": "email"}, "admin"]}, "gold",
        {"==": [{"var": "tier"}, "beta"]}, {"fractional": [["silver", 50], [{"if": [true, "bronze", "tin"]}, 50]]},
        {"cat": ["computed", "-name"]}
    ]}))
    .expect("compiles");
    assert_eq!(
        rule.result_literals(),
        vec![
            ("if[1]".to_owned(), "gold".to_owned()),
            ("if[3].fractional[0][0]".to_owned(), "silver".to_owned()),
            (
                "if[3].fractional[1][0].if[1]".to_owned(),
                "bronze".to_owned()
            ),
            ("if[3].fractional[1][0].if[2]".to_owned(), "tin".to_owned()),
        ]
    );
    let top = Rule::compile(&json!("on")).expect("compiles");
    assert_eq!(
        top.result_literals(),
        vec![(String::new(), "on".to_owned())]
    );
    let keyed = Rule::compile(&json!({"fractional": ["seed", ["a", 1]]})).expect("compiles");
    assert_eq!(
        keyed.result_literals(),
        vec![("fractional[1][0]".to_owned(), "a".to_owned())]
    );
    assert_eq!(keyed.source(), &json!({"fractional": ["seed", ["a", 1]]}));
}
