//! Evaluation never panics: arbitrary JSON as a rule and as data gives a
//! compile error, a value or an `EvalError`; runaway work and too deep data
//! end in an `EvalError`.

use serde_json::{Map, Value, json};
use vane_jsonlogic::{Rule, flagd_context};

/// xorshift64*: a fixed-seed generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const OPS: &[&str] = &[
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "or",
    "and",
    ">",
    ">=",
    "<",
    "<=",
    "max",
    "min",
    "+",
    "-",
    "*",
    "/",
    "%",
    "map",
    "filter",
    "reduce",
    "all",
    "none",
    "some",
    "merge",
    "in",
    "cat",
    "substr",
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
    "$ref",
    "unknown",
];

const STRINGS: &[&str] = &[
    "",
    "a",
    "a.b",
    "0",
    "1e400",
    "-0",
    "0x1F",
    " 7 ",
    "Infinity",
    "é😀",
    "1.2.3",
    "v1",
    "=",
    "^",
    "targetingKey",
    "$flagd.flagKey",
    "current",
    "accumulator",
    "length",
    "xs.1",
];

fn scalar(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.below(20) as i64 - 10),
        3 => json!([1e308, -1e308, 0.5, -2.5, 4_294_967_296.0, 1e-320][rng.below(6)]),
        4 => json!(u64::MAX),
        _ => json!(STRINGS[rng.below(STRINGS.len())]),
    }
}

fn value(rng: &mut Rng, depth: usize) -> Value {
    if depth == 0 || rng.below(10) < 3 {
        return scalar(rng);
    }
    match rng.below(10) {
        0..=1 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth - 1)).collect()),
        2 => {
            let mut map = Map::new();
            for _ in 0..rng.below(3) {
                map.insert(
                    STRINGS[rng.below(STRINGS.len())].to_owned(),
                    value(rng, depth - 1),
                );
            }
            Value::Object(map)
        }
        _ => {
            let op = OPS[rng.below(OPS.len())];
            let args = if rng.below(5) == 0 {
                value(rng, depth - 1)
            } else {
                Value::Array((0..rng.below(5)).map(|_| value(rng, depth - 1)).collect())
            };
            json!({ op: args })
        }
    }
}

#[test]
fn arbitrary_rules_and_data_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut compiled = 0;
    for i in 0..20_000 {
        let rule = value(&mut rng, 6);
        let Value::Object(ctx) = json!({
            "targetingKey": value(&mut rng, 2),
            "xs": value(&mut rng, 3),
            "a": {"b": value(&mut rng, 3)},
        }) else {
            unreachable!()
        };
        let Ok(compiled_rule) = Rule::compile(&rule) else {
            continue;
        };
        compiled += 1;
        let data = flagd_context("flag", &ctx, i);
        // Either outcome is fine; what matters is that there is one.
        let _ = compiled_rule.apply(&data);
        let _ = compiled_rule.apply(&value(&mut rng, 4));
        let _ = compiled_rule.result_literals();
    }
    // The generator must exercise evaluation, not only compile errors.
    assert!(compiled > 2_000, "only {compiled} rules compiled");
}

#[test]
fn runaway_work_is_an_error() {
    // The accumulator doubles with each item: 2^40 values.
    let doubling = Rule::compile(&json!({"reduce": [
        {"var": "xs"},
        {"merge": [{"var": "accumulator"}, {"var": "accumulator"}]},
        [1]
    ]}))
    .expect("compiles");
    let xs: Vec<u32> = (0..40).collect();
    let e = doubling.apply(&json!({ "xs": xs })).expect_err("runs away");
    assert!(e.to_string().contains("steps of work"), "{e}");

    // A string that doubles with each item.
    let text = Rule::compile(&json!({"reduce": [
        {"var": "xs"},
        {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]},
        "xx"
    ]}))
    .expect("compiles");
    let e = text.apply(&json!({ "xs": xs })).expect_err("runs away");
    assert!(e.to_string().contains("steps of work"), "{e}");

    // Maps nested five deep over twenty items: 3.2 million evaluations.
    let mut nested = json!({"var": ""});
    for _ in 0..5 {
        nested =
            json!({"map": [{"merge": [{"var": "xs"}, (0..20).collect::<Vec<u32>>()]}, nested]});
    }
    let nested = Rule::compile(&nested).expect("compiles");
    let e = nested.apply(&json!({"xs": []})).expect_err("runs away");
    assert!(e.to_string().contains("steps of work"), "{e}");
    // The same shape over few items is fine.
    let small =
        Rule::compile(&json!({"map": [[1, 2], {"map": [[3, 4], {"var": ""}]}]})).expect("compiles");
    assert_eq!(
        small.apply(&json!({})).expect("small"),
        json!([[3, 4], [3, 4]])
    );
}

#[test]
fn too_deep_data_is_an_error() {
    let rule = Rule::compile(&json!({"var": "a"})).expect("compiles");
    let mut deep = json!(1);
    for _ in 0..1000 {
        deep = json!([deep]);
    }
    let e = rule.apply(&json!({ "a": deep })).expect_err("too deep");
    assert!(e.to_string().contains("nests deeper"), "{e}");
}
