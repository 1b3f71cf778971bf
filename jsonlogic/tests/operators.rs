//! Each JSON Logic operator, with json-logic-js's results (the semantics
//! flagd's providers share), through the public API.

use serde_json::{Value, json};
use vane_jsonlogic::Rule;

fn run(rule: Value, data: Value) -> Value {
    Rule::compile(&rule)
        .unwrap_or_else(|e| panic!("{rule} does not compile: {e}"))
        .apply(&data)
        .unwrap_or_else(|e| panic!("{rule} fails: {e}"))
}

fn check(cases: &[(Value, Value, Value)]) {
    for (rule, data, want) in cases {
        assert_eq!(&run(rule.clone(), data.clone()), want, "{rule} on {data}");
    }
}

#[test]
fn literals_and_arrays() {
    check(&[
        (json!("x"), json!({}), json!("x")),
        (json!(1.5), json!({}), json!(1.5)),
        (json!({}), json!({}), json!({})),
        (json!([1, {"var": "a"}]), json!({"a": 2}), json!([1, 2])),
    ]);
}

#[test]
fn var() {
    let data = json!({"a": {"b": [10, {"c": "deep"}]}, "n": null, "s": "héllo"});
    check(&[
        (json!({"var": "a.b.0"}), data.clone(), json!(10)),
        (json!({"var": "a.b.1.c"}), data.clone(), json!("deep")),
        (json!({"var": ["a.x", "dflt"]}), data.clone(), json!("dflt")),
        (json!({"var": ["x.y.z", 7]}), data.clone(), json!(7)),
        (json!({"var": "x"}), data.clone(), json!(null)),
        // A present null takes the default too, as in flagd's providers
        // (json-logic-js would give null).
        (json!({"var": ["n", 1]}), data.clone(), json!(1)),
        (json!({"var": "n"}), data.clone(), json!(null)),
        (json!({"var": 1}), json!([5, 6]), json!(6)),
        (json!({"var": ""}), json!({"k": 1}), json!({"k": 1})),
        (json!({"var": []}), json!(3), json!(3)),
        (json!({"var": null}), json!("whole"), json!("whole")),
        (json!({"var": "s.length"}), data.clone(), json!(5)),
        (json!({"var": "a.b.length"}), data.clone(), json!(2)),
        (
            json!({"var": {"cat": ["a", ".b.0"]}}),
            data.clone(),
            json!(10),
        ),
        (
            json!({"var": "$flagd.flagKey"}),
            json!({"$flagd": {"flagKey": "f"}}),
            json!("f"),
        ),
    ]);
}

#[test]
fn missing_and_missing_some() {
    let data = json!({"a": 1, "b": "", "c": null, "d": 0});
    check(&[
        (
            json!({"missing": ["a", "b", "c", "d", "e"]}),
            data.clone(),
            json!(["b", "c", "e"]),
        ),
        (json!({"missing": [["a", "e"]]}), data.clone(), json!(["e"])),
        (json!({"missing": "e"}), data.clone(), json!(["e"])),
        (
            json!({"missing_some": [1, ["a", "e"]]}),
            data.clone(),
            json!([]),
        ),
        (
            json!({"missing_some": [2, ["a", "e", "f"]]}),
            data.clone(),
            json!(["e", "f"]),
        ),
        (json!({"missing_some": [0, ["x"]]}), data, json!([])),
    ]);
}

#[test]
fn if_and_ternary() {
    check(&[
        (json!({"if": [true, "yes", "no"]}), json!({}), json!("yes")),
        (json!({"if": [[], "yes", "no"]}), json!({}), json!("no")),
        (json!({"if": [false, 1, false, 2, 3]}), json!({}), json!(3)),
        (json!({"if": [false, 1, true, 2, 3]}), json!({}), json!(2)),
        (json!({"if": [false, 1]}), json!({}), json!(null)),
        (json!({"if": ["only"]}), json!({}), json!("only")),
        (json!({"?:": [0, "a", "b"]}), json!({}), json!("b")),
    ]);
}

#[test]
fn equality() {
    check(&[
        (json!({"==": [1, "1"]}), json!({}), json!(true)),
        (json!({"==": [0, false]}), json!({}), json!(true)),
        (json!({"==": [null, false]}), json!({}), json!(false)),
        (json!({"==": [null, {"var": "x"}]}), json!({}), json!(true)),
        (json!({"===": [1, "1"]}), json!({}), json!(false)),
        (json!({"===": [1, 1.0]}), json!({}), json!(true)),
        (json!({"!=": [1, "2"]}), json!({}), json!(true)),
        (json!({"!=": ["a", "a"]}), json!({}), json!(false)),
        (json!({"!==": [1, "1"]}), json!({}), json!(true)),
        (json!({"!==": ["a", "a"]}), json!({}), json!(false)),
    ]);
}

