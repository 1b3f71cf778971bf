//! `fractional` buckets exactly as flagd does: the expectations are the
//! ones of flagd's own test suites (the Go core's
//! `core/pkg/evaluator/fractional_test.go`, the JavaScript
//! `flagd-core` `targeting.spec.ts`), run through the public API.

use serde_json::{Value, json};
use vane_jsonlogic::{Rule, flagd_context};

fn eval(flag_key: &str, rule: Value, context: Value) -> Value {
    let rule = Rule::compile(&rule).expect("rule compiles");
    let Value::Object(context) = context else {
        panic!("context must be an object");
    };
    rule.apply(&flagd_context(flag_key, &context, 1_700_000_000))
        .expect("evaluates")
}

fn four_colours(key: Value) -> Value {
    json!({"fractional": [key, ["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]]})
}

#[test]
fn go_core_vectors_flag_key_and_email() {
    let key = json!({"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]});
    for (email, want) in [
        ("rachel@faas.com", "blue"),
        ("monica@faas.com", "yellow"),
        ("joey@faas.com", "red"),
        ("ross@faas.com", "blue"),
    ] {
        let got = eval(
            "headerColor",
            four_colours(key.clone()),
            json!({"email": email}),
        );
        assert_eq!(got, json!(want), "{email}");
    }
}

#[test]
fn go_core_vectors_custom_seed() {
    let key = json!({"cat": ["my-seed", {"var": "email"}]});
    for (email, want) in [
        ("rachel@faas.com", "green"),
        ("monica@faas.com", "red"),
        ("joey@faas.com", "blue"),
        ("ross@faas.com", "green"),
    ] {
        let got = eval(
            "customSeededHeaderColor",
            four_colours(key.clone()),
            json!({"email": email}),
        );
        assert_eq!(got, json!(want), "{email}");
    }
}

#[test]
fn go_core_vectors_email_alone_and_uneven_weights() {
    let got = eval(
        "footerColor",
        four_colours(json!({"var": "email"})),
        json!({"email": "ross@faas.com"}),
    );
    assert_eq!(got, json!("red"));
    // The literal string "email" is the bucketing key here.
    let rule = json!({"fractional": ["email", ["red", 50], ["blue", 25], ["green", 25]]});
    assert_eq!(
        eval("headerColor", rule, json!({"email": "test4@faas.com"})),
        json!("green")
    );
    let two = json!({"fractional": [{"var": "email"}, ["red", 25], ["blue", 25]]});
    assert_eq!(
        eval("headerColor", two, json!({"email": "foo@foo.com"})),
        json!("blue")
    );
    let unweighted = json!({"fractional": [{"var": "email"}, ["red"], ["blue"]]});
    assert_eq!(
        eval("headerColor", unweighted, json!({"email": "foo@foo.com"})),
        json!("blue")
    );
}

#[test]
fn go_core_vectors_targeting_key_by_default() {
    let rule = json!({"fractional": [["blue", 50], ["green", 50]]});
    assert_eq!(
        eval(
            "headerColor",
            rule.clone(),
            json!({"targetingKey": "foo@foo.com"})
        ),
        json!("green")
    );
    // No usable targeting key: null, so the flag falls back to its default.
    for ctx in [
        json!({}),
        json!({"targetingKey": null}),
        json!({"targetingKey": ""}),
    ] {
        assert_eq!(
            eval("headerColor", rule.clone(), ctx.clone()),
            json!(null),
            "{ctx}"
        );
    }
    let single = json!({"fractional": [["blue", 1]]});
    assert_eq!(
        eval("headerColor", single, json!({"targetingKey": "any-user"})),
        json!("blue")
    );
    let no_weight = json!({"fractional": [["yellow"]]});
    assert_eq!(
        eval(
            "headerColor",
            no_weight,
            json!({"targetingKey": "any-user"})
        ),
        json!("yellow")
    );
}

#[test]
fn go_core_vectors_nested_rules_in_buckets() {
    let nested_if = json!({"fractional": ["email",
        [{"if": [{"in": ["us", {"var": "locale"}]}, "red", "blue"]}, 25],
        ["green", 75]]});
    for locale in ["us", "ca"] {
        let ctx = json!({"email": "rachel@faas.com", "locale": locale});
        assert_eq!(
            eval("nestedIfVariant", nested_if.clone(), ctx),
            json!("green")
        );
    }
    let dynamic = json!({"fractional": ["email",
        ["red", {"var": "redWeight"}], ["blue", {"var": "blueWeight"}], ["green", {"var": "greenWeight"}]]});
    for (weights, want) in [
        ((0, 1, 0), "blue"),
        ((1, 0, 0), "red"),
        ((0, 0, 1), "green"),
    ] {
        let ctx = json!({"email": "test_a@faas.com", "redWeight": weights.0,
            "blueWeight": weights.1, "greenWeight": weights.2});
        assert_eq!(eval("dynamicWeights", dynamic.clone(), ctx), json!(want));
    }
}

#[test]
fn negative_computed_weights_count_as_zero() {
    let rule = json!({"fractional": [["red", {"-": [0, 1000]}], ["green", 1]]});
    let got = eval(
        "clampedWeightFlag",
        rule,
        json!({"targetingKey": "some-targeting-key"}),
    );
    assert_eq!(got, json!("green"));
}

#[test]
fn js_core_vectors() {
    let key = json!({"cat": [{"var": "$flagd.flagKey"}, {"var": "key"}]});
    let rule = json!({"fractional": [key, ["red", 50], ["blue", 50]]});
    assert_eq!(
        eval("flagA", rule.clone(), json!({"key": "bucketKeyA"})),
        json!("red")
    );
    assert_eq!(
        eval("flagA", rule, json!({"key": "bucketKey4"})),
        json!("blue")
    );
    let by_tk = json!({"fractional": [["red", 50], ["blue", 50]]});
    assert_eq!(
        eval("flagA", by_tk, json!({"targetingKey": "bucketKeyB"})),
        json!("red")
    );
    let one_unweighted = json!({"fractional": [["red", 1], ["blue"]]});
    assert_eq!(
        eval(
            "flagA",
            one_unweighted,
            json!({"targetingKey": "bucketKeyB"})
        ),
        json!("red")
    );
    for weights in [55, 45] {
        let rule = json!({"fractional": [["red", weights], ["blue", weights]]});
        assert_eq!(
            eval("flagA", rule, json!({"targetingKey": "key"})),
            json!("blue")
        );
    }
    let max = json!({"fractional": [["a", 2_147_483_646], ["b", 1]]});
    assert_eq!(
        eval("flagA", max, json!({"targetingKey": "testKey"})),
        json!("a")
    );
    let fine = json!({"fractional": ["user2077", ["red", 10], ["blue", 9990]]});
    assert_eq!(eval("flagA", fine, json!({})), json!("red"));
    let control = json!({"fractional": ["user0", ["red", 10], ["blue", 9990]]});
    assert_eq!(eval("flagA", control, json!({})), json!("blue"));
}

#[test]
fn js_core_vectors_nested_variants() {
    let tier = json!({"fractional": [{"var": "targetingKey"},
        [{"if": [{"==": [{"var": "tier"}, "premium"]}, "premium", "standard"]}, 50],
        ["standard", 50]]});
    let ctx = |tk: &str, t: &str| json!({"targetingKey": tk, "tier": t});
    assert_eq!(
        eval("flag", tier.clone(), ctx("jon@company.com", "premium")),
        json!("premium")
    );
    assert_eq!(
        eval("flag", tier.clone(), ctx("jon@company.com", "basic")),
        json!("standard")
    );
    assert_eq!(
        eval("flag", tier, ctx("user1", "premium")),
        json!("standard")
    );

    let colour =
        json!({"fractional": [{"var": "targetingKey"}, [{"var": "color"}, 50], ["blue", 50]]});
    let ctx = |tk: &str, c: &str| json!({"targetingKey": tk, "color": c});
    assert_eq!(
        eval("flag", colour.clone(), ctx("jon@company.com", "red")),
        json!("red")
    );
    assert_eq!(
        eval("flag", colour.clone(), ctx("jon@company.com", "green")),
        json!("green")
    );
    assert_eq!(
        eval("flag", colour.clone(), ctx("user1", "red")),
        json!("blue")
    );
    // The variant's var is missing: null.
    assert_eq!(
        eval("flag", colour, json!({"targetingKey": "jon@company.com"})),
        json!(null)
    );

    let rollout = json!({"fractional": [["new-feature", {"var": "rolloutPercent"}],
        ["control", {"-": [100, {"var": "rolloutPercent"}]}]]});
    let ctx = |tk: &str, p: u32| json!({"targetingKey": tk, "rolloutPercent": p});
    assert_eq!(
        eval("flagA", rollout.clone(), ctx("bucketKeyA", 10)),
        json!("new-feature")
    );
    assert_eq!(
        eval("flagA", rollout.clone(), ctx("bucketKeyB", 10)),
        json!("control")
    );
    assert_eq!(
        eval("flagA", rollout, ctx("bucketKeyB", 90)),
        json!("new-feature")
    );

    let zero = json!({"fractional": [{"var": "targetingKey"},
        ["red", {"if": [{"==": [{"var": "tier"}, "premium"]}, 100, 0]}], ["blue", 10]]});
    for tk in ["jon@company.com", "user1"] {
        let premium = json!({"targetingKey": tk, "tier": "premium"});
        assert_eq!(eval("flag", zero.clone(), premium), json!("red"));
        let basic = json!({"targetingKey": tk, "tier": "basic"});
        assert_eq!(eval("flag", zero.clone(), basic), json!("blue"));
    }
}

#[test]
fn js_core_vector_nested_fractional() {
    // user1 lands in the fourth outer bucket, whose nested fractional
    // buckets by flagA + user1. (flagd's test has `true` and `1` as the
    // second and third variants; Vane's variants are named by strings, so
    // those are refused at compile time, and only the names differ here.)
    let rule = json!({"fractional": [{"var": "targetingKey"},
        ["clubs", 1], ["hearts", 1], ["spades", 1],
        [{"fractional": [["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]}, 1]]});
    let got = eval("flagA", rule, json!({"targetingKey": "user1"}));
    assert_eq!(got, json!("diamonds"));
}

#[test]
fn malformed_values_at_run_time_give_null() {
    // A computed fractional weight, a total above i32::MAX, a key that
    // evaluates to null (kept as a bucket, as flagd's providers do).
    let cases = [
        json!({"fractional": [["red", {"/": [1, 2]}], ["blue", 1]]}),
        json!({"fractional": [["red", {"+": [2_000_000_000, 0]}], ["blue", 200_000_000]]}),
        json!({"fractional": [{"var": "email"}, ["red", 50], ["blue", 50]]}),
        json!({"fractional": [["red", {"var": "w"}]]}),
    ];
    for rule in cases {
        let got = eval("flag", rule.clone(), json!({"targetingKey": "foo@foo.com"}));
        assert_eq!(got, json!(null), "{rule}");
    }
}

#[test]
fn without_flagd_properties_fractional_gives_null() {
    let rule = Rule::compile(&json!({"fractional": ["key", ["a", 1]]})).expect("compiles");
    assert_eq!(
        rule.apply(&json!({"targetingKey": "x"}))
            .expect("evaluates"),
        json!(null)
    );
}