#[test]
fn negation_and_boolean_logic() {
    check(&[
        (json!({"!": [[]]}), json!({}), json!(true)),
        (json!({"!": true}), json!({}), json!(false)),
        (json!({"!": ["0"]}), json!({}), json!(false)),
        (json!({"!!": [["x"]]}), json!({}), json!(true)),
        (json!({"!!": [""]}), json!({}), json!(false)),
        (json!({"or": [0, "", "x", "y"]}), json!({}), json!("x")),
        (json!({"or": [0, ""]}), json!({}), json!("")),
        (json!({"and": [1, "a", 0, "b"]}), json!({}), json!(0)),
        (json!({"and": [1, "a"]}), json!({}), json!("a")),
        // Short-circuits: the missing key would not matter anyway, but
        // the right side of a decided `or` is not evaluated.
        (json!({"or": [true, {"var": "x"}]}), json!({}), json!(true)),
    ]);
}

#[test]
fn ordering_and_between() {
    check(&[
        (json!({">": [2, 1]}), json!({}), json!(true)),
        (json!({">": ["2", 1]}), json!({}), json!(true)),
        (json!({">": ["10", "9"]}), json!({}), json!(false)),
        (json!({">=": [1, 1]}), json!({}), json!(true)),
        (json!({"<": [1, 2]}), json!({}), json!(true)),
        (json!({"<": ["a", 2]}), json!({}), json!(false)),
        (json!({"<=": [2, 2]}), json!({}), json!(true)),
        (json!({"<": [1, 2, 3]}), json!({}), json!(true)),
        (json!({"<": [1, 1, 3]}), json!({}), json!(false)),
        (json!({"<=": [1, 1, 3]}), json!({}), json!(true)),
        (json!({"<=": [1, 4, 3]}), json!({}), json!(false)),
        (json!({"<": [{"/": [1, 0]}, 5]}), json!({}), json!(false)),
    ]);
}

#[test]
fn arithmetic() {
    check(&[
        (json!({"max": [1, 3, 2]}), json!({}), json!(3)),
        (json!({"min": [1, "0", 2]}), json!({}), json!(0)),
        (json!({"max": [1, "x"]}), json!({}), json!(null)),
        (json!({"+": [1, "2", 3.5]}), json!({}), json!(6.5)),
        (json!({"+": []}), json!({}), json!(0)),
        (json!({"+": "3"}), json!({}), json!(3)),
        (json!({"+": ["3px", 1]}), json!({}), json!(4)),
        (json!({"-": [5, 3]}), json!({}), json!(2)),
        (json!({"-": [2]}), json!({}), json!(-2)),
        (json!({"-": ["3px", 1]}), json!({}), json!(null)),
        (json!({"*": [2, "3"]}), json!({}), json!(6)),
        (json!({"*": ["3"]}), json!({}), json!("3")),
        (json!({"/": [1, 4]}), json!({}), json!(0.25)),
        (json!({"/": [1, 0]}), json!({}), json!(null)),
        (json!({"%": [7, 3]}), json!({}), json!(1)),
        (json!({"%": [-7, 3]}), json!({}), json!(-1)),
        (
            json!({"+": [0.1, 0.2]}),
            json!({}),
            json!(0.30000000000000004),
        ),
    ]);
}

#[test]
fn map_filter_reduce() {
    let data = json!({"xs": [1, 2, 3, 4]});
    check(&[
        (
            json!({"map": [{"var": "xs"}, {"*": [{"var": ""}, 2]}]}),
            data.clone(),
            json!([2, 4, 6, 8]),
        ),
        (
            json!({"map": [{"var": "nope"}, {"var": ""}]}),
            data.clone(),
            json!([]),
        ),
        (
            json!({"filter": [{"var": "xs"}, {"%": [{"var": ""}, 2]}]}),
            data.clone(),
            json!([1, 3]),
        ),
        (
            json!({"reduce": [{"var": "xs"}, {"+": [{"var": "current"}, {"var": "accumulator"}]}, 10]}),
            data.clone(),
            json!(20),
        ),
        (
            json!({"reduce": [{"var": "nope"}, {"var": "current"}, 5]}),
            data.clone(),
            json!(5),
        ),
        (
            json!({"reduce": [{"var": "xs"}, {"var": "current"}]}),
            data.clone(),
            json!(4),
        ),
    ]);
}

#[test]
fn all_none_some() {
    let data = json!({"xs": [1, 2, 3]});
    check(&[
        (
            json!({"all": [{"var": "xs"}, {">": [{"var": ""}, 0]}]}),
            data.clone(),
            json!(true),
        ),
        (
            json!({"all": [{"var": "xs"}, {">": [{"var": ""}, 1]}]}),
            data.clone(),
            json!(false),
        ),
        (json!({"all": [[], true]}), data.clone(), json!(false)),
        (
            json!({"none": [{"var": "xs"}, {">": [{"var": ""}, 5]}]}),
            data.clone(),
            json!(true),
        ),
        (json!({"none": [[], true]}), data.clone(), json!(true)),
        (
            json!({"some": [{"var": "xs"}, {"==": [{"var": ""}, 2]}]}),
            data.clone(),
            json!(true),
        ),
        (
            json!({"some": [{"var": "xs"}, {"==": [{"var": ""}, 9]}]}),
            data,
            json!(false),
        ),
    ]);
}

#[test]
fn merge_in_cat_substr() {
    check(&[
        (
            json!({"merge": [[1, 2], 3, [[4]]]}),
            json!({}),
            json!([1, 2, 3, [4]]),
        ),
        (json!({"merge": []}), json!({}), json!([])),
        (
            json!({"in": ["Spring", "Springfield"]}),
            json!({}),
            json!(true),
        ),
        (json!({"in": ["x", ""]}), json!({}), json!(false)),
        (json!({"in": [1, [1, 2]]}), json!({}), json!(true)),
        (json!({"in": ["1", [1, 2]]}), json!({}), json!(false)),
        (json!({"in": [1, 5]}), json!({}), json!(false)),
        (
            json!({"cat": ["I love", " pie", 1, null, true, [1, 2]]}),
            json!({}),
            json!("I love pie1true1,2"),
        ),
        (
            json!({"cat": [1.5, 10, 1e21]}),
            json!({}),
            json!("1.5101e+21"),
        ),
        (
            json!({"substr": ["jsonlogic", 4]}),
            json!({}),
            json!("logic"),
        ),
        (
            json!({"substr": ["jsonlogic", -5]}),
            json!({}),
            json!("logic"),
        ),
        (
            json!({"substr": ["jsonlogic", 1, 3]}),
            json!({}),
            json!("son"),
        ),
        (
            json!({"substr": ["jsonlogic", 4, -2]}),
            json!({}),
            json!("log"),
        ),
        (json!({"substr": ["jsonlogic", 20]}), json!({}), json!("")),
        (json!({"substr": ["héllo", 1, 1]}), json!({}), json!("é")),
    ]);
}

#[test]
fn starts_with_and_ends_with() {
    let data = json!({"email": "jon@company.com"});
    check(&[
        (
            json!({"starts_with": [{"var": "email"}, "jon@"]}),
            data.clone(),
            json!(true),
        ),
        (
            json!({"starts_with": [{"var": "email"}, "bob"]}),
            data.clone(),
            json!(false),
        ),
        (
            json!({"ends_with": [{"var": "email"}, "@company.com"]}),
            data.clone(),
            json!(true),
        ),
        (
            json!({"ends_with": [{"var": "email"}, ".org"]}),
            data.clone(),
            json!(false),
        ),
        // Not two strings: null, as flagd gives.
        (
            json!({"ends_with": [{"var": "missing"}, ".org"]}),
            data.clone(),
            json!(null),
        ),
        (json!({"starts_with": [1, "1"]}), data, json!(null)),
    ]);
}

#[test]
fn sem_ver_in_rules() {
    check(&[
        (
            json!({"sem_ver": [{"var": "version"}, ">=", "1.0.0"]}),
            json!({"version": "2.0.0"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "version"}, "^", "v2.9.1"]}),
            json!({"version": "2.0.0"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "version"}, "~", "2.1"]}),
            json!({"version": "2.0.0"}),
            json!(false),
        ),
        (
            json!({"sem_ver": [{"var": "version"}, "<", "1.0.0"]}),
            json!({}),
            json!(null),
        ),
        (
            json!({"sem_ver": ["1.0.0", {"var": "op"}, "1.0.0"]}),
            json!({"op": "="}),
            json!(true),
        ),
        (
            json!({"sem_ver": ["1.0.0", {"var": "op"}, "1.0.0"]}),
            json!({"op": "+"}),
            json!(null),
        ),
    ]);
}

#[test]
fn flagd_context_adds_flag_key_and_timestamp_over_the_callers() {
    let ctx = json!({"targetingKey": "u1", "$flagd": {"flagKey": "spoofed"}});
    let Value::Object(ctx) = ctx else {
        unreachable!()
    };
    let data = vane_jsonlogic::flagd_context("my-flag", &ctx, 1_700_000_123);
    assert_eq!(
        data,
        json!({"targetingKey": "u1", "$flagd": {"flagKey": "my-flag", "timestamp": 1_700_000_123}})
    );
    let rule = json!({"and": [
        {"===": [{"var": "$flagd.flagKey"}, "my-flag"]},
        {">=": [{"var": "$flagd.timestamp"}, 1_700_000_000]}
    ]});
    assert_eq!(run(rule, data), json!(true));
}
